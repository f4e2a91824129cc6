#!/usr/bin/env python3
"""A modern ClickHouse (chdb-core, in process) behind ClickHouse's HTTP
interface, on loopback, so that the real `spillway-ingester` (its migration
runner, its sink's RowBinary inserts) and the test suite's own client talk to
a current ClickHouse release exactly as they talk to a server.

    python3 tests/chdb/server.py --data DIR [--port N] [--cluster NAME]

It prints `listening on 127.0.0.1:PORT (ClickHouse VERSION)` once it serves.

Only what Spillway's client uses is implemented: `GET /ping`; a query in the
`query` URL parameter or the body; an INSERT's data in the body (LZ4-framed
when `decompress=1`), in any input format, staged in a file and inserted with
the `file()` table function; `database`; other URL parameters are passed on
as query settings. Results are returned uncompressed; errors as ClickHouse
returns them (HTTP 500, `X-ClickHouse-Exception-Code`, `Code: N. ...`); rows
and bytes read in `X-ClickHouse-Summary`, as ClickHouse reports them.
Connections are served on threads (the client pools them); queries run one
at a time, as chdb's session is not thread-safe.

With --tls-dir, the same server also answers HTTPS on a second port (printed
as `https on 127.0.0.1:PORT` before the `listening` line), requiring a client
certificate signed by the directory's CA.

With --keeper and --macros, a ZooKeeper and the `shard`/`replica` macros, so
that `migrate` creates the modern profile's replicated tables (chdb creates
them but never activates the replica: `system.replicas.is_readonly` stays 1
and an INSERT into them waits, so rows cannot be inserted there).

With --cluster, a cluster of one shard (this server, on a TCP port chdb does
not listen on but reports as local) is defined, so `Distributed` tables work.
"""

import argparse
import http.server
import json
import os
import re
import ssl
import struct
import sys
import tempfile
import threading
import urllib.parse

import lz4.block
from chdb import session

# URL parameters the client sends that are not query settings.
NOT_SETTINGS = {"query", "database", "decompress", "compress", "default_format",
                "user", "password", "query_id", "session_id", "wait_end_of_query"}
INSERT = re.compile(
    r"^\s*INSERT\s+INTO\s+(?P<table>[`\"\w.]+)\s*(?:\((?P<columns>[^)]*)\))?\s*"
    r"(?:SETTINGS\s+(?P<settings>.*?)\s+)?FORMAT\s+(?P<format>\w+)\s*$",
    re.IGNORECASE | re.DOTALL,
)
CODE = re.compile(r"Code: (\d+)")


def decompress(body):
    """Undoes ClickHouse's compressed-block framing (checksum not checked)."""
    out = bytearray()
    pos = 0
    while pos < len(body):
        method = body[pos + 16]
        compressed, size = struct.unpack_from("<II", body, pos + 17)
        block = body[pos + 25:pos + 16 + compressed]
        if method == 0x82:
            out += lz4.block.decompress(block, uncompressed_size=size)
        elif method == 0x02:
            out += block
        else:
            raise ValueError(f"compression method {method:#x} not handled")
        pos += 16 + compressed
    return bytes(out)


def quote(s):
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Server:
    def __init__(self, data, cluster, keeper=None, macros=None):
        self.stage = tempfile.mkdtemp(prefix="stage-", dir=data)
        path = os.path.join(data, "db")
        parts = []
        if cluster:
            parts.append(f"""  <tcp_port>9000</tcp_port>
  <remote_servers><{cluster}><shard><replica>
    <host>127.0.0.1</host><port>9000</port>
  </replica></shard></{cluster}></remote_servers>
""")
        if keeper:
            host, _, port = keeper.rpartition(":")
            shard, _, replica = macros.partition("/")
            parts.append(f"""  <zookeeper><node><host>{host}</host><port>{port}</port></node></zookeeper>
  <macros><shard>{shard}</shard><replica>{replica}</replica></macros>
""")
        if parts:
            config = os.path.join(data, "config.xml")
            with open(config, "w") as f:
                f.write("<clickhouse>\n" + "".join(parts) + "</clickhouse>\n")
            path += f"?config-file={config}"
        self.session = session.Session(path)
        self.version = self.run("SELECT version()", "TSV").decode().strip()

    def run(self, sql, fmt="TSV"):
        return self.query(sql, fmt).bytes()

    def query(self, sql, fmt="TSV"):
        result = self.session.query(sql, fmt)
        # What ClickHouse reports in X-ClickHouse-Summary.
        self.read_rows, self.read_bytes = result.storage_rows_read(), result.storage_bytes_read()
        return result

    def handle(self, params, body):
        database = params.get("database", "default")
        settings = {k: v for k, v in params.items() if k not in NOT_SETTINGS}
        query = params.get("query")
        data = None
        if query is None:
            query, data = body.decode(), None
        else:
            data = body
        if params.get("decompress") == "1" and data:
            data = decompress(data)
        self.run(f"USE {database}")
        m = INSERT.match(query)
        if m and data:
            return self.insert(m, data, settings)
        if data:
            query = query + "\n" + data.decode()
        fmt = params.get("default_format", "TabSeparated")
        match = re.search(r"\bFORMAT\s+(\w+)\s*$", query, re.IGNORECASE)
        if match:
            fmt = match.group(1)
            query = query[:match.start()]
        if settings and query.lstrip().upper().startswith(("SELECT", "WITH", "INSERT")):
            query += " SETTINGS " + ", ".join(f"{k} = {quote(v)}" for k, v in settings.items())
        return self.run(query, fmt)

    def insert(self, m, data, settings):
        table = m.group("table").replace("`", "").replace('"', "")
        db, _, name = table.rpartition(".")
        db = db or self.run("SELECT currentDatabase()").decode().strip()
        columns = [c.strip().strip("`\"") for c in (m.group("columns") or "").split(",") if c.strip()]
        types = dict(
            line.split("\t", 1)
            for line in self.run(
                f"SELECT name, type FROM system.columns WHERE database = {quote(db)} "
                f"AND table = {quote(name)} AND default_kind NOT IN ('ALIAS', 'MATERIALIZED')",
                "TabSeparatedRaw",
            ).decode().splitlines()
        )
        if not types:
            raise RuntimeError(f"Code: 60. DB::Exception: Table {db}.{name} does not exist. (UNKNOWN_TABLE)")
        columns = columns or list(types)
        for c in columns:
            if c not in types:
                raise RuntimeError(f"Code: 16. DB::Exception: No such column {c} in table {db}.{name}. (NO_SUCH_COLUMN_IN_TABLE)")
        structure = ", ".join(f"`{c}` {types[c]}" for c in columns)
        path = os.path.join(self.stage, "insert.bin")
        with open(path, "wb") as f:
            f.write(data)
        sql = (f"INSERT INTO `{db}`.`{name}` ({', '.join(f'`{c}`' for c in columns)}) "
               f"SELECT * FROM file({quote(path)}, {m.group('format')}, {quote(structure)})")
        extra = [m.group("settings")] if m.group("settings") else []
        extra += [f"{k} = {quote(v)}" for k, v in settings.items()]
        if extra:
            sql += " SETTINGS " + ", ".join(extra)
        self.run(sql)
        return b""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cluster")
    ap.add_argument("--tls-dir", help="also serve HTTPS with DIR/server.pem and server.key, "
                    "requiring a client certificate signed by DIR/ca.pem")
    ap.add_argument("--keeper", help="HOST:PORT of a ZooKeeper, with --macros: replicated "
                    "tables can be created (chdb never activates their replicas: they stay "
                    "read-only, so INSERTs into them wait)")
    ap.add_argument("--macros", default="1/r1", help="SHARD/REPLICA (default 1/r1)")
    args = ap.parse_args()
    os.makedirs(args.data, exist_ok=True)
    server = Server(args.data, args.cluster, args.keeper, args.macros)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = bytearray()
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return bytes(out)
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def reply(self, status, payload, headers=()):
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def serve(self, body):
            url = urllib.parse.urlsplit(self.path)
            if url.path in ("/ping", "/ping/"):
                return self.reply(200, b"Ok.\n")
            params = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
            if os.environ.get("SPILLWAY_CHDB_LOG"):
                print("request", params, body[:200], file=sys.stderr, flush=True)
            try:
                with lock:
                    out = server.handle(params, body)
                    summary = json.dumps({"read_rows": str(server.read_rows),
                                          "read_bytes": str(server.read_bytes)})
            except Exception as e:  # chdb's errors carry ClickHouse's code
                text = str(e)
                code = CODE.search(text)
                code = code.group(1) if code else "1001"
                if not text.startswith("Code:"):
                    text = f"Code: {code}. DB::Exception: {text}"
                return self.reply(500, (text + "\n").encode(),
                                  [("X-ClickHouse-Exception-Code", code)])
            self.reply(200, out, [("X-ClickHouse-Server-Display-Name", "chdb"),
                                  ("X-ClickHouse-Summary", summary)])

        def do_GET(self):
            self.serve(b"")

        def do_POST(self):
            self.serve(self.body())

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    httpd.daemon_threads = True
    if args.tls_dir:
        # The same server over HTTPS on a second port, as a ClickHouse server
        # with <https_port> and verificationMode strict.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(args.tls_dir, "server.pem"), os.path.join(args.tls_dir, "server.key"))
        ctx.load_verify_locations(os.path.join(args.tls_dir, "ca.pem"))
        ctx.verify_mode = ssl.CERT_REQUIRED
        https = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        https.daemon_threads = True
        https.socket = ctx.wrap_socket(https.socket, server_side=True)
        threading.Thread(target=https.serve_forever, daemon=True).start()
        print(f"https on 127.0.0.1:{https.server_port}", flush=True)
    print(f"listening on 127.0.0.1:{httpd.server_port} (ClickHouse {server.version})", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

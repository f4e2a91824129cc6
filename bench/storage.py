#!/usr/bin/env python3
"""The storage benchmark's driver (bench/storage.sh runs it): the same rows in
the previous layout ("today": migrations 0001-0005 as they were) and in
storage v2, side by side, on ClickHouse 18.16 (legacy profile) and on
ClickHouse 26.9 in chdb (modern profile).

For each data set (a record file) it:
  1. turns the records into rows with the ingester's own code and sink
     (`storage_rows rows`): v2 rows with the default precision rules, and
     the exact values for today's layout;
  2. creates a database per layout with the real `spillway-ingester migrate`
     (`--until 0005` for today's) and loads the rows over HTTP as RowBinary,
     as the ingester does; today's rows get the label arrays it used to send
     and `ingested` = time + 1 s;
  3. merges each table into one part per partition (wide format), then reads
     compressed bytes per column from system.columns.
Dashboard latency is bench/dashboard.sh's (it loads data with
`load_dataset` below).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

TODAY_COMMIT = "369f441"  # the last commit with the previous layout and dashboard
DASHBOARD = "deploy/grafana/dashboards/spillway.json"


def http(url, sql, data=None, timeout=600):
    params = {"query": sql} if data is not None else {}
    req = urllib.request.Request(
        url + "/?" + urllib.parse.urlencode(params), data=data if data is not None else sql.encode()
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{sql[:200]}...: {e.read().decode()[:500]}") from None


class Server:
    def __init__(self, name, url):
        self.name, self.url = name, url

    def q(self, sql):
        return http(self.url, sql)


def migrate(ingester, server, db, until=None):
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(f'[kafka]\nbrokers = "127.0.0.1:1"\n[[clickhouse.shards]]\nurl = "{server.url}"\n'
                f'database = "{db}"\n')
        path = f.name
    args = [ingester, "-c", path, "migrate"] + (["--until", until] if until else [])
    # The stack's SPILLWAY_* variables would override the file's shard.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPILLWAY_")}
    out = subprocess.run(args, capture_output=True, text=True, env=env)
    os.unlink(path)
    if out.returncode != 0:
        raise RuntimeError(f"migrate failed: {out.stdout}{out.stderr}")
    return out.stdout


def load(server, db, table, rowbinary, columns):
    with open(rowbinary, "rb") as f:
        data = f.read()
    http(server.url, f"INSERT INTO {db}.{table} ({columns}) FORMAT RowBinary", data=data)


def sizes(server, db, table):
    rows = int(server.q(f"SELECT count() FROM {db}.{table}"))
    per_col = {}
    for line in server.q(
        f"SELECT name, sum(data_compressed_bytes) FROM system.columns "
        f"WHERE database = '{db}' AND table = '{table}' GROUP BY name FORMAT TSV"
    ).splitlines():
        name, b = line.split("\t")
        if int(b):
            per_col[name] = int(b)
    total = int(server.q(
        f"SELECT sum(data_compressed_bytes) FROM system.parts "
        f"WHERE database = '{db}' AND table = '{table}' AND active"
    ) or 0)
    return rows, total, per_col


def compact(server, db, tables):
    for t in tables:
        if server.name == "modern":
            # Per-column sizes need wide parts (production parts are wide
            # past 10 MB; these test parts are smaller).
            server.q(f"ALTER TABLE {db}.{t} MODIFY SETTING min_bytes_for_wide_part = 0")
        server.q(f"OPTIMIZE TABLE {db}.{t} FINAL")


def load_dataset(args, server, label, records, work):
    """Loads `records` into a v2 database and a previous-layout one on
    `server`; returns (v2 database, previous database, profile)."""
    rows_dir = os.path.join(work, label)
    exact_dir = os.path.join(work, label + "-exact")
    for d, env in ((rows_dir, {}), (exact_dir, {"STORAGE_ROWS_EXACT": "1"})):
        if not os.path.exists(os.path.join(d, "samples.rowbinary")):
            subprocess.run([args.rows, "rows", records, d], check=True,
                           env={**os.environ, **env}, stdout=subprocess.DEVNULL)
    stamp = int(time.time())
    db_v2, db_today = f"bench_storage_v2_{label}_{stamp}", f"bench_storage_today_{label}_{stamp}"
    out = migrate(args.ingester, server, db_v2)
    profile = re.search(r"profile\s+(\w+)", out).group(1)
    migrate(args.ingester, server, db_today, until="0005")
    cols = open(os.path.join(rows_dir, "samples.columns")).read().strip()
    # A legacy server with replicated tiers takes samples through
    # `samples_in` (migration 0008), whose views feed `samples` and the tiers.
    entry = server.q(f"SELECT count() FROM system.tables WHERE database = '{db_v2}' "
                     f"AND name = 'samples_in'").strip() == "1"
    load(server, db_v2, "samples_in" if entry else "samples",
         os.path.join(rows_dir, "samples.rowbinary"), cols)
    if os.path.exists(os.path.join(rows_dir, "agent_status.rowbinary")):
        load(server, db_v2, "agent_status", os.path.join(rows_dir, "agent_status.rowbinary"),
             open(os.path.join(rows_dir, "agent_status.columns")).read().strip())
        load(server, db_today, "agent_status", os.path.join(exact_dir, "agent_status.rowbinary"),
             open(os.path.join(exact_dir, "agent_status.columns")).read().strip())
    else:
        # Simulated hosts send no heartbeats: one per host, so that the host
        # variable and host names resolve in both dashboards.
        for db in (db_v2, db_today):
            server.q(f"INSERT INTO {db}.agent_status (time, time_ms, host_id, hostname, instance_id, "
                     f"agent_version, uptime_ms, last_seq, spool_bytes, spool_records, dropped_first, "
                     f"dropped_last, last_error) SELECT max(time), 0, host_id, any(hostname), any(instance_id), "
                     f"'loadgen', 0, max(seq), 0, 0, [], [], '' FROM {db_v2}.samples GROUP BY host_id")
    # Today's rows: exact values, the label arrays, `ingested`, through a
    # staging table in v2's columns.
    stage = f"{db_today}.stage"
    server.q(f"CREATE TABLE {stage} AS {db_v2}.samples ENGINE = MergeTree() ORDER BY tuple()")
    load(server, db_today, "stage", os.path.join(exact_dir, "samples.rowbinary"), cols)
    server.q(f"INSERT INTO {db_today}.samples SELECT time, time_ms, host_id, hostname, metric, labels, "
             f"label_keys, label_values, value, kind, unit, instance_id, seq, time + 1 FROM {stage}")
    server.q(f"DROP TABLE {stage}")
    return db_v2, db_today, profile


def run_dataset(args, server, label, records, work):
    db_v2, db_today, profile = load_dataset(args, server, label, records, work)
    result = {"profile": profile}
    for name, db, tables in (("v2", db_v2, ["samples", "samples_1m", "samples_1h"]),
                             ("today", db_today, ["samples", "samples_1m"])):
        compact(server, db, tables)
        rows, total, per_col = sizes(server, db, "samples")
        rollups = {t: sizes(server, db, t)[1] / rows for t in tables[1:]}
        result[name] = {"db": db, "rows": rows, "total": total / rows,
                        "columns": {c: b / rows for c, b in per_col.items()}, "rollups": rollups}
    for db in (db_v2, db_today):
        server.q(f"DROP DATABASE {db}")
    return result


def table(res):
    v2, today = res["v2"], res["today"]
    cols = sorted(set(v2["columns"]) | set(today["columns"]),
                  key=lambda c: -max(v2["columns"].get(c, 0), today["columns"].get(c, 0)))
    fmt = lambda b: "-" if b is None else f"{b:.3f}"
    lines = ["| column | today B/sample | v2 B/sample |", "|---|---:|---:|"]
    for c in cols:
        lines.append(f"| `{c}` | {fmt(today['columns'].get(c))} | {fmt(v2['columns'].get(c))} |")
    lines.append(f"| **all columns** | **{today['total']:.3f}** | **{v2['total']:.3f}** |")
    non_value = sum(b for c, b in v2["columns"].items() if c != "value")
    lines.append(f"| v2, all but `value` | | {non_value:.3f} |")
    for t in sorted(set(today["rollups"]) | set(v2["rollups"])):
        lines.append(f"| rollup `{t}`, per raw sample | {fmt(today['rollups'].get(t))} | "
                     f"{fmt(v2['rollups'].get(t))} |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ingester", required=True)
    ap.add_argument("--rows", required=True)
    ap.add_argument("--legacy-url", required=True)
    ap.add_argument("--agent", required=True, help="record file of real agent data")
    ap.add_argument("--fleet", required=True, help="record file of a simulated fleet")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="storage-bench-")
    chdb = subprocess.Popen([sys.executable, "tests/chdb/server.py", "--data", os.path.join(work, "chdb")],
                            stdout=subprocess.PIPE, text=True)
    line = chdb.stdout.readline()
    m = re.match(r"listening on (\S+) \(ClickHouse (\S+)\)", line)
    if not m:
        raise SystemExit(f"chdb server did not start: {line}")
    servers = [Server("modern", "http://" + m.group(1)), Server("legacy", args.legacy_url)]
    versions = {"modern": m.group(2), "legacy": servers[1].q("SELECT version()").strip()}
    results = {}
    try:
        for server in servers:
            for label, records in (("agent", args.agent), ("fleet", args.fleet)):
                print(f"==> {server.name} ({versions[server.name]}): {label}", flush=True)
                results[(server.name, label)] = r = run_dataset(args, server, label, records, work)
                print(f"    today {r['today']['total']:.2f} B/sample, v2 {r['v2']['total']:.2f} "
                      f"({r['v2']['rows']} rows, profile {r['profile']})", flush=True)
    finally:
        chdb.terminate()
        chdb.wait()
        shutil.rmtree(work, ignore_errors=True)
    with open(args.out, "w") as f:
        for (server, label), r in results.items():
            f.write(f"\n### {label} data on ClickHouse {versions[server]} ({r['profile']} profile), "
                    f"{r['v2']['rows']:,} samples\n\n{table(r)}\n")
    m_a, m_f = results[("modern", "agent")], results[("modern", "fleet")]
    print(f"storage: v2 modern {m_a['v2']['total']:.2f} bytes/sample (agent), {m_f['v2']['total']:.2f} (fleet); "
          f"today {m_a['today']['total']:.2f}, {m_f['today']['total']:.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The dashboard benchmark's driver (bench/dashboard.sh runs it).

For each server (ClickHouse 26.9 in chdb, ClickHouse 18.16 of the stack):
  1. loads the fleet records into a v2 database and a previous-layout one
     with the storage benchmark's loader (bench/storage.py);
  2. extends the v2 tiers back in time: the 1-minute tier to 3 days and the
     1-hour tier to --days days, by copies of the loaded hour's aggregate
     rows shifted by whole hours (the states are copied, so every bucket
     holds real min/max/sum/count states of the same shape);
  3. runs every panel of three dashboards (pre-v2 and union from git, one
     tier from the working tree) at ranges ending at the data's newest
     second: pre-v2 at 1 hour only (its layout has no 1-hour tier); union
     and one tier at 1 hour, 1 day, 7 days and 90 days. Grafana's part is
     done as Grafana does it: the one-tier dashboard's variables are
     resolved by their own queries for the range, then `${var}`,
     `${__from:date:seconds}`, `${__to:date:seconds}` and the plugin's
     `$__timeFilter(col)` are expanded (tests/src/grafana/ models the
     same, with citations).
p50 of --runs runs per panel, the dashboards interleaved; rows read as
ClickHouse counts them.
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
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import storage  # noqa: E402

PRE_V2 = storage.TODAY_COMMIT  # the last dashboard before storage v2
UNION = "e08a5d8"  # the last dashboard with a UNION ALL of the tiers
DASHBOARD = storage.DASHBOARD
RANGES = [("1 h", 3600), ("1 d", 86400), ("7 d", 7 * 86400), ("90 d", 90 * 86400)]


def dashboard(commit):
    if commit:
        text = subprocess.run(["git", "show", f"{commit}:{DASHBOARD}"], capture_output=True,
                              text=True, check=True).stdout
    else:
        text = open(DASHBOARD).read()
    d = json.loads(text)
    panels = [(p["title"], t["rawSql"]) for p in d["panels"] for t in p.get("targets", [])]
    return panels, d["templating"]["list"]


def expand(sql, values, frm, to):
    """Grafana's template service, then the plugin's macros."""
    sql = sql.replace("${__from:date:seconds}", str(frm)).replace("${__to:date:seconds}", str(to))
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        sql = sql.replace("${" + name + "}", value)
        sql = re.sub(r"\$" + name + r"\b", lambda _: value, sql)
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 lambda m: f"{m.group(1)} >= toDateTime({frm}) AND {m.group(1)} <= toDateTime({to})", sql)
    if "$" in sql:
        raise RuntimeError(f"unexpanded reference in:\n{sql}")
    return sql


def fetch(server, db, sql):
    req = urllib.request.Request(server.url + "/?" + urllib.parse.urlencode({"database": db}),
                                 data=sql.encode())
    with urllib.request.urlopen(req, timeout=600) as r:
        return r.read().decode()


def run(server, db, sql, log_id=None):
    """One query: (seconds, rows out, rows read or None until the log is read)."""
    params = {"database": db}
    if log_id:
        params.update({"query_id": log_id, "log_queries": "1"})
    req = urllib.request.Request(server.url + "/?" + urllib.parse.urlencode(params), data=sql.encode())
    t = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        body = r.read()
        summary = r.headers.get("X-ClickHouse-Summary")
    elapsed = time.perf_counter() - t
    read = int(json.loads(summary)["read_rows"]) if summary else None
    return elapsed, body.count(b"\n"), read


def resolve(server, db, variables, chosen, frm, to):
    """Each variable's options from its query (the value is the first
    column); the chosen value where it is an option, else the first."""
    values = {}
    for v in variables:
        sql = expand(v["query"], values, frm, to)
        options = [line.split("\t")[0] for line in fetch(server, db, sql).splitlines()]
        values[v["name"]] = chosen.get(v["name"]) if chosen.get(v["name"]) in options else options[0]
    return values


def extend_tiers(server, db, days):
    """Shifted copies of the fullest hour of each tier, back from that hour."""
    cols = "host_id, hostname, metric, labels, min_value, max_value, sum_value, count, last_value"
    for table, bucket, copies in (("samples_1m", "minute", 72), ("samples_1h", "hour", days * 24)):
        base = server.q(f"SELECT toUInt32(toStartOfHour({bucket})) AS h FROM {db}.{table} "
                        f"GROUP BY h ORDER BY count() DESC LIMIT 1").strip()
        where = f"{bucket} >= toDateTime({base}) AND {bucket} < toDateTime({base} + 3600)"
        rows = int(server.q(f"SELECT count() FROM {db}.{table} WHERE {where}"))
        # In chunks of about a million rows: ClickHouse 18.16 builds the
        # whole cross join in memory.
        chunk = max(1, 1_000_000 // max(rows, 1))
        for first in range(0, copies, chunk):
            n = min(chunk, copies - first)
            server.q(f"INSERT INTO {db}.{table} ({bucket}, {cols}) "
                     f"SELECT toDateTime(toUInt32({bucket}) - (number + 1) * 3600), {cols} "
                     f"FROM {db}.{table} CROSS JOIN (SELECT number + {first} AS number FROM numbers({n})) AS n "
                     f"WHERE {where}")


def measure(server, cases, runs):
    """cases: key -> (db, sql). p50 seconds, rows out and rows read per key."""
    times = {k: [] for k in cases}
    out, read, ids = {}, {}, {}
    for i in range(runs + 1):  # the first round warms caches and is dropped
        for k, (db, sql) in cases.items():
            log_id = str(uuid.uuid4()) if server.name == "legacy" and i == 1 else None
            t, rows, r = run(server, db, sql, log_id)
            if i:
                times[k].append(t)
            out[k] = rows
            if r is not None:
                read[k] = r
            if log_id:
                ids[log_id] = k
    if ids:
        server.q("SYSTEM FLUSH LOGS")
        quoted = ", ".join(f"'{i}'" for i in ids)
        for line in server.q(f"SELECT query_id, read_rows FROM system.query_log "
                             f"WHERE type = 2 AND query_id IN ({quoted}) FORMAT TSV").splitlines():  # 2: QueryFinish
            qid, r = line.split("\t")
            read[ids[qid]] = int(r)
    p50 = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return p50, out, read


def bench_server(args, server, work):
    db_v2, db_today, profile = storage.load_dataset(args, server, "fleet", args.fleet, work)
    extend_tiers(server, db_v2, args.days)
    to = int(server.q(f"SELECT toUInt32(max(time)) + 1 FROM {db_v2}.samples").strip())
    host, host_id = server.q(f"SELECT hostname, any(host_id) FROM {db_v2}.samples GROUP BY hostname "
                             f"ORDER BY count() DESC LIMIT 1 FORMAT TSV").strip().split("\t")
    pre, pre_vars = dashboard(PRE_V2)
    union, _ = dashboard(UNION)
    tier, tier_vars = dashboard(None)
    titles = [t for t, _ in tier]
    res = {"profile": profile, "ranges": {}, "variables": {}}
    for label, secs in RANGES:
        frm = to - secs
        values = resolve(server, db_v2, tier_vars, {"host": host_id}, frm, to)
        cases = {}
        for title, sql in union:
            cases[("union", title)] = (db_v2, expand(sql, {"host": host}, frm, to))
        for title, sql in tier:
            cases[("tier", title)] = (db_v2, expand(sql, values, frm, to))
        if secs == 3600:
            for title, sql in pre:
                cases[("pre", title)] = (db_today, expand(sql, {"host": host}, frm, to))
        for v in tier_vars:
            cases[("var", v["name"])] = (db_v2, expand(v["query"], values, frm, to))
        p50, out, read = measure(server, cases, args.runs)
        res["ranges"][label] = {"tier": values["samples"], "p50": p50, "out": out, "read": read}
        print(f"    {label}: {values['samples']}, step {values['step']} s", flush=True)
    res["titles"] = titles
    for db in (db_v2, db_today):
        server.q(f"DROP DATABASE {db}")
    return res


def tables(res):
    ms = lambda s: f"{s * 1000:.1f}"
    one = res["ranges"]["1 h"]
    lines = ["", "At a 1-hour range (raw rows):", "",
             "| panel | pre-v2 p50 ms | one tier p50 ms | one tier / pre-v2 | union p50 ms | one tier / union |",
             "|---|---:|---:|---:|---:|---:|"]
    worst = 0
    for t in res["titles"]:
        pre, tier, union = one["p50"].get(("pre", t)), one["p50"][("tier", t)], one["p50"].get(("union", t))
        ratio = tier / pre if pre else None
        if ratio:
            worst = max(worst, ratio)
        lines.append(f"| {t} | {ms(pre) if pre else '-'} | {ms(tier)} | "
                     f"{f'{ratio:.2f}' if ratio else '-'} | {ms(union) if union else '-'} | "
                     f"{f'{tier / union:.2f}' if union else '-'} |")
    head = "| panel | " + " | ".join(f"{r} p50 ms (union) | {r} rows read | {r} rows out" for r, _ in RANGES[1:]) + " |"
    lines += ["", "Longer ranges, one tier (union p50 in brackets); rows read and returned by the one-tier query:", "",
              head, "|---|" + "---:|" * (3 * (len(RANGES) - 1))]
    for t in res["titles"]:
        cells = []
        for r, _ in RANGES[1:]:
            x = res["ranges"][r]
            u = x["p50"].get(("union", t))
            cells += [f"{ms(x['p50'][('tier', t)])} ({ms(u) if u else '-'})",
                      f"{x['read'].get(('tier', t), 0):,}", f"{x['out'][('tier', t)]:,}"]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    tiers = ", ".join(f"{r}: `{res['ranges'][r]['tier']}`" for r, _ in RANGES)
    var_ms = ", ".join(f"{r}: {ms(sum(v for k, v in res['ranges'][r]['p50'].items() if k[0] == 'var'))} ms"
                       for r, _ in RANGES)
    lines += ["", f"Tier read by range: {tiers}. The variables together (host and the six hidden ones), per range change: {var_ms}."]
    return "\n".join(lines), worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ingester", required=True)
    ap.add_argument("--rows", required=True)
    ap.add_argument("--legacy-url", required=True)
    ap.add_argument("--fleet", required=True)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="dashboard-bench-")
    chdb = subprocess.Popen([sys.executable, "tests/chdb/server.py", "--data", os.path.join(work, "chdb")],
                            stdout=subprocess.PIPE, text=True)
    m = re.match(r"listening on (\S+) \(ClickHouse (\S+)\)", chdb.stdout.readline())
    if not m:
        raise SystemExit("chdb server did not start")
    servers = [storage.Server("modern", "http://" + m.group(1)), storage.Server("legacy", args.legacy_url)]
    versions = {"modern": m.group(2), "legacy": servers[1].q("SELECT version()").strip()}
    worst = {}
    try:
        with open(args.out, "w") as f:
            for server in servers:
                print(f"==> {server.name} ({versions[server.name]})", flush=True)
                res = bench_server(args, server, work)
                text, worst[server.name] = tables(res)
                f.write(f"\n### ClickHouse {versions[server.name]} ({res['profile']} profile)\n{text}\n")
    finally:
        chdb.terminate()
        chdb.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"dashboard: one tier / pre-v2 at 1 h, worst panel {worst['modern']:.2f} (modern), "
          f"{worst['legacy']:.2f} (legacy)")


if __name__ == "__main__":
    main()

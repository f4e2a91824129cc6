"""The consumer a user would write by hand: the Python baseline of
bench/ingest-drain.sh.

It reads Spillway metrics records from a topic with confluent-kafka, decodes
them with msgpack, builds the same `samples` rows as the ingester, inserts
them with clickhouse-connect in batches of up to 200,000 rows or 1 s (the
ingester's defaults) and commits the offsets after each insert. It does what
a careful script does (manual commits after the insert, batching) and no more:
no validation, sharding, dead letters or accounting.

    python consumer.py BROKERS TOPIC GROUP CLICKHOUSE_URL DATABASE ROWS

It stops once it has inserted ROWS sample rows and prints its CPU time and
peak RSS (its own accounting, librdkafka's threads included).
"""

import resource
import sys
import time
from urllib.parse import urlparse

import clickhouse_connect
import msgpack
from confluent_kafka import Consumer, KafkaException

COLUMNS = [
    ("time", "DateTime"),
    ("time_ms", "UInt64"),
    ("host_id", "String"),
    ("hostname", "String"),
    ("metric", "String"),
    ("labels", "String"),
    ("value", "Float64"),
    ("kind", "Enum8('gauge' = 1, 'counter' = 2)"),
    ("unit", "String"),
    ("instance_id", "String"),
    ("seq", "UInt64"),
]
MAX_ROWS = 200_000
MAX_AGE = 1.0


def rows_of(record):
    if record.get("type") != "metrics":
        return []
    time_ms = record["time_ms"]
    out = []
    for s in record["samples"]:
        labels = sorted(s["labels"].items())
        out.append(
            [
                time_ms // 1000,
                time_ms,
                record["host_id"],
                record["hostname"],
                s["name"],
                ",".join(f"{k}={v}" for k, v in labels),
                s["value"],
                s["kind"],
                s["unit"],
                record["instance_id"],
                record["seq"],
            ]
        )
    return out


def main():
    brokers, topic, group, url, database, want = sys.argv[1:7]
    want = int(want)
    u = urlparse(url)
    # compress=False: ClickHouse 18.16 does not take lz4 request bodies.
    client = clickhouse_connect.get_client(
        host=u.hostname, port=u.port or 8123, database=database, compress=False
    )
    consumer = Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    rows, inserted, since = [], 0, time.monotonic()
    names = [c for c, _ in COLUMNS]
    types = [t for _, t in COLUMNS]
    while inserted < want:
        for m in consumer.consume(num_messages=1000, timeout=0.2):
            if m.error():
                raise KafkaException(m.error())
            rows.extend(rows_of(msgpack.unpackb(m.value())))
        if rows and (len(rows) >= MAX_ROWS or time.monotonic() - since >= MAX_AGE):
            # column_type_names: clickhouse-connect 0.5 cannot read 18.16's DESCRIBE.
            client.insert("samples", rows, column_names=names, column_type_names=types)
            consumer.commit(asynchronous=False)
            inserted += len(rows)
            rows, since = [], time.monotonic()
    consumer.close()
    r = resource.getrusage(resource.RUSAGE_SELF)
    print(f"python utime={r.ru_utime:.2f} stime={r.ru_stime:.2f} maxrss_kib={r.ru_maxrss}")


if __name__ == "__main__":
    main()

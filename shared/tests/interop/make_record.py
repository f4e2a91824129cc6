#!/usr/bin/env python3
"""Builds the example records of docs/record-format.md with the `msgpack`
package alone, as a third-party producer would, and writes one to stdout.

Usage: make_record.py metrics|status

It deliberately differs from the reference encoder where the spec allows:
keys in another order, an unknown extra field, the counter value as an
integer, and no `spillway` code at all.
"""
import sys

import msgpack

ORIGIN = {
    "host_id": "4c4c4544-0042-3510-8052-b4c04f4e4d32",
    "hostname": "web-1",
    "instance_id": "0b7e6f1c-5d2a-4c8e-9f3b-2a1d0c9e8f7a",
    "agent_version": "0.1.0",
}

METRICS = {
    "type": "metrics",
    "schema": 1,
    **ORIGIN,
    "seq": 42,
    "time_ms": 1763776800000,
    "interval_ms": 10000,
    "x-producer": "interop-test",  # unknown fields must be ignored
    "samples": [
        {
            "name": "system.cpu.utilization",
            "value": 0.125,
            "kind": "gauge",
            "unit": "1",
            "labels": {"cpu.mode": "user"},
        },
        {
            "name": "system.network.io",
            "value": 123456789,  # an integer is accepted for a float
            "kind": "counter",
            "unit": "By",
            "labels": {
                "network.interface.name": "eth0",
                "network.io.direction": "transmit",
            },
        },
    ],
}

STATUS = {
    "schema": 1,
    "type": "status",
    **ORIGIN,
    "time_ms": 1763776805000,
    "uptime_ms": 3600000,
    "last_seq": 42,
    "spool_bytes": 65536,
    "spool_records": 12,
    "dropped": [[3, 5], [9, 9]],
    "last_error": "broker transport failure",
}

if __name__ == "__main__":
    record = {"metrics": METRICS, "status": STATUS}[sys.argv[1]]
    sys.stdout.buffer.write(msgpack.packb(record, use_bin_type=True))

"""Fails if `make up`'s Ray head (its process group in .data/platform.json) listens beyond loopback.

The one known exception is Ray Serve's own: each replica's inter-deployment gRPC server binds
`[::]:0` (hard-coded in ray/serve/_private/replica.py, Ray 2.60); it is reported, not failed.
"""

import json
import os
import sys
from pathlib import Path

import psutil

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
pgid = json.loads(Path(".data/platform.json").read_text())["pgid"]
ours = {}
for p in psutil.process_iter(["name", "cmdline"]):
    try:
        if os.getsid(p.pid) == pgid:  # `make up` starts the head as a session of its own
            ours[p.pid] = p
    except OSError:
        pass
bad, known = [], []
for c in psutil.net_connections(kind="tcp"):
    if c.status != psutil.CONN_LISTEN or c.pid not in ours or c.laddr.ip in LOOPBACK:
        continue
    name = " ".join(ours[c.pid].info["cmdline"] or [ours[c.pid].info["name"]])[:60]
    entry = f"{c.laddr.ip}:{c.laddr.port} {name}"
    (known if c.laddr.ip in ("::", "0.0.0.0") and "ServeReplica" in name else bad).append(entry)
for entry in known:
    print(f"known exception (Serve's inter-deployment gRPC server): {entry}")
for entry in bad:
    print(f"listens beyond loopback: {entry}")
print(f"checked {len(ours)} processes of the head's process group {pgid}")
sys.exit(1 if bad else 0)

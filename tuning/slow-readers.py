#!/usr/bin/env python3
"""Slow readers against a running friday: CLIENTS clients each send one binary identity request
of MIB MiB asking for a binary output, then read the answer at RATE bytes/s. After SETTLE
seconds, prints the server's resident memory (VmRSS of PID) and how many requests were refused
(503) or cut. Usage:

    tuning/slow-readers.py URL PID [CLIENTS=24] [MIB=64] [RATE=100000] [SETTLE=5]
"""
import json, socket, sys, threading, time
from urllib.parse import urlparse

url, pid = urlparse(sys.argv[1]), int(sys.argv[2])
clients, mib, rate, settle = (int(x) for x in (sys.argv[3:] + ["24", "64", "100000", "5"][len(sys.argv) - 3:])[:4])
n = mib * (1 << 20) // 4
header = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, n],
                                 "parameters": {"binary_data_size": n * 4}}],
                     "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
body = header + bytes(n * 4)
req = (f"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
       f"Inference-Header-Content-Length: {len(header)}\r\n\r\n").encode() + body
status = {}
stop = time.monotonic() + settle

def client(i):
    s = socket.create_connection((url.hostname, url.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    try:
        s.sendall(req)
        first = s.recv(12)
        status[i] = first[9:12].decode() or "closed"
        while time.monotonic() < stop:
            got = s.recv(rate // 10)
            if not got:
                status[i] = "cut"
                break
            time.sleep(0.1)
    except OSError as e:
        status[i] = "cut" if i in status else type(e).__name__
    finally:
        time.sleep(max(0, stop - time.monotonic()) + 1)

threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
for t in threads:
    t.start()
time.sleep(settle)
rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
for t in threads:
    t.join()
counts = {}
for v in status.values():
    counts[v] = counts.get(v, 0) + 1
print(f"{clients} clients x {mib} MiB read at {rate} B/s: server RSS {rss // 1024} MiB after {settle} s; "
      f"answers {dict(sorted(counts.items()))}")

#!/usr/bin/env python3
"""Large requests next to small ones, against a running friday on 127.0.0.1:PORT: COUNT clients
each send one binary identity request of MIB MiB (binary or JSON output) at once, while a
prober sends GET /v2/health/ready on its own connection every millisecond; prints how long the
large requests took and the longest the prober waited for one answer. The prober is a process
of its own, so the clients' threads cannot hold it up (Python's GIL), and runs at real-time
priority where allowed, so that it measures the server rather than its own CPU. Usage:

    tuning/large-requests.py PORT MIB bin|json COUNT [json-in]

MIB is the tensor's size in binary layout; with `json-in` the input is sent as JSON (about
twice as many bytes on the wire) and the output asked for as binary.
"""
import json, multiprocessing, os, socket, sys, threading, time
port = int(sys.argv[1]); mib = int(sys.argv[2]); json_out = sys.argv[3] == "json"; n_large = int(sys.argv[4])
json_in = sys.argv[5:] == ["json-in"]
n = mib * (1 << 20) // 4
if json_in:
    json_out = False
    body = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, n], "data": [0.5] * n}],
                       "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    req = (f"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
else:
    header = {"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, n], "parameters": {"binary_data_size": n * 4}}]}
    if not json_out:
        header["outputs"] = [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]
    h = json.dumps(header).encode()
    body = h + bytes(n * 4)
    req = (f"POST /v2/models/identity/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nInference-Header-Content-Length: {len(h)}\r\n\r\n").encode() + body
small = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n"
def prober(stop, worst):
    try:  # Ahead of the clients on their CPU (it sleeps between probes), where allowed.
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except OSError:
        pass
    s = socket.create_connection(("127.0.0.1", port)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while not stop.is_set():
        t = time.perf_counter(); s.sendall(small); s.recv(4096); d = time.perf_counter() - t
        worst.value = max(worst.value, d); time.sleep(0.001)
def large():
    s = socket.create_connection(("127.0.0.1", port)); s.sendall(req)
    got = 0
    while True:
        b = s.recv(1 << 20)
        if not b: break
        got += len(b)
        if got > len(body) * (5 if json_out else 1): break
        if json_out and (b.endswith(b"]}]}") or b.endswith(b"\r\n0\r\n\r\n")): break
        if not json_out and got >= n * 4: break
stop = multiprocessing.Event(); worst = multiprocessing.Value("d", 0.0)
p = multiprocessing.Process(target=prober, args=(stop, worst)); p.start(); time.sleep(0.2)
t = time.perf_counter()
ls = [threading.Thread(target=large) for _ in range(n_large)]
[l.start() for l in ls]; [l.join() for l in ls]
took = time.perf_counter() - t
stop.set(); p.join()
print(f"{n_large} x {mib} MiB {'JSON' if json_in else 'binary'} in, {'JSON' if json_out else 'binary'} out: took {took*1000:.0f} ms; worst readiness wait {worst.value*1000:.1f} ms")

#!/usr/bin/env python3
"""Sends N sequential keep-alive requests of one kind (health, json or binary identity) to
friday on 127.0.0.1:PORT and reads every response: the load of tuning/alloc-per-request.sh."""
import socket, json, sys, struct
port=int(sys.argv[1]); n=int(sys.argv[2]); mode=sys.argv[3]
vals=[float(i) for i in range(16)]
if mode=="json":
    body=json.dumps({"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,16],"data":vals}]}).encode()
    req=b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"%len(body)+body
elif mode=="binary":
    data=struct.pack("<16f",*vals)
    head=json.dumps({"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,16],"parameters":{"binary_data_size":len(data)}}],"outputs":[{"name":"OUTPUT0","parameters":{"binary_data":True}}]}).encode()
    body=head+data
    req=b"POST /v2/models/identity/infer HTTP/1.1\r\nHost: t\r\nInference-Header-Content-Length: %d\r\nContent-Length: %d\r\n\r\n"%(len(head),len(body))+body
else:
    req=b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\n\r\n"
s=socket.create_connection(("127.0.0.1",port))
f=s.makefile("rb")
for i in range(n):
    s.sendall(req)
    # read one response
    line=f.readline(); cl=0
    while True:
        h=f.readline()
        if h in (b"\r\n",b""): break
        if h.lower().startswith(b"content-length"): cl=int(h.split(b":")[1])
    f.read(cl)
print("done", n, mode)

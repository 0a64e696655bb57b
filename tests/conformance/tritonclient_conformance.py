"""Conformance against a real KServe v2 client nobody here wrote: NVIDIA's tritonclient.http.

Usage: python3 tritonclient_conformance.py HOST:PORT
Exits non-zero (with the failing check) if friday disagrees with what tritonclient expects.
"""
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def infer_identity(client, binary):
    data = np.arange(16, dtype=np.float32).reshape(1, 16) * 0.25
    inp = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=binary)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
    result = client.infer("identity", [inp], outputs=[out], request_id="conf-1")
    got = result.as_numpy("OUTPUT0")
    check(got is not None and np.array_equal(got, data), f"identity echoes its input (binary={binary})")
    check(result.get_response()["id"] == "conf-1", f"identity echoes the request id (binary={binary})")
    check(result.get_response()["model_name"] == "identity", "response names the model")


def infer_large_json(client):
    # A JSON answer this large is written a slice at a time, in chunked coding.
    data = (np.arange(100_000, dtype=np.float32) * 0.25 - 7.0).reshape(1, -1)
    inp = httpclient.InferInput("INPUT0", list(data.shape), "FP32")
    inp.set_data_from_numpy(data, binary_data=True)
    out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=False)
    result = client.infer("identity", [inp], outputs=[out])
    got = result.as_numpy("OUTPUT0")
    check(got is not None and np.array_equal(got, data), "a 100k-element JSON answer arrives whole")


def infer_simple(client, binary, batch=1):
    a = np.arange(16 * batch, dtype=np.int32).reshape(batch, 16)
    b = np.full((batch, 16), 7, dtype=np.int32)
    inputs = [httpclient.InferInput("INPUT0", [batch, 16], "INT32"), httpclient.InferInput("INPUT1", [batch, 16], "INT32")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary), httpclient.InferRequestedOutput("OUTPUT1", binary_data=binary)]
    result = client.infer("simple", inputs, outputs=outputs)
    check(np.array_equal(result.as_numpy("OUTPUT0"), a + b), f"simple OUTPUT0 = INPUT0 + INPUT1 (binary={binary}, batch={batch})")
    check(np.array_equal(result.as_numpy("OUTPUT1"), a - b), f"simple OUTPUT1 = INPUT0 - INPUT1 (binary={binary}, batch={batch})")


def main():
    url = sys.argv[1]
    client = httpclient.InferenceServerClient(url=url, concurrency=4)
    check(client.is_server_live(), "server is live")
    check(client.is_server_ready(), "server is ready")
    meta = client.get_server_metadata()
    check(meta["name"] == "friday", "server metadata names friday")
    check("binary_tensor_data" in meta["extensions"], "server lists binary_tensor_data")
    for model in ("identity", "simple"):
        check(client.is_model_ready(model), f"{model} is ready")
        check(client.is_model_ready(model, "1"), f"{model} version 1 is ready")
    md = client.get_model_metadata("identity")
    check(md["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": [-1, -1]}, "identity metadata")
    md = client.get_model_metadata("simple", "1")
    check([i["name"] for i in md["inputs"]] == ["INPUT0", "INPUT1"], "simple metadata")
    cfg = client.get_model_config("identity")
    check(cfg["max_batch_size"] == 64, "identity config max_batch_size")
    cfg = client.get_model_config("simple")
    check(cfg["max_batch_size"] == 8, "simple config max_batch_size")

    before = client.get_inference_statistics("identity")["model_stats"][0]["inference_count"]
    for binary in (True, False):
        infer_identity(client, binary)
        infer_simple(client, binary)
    infer_simple(client, True, batch=3)
    # Async requests over tritonclient's connection pool.
    data = np.ones((1, 8), dtype=np.float32)
    pending = []
    for i in range(20):
        inp = httpclient.InferInput("INPUT0", [1, 8], "FP32")
        inp.set_data_from_numpy(data * i)
        pending.append((i, client.async_infer("identity", [inp])))
    for i, p in pending:
        check(np.array_equal(p.get_result().as_numpy("OUTPUT0"), data * i), f"async identity request {i}")
    after = client.get_inference_statistics("identity")["model_stats"][0]["inference_count"]
    check(after - before == 22, f"statistics count the 22 identity inferences (got {after - before})")
    infer_large_json(client)

    try:
        inp = httpclient.InferInput("INPUT0", [1, 1], "FP32")
        inp.set_data_from_numpy(np.ones((1, 1), np.float32))
        client.infer("nope", [inp])
        check(False, "unknown model raises")
    except InferenceServerException as e:
        check("unknown model" in str(e), f"unknown model raises a clear error ({e})")
    try:
        bad = httpclient.InferInput("INPUT0", [1, 2], "INT32")
        bad.set_data_from_numpy(np.ones((1, 2), np.int32))
        client.infer("identity", [bad])
        check(False, "wrong datatype raises")
    except InferenceServerException as e:
        check("expects FP32" in str(e), f"wrong datatype raises a clear error ({e})")
    client.close()
    print("tritonclient conformance: all checks passed")


if __name__ == "__main__":
    main()

"""ONNX models from a Triton-layout repository, through NVIDIA's tritonclient.http, against
references computed with numpy from the parameters the repository was written from
(tests/models/make_repository.py).

Usage: python3 repository_conformance.py HOST:PORT DIR
Exits non-zero (with the failing check) if friday disagrees.
"""
import os
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def tensor(name, array, datatype):
    t = httpclient.InferInput(name, list(array.shape), datatype)
    t.set_data_from_numpy(array)
    return t


def infer_error(client, model, inputs):
    """The error an infer request must raise, as text."""
    try:
        client.infer(model, inputs)
    except InferenceServerException as e:
        return str(e)
    raise AssertionError(f"an infer on {model} should have failed")


def linear(client, p, rows, binary):
    x = np.random.default_rng(rows).standard_normal((rows, 4)).astype(np.float32)
    inp = httpclient.InferInput("x", [rows, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("y", binary_data=binary)
    got = client.infer("linear", [inp], outputs=[out]).as_numpy("y")
    want = np.maximum(x @ p["w"] + p["b"], 0.0)
    check(got.shape == (rows, 3), f"linear answers [{rows}, 3] (binary={binary})")
    check(np.allclose(got, want, rtol=1e-5, atol=1e-5), f"linear = relu(x W + b), version 2 (rows={rows}, binary={binary})")


def addsub(client, binary):
    a = np.arange(16, dtype=np.int64).reshape(2, 8) * 1000 - 5000
    b = np.full((2, 8), 123456, dtype=np.int64)
    inputs = [httpclient.InferInput("a", [2, 8], "INT64"), httpclient.InferInput("b", [2, 8], "INT64")]
    inputs[0].set_data_from_numpy(a, binary_data=binary)
    inputs[1].set_data_from_numpy(b, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("sum", binary_data=binary), httpclient.InferRequestedOutput("diff", binary_data=binary)]
    r = client.infer("addsub", inputs, outputs=outputs)
    check(r.as_numpy("sum").dtype == np.int64 and np.array_equal(r.as_numpy("sum"), a + b), f"addsub sum, INT64 (binary={binary})")
    check(np.array_equal(r.as_numpy("diff"), a - b), f"addsub diff, INT64 (binary={binary})")


def main():
    url, out = sys.argv[1], sys.argv[2]
    p = np.load(os.path.join(out, "params.npz"))
    client = httpclient.InferenceServerClient(url=url)
    for model in ("linear", "addsub", "fixed", "identity"):
        check(client.is_model_ready(model), f"{model} is ready")
    for model in ("broken", "unsupported"):
        check(not client.is_model_ready(model), f"{model} is not served")
    check(client.is_model_ready("linear", "2"), "linear version 2 is ready")
    check(not client.is_model_ready("linear", "1"), "linear version 1 is not (latest policy)")

    md = client.get_model_metadata("linear")
    check(md["platform"] == "onnxruntime_onnx", "linear is an ONNX model")
    check(md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}], f"linear inputs from the graph ({md['inputs']})")
    check(md["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}], f"linear outputs from the graph ({md['outputs']})")
    check(client.get_model_config("linear")["max_batch_size"] == 4, "a batchable model without config gets max_batch_size 4")
    md = client.get_model_metadata("addsub")
    check([i["datatype"] for i in md["inputs"]] == ["INT64", "INT64"], "addsub declares INT64 as the graph does")
    md = client.get_model_metadata("fixed")
    check(md["inputs"][0]["shape"] == [2, 2], f"fixed keeps its fixed shape ({md['inputs'][0]['shape']})")
    check(client.get_model_config("fixed")["max_batch_size"] == 0, "a model without a dynamic first dim has no batch dim")

    for binary in (False, True):
        for rows in (1, 3):
            linear(client, p, rows, binary)
        addsub(client, binary)
    x = np.array([[1.5, -2.0], [0.25, 8.0]], dtype=np.float32)
    inp = httpclient.InferInput("x", [2, 2], "FP32")
    inp.set_data_from_numpy(x)
    check(np.array_equal(client.infer("fixed", [inp]).as_numpy("y"), 2 * x), "fixed = 2 x")

    # Concurrent requests batch together and each gets its own rows back.
    client4 = httpclient.InferenceServerClient(url=url, concurrency=8)
    pending = []
    for i in range(24):
        x = np.full((1, 4), i * 0.1, dtype=np.float32)
        inp = httpclient.InferInput("x", [1, 4], "FP32")
        inp.set_data_from_numpy(x)
        pending.append((x, client4.async_infer("linear", [inp])))
    for x, r in pending:
        want = np.maximum(x @ p["w"] + p["b"], 0.0)
        check(np.allclose(r.get_result().as_numpy("y"), want, rtol=1e-5, atol=1e-5), f"async linear row {x[0, 0]:.1f}")
    client4.close()

    # Models with a config.pbtxt.
    cfg = client.get_model_config("addsub")
    check(cfg["max_batch_size"] == 8, "config.pbtxt sets addsub's max_batch_size")
    check(cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 500, "config.pbtxt sets its queue delay")
    check(cfg["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 64, "and its queue size")
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    r = client.infer("reshaped", [tensor("x", x, "FP32")])
    check(r.as_numpy("y").shape == (3, 4) and np.array_equal(r.as_numpy("y"), 2 * x), "reshape: a [batch, 2, 2] model serves [batch, 4]")
    check(client.get_model_metadata("reshaped")["inputs"][0]["shape"] == [-1, 4], "the metadata shows the configured dims")
    x = np.ones((2, 2), dtype=np.float32)
    check(np.array_equal(client.infer("renamed", [tensor("x", x, "FP32")]).as_numpy("y"), 2 * x), "default_model_filename: 1/net.onnx serves")
    check(client.is_model_ready("pair", "1") and client.is_model_ready("pair", "2"), "version_policy latest 2 serves both versions")
    x = np.ones((1, 4), dtype=np.float32)
    for v, b in (("1", p["b1"]), ("2", p["b"])):
        got = client.infer("pair", [tensor("x", x, "FP32")], model_version=v).as_numpy("y")
        check(np.allclose(got, np.maximum(x @ p["w"] + b, 0.0), atol=1e-5), f"pair version {v} answers with its weights")
    for model in ("malformed", "mistyped", "miswarmed"):
        check(not client.is_model_ready(model), f"{model} (a bad config.pbtxt) is not served")

    e = infer_error(client, "linear", [tensor("x", np.ones((1, 5), np.float32), "FP32")])
    check("x" in e and "4" in e, f"a wrong shape raises a clear error ({e})")
    big = np.full((1, 8), 2**40, dtype=np.int64)
    e = infer_error(client, "addsub", [tensor("a", big, "INT64"), tensor("b", big, "INT64")])
    check("[400]" in e and "'a'" in e, f"an INT64 outside 32 bits is a 400 naming the input ({e})")
    e = infer_error(client, "broken", [tensor("x", np.ones((1, 4), np.float32), "FP32")])
    check("broken" in e, f"a model that failed to load is unknown ({e})")
    client.close()
    print("repository conformance: all checks passed")


if __name__ == "__main__":
    main()

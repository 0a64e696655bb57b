"""The model repository API in explicit mode, through NVIDIA's tritonclient.http: the index,
load (with a config override), reload, unload, failed loads that leave the rest serving, and the
restricted API. References are computed with numpy from the parameters the repository was
written from (tests/models/make_repository.py).

Usage: python3 model_control_conformance.py HOST:PORT DIR [HEADER=KEY]
The server runs in explicit mode with only `linear` loaded at start; with HEADER=KEY it restricts
the repository API to that header. Exits non-zero (with the failing check) if friday disagrees.
"""
import json
import os
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}")


def error_of(call):
    """The error `call` must raise, as text."""
    try:
        call()
    except InferenceServerException as e:
        return str(e)
    raise AssertionError("the call should have failed")


def linear_ref(p, x, version):
    return np.maximum(x @ p["w"] + p["b1"] + np.float32(version - 1), 0.0)


def infer_linear(client, x, version=""):
    inp = httpclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    r = client.infer("linear", [inp], model_version=version)
    return r.as_numpy("y"), r.get_response()["model_version"]


def index(client, headers):
    return {(m["name"], m.get("version", "")): m for m in client.get_model_repository_index(headers=headers)}


def main():
    url, out = sys.argv[1], sys.argv[2]
    headers = None
    p = np.load(os.path.join(out, "params.npz"))
    client = httpclient.InferenceServerClient(url=url)
    if len(sys.argv) > 3:
        name, key = sys.argv[3].split("=", 1)
        headers = {name: key}
        for call in (
            lambda: client.get_model_repository_index(),
            lambda: client.load_model("addsub"),
            lambda: client.unload_model("linear"),
            lambda: client.load_model("addsub", headers={name: key + "x"}),
        ):
            e = error_of(call)
            check("restricted" in e and name in e, f"the restricted API refuses a call without the key ({e})")
        check(client.is_model_ready("linear"), "a refused unload left linear serving")
        check(not client.is_model_ready("addsub"), "a refused load loaded nothing")

    x = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
    idx = index(client, headers)
    check(idx[("linear", "2")]["state"] == "READY", "the index lists linear version 2 as READY")
    check(idx[("addsub", "")]["state"] == "UNAVAILABLE", "the index lists addsub, not loaded, as UNAVAILABLE")
    check(("identity", "1") in idx, "the index lists the built-in models")
    ready = client.get_model_repository_index(headers=headers, query_params=None)
    check(all("state" in m for m in ready), "every index row has a state")
    check(not client.is_model_ready("addsub"), "addsub is not served before it is loaded")

    client.load_model("addsub", headers=headers)
    check(client.is_model_ready("addsub"), "load_model: addsub is ready once the call returns")
    a = np.arange(8, dtype=np.int64).reshape(1, 8)
    ins = [httpclient.InferInput("a", [1, 8], "INT64"), httpclient.InferInput("b", [1, 8], "INT64")]
    ins[0].set_data_from_numpy(a)
    ins[1].set_data_from_numpy(a * 3)
    check(np.array_equal(client.infer("addsub", ins).as_numpy("sum"), a * 4), "the loaded model answers")
    check(index(client, headers)[("addsub", "1")]["state"] == "READY", "the index says addsub 1 is READY")

    client.unload_model("addsub", headers=headers)
    check(not client.is_model_ready("addsub"), "unload_model: addsub is gone once the call returns")
    e = error_of(lambda: client.infer("addsub", ins))
    check("unknown model" in e, f"an infer on an unloaded model says it is unknown ({e})")
    row = index(client, headers)[("addsub", "")]
    check(row["state"] == "UNAVAILABLE" and row["reason"] == "unloaded", f"the index says addsub was unloaded ({row})")
    stats = client.get_inference_statistics(headers=None)["model_stats"]
    check(all(m["name"] != "addsub" for m in stats), "statistics no longer list the unloaded model")

    for model, words in (("broken", "not a valid ONNX model"), ("unsupported", "NoSuchOperator"), ("nothere", "no model folder")):
        e = error_of(lambda: client.load_model(model, headers=headers))
        check(words in e, f"loading {model} fails with the reason ({e})")
        check(not client.is_model_ready(model), f"{model} is not served")
        row = index(client, headers).get((model, ""))
        if model != "nothere":
            check(row is not None and words in row["reason"], f"the index keeps why {model} failed ({row})")
        else:
            check(row is None, "a name with no model folder leaves no index row")
    e = error_of(lambda: client.load_model("..", headers=headers))
    check("cannot name a model" in e, f"a model name that is a path is refused ({e})")
    y, v = infer_linear(client, x)
    check(v == "2" and np.allclose(y, linear_ref(p, x, 2), atol=1e-5), "failed loads left linear serving")

    # Reload with a config override: every version, and a smaller max_batch_size.
    client.load_model("linear", headers=headers, config=json.dumps({"version_policy": {"all": {}}, "max_batch_size": 2}))
    check(client.is_model_ready("linear", "1") and client.is_model_ready("linear", "2"), "version_policy all serves versions 1 and 2")
    for version in (1, 2):
        y, v = infer_linear(client, x, str(version))
        check(v == str(version) and np.allclose(y, linear_ref(p, x, version), atol=1e-5), f"version {version} answers with its own weights")
    y, v = infer_linear(client, x)
    check(v == "2", "no version named: the newest answers")
    check(client.get_model_config("linear")["max_batch_size"] == 2, "the config override's max_batch_size applies")
    e = error_of(lambda: infer_linear(client, np.zeros((3, 4), dtype=np.float32)))
    check("2" in e, f"a batch over the new max_batch_size is refused ({e})")
    check(len(client.get_model_metadata("linear")["versions"]) == 2, "the metadata lists both versions")

    # Reload without the override: back to the newest version only.
    client.load_model("linear", headers=headers)
    check(not client.is_model_ready("linear", "1"), "reloaded with the default policy, version 1 is gone")
    check(client.is_model_ready("linear", "2"), "and version 2 still serves")
    e = error_of(lambda: client.load_model("linear", headers=headers, config="{not json"))
    check("config" in e, f"a config override that is not JSON is refused ({e})")
    check(client.is_model_ready("linear", "2"), "a refused reload leaves the model serving")
    e = error_of(lambda: client.unload_model("identity", headers=headers))
    check("built-in" in e, f"a built-in model cannot be unloaded ({e})")
    print("all checks passed")


if __name__ == "__main__":
    main()

"""Writes a small Triton-layout model repository of ONNX models for friday's tests, with the
parameters the references are computed from (numpy, independently of any ONNX runtime).

Usage: python3 make_repository.py DIR [--wide] [--shrink] [--lookup]
       python3 make_repository.py DIR --linear-version N
  DIR/repository/...   the model repository
  DIR/params.npz       the weights, for the references

--linear-version N adds version N of linear to an existing DIR (its bias is b1 + N - 1), written
aside and renamed into place, so a server polling the repository never sees half a version;
with --aside it stays aside, in DIR/repository/linear/.incoming-N, for the caller to rename.

Models:
  linear       y = relu(x @ W + b), x FP32 [batch, 4] -> y FP32 [batch, 3]; versions 1 and 2
               (version v has bias b1 + v - 1; Triton's default policy serves only the newest)
  addsub       INT64 a, b [batch, 8] -> sum = a + b, diff = a - b (INT64, computed in 32 bits);
               a Triton config.pbtxt (max_batch_size 8, a queue delay, warm-up, instance_group)
  fixed        x FP32 [2, 2] -> y = 2 x, no batch dimension
  reshaped     y = 2 x on [batch, 2, 2]; its config.pbtxt serves it as [batch, 4] (reshape)
  renamed      fixed's graph in 1/net.onnx (config.pbtxt: default_model_filename)
  pair         linear's versions 1 and 2, both served (config.pbtxt: version_policy latest 2)
  broken       a model file that is not ONNX
  malformed    a config.pbtxt with a syntax error (line 3)
  mistyped     a config.pbtxt that declares linear's FP32 input as INT32
  miswarmed    linear with a model_warmup sample that gives its FP32 input as INT64
  unsupported  an operator no runtime has
  wide         y = x @ W, x FP32 [batch, 2048], W [2048, 4096]: 32 MiB of weights, for memory
               (written only with --wide)
  shrink       Shrink (lambd 0.5, bias 0.25) on x FP32 [batch, 4]: an operator rten lacks and
               ONNX Runtime has (written only with --shrink)
  lookup       y = E[ids], ids INT64 [batch, 4] -> y FP32 [batch, 4, 1024], E[i, j] = i + j / 1024
               for i < 8192: 32 MiB of weights no runtime prepacks; its config.pbtxt says
               backend "onnxruntime" (written only with --lookup)
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def save(model, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.checker.check_model(model)
    onnx.save(model, path)


def linear(w, b):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["pre"]),
            helper.make_node("Relu", ["pre"], ["y"]),
        ],
        "linear",
        [x],
        [y],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def addsub():
    a = helper.make_tensor_value_info("a", TensorProto.INT64, ["batch", 8])
    b = helper.make_tensor_value_info("b", TensorProto.INT64, ["batch", 8])
    s = helper.make_tensor_value_info("sum", TensorProto.INT64, ["batch", 8])
    d = helper.make_tensor_value_info("diff", TensorProto.INT64, ["batch", 8])
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Sub", ["a", "b"], ["diff"])],
        "addsub",
        [a, b],
        [s, d],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def fixed():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 2])
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "fixed", [x], [y], initializer=[two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def unsupported():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    node = helper.make_node("NoSuchOperator", ["x"], ["y"], domain="org.friday.test")
    graph = helper.make_graph([node], "unsupported", [x], [y])
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("org.friday.test", 1)]
    )


def shrink():
    """Shrink (lambd 0.5, bias 0.25): an ONNX operator rten lacks and ONNX Runtime has."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    node = helper.make_node("Shrink", ["x"], ["y"], lambd=0.5, bias=0.25)
    graph = helper.make_graph([node], "shrink", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def lookup():
    """A Gather from a 32 MiB table, E[i, j] = i + j / 1024 (exact in FP32)."""
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 1024])
    table = (np.arange(8192, dtype=np.float32)[:, None] + np.arange(1024, dtype=np.float32)[None, :] / 1024).astype(np.float32)
    node = helper.make_node("Gather", ["E", "ids"], ["y"], axis=0)
    graph = helper.make_graph([node], "lookup", [ids], [y], initializer=[numpy_helper.from_array(table, "E")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def doubler():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2, 2])
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "doubler", [x], [y], initializer=[two])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


ADDSUB_CONFIG = """
name: "addsub"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "a" data_type: TYPE_INT64 dims: [ 8 ] },
  { name: "b" data_type: TYPE_INT64 dims: [ 8 ] }
]
output [
  { name: "sum" data_type: TYPE_INT64 dims: [ 8 ] },
  { name: "diff" data_type: TYPE_INT64 dims: [ 8 ] }
]
dynamic_batching {
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 64 }
}
instance_group [ { count: 2 kind: KIND_CPU } ]
model_warmup [
  {
    name: "zeros"
    batch_size: 2
    inputs { key: "a" value: { data_type: TYPE_INT64 dims: [ 8 ] zero_data: true } }
    inputs { key: "b" value: { data_type: TYPE_INT64 dims: [ 8 ] random_data: true } }
  }
]
"""

RESHAPED_CONFIG = """
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] reshape: { shape: [ 2, 2 ] } } ]
"""


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def wide(w):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", w.shape[0]])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", w.shape[1]])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "wide", [x], [y], initializer=[numpy_helper.from_array(w, "W")]
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def add_linear_version(out, version, aside_only):
    p = np.load(os.path.join(out, "params.npz"))
    bias = (p["b1"] + np.float32(version - 1)).astype(np.float32)
    aside = os.path.join(out, "repository", "linear", f".incoming-{version}")
    save(linear(p["w"], bias), os.path.join(aside, "model.onnx"))
    if not aside_only:
        os.rename(aside, os.path.join(out, "repository", "linear", str(version)))
    print(f"added linear version {version}")


def main():
    out = sys.argv[1]
    if "--linear-version" in sys.argv[2:]:
        version = int(sys.argv[sys.argv.index("--linear-version") + 1])
        add_linear_version(out, version, "--aside" in sys.argv[2:])
        return
    repo = os.path.join(out, "repository")
    rng = np.random.default_rng(7)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b1 = rng.standard_normal(3).astype(np.float32)
    b2 = (b1 + 1.0).astype(np.float32)
    save(linear(w, b1), os.path.join(repo, "linear", "1", "model.onnx"))
    save(linear(w, b2), os.path.join(repo, "linear", "2", "model.onnx"))
    save(addsub(), os.path.join(repo, "addsub", "1", "model.onnx"))
    save(fixed(), os.path.join(repo, "fixed", "1", "model.onnx"))
    os.makedirs(os.path.join(repo, "broken", "1"), exist_ok=True)
    with open(os.path.join(repo, "broken", "1", "model.onnx"), "wb") as f:
        f.write(b"this is not an ONNX model")
    model = unsupported()
    path = os.path.join(repo, "unsupported", "1", "model.onnx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)  # the checker rightly refuses an unknown domain's operator
    write(os.path.join(repo, "addsub", "config.pbtxt"), ADDSUB_CONFIG)
    save(doubler(), os.path.join(repo, "reshaped", "1", "model.onnx"))
    write(os.path.join(repo, "reshaped", "config.pbtxt"), RESHAPED_CONFIG)
    save(fixed(), os.path.join(repo, "renamed", "1", "net.onnx"))
    write(os.path.join(repo, "renamed", "config.pbtxt"), 'default_model_filename: "net.onnx"\n')
    save(linear(w, b1), os.path.join(repo, "pair", "1", "model.onnx"))
    save(linear(w, b2), os.path.join(repo, "pair", "2", "model.onnx"))
    write(os.path.join(repo, "pair", "config.pbtxt"), "version_policy: { latest: { num_versions: 2 } }\n")
    save(linear(w, b1), os.path.join(repo, "malformed", "1", "model.onnx"))
    write(os.path.join(repo, "malformed", "config.pbtxt"), 'name: "malformed"\nmax_batch_size: 4\ninput [ { name: "x" data_type: TYPE_FP32 dims: [ 4 } ]\n')
    save(linear(w, b1), os.path.join(repo, "mistyped", "1", "model.onnx"))
    write(os.path.join(repo, "mistyped", "config.pbtxt"), 'input [ { name: "x" data_type: TYPE_INT32 dims: [ 4 ] } ]\n')
    save(linear(w, b1), os.path.join(repo, "miswarmed", "1", "model.onnx"))
    write(
        os.path.join(repo, "miswarmed", "config.pbtxt"),
        'model_warmup [ { name: "wrong" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_INT64 dims: [ 4 ] zero_data: true } } } ]\n',
    )
    if "--shrink" in sys.argv[2:]:
        save(shrink(), os.path.join(repo, "shrink", "1", "model.onnx"))
    if "--lookup" in sys.argv[2:]:
        save(lookup(), os.path.join(repo, "lookup", "1", "model.onnx"))
        write(os.path.join(repo, "lookup", "config.pbtxt"), 'backend: "onnxruntime"\n')
    if "--wide" in sys.argv[2:]:
        big = rng.standard_normal((2048, 4096)).astype(np.float32)
        save(wide(big), os.path.join(repo, "wide", "1", "model.onnx"))
    np.savez(os.path.join(out, "params.npz"), w=w, b=b2, b1=b1)
    print(f"wrote {repo}")


if __name__ == "__main__":
    main()

"""ONNX Runtime in Python on one thread: the median time of one batch of paraphrase-MiniLM-L3-v2
at each batch size, on the same inputs friday is benchmarked with. Run it pinned to the CPU the
friday shard used (taskset -c 0) for a like-for-like compute comparison.

  python3 tuning/minilm-ort.py MODEL.onnx INPUT.json BATCH...
prints one line per batch size: "ort batch B median_ms M"
"""
import json
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

model, data = sys.argv[1], json.load(open(sys.argv[2]))["data"]
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
for batch in [int(b) for b in sys.argv[3:]]:
    rows = [data[i % len(data)] for i in range(batch)]
    feed = {k: np.array([r[k] for r in rows], dtype=np.int64) for k in ("input_ids", "attention_mask")}
    for _ in range(3):
        sess.run(None, feed)
    times = []
    deadline = time.perf_counter() + 5
    while time.perf_counter() < deadline or len(times) < 10:
        t = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t)
    print(f"ort batch {batch} median_ms {statistics.median(times) * 1e3:.2f}")

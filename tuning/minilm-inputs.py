"""Writes a perf_analyzer-style --input-data file for paraphrase-MiniLM-L3-v2: sequence length
SEQ (default 128), realistic token ids ([CLS] 101 ... [SEP] 102, words from the vocabulary's
common range), attention mask all ones. `friday bench --input-data FILE` and perf_analyzer read it.

  python3 tuning/minilm-inputs.py [SEQ] > input.json
"""
import json
import random
import sys

seq = int(sys.argv[1]) if len(sys.argv) > 1 else 128
rng = random.Random(7)
samples = []
for _ in range(16):
    ids = [101] + [rng.randrange(1000, 30000) for _ in range(seq - 2)] + [102]
    samples.append({"input_ids": ids, "attention_mask": [1] * seq})
json.dump({"data": samples}, sys.stdout)

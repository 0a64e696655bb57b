"""A real SSE client (Python `requests`, reading the stream as it arrives) against friday's
generate extension on tinylm. Checks that tokens arrive while generation is still running (the
first event is read before the last token exists: the server still counts the stream as active),
that the last event carries `finish_reason`, and that the streamed text equals `/generate`'s for
the same seed.

usage: generate_stream_client.py HOST:PORT
"""

import json
import sys

import requests

base = f"http://{sys.argv[1]}"
model = f"{base}/v2/models/tinylm"
failures = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what)
    if not ok:
        failures.append(what)


def active_sequences():
    total = 0.0
    for line in requests.get(f"{base}/metrics", timeout=10).text.splitlines():
        if line.startswith("friday_generate_active_sequences{") and 'model="tinylm"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def events(resp):
    for line in resp.iter_lines(decode_unicode=True):
        if line.startswith("data: "):
            yield json.loads(line[len("data: "):])


request = {"text_input": "The harbor", "max_tokens": 5000, "seed": 5, "parameters": {"temperature": 0.8}}
with requests.post(f"{model}/generate_stream", json=request, stream=True, timeout=60) as resp:
    check(resp.status_code == 200, f"generate_stream answers 200 ({resp.status_code})")
    check(resp.headers.get("Content-Type") == "text/event-stream", "content type text/event-stream")
    stream = events(resp)
    first = next(stream)
    check(first.get("text_output") not in (None, ""), f"the first event carries a token: {first}")
    still_running = active_sequences()
    check(still_running >= 1, f"the first token arrived before the last was generated (active streams: {still_running})")
    texts = [first["text_output"]]
    last = first
    count = 1
    for e in stream:
        texts.append(e["text_output"])
        last = e
        count += 1
    check(last.get("finish_reason") == "length", f"the last event has finish_reason length: {last}")
    check(count == 5000, f"one event per token ({count})")

one = requests.post(f"{model}/generate", json=request, timeout=60).json()
check(one.get("finish_reason") == "length", "generate answers with finish_reason")
check("".join(texts) == one["text_output"], "the stream's text equals generate's for the same seed")
check(active_sequences() == 0, "no stream is left running")

bad = requests.post(f"{model}/generate_stream", json={"max_tokens": 3}, timeout=10)
check(bad.status_code == 400 and "text_input" in bad.json()["error"], f"a bad request gets a JSON error: {bad.text}")

if failures:
    print(f"{len(failures)} check(s) failed")
    sys.exit(1)
print("all checks passed")

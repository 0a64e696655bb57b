"""Parses Prometheus text (stdin) with the official Python client's parser and prints every
sample as JSON: [{"name": ..., "labels": {...}, "value": ...}, ...], plus each family's type.
A text the parser rejects makes this exit non-zero."""
import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": family.name,
        "type": family.type,
        "samples": [{"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples],
    })
json.dump(families, sys.stdout)

#!/usr/bin/env python3
"""Reads GET /v1/models JSON on stdin, prints the k6 MODELS spec (`name=fixture,...`).

The fixture follows each model's task: image models get shirt.png, spoken-intent models the
"turn on the lights in the kitchen" WAV, other audio models the "seven" WAV. Exits 1 when the
answer lists no model or a model whose task is unknown.
"""
import json
import sys

FIXTURES = {
    "image_classification": "shirt.png",
    "spoken_intent": "intent.wav",
    "audio_classification": "digit.wav",
}


def model_entries(doc):
    if isinstance(doc, dict):
        for key in ("models", "data", "items"):
            if isinstance(doc.get(key), list):
                return doc[key]
        # {"fashion": {...}, ...}
        if all(isinstance(v, dict) for v in doc.values()):
            return [dict(v, name=v.get("name", k)) for k, v in doc.items()]
    if isinstance(doc, list):
        return doc
    raise SystemExit(f"unexpected /v1/models answer: {json.dumps(doc)[:300]}")


def main():
    doc = json.load(sys.stdin)
    spec = []
    for m in model_entries(doc):
        name = m.get("name") or m.get("model")
        task = m.get("task")
        if not name or task not in FIXTURES:
            raise SystemExit(f"model entry without a known name/task: {json.dumps(m)[:300]}")
        spec.append(f"{name}={FIXTURES[task]}")
    if not spec:
        raise SystemExit("the server lists no model")
    print(",".join(sorted(spec)))


if __name__ == "__main__":
    main()

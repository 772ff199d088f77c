"""Random JSON schemas and prompts for the fast-forward exactness checks (the test samples
a few; benchmarks/bench_ff_exactness.py runs 200)."""

from __future__ import annotations

import random
from typing import Any

WORDS = ["name", "city", "age", "color", "size", "tags", "score", "title", "kind", "owner",
         "price", "open", "level", "note", "place", "items", "count", "status", "rank", "id"]  # fmt: skip
TOPICS = ["a cat", "a city", "a car", "a book", "a song", "a shop", "a river", "a robot",
          "a meal", "a game", "a tree", "a ship"]  # fmt: skip


def _value(rng: random.Random, depth: int) -> dict[str, Any]:
    kind = rng.choice(["string", "string", "integer", "boolean", "number", "enum", "const"]
                      + (["object", "array", "anyOf"] if depth < 2 else []))  # fmt: skip
    if kind == "string":
        return {"type": "string", "maxLength": rng.randint(4, 20)}
    if kind == "enum":
        return {"enum": rng.sample(["red", "green", "blue", "small", "large", "yes", "no"], 3)}
    if kind == "const":
        return {"const": rng.choice(["v1", "ok", "fixed value", 3])}
    if kind == "object":
        return _object(rng, depth + 1)
    if kind == "array":
        return {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3}
    if kind == "anyOf":
        return {"anyOf": [_object(rng, depth + 1), _object(rng, depth + 1)]}
    return {"type": kind}


def _object(rng: random.Random, depth: int) -> dict[str, Any]:
    keys = rng.sample(WORDS, rng.randint(1, 4))
    props = {k: _value(rng, depth) for k in keys}
    required = [k for k in keys if rng.random() < 0.8]
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}  # fmt: skip


def cases(n: int, seed: int = 0) -> list[tuple[dict[str, Any], str]]:
    """`n` (schema, user message) pairs."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        schema = _object(rng, 0)
        keys = ", ".join(schema["properties"])
        out.append((schema, f"Describe {rng.choice(TOPICS)} as JSON with {keys}."))
    return out

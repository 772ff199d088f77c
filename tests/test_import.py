"""`import llmos` stays light, and its public surface is complete."""

from __future__ import annotations

import json
import subprocess
import sys

import llmos


def test_import_pulls_no_heavy_modules() -> None:
    code = (
        "import json, sys, llmos; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} "
        "& {'torch', 'chromadb', 'llama_cpp', 'sentence_transformers', 'textual', 'langchain_core', 'fastapi', 'mcp'})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def test_public_names_resolve() -> None:
    for name in llmos.__all__:
        assert getattr(llmos, name) is not None, name


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        llmos.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("expected AttributeError")

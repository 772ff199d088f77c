"""The command line: model library errors are one clear line with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmos.cli import app
from tests.conftest import one_line_error

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def test_models_add_missing_file(tmp_path: Path) -> None:
    out = one_line_error(runner.invoke(app, ["models", "add", str(tmp_path / "none.gguf")]))
    assert "no such file" in out


def test_models_add_non_gguf(tmp_path: Path) -> None:
    p = tmp_path / "notes.gguf"
    p.write_text("hello")
    assert "not a GGUF" in one_line_error(runner.invoke(app, ["models", "add", str(p)]))


def test_models_add_truncated(tmp_path: Path, real_model_path: Path) -> None:
    p = tmp_path / "half.gguf"
    with real_model_path.open("rb") as src:
        p.write_bytes(src.read(20 << 20))
    assert "truncated" in one_line_error(runner.invoke(app, ["models", "add", str(p)]))


def test_models_add_list_info_remove(tmp_path: Path, real_model_path: Path) -> None:
    r = runner.invoke(app, ["models", "add", str(real_model_path), "--name", "mine"])
    assert r.exit_code == 0, r.output
    assert "llama Q4_1" in r.output
    r = runner.invoke(app, ["models", "list", "--json"])
    names = [e["name"] for e in json.loads(r.output)]
    assert "smollm2-135m-instruct" in names  # built in, found with no user action
    assert "mine" in names
    r = runner.invoke(app, ["models", "info", "mine", "--json"])
    assert json.loads(r.output)["quantization"] == "Q4_1"
    assert runner.invoke(app, ["models", "remove", "mine"]).exit_code == 0
    one_line_error(runner.invoke(app, ["models", "info", "mine"]))
    one_line_error(runner.invoke(app, ["models", "remove", "mine"]))


def test_models_add_bad_name(real_model_path: Path) -> None:
    out = one_line_error(
        runner.invoke(app, ["models", "add", str(real_model_path), "--name", "../x"])
    )
    assert "invalid model name" in out


def test_config_shows_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMOS_N_THREADS", "1")
    r = runner.invoke(app, ["config", "--json"])
    data = json.loads(r.output)
    assert data["n_threads"] == {"value": 1, "source": "env LLMOS_N_THREADS"}
    assert data["n_ctx"]["source"] == "default"


def test_doctor_reports_build_and_models(real_model_path: Path) -> None:
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 0, r.output
    assert "GPU offload" in r.output
    assert str(real_model_path) in r.output


def test_doctor_checks_the_configured_default_model(
    real_model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "mine.gguf"
    copy.symlink_to(real_model_path)
    monkeypatch.setenv("LLMOS_DEFAULT_MODEL", str(copy))
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 0, r.output
    assert f"default model     {copy}: {copy.resolve()}" in r.output
    monkeypatch.setenv("LLMOS_DEFAULT_MODEL", "nope")
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 1
    assert "default model     nope: unknown model 'nope'" in r.output
    # A packaged model is assembled on first use, not by the check.
    monkeypatch.setenv("LLMOS_DEFAULT_MODEL", "gemma3-270m")
    data = Path(os.environ["LLMOS_DATA_DIR"])
    before = sorted(data.rglob("*.gguf"))
    r = runner.invoke(app, ["doctor"])
    assert r.exit_code == 0, r.output
    assert "default model     gemma3-270m: " in r.output
    assert sorted(data.rglob("*.gguf")) == before


def test_run_missing_program(tmp_path: Path) -> None:
    one_line_error(runner.invoke(app, ["run", str(tmp_path / "nope.py")]))


def test_run_program_without_main(tmp_path: Path) -> None:
    p = tmp_path / "prog.py"
    p.write_text("x = 1\n")
    assert "async def main" in one_line_error(runner.invoke(app, ["run", str(p)]))


def _llmos(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llmos", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_chat_streams_an_answer(real_model_path: Path) -> None:
    r = _llmos(
        "chat",
        "What is the capital of Japan?",  # answered firmly on every CPU we've seen
        "-n",
        "24",
        "-t",
        "0",
        "--stats",
    )
    assert r.returncode == 0, r.stderr
    assert "Tokyo" in r.stdout
    assert "tok/s" in r.stderr


def test_chat_unknown_model_is_one_line(real_model_path: Path) -> None:
    r = _llmos("chat", "hi", "--model", "no-such-model")
    assert r.returncode == 2
    assert "unknown model" in r.stderr and "Traceback" not in r.stderr


def test_run_hello_example(real_model_path: Path) -> None:
    r = _llmos("run", "examples/hello.py", "Ada")
    assert r.returncode == 0, r.stderr
    assert "hello, Ada!" in r.stdout and "17*23 = 391" in r.stdout


def test_run_crashing_program(tmp_path: Path) -> None:
    p = tmp_path / "crash.py"
    p.write_text("async def main(ctx):\n    raise RuntimeError('boom')\n")
    r = _llmos("run", str(p))
    assert r.returncode == 1
    assert "RuntimeError: boom" in r.stderr


def test_a_lost_process_is_listed_and_restarted(tmp_path: Path) -> None:
    """A kernel killed mid-run leaves its process `lost`; `llmos restart` runs it again."""
    import signal
    import time

    marker = tmp_path / "started"
    prog = tmp_path / "long.py"
    prog.write_text(
        "import asyncio, pathlib\n"
        "async def main(ctx, marker):\n"
        "    m = pathlib.Path(marker)\n"
        "    if m.exists():\n"
        "        ctx.print('second run')\n"
        "        return 0\n"
        "    m.write_text('1')\n"
        "    await asyncio.sleep(600)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "llmos", "run", str(prog), str(marker)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), "the program never started"
    finally:
        first.send_signal(signal.SIGKILL)  # the kernel dies without a word
        first.wait()
    listed = _llmos("history", "--lost", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [r for r in json.loads(listed.stdout) if r["name"] == "long"]
    assert rows and rows[0]["state"] == "lost", listed.stdout
    ref = f"{rows[0]['boot']}:{rows[0]['pid']}"
    again = _llmos("restart", ref)
    assert again.returncode == 0, again.stderr
    assert "second run" in again.stdout
    after = _llmos("history", "--json")
    states = {(r["boot"], r["pid"]): r["state"] for r in json.loads(after.stdout)}
    assert states[(rows[0]["boot"], rows[0]["pid"])] == "restarted"
    assert "error: " in _llmos("restart", ref).stderr  # not lost any more: one clear line

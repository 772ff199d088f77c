"""The shipped apps (llmos/apps/shipped/: notes, summarize, sysinfo, research), installed and
run as a person would (`llmos app install --yes`, `llmos app run`) on the real default
model. The model's prose is weak at 135M parameters; what is checked is what the apps
decide themselves: the citations retrieval found, the file written, the command output
the answer is given from, and one answer per document from worker processes."""

from __future__ import annotations

import os
import platform
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from llmos.apps import SHIPPED
from llmos.apps.manifest import load_manifest
from llmos.apps.store import capability_risk, known_capabilities
from llmos.cli import app
from llmos.config import load_settings
from llmos.tools.sandbox import namespaces_available

runner = CliRunner()
APPS = ("notes", "summarize", "sysinfo", "research")


def _install(name: str) -> None:
    r = runner.invoke(app, ["app", "install", str(SHIPPED / name), "--yes"])
    assert r.exit_code == 0 and f"installed {name}" in r.output, r.output


def _approve(**policy: str) -> None:
    """The `approvals` setting, as a person would put it in their config file: without a
    terminal, `ask` (the default for high-risk syscalls) is a denial."""
    pairs = ", ".join(f'"{k.replace("_", ".")}" = "{v}"' for k, v in policy.items())
    Path(os.environ["LLMOS_CONFIG"]).write_text(f"approvals = {{{pairs}}}\n")


@pytest.mark.parametrize("name", APPS)
def test_each_manifest_asks_for_known_capabilities_with_reasons(name: str) -> None:
    m = load_manifest(SHIPPED / name)
    assert m.name == name and m.capabilities
    known = known_capabilities()
    for cap, why in m.capabilities.items():
        assert capability_risk(cap, known) is not None, cap
        assert len(why) > 10, (cap, why)


def test_notes_answers_from_a_folder_citing_the_file(
    tmp_path: Path, real_model_path: Path, minilm: Any
) -> None:
    notes = tmp_path / "garden-notes"
    notes.mkdir()
    (notes / "tomatoes.txt").write_text("The tomatoes were planted on the north bed in April.")
    (notes / "recipes.md").write_text(
        "Recipes.\n\nGrandma Ilse bakes her plum cake with cardamom every Sunday."
    )
    (notes / "car.txt").write_text("The van needs new brake pads before the trip to Porto.")
    _install("notes")

    question = ["What", "spice", "does", "Grandma", "Ilse", "put", "in", "the", "plum", "cake?"]
    r = runner.invoke(app, ["app", "run", "notes", str(notes), *question])
    assert r.exit_code == 3 and "approval_denied" in r.output, r.output  # fs.mount: high risk

    _approve(fs_mount="allow")
    r = runner.invoke(app, ["app", "run", "notes", str(notes), *question])
    assert r.exit_code == 0, r.output
    assert "3 files" in r.output, r.output
    sources = r.output.split("sources:\n", 1)[1].splitlines()
    # retrieval decides the citations: the recipe first, the unrelated notes not at all
    assert "recipes.md" in sources[0] and str(notes / "recipes.md") in sources[0], r.output
    assert "car.txt" not in r.output.split("sources:", 1)[1], r.output


def test_summarize_writes_a_summary_naming_its_source(
    tmp_path: Path, real_model_path: Path, minilm: Any
) -> None:
    from llmos.memory.fs import MemoryFS

    folder = tmp_path / "meetings"
    folder.mkdir()
    (folder / "may.md").write_text(
        "Meeting, 3 May.\n\nWe moved the launch of the Heron app to June. "
        "Priya owns the release checklist."
    )
    (folder / "budget.txt").write_text("Marketing spend is capped at 12,000 euros this quarter.")
    _install("summarize")
    _approve(fs_mount="allow")

    r = runner.invoke(app, ["app", "run", "summarize", str(folder)])
    assert r.exit_code == 0 and "wrote /home/summarize/meetings.md" in r.output, r.output
    fs = MemoryFS(load_settings().data_dir / "memory")
    text = fs.read("/home/summarize/meetings.md")
    fs.close()
    lines = text.splitlines()
    assert lines[0] == f"# Summary of {folder}", text
    mnt = lines[2].split("(read as ", 1)[1].rstrip(")")  # the host folder, mounted
    assert mnt.startswith("/mnt/summarize-meetings-") and lines[4].strip(), text
    assert f"- {mnt}/budget.txt: " in text and f"- {mnt}/may.md: " in text, text

    # a memory-FS path is read where it is: here the file that mount brought in
    r = runner.invoke(app, ["app", "run", "summarize", f"{mnt}/may.md"])
    assert r.exit_code == 0 and "wrote /home/summarize/may.md" in r.output, r.output
    fs = MemoryFS(load_settings().data_dir / "memory")
    text = fs.read("/home/summarize/may.md")
    fs.close()
    assert f"Source: {mnt}/may.md (read as {mnt}/may.md)" in text, text
    assert text.rstrip().splitlines()[-1].strip(), text

    r = runner.invoke(app, ["app", "run", "summarize", str(tmp_path / "nothing-here.md")])
    assert r.exit_code == 1 and "no such text file or folder" in r.output, r.output


@pytest.mark.skipif(not namespaces_available(), reason="shell.exec needs user namespaces")
def test_sysinfo_answers_from_commands_only_when_approved(real_model_path: Path) -> None:
    _install("sysinfo")
    question = ["How", "many", "CPUs", "does", "this", "machine", "have?"]

    # no terminal to ask, and no policy: shell.exec is denied; the app says so, exits 3
    r = runner.invoke(app, ["app", "run", "sysinfo", *question])
    assert r.exit_code == 3, r.output
    assert "not approved" in r.output and "Traceback" not in r.output, r.output

    _approve(shell_exec="allow")
    r = runner.invoke(app, ["app", "run", "sysinfo", *question])
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[lines.index("$ nproc") + 1] == str(len(os.sched_getaffinity(0))), r.output
    assert lines[lines.index("$ uname -srm") + 1].startswith(platform.system()), r.output
    assert lines[-1].startswith("answer: ") and len(lines[-1]) > len("answer: "), r.output

    _approve(shell_exec="deny")
    r = runner.invoke(app, ["app", "run", "sysinfo", *question])
    assert r.exit_code == 3 and "not approved" in r.output, r.output


def test_research_asks_each_document_in_a_worker_and_merges(real_model_path: Path) -> None:
    from llmos.memory.fs import MemoryFS

    docs = {
        "heron.md": "Project Heron. The Heron app launches in June. Priya owns the checklist.",
        "kestrel.md": "Project Kestrel. The Kestrel pipeline launches in September.",
        "osprey.md": "Project Osprey. Osprey was cancelled in March after the budget review.",
    }
    fs = MemoryFS(load_settings().data_dir / "memory")
    for name, text in docs.items():
        fs.write(f"/tmp/projects/{name}", text, user="tests")  # 0o644: anyone may read
    fs.close()
    _install("research")

    r = runner.invoke(app, ["app", "run", "research", "When does it launch?", "/tmp/projects"])
    assert r.exit_code == 0, r.output
    entries = [line for line in r.output.splitlines() if line.startswith("  [")]
    assert [e.split(": ", 1)[0] for e in entries] == [
        f"  [{i}] /tmp/projects/{name}" for i, name in enumerate(docs, 1)
    ], r.output
    assert all(e.split(": ", 1)[1].strip() for e in entries), r.output
    assert "combined: " in r.output, r.output
    assert r.output.count(" exit 0") == 3 and "workers: pid " in r.output, r.output

    db = sqlite3.connect(load_settings().data_dir / "kernel.db")
    (parent,) = db.execute("SELECT pid FROM procs WHERE name = 'research'").fetchone()
    workers = db.execute(
        "SELECT parent, exit_code, exit_reason, ended IS NOT NULL, caps FROM procs "
        "WHERE name = 'research.worker'"
    ).fetchall()
    audit = db.execute(
        "SELECT a.syscall, count(*) FROM audit a JOIN procs p ON a.boot = p.boot "
        "AND a.pid = p.pid WHERE p.name = 'research.worker' GROUP BY a.syscall"
    ).fetchall()
    db.close()
    # three children of the app's process, each ended by returning 0 (not killed, no crash)
    assert [w[:4] for w in workers] == [(parent, 0, "exit", 1)] * 3, workers
    assert all(w[4] == '["ipc", "llm.chat"]' for w in workers), workers  # only what they use
    assert dict(audit) == {"llm.chat": 3, "ipc.send": 3}, audit
    db2 = sqlite3.connect(load_settings().data_dir / "kernel.db")
    spawned = db2.execute(
        "SELECT count(*) FROM audit a JOIN procs p ON a.boot = p.boot AND a.pid = p.pid "
        "WHERE p.name = 'research' AND a.syscall = 'proc.spawn' AND a.outcome = 'ok'"
    ).fetchone()[0]
    db2.close()
    assert spawned == 3  # through proc.spawn, as the app's program research.worker

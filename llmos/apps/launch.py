"""Running an installed app: its entry as a process named after it, with exactly its grants;
its entries are also the kernel's programs `APP.ENTRY`, so it may start them as children
with `proc.spawn` (the CLI, the REST API and the shell run apps through here)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

from llmos.apps.store import InstalledApp
from llmos.kernel.loader import load_program

if TYPE_CHECKING:
    from llmos.core.process import Process
    from llmos.kernel.kernel import Kernel


def load_entries(app: InstalledApp, entry: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The entry's program and every entry as a program `APP.ENTRY`; raises ProgramError (an
    entry that does not import) or AppError (no such entry)."""
    main = load_program(app.entry_file(entry))
    programs = {f"{app.name}.{e}": load_program(app.entry_file(e)) for e in app.manifest.entries}
    return main, programs


def split_entry(app: InstalledApp, args: list[Any]) -> tuple[str | None, list[Any]]:
    """`[ENTRY] ARGS...`: the first argument is the entry when it names one."""
    if args and isinstance(args[0], str) and args[0] in app.manifest.entries:
        return args[0], args[1:]
    return None, args


# per kernel: how many runs of an app hold each APP.ENTRY program registered
_RUNS: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


async def spawn_app(
    kernel: Kernel, app: InstalledApp, main: Any, programs: dict[str, Any], args: list[Any]
) -> Process:
    """Start the app's process. Its entries are programs only while it runs: a kernel that
    outlives the run (the daemon's, the shell's) would otherwise let anyone spawn them
    later outside the app's grants; the last run of an app to end takes them away."""
    runs = _RUNS.setdefault(kernel, {})
    kernel.programs.update(programs)
    for key in programs:
        runs[key] = runs.get(key, 0) + 1

    def release() -> None:
        for key, prog in programs.items():
            runs[key] -= 1
            if runs[key] <= 0:
                del runs[key]
                if kernel.programs.get(key) is prog:
                    del kernel.programs[key]

    model = app.manifest.models[0] if app.manifest.models else None
    try:
        proc = await kernel.spawn(main, *args, name=app.name, model=model, caps=list(app.granted))
    except BaseException:
        release()
        raise

    def on_event(p: Any, event: str) -> None:
        if p.pid == proc.pid and not p.alive:
            unlisten()
            release()

    unlisten = kernel.listen(on_event)  # before the process can run: nothing awaited since
    return proc

"""Running an installed app: its entry as a process named after it, with exactly its grants;
its entries are also the kernel's programs `APP.ENTRY`, so it may start them as children
with `proc.spawn` (the CLI, the REST API and the shell run apps through here)."""

from __future__ import annotations

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


async def spawn_app(
    kernel: Kernel, app: InstalledApp, main: Any, programs: dict[str, Any], args: list[Any]
) -> Process:
    kernel.programs.update(programs)
    model = app.manifest.models[0] if app.manifest.models else None
    return await kernel.spawn(main, *args, name=app.name, model=model, caps=list(app.granted))

"""Pilot tests of the shell's `app` command: list, search, install through the grant
dialog, run, remove, on a real kernel and the real app store (the shipped `hello` app,
whose entries use only `calc` and `time.now`, so no model is needed)."""

from __future__ import annotations

from typing import Any

from textual.widgets import Checkbox

from llmos.apps import SHIPPED
from llmos.apps.store import AppStore
from llmos.shell.app import LlmosShell
from llmos.shell.screens import ConfirmScreen, GrantScreen
from tests.test_shell_commands import make_kernel, text, typed, wait_for

SIZE = (120, 40)


async def test_install_reviews_grants_then_run_and_remove(settings: Any) -> None:
    kernel = await make_kernel(settings)
    store = AppStore(settings.data_dir)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test(size=SIZE) as pilot:
        await typed(pilot, app, "app list", "no apps installed")
        await typed(pilot, app, "app search greets", "(built-in)")
        assert "hello 0.1.0" in text(app)

        # By name, from the built-in index: the dialog shows each capability, its reason
        # and risk, nothing ticked.
        await typed(pilot, app, "app install hello", "> app install hello")
        await wait_for(pilot, lambda: isinstance(app.screen, GrantScreen))
        dialog = app.screen
        assert isinstance(dialog, GrantScreen)
        asks = {a.cap: (a.reason, a.risk) for a in dialog.review.asks}
        assert asks == {
            "calc": ("adds up the numbers you give it", "low"),
            "time.now": ("tells you the time when you run its clock entry", "low"),
        }
        assert [b.value for b in dialog.query(Checkbox)] == [False, False]
        assert store.list() == []  # nothing installed while the dialog is open
        await pilot.click("#cap-0")
        await pilot.click("#cap-1")
        await pilot.click("#cap-1")  # ticked, then unticked again
        await pilot.click("#install")
        await wait_for(pilot, lambda: "installed hello 0.1.0" in text(app))
        [hello] = store.list()
        assert (hello.granted, hello.denied) == (["calc"], ["time.now"])
        assert [p.name for p in store.root.iterdir()] == ["hello"]  # no staging left

        assert await app.candidates("app r") == ("r", ["run", "remove"])
        assert await app.candidates("app run he") == ("he", ["hello"])
        await typed(pilot, app, "app list", "entries: main, clock")
        assert "granted: calc" in text(app) and "denied:  time.now" in text(app)

        # Run: a process named after the app, holding exactly its grants.
        await typed(pilot, app, "app run hello 1 2 3", "1+2+3 = 6")
        await wait_for(pilot, lambda: "exited 0]" in text(app))
        assert "hello from hello" in text(app)
        proc = max(kernel.procs.values(), key=lambda p: p.pid)
        assert (proc.name, set(proc.caps)) == ("hello", {"calc"})
        # Its entries were programs only while it ran.
        assert "hello.clock" not in kernel.programs
        await typed(pilot, app, "app run hello clock", "permission_denied")
        await wait_for(pilot, lambda: "exited 3]" in text(app))

        # Remove asks first: No keeps it, Remove removes it.
        await typed(pilot, app, "app remove hello", "> app remove hello")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: "cancelled: hello not removed" in text(app))
        assert [a.name for a in store.list()] == ["hello"]
        await typed(pilot, app, "write /home/hello/note.md hi", "wrote")
        await typed(pilot, app, "app remove hello --purge", "> app remove hello --purge")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.click("#yes")
        await wait_for(pilot, lambda: "removed hello and /home/hello" in text(app))
        assert store.list() == []
        assert not kernel.memory.exists("/home/hello")
        await typed(pilot, app, "app run hello", "no app named 'hello' is installed")
    await kernel.shutdown()


async def test_cancel_installs_nothing_and_bad_input_is_one_line(settings: Any) -> None:
    kernel = await make_kernel(settings)
    store = AppStore(settings.data_dir)
    app = LlmosShell(settings, kernel=kernel)
    async with app.run_test(size=SIZE) as pilot:
        await typed(pilot, app, f"app install {SHIPPED / 'hello'}", "> app install")
        await wait_for(pilot, lambda: isinstance(app.screen, GrantScreen))
        await pilot.click("#cap-0")
        await pilot.click("#cancel")
        await wait_for(pilot, lambda: "cancelled: hello not installed" in text(app))
        assert store.list() == []
        assert list(store.root.iterdir()) == []  # the staged copy is gone too

        # Escape cancels as well.
        await typed(pilot, app, "app install hello", "> app install hello")
        await wait_for(pilot, lambda: isinstance(app.screen, GrantScreen))
        await pilot.press("escape")
        await wait_for(pilot, lambda: text(app).count("cancelled: hello not installed") == 2)
        assert store.list() == []

        await typed(pilot, app, "app install no-such-app", "error: ")
        await typed(pilot, app, "app", "usage: app list | search")
        await typed(pilot, app, "app frobnicate", "usage: app list")
        await typed(pilot, app, "app remove nothing", "no app named 'nothing' is installed")
        assert not isinstance(app.screen, (GrantScreen, ConfirmScreen))
    await kernel.shutdown()


async def test_the_same_commands_on_a_daemon(settings: Any, tmp_path: Any) -> None:
    """`--connect URL`: the review is read here, the install is one request naming the
    grants, the run is the daemon's process, streamed back."""
    from llmos.config import load_settings
    from llmos.server import BackgroundServer, create_app
    from tests.conftest import HashEmbedder, scripted_factory

    daemon_settings = load_settings(data_dir=tmp_path / "daemon")
    server = BackgroundServer(
        create_app(daemon_settings, backend_factory=scripted_factory(), embedder=HashEmbedder())
    )
    url = server.start()
    store = AppStore(daemon_settings.data_dir)
    try:
        app = LlmosShell(settings, connect=url)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.model_ready)
            await typed(pilot, app, "app list", "no apps installed")
            await typed(pilot, app, "app search hello", "(built-in)")
            await typed(pilot, app, f"app install {SHIPPED / 'hello'}", "> app install")
            await wait_for(pilot, lambda: isinstance(app.screen, GrantScreen))
            await pilot.click("#cap-0")
            await pilot.click("#install")
            await wait_for(pilot, lambda: "installed hello 0.1.0" in text(app))
            [hello] = store.list()
            assert (hello.granted, hello.denied) == (["calc"], ["time.now"])
            await typed(pilot, app, "app run hello 4 5", "4+5 = 9")
            await wait_for(pilot, lambda: "exited 0]" in text(app))
            await typed(pilot, app, "app install hello", "hello is already installed")
            await typed(pilot, app, "app remove hello", "> app remove hello")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: "removed hello" in text(app))
            assert store.list() == []
    finally:
        server.stop()


def test_grant_dialog_snapshot(snap_compare: Any, settings: Any) -> None:
    """The grant review as it looks: reasons, risks, one box ticked."""
    import asyncio

    kernel = asyncio.run(make_kernel(settings))
    app = LlmosShell(settings, kernel=kernel)
    app.memory_probe = lambda: 100.0

    async def before(pilot: Any) -> None:
        await wait_for(pilot, lambda: app.model_ready)
        app.panel.add_class("hidden")
        await typed(pilot, app, "app install hello", "> app install hello")
        await wait_for(pilot, lambda: isinstance(app.screen, GrantScreen))
        await pilot.click("#cap-0")
        await pilot.pause()

    try:
        assert snap_compare(app, terminal_size=(120, 32), run_before=before)
    finally:
        kernel.models.close()

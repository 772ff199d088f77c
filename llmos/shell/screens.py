"""The shell's modal screens: syscall approval, an app's grant review, a yes/no question,
help, and the memory-FS browser."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Label, Static, Tree
from textual.widgets.tree import TreeNode

if TYPE_CHECKING:
    from llmos.shell.backend import AppReview

ALLOW_ONCE, ALWAYS, DENY = "once", "always", "deny"


def describe_call(name: str, values: dict[str, Any]) -> str:
    """Exactly what will run: the command line for shell.exec, else the arguments."""
    if name == "shell.exec" and "command" in values:
        extra = {k: v for k, v in values.items() if k != "command"}
        return f"$ {values['command']}" + (f"\n{json.dumps(extra, default=str)}" if extra else "")
    if name == "python.exec" and "code" in values:
        return str(values["code"])
    return json.dumps(values, indent=2, default=str)


class ApprovalScreen(ModalScreen[str]):
    """Ask the user about one syscall: allow once, always for this process, or deny."""

    DEFAULT_CSS = """
    ApprovalScreen { align: center middle; }
    #dialog { width: 72; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    #what { margin: 1 0; padding: 0 1; background: $boost; }
    #buttons { height: auto; }
    #buttons Button { margin: 0 1 0 0; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "choose('once')", "Allow once"),
        Binding("a", "choose('always')", "Always"),
        Binding("n,escape", "choose('deny')", "Deny"),
    ]

    def __init__(self, pid: int, pname: str, syscall: str, risk: str, values: dict[str, Any]):
        super().__init__()
        self.pid, self.pname, self.syscall, self.risk = pid, pname, syscall, risk
        self.values = values

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(
                f"Process {self.pid} ({self.pname}) asks to run {self.syscall} [risk {self.risk}]"
            )
            yield Static(describe_call(self.syscall, self.values), id="what", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Allow once (y)", id=ALLOW_ONCE, variant="primary")
                yield Button("Always for this process (a)", id=ALWAYS, variant="warning")
                yield Button("Deny (n)", id=DENY, variant="error")

    def on_mount(self) -> None:
        self.query_one(f"#{DENY}", Button).focus()  # Enter by reflex must not approve

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or DENY)

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)


class GrantScreen(ModalScreen[list[str] | None]):
    """Review what an app asks for before installing it, as a phone does: each capability
    with why it wants it and its risk, a checkbox each. Returns the checked capabilities
    (Install) or None (Cancel: nothing is installed)."""

    DEFAULT_CSS = """
    GrantScreen { align: center middle; }
    #grants { width: 84; height: auto; max-height: 90%; border: thick $warning; background: $surface; padding: 1 2; }
    #about { margin: 0 0 1 0; }
    #asks { height: auto; max-height: 20; }
    .ask { height: auto; }
    .why { padding: 0 0 0 4; color: $text-muted; }
    .high { color: $error; }
    #buttons { height: auto; margin: 1 0 0 0; }
    #buttons Button { margin: 0 1 0 0; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, review: AppReview) -> None:
        super().__init__()
        self.review = review

    def compose(self) -> ComposeResult:
        r = self.review
        with Vertical(id="grants"):
            yield Label(f"Install {r.name} {r.version} by {r.author or 'unknown'}?")
            yield Static(r.description, id="about", markup=False)
            if r.asks:
                yield Label("It asks for (tick what you grant):")
            else:
                yield Label("It asks for no capabilities.")
            with VerticalScroll(id="asks"):
                # Nothing ticked to begin with, as `llmos app install` asks y/N for each.
                for i, ask in enumerate(r.asks):
                    with Vertical(classes="ask"):
                        box = Checkbox(f"{ask.cap} ({ask.risk} risk)", False, id=f"cap-{i}")
                        box.tooltip = ask.reason
                        if ask.risk in ("high", "all", "unknown"):
                            box.add_class("high")
                        yield box
                        yield Static(ask.reason, classes="why", markup=False)
            with Horizontal(id="buttons"):
                yield Button("Install", id="install", variant="primary")
                yield Button("Cancel (esc)", id="cancel", variant="error")

    def on_mount(self) -> None:
        boxes = self.query(Checkbox)
        (boxes.first() if boxes else self.query_one("#cancel", Button)).focus()

    def granted(self) -> list[str]:
        """The capabilities ticked now, in the manifest's order."""
        return [
            ask.cap
            for i, ask in enumerate(self.review.asks)
            if self.query_one(f"#cap-{i}", Checkbox).value
        ]

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.granted() if event.button.id == "install" else None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question; No has the focus, so Enter by reflex changes nothing."""

    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    #confirm { width: 72; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    #buttons { height: auto; margin: 1 0 0 0; }
    #buttons Button { margin: 0 1 0 0; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "choose(True)", "Yes"),
        Binding("n,escape", "choose(False)", "No"),
    ]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm"):
            yield Static(self.question, markup=False)
            with Horizontal(id="buttons"):
                yield Button(f"{self.yes} (y)", id="yes", variant="warning")
                yield Button("Cancel (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_choose(self, yes: bool) -> None:
        self.dismiss(yes)


class HelpScreen(ModalScreen[None]):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    #help { width: 90; height: 80%; border: thick $primary; background: $surface; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,f1", "close", "Close")]

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Static(self.text, markup=False)

    def action_close(self) -> None:
        self.dismiss(None)


Lister = Callable[[str], Awaitable[list[tuple[str, bool]]]]


class FsBrowser(ModalScreen[str | None]):
    """A tree of the memory filesystem, listed lazily; choosing a file returns its path."""

    DEFAULT_CSS = """
    FsBrowser { align: center middle; }
    #browser { width: 80; height: 80%; border: thick $primary; background: $surface; }
    #fs-error { color: $error; padding: 0 1; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "close", "Close")]

    def __init__(self, lister: Lister, root: str = "/") -> None:
        super().__init__()
        self.lister = lister
        self.root = root

    def compose(self) -> ComposeResult:
        with Vertical(id="browser"):
            yield Static("", id="fs-error", markup=False)
            tree: Tree[tuple[str, bool]] = Tree(self.root, data=(self.root, True), id="fs-tree")
            yield tree

    async def on_mount(self) -> None:
        tree = self.query_one("#fs-tree", Tree)
        tree.focus()
        await self._fill(tree.root)
        tree.root.expand()

    async def _fill(self, node: TreeNode[tuple[str, bool]]) -> None:
        assert node.data is not None
        path = node.data[0]
        try:
            entries = await self.lister(path)
        except Exception as exc:  # shown in the dialog; the shell goes on
            self.query_one("#fs-error", Static).update(str(exc))
            return
        node.remove_children()
        for child, is_dir in entries:
            label = child.rstrip("/").rsplit("/", 1)[-1] + ("/" if is_dir else "")
            if is_dir:
                node.add(label, data=(child, True))
            else:
                node.add_leaf(label, data=(child, False))

    async def on_tree_node_expanded(self, event: Tree.NodeExpanded[tuple[str, bool]]) -> None:
        if event.node is not event.node.tree.root and not event.node.children:
            await self._fill(event.node)

    def on_tree_node_selected(self, event: Tree.NodeSelected[tuple[str, bool]]) -> None:
        if event.node.data is not None and not event.node.data[1]:
            self.dismiss(event.node.data[0])

    def action_close(self) -> None:
        self.dismiss(None)

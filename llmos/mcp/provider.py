"""The boot-time provider that turns the configured MCP servers' tools into syscalls. The
kernel's registry names it (`DEFAULT_PROVIDERS`), so the kernel never imports llmos.mcp;
it stays light, loading the SDK only when a server is configured (llmos/mcp/store.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from llmos.mcp.store import configured_servers

if TYPE_CHECKING:
    from llmos.kernel.kernel import Kernel


async def provide(kernel: Kernel) -> None:
    """Register the configured servers' tools as syscalls (nothing, and no SDK import,
    when none is configured)."""
    if not configured_servers(kernel.settings):
        return
    from llmos.mcp.client import register_tools

    await register_tools(kernel)

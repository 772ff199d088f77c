"""Which MCP servers a kernel uses.

Servers come from two places, merged by name: the data dir's `mcp.json`, which
`llmos mcp add` and `llmos mcp import` write (there is no writer for the TOML config file),
and the `mcp_servers` setting (config file, `LLMOS_MCP_SERVERS`), which wins for a name in
both. This module stays light: the SDK loads only when a server is configured.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llmos.config import McpServer, Settings
from llmos.errors import ConfigError, UserError

SERVERS_FILE = "mcp.json"
NAME = re.compile(r"[A-Za-z0-9_-]+")  # no dots: a syscall is mcp.NAME.TOOL


def servers_file(settings: Settings) -> Path:
    return settings.data_dir / SERVERS_FILE


def stored_servers(settings: Settings) -> dict[str, McpServer]:
    """The servers `llmos mcp add`/`import` stored (the data dir's mcp.json)."""
    path = servers_file(settings)
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {name: McpServer.model_validate(cfg) for name, cfg in raw.items()}
    except (ValueError, AttributeError, ValidationError) as exc:
        msg = " ".join(str(exc).split())
        raise ConfigError(f"{path} is not a valid MCP server list: {msg}") from None


def configured_servers(settings: Settings) -> dict[str, McpServer]:
    """Every MCP server a kernel with `settings` uses, by name."""
    return {**stored_servers(settings), **settings.mcp_servers}


def check_name(name: str) -> str:
    if not NAME.fullmatch(name):
        raise UserError(f"bad MCP server name {name!r}: letters, digits, '-' and '_' only")
    return name


def store_servers(settings: Settings, servers: dict[str, McpServer]) -> Path:
    """Add (or replace) servers in the data dir's mcp.json; returns its path."""
    for name in servers:
        check_name(name)
    merged = {**stored_servers(settings), **servers}
    path = servers_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        n: s.model_dump(exclude_defaults=True) for n, s in sorted(merged.items())
    }
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path

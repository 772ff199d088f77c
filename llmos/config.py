"""Settings in one place: typed, with defaults, overridable by `LLMOS_*` environment
variables and a TOML config file (`LLMOS_CONFIG`, else `<user config dir>/llmos/config.toml`).

Precedence, highest first: explicit keyword arguments, environment, config file, defaults.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from platformdirs import user_config_dir, user_data_dir
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from llmos.errors import ConfigError

ENV_PREFIX = "LLMOS_"


def config_file_path() -> Path:
    env = os.environ.get(f"{ENV_PREFIX}CONFIG")
    if env:
        return Path(env).expanduser()
    return Path(user_config_dir("llmos")) / "config.toml"


def _default_data_dir() -> Path:
    return Path(user_data_dir("llmos"))


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - macOS
        return max(1, os.cpu_count() or 1)


Approval = Literal["allow", "ask", "deny"]


class McpServer(BaseModel):
    """A third-party MCP server whose tools become syscalls `mcp.NAME.TOOL` (docs/MCP.md)."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] | None = Field(
        None, description="the stdio server's command line (executable, then arguments)"
    )
    url: str | None = Field(
        None, pattern=r"^https?://\S+$", description="a Streamable HTTP server's URL"
    )
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="HTTP headers for a URL server (e.g. Authorization); a value `$NAME` "
        "is read from the environment variable NAME when the server is started",
    )
    env: dict[str, str] = Field(
        default_factory=dict,
        description="environment variables for the server, over a small safe set",
    )
    approval: Approval = Field("ask", description="approval for every tool of the server")
    tools: dict[str, Approval] = Field(
        default_factory=dict, description="approval per tool name, over `approval`"
    )
    timeout_s: float = Field(30.0, gt=0, description="longest a start, listing or call may take")

    @model_validator(mode="after")
    def _one_transport(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise ValueError("give a command (a stdio server) or a url (HTTP), not both or neither")
        if self.command is not None and not self.command:
            raise ValueError("the command is empty")
        return self


class Settings(BaseSettings):
    """Every llmos setting. `llmos config` prints the effective values and their sources."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir, description="where llmos keeps its state"
    )
    default_model: str = Field(
        "smollm2-135m-instruct", description="model name used when a process names none"
    )
    n_ctx: int = Field(16384, ge=256, description="KV cells per loaded model, for all its slots")
    n_seq_max: int = Field(
        8, ge=1, le=64, description="sequence slots per loaded model (batched together)"
    )
    seq_ctx_max: int = Field(
        2048,
        ge=64,
        description="largest context of one sequence (prompt + output); at most n_ctx/n_seq_max unless kv_unified",
    )
    n_batch: int = Field(512, ge=32, description="most tokens in one decode step")
    prefill_chunk: int = Field(
        256, ge=16, description="prompt tokens a sequence may prefill in one step"
    )
    n_threads: int = Field(
        default_factory=_default_threads, ge=1, description="CPU threads for decoding"
    )
    n_gpu_layers: int = Field(0, description="layers offloaded to the GPU (-1: all)")
    main_gpu: int = Field(0, ge=0, description="GPU used for the model when offloading")
    flash_attn: Literal["auto", "on", "off"] = Field(
        "auto",
        description="flash attention (auto: llama.cpp decides, ~15% faster batches on CPU); off keeps text after prefix reuse closer to a fresh evaluation",
    )
    kv_type: Literal["f16", "q8_0", "q4_0", "f32"] = Field(
        "f16", description="KV cache element type"
    )
    kv_unified: bool = Field(
        False,
        description="one KV pool for all slots (else a fixed share each: reproducible batching)",
    )
    kv_budget_cells: int = Field(
        0, ge=0, description="KV cells the scheduler may use (0: all of n_ctx)"
    )
    ram_budget_mb: int = Field(
        4096, ge=64, description="RAM for loaded models; LRU unloads past it"
    )
    keep_alive_s: float = Field(
        300.0, ge=0, description="idle seconds before a model may be unloaded"
    )
    quantum_tokens: int = Field(32, ge=1, description="round-robin quantum, in tokens")
    aging_s: float = Field(
        2.0, gt=0, description="seconds of waiting that raise priority by one step"
    )
    prefix_min_tokens: int = Field(
        32, ge=1, description="shortest shared prompt prefix worth reusing"
    )
    speculation: Literal["auto", "on", "off"] = Field(
        "auto",
        description="draft tokens from the sequence's own context and verify them in one batch "
        "(same distribution): auto = for long prompts where the backend's batches are exact "
        "(not llama.cpp's CPU kernels); on = while it measures that it pays; a call may say",
    )
    spec_min_prompt_tokens: int = Field(
        256, ge=1, description="prompt length from which speculation is on under auto"
    )
    spec_max_draft: int = Field(8, ge=1, le=64, description="most tokens drafted per step")
    spec_batch_tokens: int = Field(
        32, ge=1, description="a step's tokens up to which drafts may be added (decodes first)"
    )
    routes: dict[str, list[str]] = Field(
        default_factory=dict,
        description='named model routes: a name (e.g. "auto") -> models, most capable first; '
        "a request naming the route gets the first that fits and is up (docs/SCALING.md)",
    )
    route_queue_limit: int = Field(
        8, ge=1, description="a route skips a remote model with this many requests waiting"
    )
    route_low_nice: int = Field(
        10, description="processes at this nice or above take a route's models smallest first"
    )
    remote_retries: int = Field(
        3, ge=0, le=10, description="retries of a remote model request that failed before any token"
    )
    remote_timeout_s: float = Field(
        120.0, gt=0, description="longest wait for a remote model's next streamed chunk"
    )
    remote_probe_s: float = Field(
        5.0, gt=0, description="seconds between health checks of a remote model marked down"
    )
    fast_forward: bool = Field(
        True,
        description="under a grammar or JSON schema, append the text the grammar forces "
        "(key names, quotes, separators) in one batch and verify it, instead of decoding it "
        "token by token (same output)",
    )
    ff_max_tokens: int = Field(
        16, ge=1, le=256, description="most forced tokens appended to a sequence per step"
    )
    max_tokens_default: int = Field(
        512, ge=1, description="max new tokens when a request names none"
    )
    keep_reaped: int = Field(
        1000, ge=0, description="ended, reaped processes kept in memory (older: SQLite only)"
    )
    chat_formats: dict[str, str] = Field(
        default_factory=dict,
        description="chat format per model name for models without a template (chatml, gemma, plain, or a file)",
    )
    approvals: dict[str, Literal["allow", "ask", "deny"]] = Field(
        default_factory=dict,
        description="approval per syscall name (allow, ask, deny); unnamed: ask for high risk",
    )
    embed_model: str = Field(
        "all-MiniLM-L6-v2", description="sentence-transformers model for memory"
    )
    chroma_url: str = Field(
        "",
        pattern=r"^(https?://\S+)?$",
        description="a Chroma server for the memory index, e.g. http://127.0.0.1:8123, that "
        'several kernels may share ("": the embedded store in the data dir; docs/DEPLOY.md)',
    )
    mount_max_file_bytes: int = Field(
        10 * 1024 * 1024,
        ge=0,
        description="largest host file a mount reads (larger: skipped as too large; 0: no cap)",
    )
    app_index: str = Field(
        "",
        description="an app index besides the built-in one, for `llmos app search` and "
        '`llmos app install NAME`: a JSON file\'s path or an http(s) URL ("": none; docs/APPS.md)',
    )
    # -- `llmos serve`: the REST daemon ------------------------------------------------
    server_host: str = Field(
        "127.0.0.1", description="address `llmos serve` binds (anything but loopback needs api_key)"
    )
    server_port: int = Field(8377, ge=0, le=65535, description="port `llmos serve` listens on")
    api_key: str | None = Field(
        None, description="bearer token the server requires and the client sends (None: no auth)"
    )
    server_max_body_bytes: int = Field(
        1 << 20, ge=1024, description="largest request body the server accepts"
    )
    server_max_tokens: int = Field(
        2048, ge=1, description="largest max_tokens one API request may ask for"
    )
    server_queue_limit: int = Field(
        64, ge=1, description="generation requests in flight before the server answers 429"
    )
    # -- `llmos mcp serve`: llmos as an MCP server ------------------------------------
    mcp_clients: dict[str, list[str]] = Field(
        default_factory=dict,
        description="capability grants per MCP client name (`llmos mcp serve --client NAME`); "
        "without --client a client gets a process's default grants",
    )
    mcp_keys: dict[str, str] = Field(
        default_factory=dict,
        description="bearer key -> MCP client name (mcp_clients): a caller of `llmos serve`'s "
        "/mcp with such a key gets that client's grants (the key opens /mcp only)",
    )
    # -- MCP servers as syscalls: llmos as an MCP client -------------------------------
    mcp_servers: dict[str, McpServer] = Field(
        default_factory=dict,
        description="MCP servers whose tools become syscalls mcp.NAME.TOOL, over those "
        "`llmos mcp add`/`import` keep in the data dir's mcp.json",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=config_file_path()),
        )

    @property
    def effective_kv_budget(self) -> int:
        return self.kv_budget_cells or self.n_ctx

    def sources(self) -> dict[str, str]:
        """Where each field's value came from: `env LLMOS_X`, `file <path>` or `default`."""
        file_values = _read_toml(config_file_path())
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            env_name = f"{ENV_PREFIX}{name.upper()}"
            if env_name in os.environ:
                out[name] = f"env {env_name}"
            elif name in file_values:
                out[name] = f"file {config_file_path()}"
            else:
                out[name] = "default"
        return out


def _read_toml(path: Path) -> dict[str, Any]:
    import tomllib

    if not path.is_file():
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def load_settings(**overrides: Any) -> Settings:
    from pydantic import ValidationError

    _read_toml(config_file_path())  # a broken file is one clear error, not a traceback
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(f"invalid setting: {exc}") from exc

"""The syscall table: typed functions registered by a decorator.

A syscall is `async def handler(ctx, *, arg: T = default, ...) -> R` decorated with
`@syscall("name", capability=..., risk=...)`. Its pydantic argument model, JSON schema,
`help` text and (for model tool calls) grammar all come from that one signature.

Dispatch: look up → validate arguments → check the caller's capabilities → approval
policy → audit → handler. Every failure is a `SyscallError` the caller can read; a
handler's unexpected exception becomes `ToolFailed`, never a kernel crash.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import json
import time
import types
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar, Literal, Protocol, get_type_hints

from pydantic import (
    BaseModel,
    ConfigDict,
    TypeAdapter,
    ValidationError,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from llmos.core.process import Process
from llmos.errors import (
    ApprovalDenied,
    BadArguments,
    PermissionDenied,
    SyscallError,
    ToolFailed,
    UnknownSyscall,
)


class Caller(Protocol):
    """What dispatch needs of a calling process's handle; `llmos.core.context.Context` is
    one. A Protocol, so the table needs nothing above it."""

    @property
    def pid(self) -> int: ...

    @property
    def process(self) -> Process: ...


Risk = Literal["low", "medium", "high"]
Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class SyscallSpec:
    name: str
    handler: Handler
    args_model: type[BaseModel]
    capability: str
    risk: Risk
    doc: str
    result: Any = Any  # the handler's return annotation: help shows it, dispatch checks it

    @cached_property
    def _result_adapter(self) -> TypeAdapter[Any] | None:
        if self.result is Any:
            return None
        try:
            return TypeAdapter(self.result)
        except Exception:  # a type pydantic can't describe: shown in help, not checked
            return None

    def schema(self) -> dict[str, Any]:
        return self.args_model.model_json_schema()

    def result_schema(self) -> dict[str, Any]:
        adapter = self._result_adapter
        if adapter is None:
            return {}
        try:
            return adapter.json_schema()
        except Exception:  # validatable but not expressible as JSON schema
            return {}

    def describe(self) -> dict[str, Any]:
        """The whole definition as data: what a tool listing or `help` shows."""
        return {
            "name": self.name,
            "doc": self.doc,
            "capability": self.capability,
            "risk": self.risk,
            "args": self.schema(),
            "result": self.result_schema(),
        }

    def check_result(self, value: Any) -> None:
        """Raise ToolFailed when a handler returns something other than its declared type."""
        adapter = self._result_adapter
        if adapter is None:
            return
        try:
            adapter.validate_python(value)
        except ValidationError as exc:
            raise ToolFailed(
                f"{self.name} returned {type(value).__name__}, not {_type_name(self.result)}: "
                f"{exc.errors()[0]['msg']}"
            ) from None

    def signature(self) -> str:
        if issubclass(self.args_model, SchemaArgs):  # no fields: the schema's properties
            schema = self.schema()
            required = set(schema.get("required", ()))
            props = schema.get("properties", {})
            return (
                f"{self.name}("
                + ", ".join(
                    f"{k}: {v.get('type', 'any') if isinstance(v, dict) else 'any'}"
                    + ("" if k in required else " = ...")
                    for k, v in props.items()
                )
                + ")"
            )
        parts = []
        for fname, f in self.args_model.model_fields.items():
            ann = getattr(f.annotation, "__name__", None) or str(f.annotation).replace(
                "typing.", ""
            )
            parts.append(fname + ": " + ann + ("" if f.is_required() else f" = {f.default!r}"))
        return f"{self.name}({', '.join(parts)})"

    def help(self) -> str:
        returns = "" if self.result is Any else f" -> {_type_name(self.result)}"
        text = (
            f"{self.signature()}{returns}  [cap {self.capability}, risk {self.risk}]\n  {self.doc}"
        )
        if result := self.result_schema():
            text += "\n  returns " + json.dumps(result, separators=(",", ":"))
        return text


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _hints(fn: Handler) -> dict[str, Any]:
    """The handler's resolved annotations; one that can't be resolved (a name that exists
    only under TYPE_CHECKING, say) counts as Any rather than failing the registration."""
    try:
        return get_type_hints(fn, include_extras=True)  # keep Field(...) constraints
    except Exception:
        pass
    out: dict[str, Any] = {}
    for key, ann in getattr(fn, "__annotations__", {}).items():
        probe = types.SimpleNamespace(__annotations__={key: ann})
        try:
            out[key] = get_type_hints(probe, fn.__globals__, include_extras=True)[key]
        except Exception:
            out[key] = Any
    return out


def syscall(
    name: str, *, capability: str | None = None, risk: Risk = "low"
) -> Callable[[Handler], Handler]:
    """Declare a syscall. The handler's first parameter is the caller's `ctx`."""

    def wrap(fn: Handler) -> Handler:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"syscall {name} must be an async function")
        hints = _hints(fn)
        params = list(inspect.signature(fn).parameters.values())[1:]
        fields: dict[str, Any] = {}
        for p in params:
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise TypeError(f"syscall {name}: *args/**kwargs are not allowed")
            ann = hints.get(p.name, Any)
            fields[p.name] = (ann, ... if p.default is p.empty else p.default)
        model = create_model(  # type: ignore[call-overload]
            "Args_" + name.replace(".", "_"), __config__=ConfigDict(extra="forbid"), **fields
        )
        doc = inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0].replace("\n", " ")
        result = hints.get("return", Any)
        spec = SyscallSpec(name, fn, model, capability or name, risk, doc, result)
        fn.__syscall__ = spec  # type: ignore[attr-defined]
        return fn

    return wrap


class SchemaArgs(BaseModel):
    """Arguments checked against a JSON schema instead of typed fields, for a syscall defined
    at run time from a schema (an MCP server's tool): validation is the schema's own (the
    `jsonschema` package), and the schema is what `schema()`, `help` and the grammar show.
    A subclass per syscall sets `json_schema`."""

    model_config = ConfigDict(extra="allow")
    json_schema: ClassVar[dict[str, Any]] = {"type": "object"}

    @model_validator(mode="before")
    @classmethod
    def _check(cls, data: Any) -> Any:
        from jsonschema.validators import validator_for

        schema = cls.json_schema
        validator = validator_for(schema)(schema)
        problems = [
            (".".join(str(p) for p in e.absolute_path) + ": " if e.absolute_path else "")
            + e.message
            for e in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.path)))
        ]
        if problems:  # a template of its own: a message may hold braces
            raise PydanticCustomError(
                "json_schema", "{problems}", {"problems": "; ".join(problems)}
            )
        return data

    @classmethod
    def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return copy.deepcopy(cls.json_schema)


def schema_spec(
    name: str,
    handler: Handler,
    schema: dict[str, Any],
    *,
    doc: str,
    capability: str | None = None,
    risk: Risk = "low",
) -> SyscallSpec:
    """A syscall defined at run time by a JSON schema of its arguments, to register with
    `SyscallTable.register`; the handler is `async def handler(ctx, **args)`."""
    model = type(
        "Args_" + name.replace(".", "_"),
        (SchemaArgs,),
        {"json_schema": copy.deepcopy(schema), "__module__": __name__},
    )
    return SyscallSpec(name, handler, model, capability or name, risk, doc)


def specs_in(objects: Iterable[Any]) -> list[SyscallSpec]:
    """The syscall specs found on functions (or in modules' namespaces)."""
    out: list[SyscallSpec] = []
    for obj in objects:
        items = vars(obj).values() if inspect.ismodule(obj) else [obj]
        out.extend(
            spec
            for item in items
            if isinstance(spec := getattr(item, "__syscall__", None), SyscallSpec)
        )
    return out


def capability_allows(grants: Iterable[str], capability: str, resource: str | None = None) -> bool:
    """Grants look like `llm.*`, `proc.ps`, `fs.read:/home/self/**`, or `*`."""
    from fnmatch import fnmatchcase

    for g in grants:
        cap, _, res = g.partition(":")
        if not fnmatchcase(capability, cap):
            continue
        if not res or resource is None or fnmatchcase(resource, res):
            return True
    return False


Approver = Callable[[Any, SyscallSpec, dict[str, Any]], Awaitable[bool]]  # (ctx: a Caller, ...)
Policy = Literal["allow", "ask", "deny"]


@dataclass
class AuditRecord:
    pid: int | None
    name: str
    outcome: str
    duration_s: float
    args_digest: str


class AuditScope:
    """Times a call and writes its audit row when it ends: the outcome is "ok", a typed
    error's kind, "cancelled", or an unexpected exception's class name."""

    __slots__ = ("args", "audit", "name", "pid", "t0")

    def __init__(
        self, audit: Callable[[AuditRecord], None] | None, pid: int | None, name: str, args: Any
    ) -> None:
        self.audit, self.pid, self.name, self.args = audit, pid, name, args
        self.t0 = 0.0

    def __enter__(self) -> AuditScope:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, typ: Any, exc: BaseException | None, tb: Any) -> None:
        if self.audit is None:
            return
        if exc is None:
            outcome = "ok"
        elif isinstance(exc, SyscallError):
            outcome = exc.kind
        elif isinstance(exc, asyncio.CancelledError):
            outcome = "cancelled"
        else:
            outcome = type(exc).__name__
        took = time.perf_counter() - self.t0
        self.audit(AuditRecord(self.pid, self.name, outcome, took, args_digest(self.args)))


@dataclass
class SyscallTable:
    specs: dict[str, SyscallSpec] = field(default_factory=dict)
    approver: Approver | None = None  # None: "ask" means deny (nobody is interactive)
    audit: Callable[[AuditRecord], None] | None = None
    # Approval per syscall name; unnamed ones: "ask" when risk is high, else "allow".
    policy: dict[str, Policy] = field(default_factory=dict)

    def policy_for(self, spec: SyscallSpec) -> Policy:
        return self.policy.get(spec.name, "ask" if spec.risk == "high" else "allow")

    def register(self, spec: SyscallSpec | Handler) -> SyscallSpec:
        s = spec if isinstance(spec, SyscallSpec) else getattr(spec, "__syscall__", None)
        if not isinstance(s, SyscallSpec):
            raise TypeError(f"{spec!r} is not a syscall")
        if s.name in self.specs and self.specs[s.name].handler is not s.handler:
            raise ValueError(f"syscall {s.name!r} is already registered")
        self.specs[s.name] = s
        return s

    def unregister(self, name: str) -> None:
        """Take a syscall out of the table (a run-time one whose provider closed)."""
        self.specs.pop(name, None)

    def get(self, name: str) -> SyscallSpec:
        spec = self.specs.get(name)
        if spec is None:
            raise UnknownSyscall(f"unknown syscall {name!r}")
        return spec

    def names(self) -> list[str]:
        return sorted(self.specs)

    def validate(self, name: str, args: dict[str, Any]) -> tuple[SyscallSpec, dict[str, Any]]:
        spec = self.get(name)
        if not isinstance(args, dict):
            raise BadArguments(f"{name}: arguments must be an object, got {type(args).__name__}")
        try:
            model = spec.args_model.model_validate(args)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(x) for x in e['loc']) or 'args'}: {e['msg']}" for e in exc.errors()
            )
            raise BadArguments(f"{name}: {problems}") from None
        values = {k: getattr(model, k) for k in spec.args_model.model_fields}
        values.update(model.model_extra or {})  # a schema-defined syscall's (SchemaArgs)
        return spec, values

    async def dispatch(self, ctx: Caller, name: str, args: dict[str, Any]) -> Any:
        with AuditScope(self.audit, ctx.pid, name, args):
            spec, values = self.validate(name, args)
            if not capability_allows(ctx.process.caps, spec.capability):
                raise PermissionDenied(
                    f"process {ctx.pid} lacks capability {spec.capability!r} for {name}"
                )
            if (spec.risk == "high" or self.policy) and not await self._approve(ctx, spec, values):
                raise ApprovalDenied(f"{name} needs approval and was not approved")
            await ctx.process.wait_runnable()
            try:
                value = await spec.handler(ctx, **values)
                spec.check_result(value)
                return value
            except (SyscallError, asyncio.CancelledError):
                raise
            except Exception as exc:  # a tool bug is the caller's observation, not a crash
                raise ToolFailed(f"{name} failed: {type(exc).__name__}: {exc}") from exc

    async def _approve(self, ctx: Caller, spec: SyscallSpec, values: dict[str, Any]) -> bool:
        pol = self.policy_for(spec)
        if pol != "ask":
            return pol == "allow"
        if self.approver is None:  # nobody interactive to ask: deny
            return False
        return await self.approver(ctx, spec, values)


def args_digest(args: Any) -> str:
    """A short digest of a call's arguments for the audit log (the arguments stay out of it)."""
    import hashlib
    import json

    try:
        raw = json.dumps(args, sort_keys=True, default=str)
    except (TypeError, ValueError):
        raw = repr(args)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]

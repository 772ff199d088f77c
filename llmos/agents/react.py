"""The ReAct agent: think in tool calls, one JSON action per step.

Each step the model emits exactly one action, constrained by a JSON schema (turned into a
grammar in llama.cpp's sampler) that is the union of the process's permitted syscalls plus
`finish`:

    {"action": "calc", "args": {"expression": "17*23"}}
    {"action": "finish", "answer": "391"}

Because the grammar only admits permitted tool names with their own argument shapes, even
a 135M model emits a call the kernel can dispatch. Arguments the model gets wrong anyway
(a bad value, a tool error, a denied permission) come back as the next observation, never
as a crash. The whole transcript goes to the process's stdout and its log on disk.

The step logic is sans-I/O (`ReActState`): it turns model text into an action and results
into observations, so it is tested without a model or a kernel.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from llmos.core.context import Context
from llmos.core.syscall import SyscallSpec, SyscallTable, capability_allows
from llmos.errors import SyscallError

FINISH = "finish"

SYSTEM = """You solve tasks with tools. Answer with one JSON object.
Tools:
{tools}
- finish(answer: str): the final answer"""

# One worked example as earlier turns: a small model copies a shown exchange far more
# reliably than it follows a described format.
EXAMPLE = [
    {"role": "user", "content": "What is 6*7?"},
    {"role": "assistant", "content": '{"action": "calc", "args": {"expression": "6*7"}}'},
    {"role": "user", "content": "Observation: 42"},
    {"role": "assistant", "content": '{"action": "finish", "answer": "42"}'},
]
# The final answer is one line of plain text (no braces or control characters) that starts
# with a letter or digit: a small model otherwise "answers" with punctuation such as ";;;".
ANSWER_PATTERN = r"^-?[A-Za-z0-9][^{}\\\n\r\t\"]*$"


def permitted_tools(
    table: SyscallTable, caps: frozenset[str], names: list[str] | None = None
) -> list[SyscallSpec]:
    """Syscalls an agent with `caps` may call as tools (not llm.*: the agent is the model)."""
    out = []
    for name in names if names is not None else table.names():
        spec = table.get(name)
        if spec.name.startswith("llm.") or not capability_allows(caps, spec.capability):
            continue
        out.append(spec)
    return out


def _bounded(schema: Any) -> Any:
    """A copy of a JSON schema for the grammar: no titles, no length counts (a count
    becomes one nested rule per character; max_tokens bounds a step's length instead)."""
    if isinstance(schema, dict):
        skip = {"title", "maxLength", "minLength", "description"}
        return {k: _bounded(v) for k, v in schema.items() if k not in skip}
    if isinstance(schema, list):
        return [_bounded(v) for v in schema]
    return schema


_FINISH_VARIANT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "action": {"const": FINISH},
        "answer": {"type": "string", "pattern": ANSWER_PATTERN},
    },
    "required": ["action", "answer"],
    "additionalProperties": False,
}


def action_schema(specs: list[SyscallSpec], *, finish: bool = True) -> dict[str, Any]:
    """The JSON schema of one action: any permitted tool with its own args, or finish."""
    variants: list[dict[str, Any]] = []
    for spec in specs:
        args = _bounded(copy.deepcopy(spec.schema()))
        args.setdefault("type", "object")
        args["additionalProperties"] = False
        args.setdefault("properties", {})
        variants.append(
            {
                "type": "object",
                "properties": {"action": {"const": spec.name}, "args": args},
                "required": ["action", "args"],
                "additionalProperties": False,
            }
        )
    if finish or not variants:
        variants.append(_FINISH_VARIANT)
    schema: dict[str, Any] = {"anyOf": variants}
    defs = {}
    for spec in specs:
        defs.update(_bounded(spec.schema().get("$defs", {})))
    if defs:
        schema["$defs"] = defs
    return schema


def tool_lines(specs: list[SyscallSpec]) -> str:
    return "\n".join(f"- {s.signature()}: {s.doc}" for s in specs)


@dataclass
class Action:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    answer: str | None = None


@dataclass
class ReActState:
    """The conversation and step logic, with no I/O."""

    task: str
    specs: list[SyscallSpec]
    max_steps: int = 6
    messages: list[dict[str, str]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.messages:
            self.messages = [
                {"role": "system", "content": SYSTEM.format(tools=tool_lines(self.specs))},
                *EXAMPLE,
                {"role": "user", "content": self.task},
            ]

    @property
    def exhausted(self) -> bool:
        return len(self.steps) >= self.max_steps

    def parse(self, text: str) -> Action | dict[str, Any]:
        """The model's reply as an action, or an error observation to send back."""
        self.messages.append({"role": "assistant", "content": text.strip()})
        try:
            obj = json.loads(text, strict=False)  # a raw newline inside a string is fine
        except json.JSONDecodeError as exc:
            return {"ok": False, "error": "invalid_json", "message": f"not JSON: {exc.msg}"}
        if not isinstance(obj, dict) or not isinstance(obj.get("action"), str):
            return {"ok": False, "error": "invalid_action", "message": "need an object with action"}
        name = obj["action"]
        if name == FINISH:
            return Action(FINISH, answer=str(obj.get("answer", "")))
        if name not in {s.name for s in self.specs}:
            return {"ok": False, "error": "unknown_tool", "message": f"no tool {name!r}"}
        args = obj.get("args", {})
        return Action(name, args if isinstance(args, dict) else {"_": args})

    def observe(self, action: Action | None, observation: dict[str, Any]) -> str:
        """Record a step's observation; returns the text the model reads next."""
        self.steps.append(
            {
                "action": None if action is None else {"name": action.name, "args": action.args},
                "observation": observation,
            }
        )
        if observation.get("ok"):
            text = f"Observation: {json.dumps(observation['result'], default=str)}"
        else:
            text = f"Observation: error {observation.get('error')}: {observation.get('message')}"
        self.messages.append({"role": "user", "content": text})
        return text


async def react_program(
    ctx: Context,
    task: str,
    tools: list[str] | None = None,
    max_steps: int = 6,
    seed: int = 0,
    act_first: bool = True,
    constrained: bool = True,
) -> dict[str, Any]:
    """Solve `task` with the permitted tools, one constrained JSON action per step.

    With `act_first` the first step's grammar leaves out `finish`: the agent must consult a
    tool before it answers (a small model otherwise tends to "answer" by echoing the task).
    `constrained=False` drops the grammar (free text parsed as JSON): the baseline that
    benchmarks/bench_react.py measures the grammar against."""
    specs = permitted_tools(ctx.kernel.syscalls, ctx.process.caps, tools)
    state = ReActState(task, specs, max_steps=max_steps)
    schema = action_schema(specs)
    first_schema = action_schema(specs, finish=False) if act_first else schema
    ctx.print(f"[task] {task}")
    while not state.exhausted:
        reply = await ctx.sys.llm.chat(
            messages=state.messages, temperature=0.0, seed=seed, max_tokens=160,
            json_schema=(schema if state.steps else first_schema) if constrained else None,
            stream=False,
        )  # fmt: skip
        ctx.print(f"[step {len(state.steps) + 1}] {reply.text.strip()}")
        parsed = state.parse(reply.text)
        if isinstance(parsed, Action) and parsed.name == FINISH:
            ctx.print(f"[answer] {parsed.answer}")
            return {"answer": parsed.answer, "steps": state.steps, "messages": state.messages}
        if isinstance(parsed, Action):
            try:
                result = await ctx.call(parsed.name, parsed.args)
                if hasattr(result, "model_dump"):
                    result = result.model_dump()
                obs: dict[str, Any] = {"ok": True, "result": result}
            except SyscallError as exc:  # bad args, denied, tool failed: the model reads it
                obs = exc.to_observation()
            ctx.print(state.observe(parsed, obs))
        else:
            ctx.print(state.observe(None, parsed))
    ctx.print(f"[gave up after {max_steps} steps]")
    ctx.process.result = {
        "answer": None,
        "steps": state.steps,
        "messages": state.messages,
        "error": "step limit",
    }
    raise SystemExit(3)

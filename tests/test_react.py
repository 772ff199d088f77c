"""The ReAct agent: step logic without a model, scripted runs, and the real 135M model."""

from __future__ import annotations

import json
from typing import Any

from llmos.agents.react import FINISH, Action, ReActState, action_schema, react_program
from llmos.kernel.kernel import Kernel
from llmos.tools.basic import calc
from tests.conftest import scripted_factory


def test_state_parses_actions_and_errors() -> None:
    st = ReActState("t", [calc.__syscall__])
    a = st.parse('{"action": "calc", "args": {"expression": "1+2"}}')
    assert isinstance(a, Action) and a.args == {"expression": "1+2"}
    assert st.parse("not json")["error"] == "invalid_json"  # type: ignore[index]
    assert st.parse('{"action": "rm"}')["error"] == "unknown_tool"  # type: ignore[index]
    f = st.parse('{"action": "finish", "answer": "3"}')
    assert isinstance(f, Action) and f.name == FINISH and f.answer == "3"
    assert st.observe(a, {"ok": True, "result": 3}) == "Observation: 3"  # type: ignore[arg-type]
    assert "bad_arguments" in st.observe(None, {"ok": False, "error": "bad_arguments"})
    assert len(st.steps) == 2


def scripted_replies(*replies: str) -> Any:
    """A responder answering each turn with the next reply (by count of observations)."""

    def respond(conversation: str) -> str:
        turn = conversation.count("Observation:") - 1  # the worked example has one
        return replies[min(turn, len(replies) - 1)]

    return respond


async def test_bad_args_come_back_as_an_observation(settings: Any) -> None:
    replies = scripted_replies(
        '{"action": "calc", "args": {"expr": "17*23"}}',
        '{"action": "calc", "args": {"expression": "17*23"}}',
        '{"action": "finish", "answer": "391"}',
    )
    async with Kernel(settings, backend_factory=scripted_factory(responder=replies)) as k:
        p = await k.spawn(react_program, "What is 17*23?")
        assert await k.wait(p.pid) == 0, p.error
    steps = p.result["steps"]
    assert steps[0]["observation"]["error"] == "bad_arguments"
    assert steps[1]["observation"] == {"ok": True, "result": 391}
    assert p.result["answer"] == "391"
    log = p.stdout.getvalue()
    assert "Observation: error bad_arguments" in log and "[answer] 391" in log
    assert p.log_path is not None and "[answer] 391" in p.log_path.read_text()


async def test_step_limit_and_denied_tools(settings: Any) -> None:
    replies = scripted_replies('{"action": "shell.exec", "args": {"command": "ls"}}')
    async with Kernel(settings, backend_factory=scripted_factory(responder=replies)) as k:
        p = await k.spawn(react_program, "list files", None, 3)
        assert await k.wait(p.pid) == 3
    assert p.result["error"] == "step limit" and len(p.result["steps"]) == 3
    # shell.exec is not among this process's tools (no capability): the model is told so
    assert all(s["observation"]["error"] == "unknown_tool" for s in p.result["steps"])


async def test_grammar_is_the_union_of_permitted_syscalls(scripted_kernel: Kernel) -> None:
    from llmos.agents.react import permitted_tools

    k = scripted_kernel
    names = [s.name for s in permitted_tools(k.syscalls, frozenset({"calc", "time.*", "llm.*"}))]
    assert names == ["calc", "time.now"]  # not llm.*: the agent is the model
    schema = action_schema(permitted_tools(k.syscalls, frozenset({"*"})))
    actions = [v["properties"]["action"]["const"] for v in schema["anyOf"]]
    assert "shell.exec" in actions and actions[-1] == FINISH
    first = action_schema(permitted_tools(k.syscalls, frozenset({"calc"})), finish=False)
    assert [v["properties"]["action"]["const"] for v in first["anyOf"]] == ["calc"]
    json.dumps(schema)


def test_answer_must_start_with_a_letter_or_digit() -> None:
    import re

    from llmos.agents.react import ANSWER_PATTERN

    for good in ["391", "-12", "The answer is 391.", "x"]:
        assert re.fullmatch(ANSWER_PATTERN, good), good
    for bad in ["", ";;;", ";", " 391", "{391}", "a\nb", '"391"']:
        assert not re.fullmatch(ANSWER_PATTERN, bad), bad


async def test_real_model_computes_with_calc(real_kernel: Kernel) -> None:
    """The 135M model, held to the action grammar, must call calc and report its result.

    The last two phrasings used to end in answers such as ";;;" before the answer's grammar
    required a letter or digit first (benchmarks/bench_react.py measures the rate)."""
    tasks = [
        ("What is 17*23?", 391),
        ("What is 17 times 23?", 391),
        ("Compute 22 + 66.", 88),
        ("Calculate 41 * 22.", 902),
    ]
    procs = [await real_kernel.spawn(react_program, t) for t, _ in tasks]  # batched together
    for p, (_, want) in zip(procs, tasks, strict=True):
        assert await real_kernel.wait(p.pid) == 0, p.stdout.getvalue()
        steps = p.result["steps"]
        calls = [s for s in steps if s["action"] and s["action"]["name"] == "calc"]
        assert calls and calls[-1]["observation"] == {"ok": True, "result": want}, steps
        assert str(want) in p.result["answer"], p.result["answer"]

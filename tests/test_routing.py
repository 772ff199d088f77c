"""Routes by the request's needs (kernel/routing.py): the policy alone, on its inputs, and a
kernel whose route holds a remote model (a real `llmos serve` over the scripted model, on
loopback) and the local one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmos.config import load_settings
from llmos.errors import GenerationError, InvalidGrammar, UserError
from llmos.kernel.kernel import Kernel
from llmos.kernel.models import DEFAULT_MODEL, ModelLibrary
from llmos.kernel.remote import remote_meta
from llmos.kernel.routing import Fit, Needs, NoModelFits, choose, unmet
from tests.conftest import scripted_factory
from tests.test_server import serve_scripted


def pick(fits: dict[str, Fit], needs: Needs, nice: int = 0) -> tuple[list[str], str]:
    return choose("auto", list(fits), fits, needs, nice=nice, low_nice=10, queue_limit=4)


def test_a_model_that_cannot_serve_the_request_is_left_out() -> None:
    big, small = Fit(ctx=8192, grammar=None), Fit(ctx=2048)
    fits = {"big": big, "small": small}
    assert pick(fits, Needs(tokens=3000, estimated=True), nice=10) == (
        ["big"],
        "route auto: big (nice 10: smallest first); skipped small (context 2048 < ~3000 tokens)",
    )
    assert pick(fits, Needs(tokens=100), nice=10)[0] == ["small", "big"]
    # a grammar not known to be followed is passed through; one known ignored is not
    assert pick(fits, Needs(tokens=100, grammar=True))[0] == ["big", "small"]
    fits["big"] = Fit(ctx=8192, grammar=False, json_schema=False)
    order, why = pick(fits, Needs(tokens=100, grammar=True))
    assert order == ["small"] and why.endswith("skipped big (does not follow grammars)")
    assert pick(fits, Needs(tokens=100, json_schema=True))[0] == ["small"]
    assert unmet(Needs(tokens=10, chat=True), Fit(ctx=64, chat=False)) == "no chat format"
    assert unmet(Needs(tokens=65), Fit(ctx=64)) == "context 64 < 65 tokens"
    assert unmet(Needs(tokens=10), Fit(ctx=0, absent=True)) == "not in the catalog"


def test_needs_come_before_availability_and_none_fitting_says_why() -> None:
    fits = {"big": Fit(ctx=8192, down="HTTP 503"), "small": Fit(ctx=2048, waiting=4)}
    # down and full models are tried last, in order; unfit ones are never tried
    assert pick(fits, Needs(tokens=10)) == (
        ["big", "small"],
        "route auto: big; skipped big down, small queue 4",
    )
    assert pick(fits, Needs(tokens=3000))[0] == ["big"]
    with pytest.raises(NoModelFits) as e:
        pick(fits, Needs(tokens=9000, grammar=True))
    assert str(e.value) == (
        "route auto: no model can serve this request: big (context 8192 < 9000 tokens), "
        "small (context 2048 < 9000 tokens)"
    )
    assert isinstance(e.value, GenerationError)  # a process fails with it, the kernel goes on
    assert isinstance(e.value, UserError)  # over REST, a 400


async def test_a_route_picks_by_context_and_grammar(tmp_path: Path) -> None:
    """A small local model (a 256-token context here) and a remote one that takes 4096
    tokens but ignores grammars: each request goes to the one that can serve it."""
    with serve_scripted(tmp_path / "remote") as (url, _app):
        settings = load_settings(
            data_dir=tmp_path / "local", seq_ctx_max=256, routes={"auto": ["peer", DEFAULT_MODEL]}
        )
        features = {"grammar": False, "json_schema": False}
        meta = remote_meta(
            url, DEFAULT_MODEL, key_env=None, parallel=2, n_ctx=4096, features=features
        )
        ModelLibrary(settings.data_dir).add_remote("peer", meta)
        k = Kernel(settings, backend_factory=scripted_factory())
        await k.start()

        async def ask(ctx: Any, text: str, model: str, grammar: str | None) -> str:
            msgs = [{"role": "user", "content": text}]
            r = await ctx.sys.llm.chat(messages=msgs, model=model, max_tokens=20, grammar=grammar)
            return str(r.text)

        async def run(
            text: str, *, model: str = "auto", grammar: str | None = None, nice: int = 0
        ) -> Any:
            p = await k.spawn(ask, text, model, grammar, caps=["llm.*"], nice=nice)
            await k.wait(p.pid)
            return p

        try:
            long = "word " * 320  # ~400 tokens at four bytes a token: too long for local
            p = await run(long, nice=10)  # low priority: the local model first, but too small
            assert p.error is None and p.info()["served_by"] == "peer", p.error
            assert f"skipped {DEFAULT_MODEL} (context 256 < ~" in p.info()["route"]
            p = await run("hi", nice=10)
            assert p.info()["served_by"] == DEFAULT_MODEL and p.result == "You said: hi"

            grammar = 'root ::= "You said: " [a-z]+'
            p = await run("hi", grammar=grammar)  # peer first, but it ignores grammars
            assert p.error is None and p.info()["served_by"] == DEFAULT_MODEL, p.error
            assert p.info()["route"] == (
                f"route auto: {DEFAULT_MODEL}; skipped peer (does not follow grammars)"
            )
            p = await run(long, grammar=grammar)  # neither can: it fails at once, saying why
            assert "no model can serve this request" in str(p.error)
            assert "peer (does not follow grammars)" in str(p.error)
            p = await run("hi", model="peer", grammar=grammar)  # by name: refused, not ignored
            assert "peer does not follow a grammar" in str(p.error)
            assert "remote.Unsupported" in str(p.error)  # a UserError: the request's to change
            assert k.models.remote("peer") is not None
            assert k.models.remote("peer").counts["requests"] == 1  # type: ignore[union-attr]
        finally:
            await k.shutdown()


async def test_a_grammar_no_model_can_parse_is_not_tried_on_the_next(tmp_path: Path) -> None:
    """The request is at fault, not the model: a route does not hand it on (a server that
    ignores grammars would answer it unconstrained)."""
    from llmos.kernel.scripted import ScriptedBackend

    class Strict(ScriptedBackend):
        def new_sampler(self, params: Any) -> Any:
            if params.grammar == "root ::= nowhere":
                raise InvalidGrammar("invalid grammar (llama.cpp could not parse it)")
            return super().new_sampler(params)

    with serve_scripted(tmp_path / "remote") as (url, _app):
        routes = {"auto": [DEFAULT_MODEL, "peer"]}
        settings = load_settings(data_dir=tmp_path / "local", routes=routes)
        meta = remote_meta(url, DEFAULT_MODEL, key_env=None, parallel=2, n_ctx=4096)
        ModelLibrary(settings.data_dir).add_remote("peer", meta)
        k = Kernel(settings, backend_factory=lambda entry, progress: Strict(name=entry.name))
        await k.start()

        async def ask(ctx: Any) -> str:
            msgs = [{"role": "user", "content": "hi"}]
            r = await ctx.sys.llm.chat(messages=msgs, model="auto", grammar="root ::= nowhere")
            return str(r.text)

        try:
            p = await k.spawn(ask, caps=["llm.*"])
            await k.wait(p.pid)
            assert "InvalidGrammar: invalid grammar" in str(p.error), p.error
            engine = k.models.remote("peer")
            assert engine is None or engine.counts["requests"] == 0
        finally:
            await k.shutdown()

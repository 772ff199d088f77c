"""Agent work under a JSON schema against llama-server (issue 17): forced-token fast-forward.

Sides, each a server on loopback with the same model, threads and slots, taking turns:

- llmos serve (fast-forward on: the default), and with `LLMOS_FAST_FORWARD=0`;
- llama-server (`--llama-server PATH`, built from the llama.cpp llama-cpp-python vendors),
  given the same JSON schema as `response_format`.

Workloads (`--only` picks some):

- `react`: the ReAct arithmetic tasks of bench_react, one agent, end to end. The agent loop
  is one client for every side: the action schema of `calc` + `finish`, greedy, the
  tool run in the client, the observation sent back, until `finish` or 6 steps. Figure:
  seconds for all tasks (and how many each side solved).
- `json8`: 8 clients at once, each asking for objects of 6 fixed keys with short values.
  Figures: completion tokens per second and objects per second of wall time.
- `plain`: 8 clients at once, plain completions (no grammar, nothing to copy): llmos as
  shipped against llmos with fast-forward and speculation off (no regression).

llmos's share of fast-forwarded tokens (forced, and of those kept) comes from `/v1/top`.

    python benchmarks/bench_agent_speed.py --llama-server PATH [--tasks 20] [--turns 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import threads
from bench_react import tasks as react_tasks
from bench_server import free_port, llama_server, run_server

MODEL = "smollm2-135m-instruct"
PEOPLE = ["a baker", "a pilot", "a nurse", "a painter", "a farmer", "a teacher", "a diver"]
KEYS = ["name", "city", "country", "job", "color", "animal"]
PERSON = {
    "type": "object",
    "properties": {k: {"type": "string", "maxLength": 24} for k in KEYS},
    "required": KEYS,
}


def calc_spec() -> Any:
    from llmos.core.syscall import SyscallTable
    from llmos.tools.basic import calc

    return SyscallTable().register(calc)


def calc(expr: str) -> Any:
    from llmos.tools.basic import evaluate

    return evaluate(expr)


async def chat(http: httpx.AsyncClient, messages: list[dict[str, str]], schema: dict[str, Any], tokens: int) -> tuple[str, int]:  # fmt: skip
    body = {
        "model": MODEL, "messages": messages, "temperature": 0, "max_tokens": tokens,
        "seed": 0, "repeat_penalty": 1.1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }  # fmt: skip
    r = await http.post("/v1/chat/completions", json=body)
    if r.status_code != 200:
        raise SystemExit(f"HTTP {r.status_code}: {r.text[:300]}")
    data = r.json()
    return str(data["choices"][0]["message"]["content"]), int(data["usage"]["completion_tokens"])


async def react(url: str, n: int) -> dict[str, Any]:
    from llmos.agents.react import FINISH, Action, ReActState, action_schema

    spec = calc_spec()
    first, schema = action_schema([spec], finish=False), action_schema([spec])
    work = react_tasks(n, 7)
    solved = steps = made = 0
    transcripts = []
    async with httpx.AsyncClient(base_url=url, timeout=900) as http:
        await chat(http, [{"role": "user", "content": "hi"}], schema, 8)  # warm up
        t0 = time.perf_counter()
        for task, want in work:
            state = ReActState(task, [spec], max_steps=6)
            answer = None
            last = None
            while not state.exhausted:
                # as react_program: the first step must act (a tool), later ones may finish
                text, n = await chat(http, state.messages, schema if state.steps else first, 160)
                steps += 1
                made += n
                act = state.parse(text)
                if isinstance(act, Action) and act.name == FINISH:
                    answer = act.answer
                    break
                if isinstance(act, Action):
                    try:
                        last = calc(str(act.args.get("expression", "")))
                        obs: dict[str, Any] = {"ok": True, "result": last}
                    except Exception as exc:  # the model reads the error, as in llmos
                        obs = {"ok": False, "error": "tool_failed", "message": str(exc)}
                    state.observe(act, obs)
                else:
                    state.observe(None, act)
            solved += last == want and str(want) in str(answer)
            transcripts.append([m["content"] for m in state.messages])
        dt = time.perf_counter() - t0
    return {"seconds": dt, "solved": solved, "steps": steps, "tokens": made, "texts": transcripts}


async def json8(url: str, per_client: int, clients: int = 8) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:
        await chat(http, [{"role": "user", "content": "hi"}], PERSON, 8)

        async def client(c: int) -> tuple[int, list[str]]:
            made, texts = 0, []
            for i in range(per_client):
                who = PEOPLE[(c + i) % len(PEOPLE)]
                msg = f"Invent {who} (number {c * per_client + i}). Give name, city, country, job, favourite color and favourite animal as JSON."  # fmt: skip
                text, n = await chat(http, [{"role": "user", "content": msg}], PERSON, 120)
                made += n
                texts.append(text)
            return made, texts

        t0 = time.perf_counter()
        res = await asyncio.gather(*(client(c) for c in range(clients)))
        dt = time.perf_counter() - t0
    texts = [t for _, ts in res for t in ts]
    ok = 0
    for t in texts:
        try:
            ok += set(json.loads(t)) == set(KEYS)
        except ValueError:
            pass
    made = sum(m for m, _ in res)
    return {"seconds": dt, "tokens": made, "objects": len(texts), "valid": ok, "texts": texts}


async def plain(url: str, per_client: int, clients: int = 8) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=clients * 2, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=900, limits=limits) as http:

        async def client(c: int) -> int:
            made = 0
            for i in range(per_client):
                body = {
                    "model": MODEL, "prompt": f"Story {c}-{i}: Once upon a time in a small town,",
                    "max_tokens": 96, "temperature": 0, "ignore_eos": True,
                }  # fmt: skip
                r = await http.post("/v1/completions", json=body)
                r.raise_for_status()
                made += int(r.json()["usage"]["completion_tokens"])
            return made

        await client(99)
        t0 = time.perf_counter()
        made = sum(await asyncio.gather(*(client(c) for c in range(clients))))
        dt = time.perf_counter() - t0
    return {"seconds": dt, "tokens": made}


def serve_llmos(ff: bool, spec: str, slots: int) -> tuple[Any, str]:
    port = free_port()
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "LLMOS_DATA_DIR": tempfile.mkdtemp(prefix="llmos-bench-"),
        "LLMOS_N_THREADS": str(threads()), "LLMOS_N_SEQ_MAX": str(slots),
        "LLMOS_N_CTX": str(slots * 2048), "LLMOS_SEQ_CTX_MAX": "2048",
        "LLMOS_FAST_FORWARD": "1" if ff else "0", "LLMOS_SPECULATION": spec,
        "LLMOS_SERVER_QUEUE_LIMIT": "64",
    }  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    return run_server([sys.executable, "-m", "llmos", "serve", "--port", str(port)], url, env), url


def side(name: str, work: str, args: argparse.Namespace) -> dict[str, Any]:
    slots = 1 if work == "react" else 8
    if name == "llama-server":
        proc, url = llama_server(args.llama_server, slots, 2048)
    else:
        ff = name == "llmos"
        proc, url = serve_llmos(ff, "auto" if ff else "off", slots)
    try:
        if work == "react":
            out = asyncio.run(react(url, args.tasks))
        elif work == "json8":
            out = asyncio.run(json8(url, args.per_client))
        else:
            out = asyncio.run(plain(url, args.per_client))
        if name != "llama-server":
            top = httpx.get(f"{url}/v1/top", timeout=10).json()
            eng = (top.get("models") or [{}])[0]
            out.update({k: eng.get(k) for k in ("forced", "forced_kept", "tokens_decoded")})
    finally:
        proc.terminate()
        proc.wait()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-server", default=None)
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--per-client", type=int, default=4)
    ap.add_argument("--turns", type=int, default=2)
    ap.add_argument("--only", default="react,json8,plain")
    args = ap.parse_args()
    for work in args.only.split(","):
        names = ["llmos", "llmos ff off"]
        if work != "plain":
            if args.llama_server is None:
                raise SystemExit("--llama-server PATH is needed for react and json8")
            names.append("llama-server")
        runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for _ in range(args.turns):
            for n in names:
                runs[n].append(side(n, work, args))
        print(f"== {work} ({args.turns} turns, taking turns)")
        for n, rs in runs.items():
            secs = [r["seconds"] for r in rs]
            line = f"{n:13s} s: {' '.join(f'{s:.1f}' for s in secs)}"
            if work == "react":
                line += f"  solved {rs[-1]['solved']}/{args.tasks}, {rs[-1]['steps']} model calls, {rs[-1]['tokens']} tokens"
            else:
                tps = [r["tokens"] / r["seconds"] for r in rs]
                line += f"  tok/s {' '.join(f'{x:.1f}' for x in tps)}"
                if work == "json8":
                    ops = [r["objects"] / r["seconds"] for r in rs]
                    line += f"  objects/s {' '.join(f'{x:.2f}' for x in ops)} valid {rs[-1]['valid']}/{rs[-1]['objects']}"  # fmt: skip
            if rs[-1].get("forced"):
                r = rs[-1]
                line += f"  forced {r['forced']} kept {r['forced_kept']} ({r['forced_kept'] / max(1, r['forced']):.0%}), {r['forced_kept'] / max(1, r['tokens_decoded']):.0%} of decoded tokens"  # fmt: skip
            print(line)
        base = statistics.median(r["seconds"] for r in runs["llmos"])
        for n in names[1:]:
            other = statistics.median(r["seconds"] for r in runs[n])
            if work == "react":
                print(f"llmos / {n}: {other / base:.2f}x faster (median seconds)")
            else:
                ours = statistics.median(r["tokens"] / r["seconds"] for r in runs["llmos"])
                theirs = statistics.median(r["tokens"] / r["seconds"] for r in runs[n])
                print(f"llmos / {n}: {ours / theirs:.2f}x tok/s", end="")
                if work == "json8":
                    o = statistics.median(r["objects"] / r["seconds"] for r in runs["llmos"])
                    t = statistics.median(r["objects"] / r["seconds"] for r in runs[n])
                    print(f", {o / t:.2f}x objects/s", end="")
                print()
        if work != "plain":
            same = sum(
                a == b
                for a, b in zip(runs["llmos"][-1]["texts"], runs["llmos ff off"][-1]["texts"], strict=True)
            )  # fmt: skip
            print(f"llmos outputs identical with fast-forward on and off: {same}/{len(runs['llmos'][-1]['texts'])}")  # fmt: skip


if __name__ == "__main__":
    main()

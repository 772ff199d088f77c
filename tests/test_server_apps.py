"""Apps over REST (/v1/apps): the grants are explicit in the install request, a run is a
process with exactly them. A scripted kernel: the shipped `hello` app needs no model."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from llmos.apps.index import builtin_index
from tests.test_server import serve_scripted

HELLO = next(x for x in builtin_index() if x.name == "hello").source


def test_install_run_and_remove_an_app_over_rest(tmp_path: Path) -> None:
    with serve_scripted(tmp_path) as (url, app):
        with httpx.Client(base_url=url, timeout=60) as http:
            assert http.get("/v1/apps").json() == {"apps": []}
            found = http.get("/v1/apps/search", params={"q": "hello"}).json()["entries"]
            assert [e["name"] for e in found] == ["hello"] and found[0]["origin"] == "built-in"

            r = http.post("/v1/apps", json={"source": "hello", "grant": ["calc"]})
            assert r.status_code == 201, r.text
            got = r.json()
            assert got["granted"] == ["calc"] and got["denied"] == ["time.now"]
            assert set(got["requested"]) == {"calc", "time.now"} and "clock" in got["entries"]
            again = http.post("/v1/apps", json={"source": HELLO, "grant": []})
            assert again.status_code == 400 and "already installed" in again.text

            r = http.post("/v1/apps/hello/run", json={"args": ["1", "2", "3"]})
            assert r.status_code == 201, r.text
            pid = r.json()["pid"]
            kernel = app.state.api.kernel
            proc = kernel.get(pid)
            assert proc.name == "hello" and sorted(proc.caps) == ["calc"]
            # the clock entry needs time.now, which was not granted: it is refused, not run
            r = http.post("/v1/apps/hello/run", json={"entry": "clock"})
            assert r.status_code == 201, r.text
            clock = r.json()["pid"]
            for _ in range(200):
                info = http.get(f"/v1/processes/{pid}").json()
                if info["state"] in ("zombie", "exited"):
                    break
                time.sleep(0.05)
            assert info["exit_code"] == 0
            assert "1+2+3 = 6" in kernel.get(pid).stdout.getvalue()
            for _ in range(200):
                if not kernel.get(clock).alive:
                    break
                time.sleep(0.05)
            assert kernel.get(clock).exit_code != 0
            # its entries were programs while it ran, not after: nobody spawns them later
            assert not any(name.startswith("hello.") for name in kernel.programs)

            bad = http.post("/v1/apps", json={"source": "hello", "grant": ["shell.exec"]})
            assert bad.status_code == 400 and "shell.exec" in bad.text
            assert http.post("/v1/apps/nope/run", json={}).status_code == 404
            assert http.post("/v1/apps/hello/run", json={"entry": "nope"}).status_code == 400
            assert http.delete("/v1/apps/hello").json() == {"removed": "hello"}
            assert http.get("/v1/apps").json() == {"apps": []}

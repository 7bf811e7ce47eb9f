"""README's "Metrics and health" examples run as written: the curl lines against `plait serve`,
the embedding lines against an engine."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pytest
import trio

from .serveprocess import plait_serve
from .test_crash import start_server

pytestmark = pytest.mark.slow
README = Path(__file__).parents[2] / "README.md"


def section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## Metrics and health")
    return text[start : text.index("\n## ", start + 1)]


async def test_the_readmes_curl_example_works_as_written(tmp_path: Path) -> None:
    assert shutil.which("curl"), "the README's examples need curl"
    (block,) = re.findall(r"```sh\n(.*?)```", section(), re.S)
    process, port = await start_server(tmp_path, "memory")
    try:
        with trio.fail_after(30):
            done = await trio.run_process(["bash", "-e", "-c", block.replace("127.0.0.1:8765", f"127.0.0.1:{port}")], capture_stdout=True)
    finally:
        process.terminate()
        await process.wait()
    ready, *series = done.stdout.decode().splitlines()
    assert json.loads(ready) == {"status": "ready"}
    assert {line.split("{")[0].split(" ")[0] for line in series} == {"plait_connections", "plait_rooms"}
    assert 'plait_rooms{state="live"} 0.0' in series


async def test_the_readmes_embedding_lines_serve_metrics() -> None:
    (block,) = re.findall(r"```py\n(.*?)```", section(), re.S)
    imports, _, body = block.partition("\n\n")
    source = imports + "\n\nasync def example():\n" + textwrap.indent(body, "    ") + "    return engine, prometheus\n"
    scope: dict[str, Any] = {}
    exec(compile(source, "README.md", "exec"), scope)
    engine, prometheus = await scope["example"]()
    assert engine.router.find("/metrics") is not None and engine.router.find("/healthz") is not None
    body_bytes, content_type = prometheus.render(engine.gauges())
    assert content_type.startswith("text/plain") and b"plait_sessions_opened_total" in body_bytes


async def test_no_metrics_leaves_health_and_turns_the_page_off(tmp_path: Path) -> None:
    import httpx

    async with plait_serve("--port", "0", "--store", "memory", "--no-metrics") as served:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as http:
            assert (await http.get("/metrics")).status_code == 404
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 200


async def test_plait_serves_metrics_with_the_process_series_and_no_created_ones() -> None:
    import httpx

    async with plait_serve("--port", "0", "--store", "memory") as served:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as http:
            page = (await http.get("/metrics")).text
    assert "process_resident_memory_bytes " in page and "plait_rooms_loaded_total " in page
    assert "_created" not in page  # prometheus_client's creation-time twin of every counter

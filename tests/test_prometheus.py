"""A real Prometheus scrapes three real sidecars: exactly one leader, before and after a crash."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.devserver import RedisServer, free_port

from .daemons import Daemon, poll

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="the prometheus binary is absent (Debian package `prometheus`; .ci/run installs it)",
)


@pytest.fixture
def daemons(tmp_path: Path, redis_server: RedisServer) -> Iterator[list[Daemon]]:
    ds = [Daemon(tmp_path, redis_server.url, f"pod-{i}") for i in range(3)]
    yield ds
    for d in ds:
        d.stop()


def query(port: int, expr: str) -> list[dict[str, object]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=2) as resp:
        body = json.loads(resp.read())
    assert body["status"] == "success", body
    return body["data"]["result"]  # type: ignore[no-any-return]


def leaders(port: int) -> float | None:
    try:
        result = query(port, "sum by (election) (leaderd_is_leader)")
    except OSError:
        return None
    return float(result[0]["value"][1]) if result else None  # type: ignore[index]


def test_prometheus_sees_exactly_one_leader(tmp_path: Path, daemons: list[Daemon]) -> None:
    assert PROMETHEUS is not None
    for d in daemons:
        d.wait_http()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [{
            "job_name": "leaderd",
            "static_configs": [{"targets": [f"127.0.0.1:{d.port}" for d in daemons]}],
        }],
    }))  # fmt: skip
    log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
    prom = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:

        def all_up() -> bool:
            ups = query(port, 'up{job="leaderd"} == 1')
            return len(ups) == 3

        poll(lambda: leaders(port) == 1.0 and all_up(), 30, 0.2)
        leader = next(d for d in daemons if d.ready() == 200)
        killed_at = time.monotonic()
        leader.signal(signal.SIGKILL)
        # The dead target's series go stale; a new leader appears within the ttl (1 s).
        poll(lambda: (lambda who: who and who[0]["metric"]["instance"]  # type: ignore[index]
                      != f"127.0.0.1:{leader.port}")(query(port, "leaderd_is_leader == 1")),
             30, 0.2)  # fmt: skip
        poll(lambda: leaders(port) == 1.0, 30, 0.2)
        assert time.monotonic() - killed_at < 30
    finally:
        prom.terminate()
        prom.wait(10)
        log.close()

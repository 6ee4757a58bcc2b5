"""Pod labelling and Events with the real kubernetes client against a local fake API."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from devtools.devserver import RedisServer

from .daemons import Daemon, leaderd_cmd, poll
from .kubefake import FakeKube

KEY = "leaderd:{jobs}"


@pytest.fixture
def kube() -> Iterator[FakeKube]:
    fake = FakeKube()
    yield fake
    fake.close()


def kube_env(kube: FakeKube, tmp_path: Path, pod: str) -> dict[str, str]:
    return {"KUBECONFIG": str(kube.kubeconfig(tmp_path / "kubeconfig")), "POD_NAME": pod,
            "POD_NAMESPACE": "team"}  # fmt: skip


def test_label_follows_leadership_and_is_cleared_before_release(
    redis_server: RedisServer, kube: FakeKube, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    r = redis.Redis.from_url(redis_server.url)
    key_present_at_false: list[bool] = []

    def on_request(path: str, call: dict[str, Any]) -> None:
        labels = call["body"].get("metadata", {}).get("labels", {})
        if labels.get("leader") == "false":
            key_present_at_false.append(bool(r.exists(KEY)))

    kube.on_request = on_request
    d = spawn(redis_server.url, "pod-a", "--k8s-label", "leader", "--k8s-events",
              env=kube_env(kube, tmp_path, "pod-a"))  # fmt: skip
    d.wait_http()
    poll(lambda: d.ready() == 200)
    poll(lambda: kube.labels.get("team/pod-a", {}).get("leader") == "true", 5)
    # Strategic-merge or merge patch of just our label, on our own pod.
    patch = kube.label_calls()[-1]
    assert patch["path"].startswith("/api/v1/namespaces/team/pods/pod-a")
    assert patch["body"] == {"metadata": {"labels": {"leader": "true"}}}
    d.signal(signal.SIGTERM)
    assert d.wait() == 0
    assert kube.labels["team/pod-a"]["leader"] == "false"
    # The last "false" was written while the lock was still held (before release).
    assert key_present_at_false and key_present_at_false[-1] is True
    assert r.exists(KEY) == 0
    reasons = [e["reason"] for e in kube.events()]
    assert "LeaderElected" in reasons and "LeaderReleased" in reasons
    elected = next(e for e in kube.events() if e["reason"] == "LeaderElected")
    assert elected["involvedObject"]["name"] == "pod-a"
    assert elected["involvedObject"]["kind"] == "Pod" and elected["type"] == "Normal"


def test_kubernetes_failures_never_change_the_election(
    redis_server: RedisServer, kube: FakeKube, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    kube.fail = True
    d = spawn(redis_server.url, "pod-a", "--k8s-label", "leader", "--k8s-events",
              env=kube_env(kube, tmp_path, "pod-a"))  # fmt: skip
    d.wait_http()
    poll(lambda: d.ready() == 200)
    poll(lambda: len(kube.calls) >= 3, 10)  # retried with backoff
    metrics = d.get("/metrics")[1]
    errors = [line for line in metrics.splitlines()
              if line.startswith('leaderd_k8s_errors_total{election="jobs"}')]  # fmt: skip
    assert errors and float(errors[0].split()[-1]) >= 2
    events = [e["event"] for e in d.events()]
    assert events.count("k8s_api_failed") == 1  # once per change of state
    assert d.ready() == 200
    kube.fail = False
    poll(lambda: kube.labels.get("team/pod-a", {}).get("leader") == "true", 40)
    poll(lambda: "k8s_api_recovered" in [e["event"] for e in d.events()], 5)


def test_follower_is_labelled_false(
    redis_server: RedisServer, kube: FakeKube, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    redis.Redis.from_url(redis_server.url).set(KEY, '{"identity":"x","token":1}', px=60_000)
    d = spawn(redis_server.url, "pod-b", "--k8s-label", "example.com/leader",
              env=kube_env(kube, tmp_path, "pod-b"))  # fmt: skip
    d.wait_http()
    poll(lambda: kube.labels.get("team/pod-b", {}).get("example.com/leader") == "false", 5)
    assert d.ready() == 503


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["--k8s-label", "leader"], {}, "needs POD_NAME"),
        (["--k8s-label", "has space"], {"POD_NAME": "p", "POD_NAMESPACE": "n"}, "label key"),
        (["--k8s-events"], {"POD_NAME": "p"}, "needs POD_NAMESPACE"),
    ],
)
def test_kubernetes_config_errors(args: list[str], env: dict[str, str], needle: str) -> None:
    out = subprocess.run(
        leaderd_cmd("run", "--redis-url", "redis://127.0.0.1:1", "--election", "jobs", *args),
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **env}, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    assert needle in out.stderr and "Traceback" not in out.stderr

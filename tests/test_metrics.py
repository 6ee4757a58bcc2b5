"""The sidecar's own Prometheus exposition, read back by the reference parser."""

from __future__ import annotations

import os

from prometheus_client.parser import text_string_to_metric_families

from leaderd import Elector, FixedIntervalStrategy
from leaderd.backend import MemoryBackend, MemoryStore
from leaderd.metrics import Metrics

from .test_elector import FakeClock


def _families(metrics: Metrics) -> dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    out: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        out[family.name] = {
            (s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples
        }
    return out


def test_the_exposition_parses_with_types_labels_histogram_and_process_metrics() -> None:
    metrics = Metrics('jobs "a"\\b\n')  # a label value that needs escaping
    clock = FakeClock()
    elector = Elector(MemoryBackend(MemoryStore(clock)), "jobs", "a", clock=clock,
                      retry=FixedIntervalStrategy(1.0, None), observers=[metrics])  # fmt: skip
    for outcome in ("acquired", "held", "held"):
        metrics.on_attempt(outcome, None)
    for seconds in (0.0004, 0.003, 0.003, 7.0):
        metrics.on_refresh("ok", seconds, None)
    families = _families(metrics)
    label = (("election", 'jobs "a"\\b\n'),)
    assert families["leaderd_is_leader"][("leaderd_is_leader", label)] == 0.0
    assert elector.is_leader() is False
    held = ("leaderd_acquire_attempts_total", (*label, ("result", "held")))
    assert families["leaderd_acquire_attempts"][held] == 2.0
    buckets = families["leaderd_refresh_duration_seconds"]
    le = {dict(k[1])["le"]: v for k, v in buckets.items() if k[0].endswith("_bucket")}
    assert le["0.0005"] == 1.0 and le["0.005"] == 3.0 and le["5.0"] == 3.0 and le["+Inf"] == 4.0
    assert buckets[("leaderd_refresh_duration_seconds_count", label)] == 4.0
    assert abs(buckets[("leaderd_refresh_duration_seconds_sum", label)] - 7.0064) < 1e-9
    assert families["leaderd_eligible"][("leaderd_eligible", label)] == 1.0
    if os.path.exists("/proc/self/stat"):
        rss = families["process_resident_memory_bytes"][("process_resident_memory_bytes", ())]
        assert 5e6 < rss < 1e9
        assert families["process_open_fds"][("process_open_fds", ())] >= 3
        assert families["process_cpu_seconds"][("process_cpu_seconds_total", ())] > 0


def test_an_app_registers_leaderd_metrics_in_its_own_registry() -> None:
    """The documented call: `Metrics(election, registry=...)` given to the Elector; two
    electors may share the app's registry, and the app's own metrics stay beside them."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    registry = CollectorRegistry()
    Counter("app_requests", "The app's own metric", registry=registry).inc()
    clock = FakeClock()
    store = MemoryStore(clock)
    electors = [
        Elector(
            MemoryBackend(store),
            election,
            "a",
            clock=clock,
            retry=FixedIntervalStrategy(1.0, None),
            observers=[Metrics(election, registry=registry)],
        )
        for election in ("jobs", "reports")
    ]
    assert len(electors) == 2
    text = generate_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "app_requests" in families
    leaders = {s.labels["election"]: s.value for s in families["leaderd_is_leader"].samples}
    assert leaders == {"jobs": 0.0, "reports": 0.0}
    assert "process_resident_memory_bytes" not in families  # the app chose its collectors


def test_the_daemon_exposition_has_only_the_documented_series() -> None:
    from leaderd.metrics import disable_created_metrics

    disable_created_metrics()
    names = {s.name for f in text_string_to_metric_families(Metrics("x").render().decode())
             for s in f.samples}  # fmt: skip
    assert not [n for n in names if n.endswith("_created")]
    assert {"leaderd_leadership_transitions_total", "leaderd_refresh_total",
            "leaderd_k8s_errors_total", "leaderd_build_info"} <= names  # fmt: skip

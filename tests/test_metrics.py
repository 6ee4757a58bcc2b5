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
    for family in text_string_to_metric_families(metrics.registry.render().decode()):
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

"""Prometheus metrics of design.md section 3, through `prometheus_client`, fed by an
`ElectionObserver`.

Gauges whose truth depends on time (is_leader, lease_remaining, eligible) are
computed at scrape time from the elector, never cached. The daemon gives each
elector a registry of its own, with the client's process collector (`process_*`);
an application that runs `Elector` in-process puts them in its own registry:
`Metrics("jobs", registry=prometheus_client.REGISTRY)`, given to the `Elector` as an
observer. Several electors may share one registry (one label value each).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
)
from prometheus_client import disable_created_metrics as _disable_created
from prometheus_client.exposition import generate_latest

from ._version import __version__
from .election import ElectionObserver, Elector, Term

#: The text exposition format every Prometheus server reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
__all__ = ["CONTENT_TYPE", "Metrics", "disable_created_metrics", "new_registry"]
REFRESH_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


@dataclass(frozen=True)
class _Families:
    """leaderd's metric families in one registry, shared by its electors."""

    is_leader: Gauge
    transitions: Counter
    attempts: Counter
    refreshes: Counter
    refresh_duration: Histogram
    eligible: Gauge
    remaining: Gauge
    token: Gauge
    build_info: Gauge
    k8s_errors: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> _Families:
        one = ("election",)
        return cls(
            is_leader=Gauge(
                "leaderd_is_leader",
                "1 if this instance is the valid leader now",
                one,
                registry=registry,
            ),
            transitions=Counter(
                "leaderd_leadership_transitions",
                "Times this instance became or stopped being leader",
                one,
                registry=registry,
            ),
            attempts=Counter(
                "leaderd_acquire_attempts",
                "Acquire attempts by result",
                ("election", "result"),
                registry=registry,
            ),
            refreshes=Counter(
                "leaderd_refresh",
                "Lease refreshes by result",
                ("election", "result"),
                registry=registry,
            ),
            refresh_duration=Histogram(
                "leaderd_refresh_duration_seconds",
                "Duration of lease refresh calls",
                one,
                buckets=REFRESH_BUCKETS,
                registry=registry,
            ),
            eligible=Gauge(
                "leaderd_eligible",
                "1 if this candidate may lead now (its app is healthy, it has not resigned)",
                one,
                registry=registry,
            ),
            remaining=Gauge(
                "leaderd_lease_remaining_seconds",
                "Seconds this leadership stays valid without another refresh (0 if not leader)",
                one,
                registry=registry,
            ),
            token=Gauge(
                "leaderd_fencing_token",
                "Fencing token of the current or last term",
                one,
                registry=registry,
            ),
            build_info=Gauge(
                "leaderd_build_info",
                "leaderd build information (always 1)",
                ("election", "version"),
                registry=registry,
            ),
            k8s_errors=Counter(
                "leaderd_k8s_errors", "Failed Kubernetes API calls", one, registry=registry
            ),
        )


_FAMILIES: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()


def _families(registry: CollectorRegistry) -> _Families:
    families = _FAMILIES.get(registry)
    if families is None:
        families = _FAMILIES[registry] = _Families.create(registry)
    return families


def disable_created_metrics() -> None:
    """No `*_created` series beside the documented ones (the daemon's own process)."""
    untyped: Any = _disable_created  # untyped in prometheus_client
    untyped()


def new_registry() -> CollectorRegistry:
    """A registry of its own for the daemon, with the `process_*` metrics."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    return registry


class Metrics(ElectionObserver):
    """The metrics of one elector (label `election`) in `registry` (default: a new
    one with the process metrics); `render()` is the text exposition."""

    def __init__(self, election: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        self.label = election
        f = self._f = _families(self.registry)
        self.is_leader = f.is_leader.labels(election)
        self.transitions = f.transitions.labels(election)
        self.attempts = {res: f.attempts.labels(election, res)
                         for res in ("acquired", "held", "error")}  # fmt: skip
        self.refreshes = {res: f.refreshes.labels(election, res) for res in ("ok", "lost", "error")}
        self.refresh_duration = f.refresh_duration.labels(election)
        self.eligible = f.eligible.labels(election)
        self.remaining = f.remaining.labels(election)
        self.token = f.token.labels(election)
        f.build_info.labels(election, __version__).set(1)
        self.k8s_errors = f.k8s_errors.labels(election)

    def render(self) -> bytes:
        """The registry in the Prometheus text format (`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def bind(self, elector: Elector) -> None:
        """Gauges whose truth depends on time are evaluated at scrape time."""

        def lease_remaining() -> float:
            term = elector.term
            if term is None:
                return 0.0
            return max(0.0, term.deadline - elector.clock.now())

        self.is_leader.set_function(lambda: float(elector.is_leader()))
        self.remaining.set_function(lease_remaining)
        self.eligible.set_function(lambda: float(elector.eligible))

    def on_attempt(self, outcome: str, error: Exception | None) -> None:
        self.attempts[outcome].inc()

    def on_refresh(self, outcome: str, duration: float, error: Exception | None) -> None:
        self.refreshes[outcome].inc()
        self.refresh_duration.observe(duration)

    def on_started_leading(self, term: Term) -> None:
        self.transitions.inc()
        self.token.set(term.fencing_token)

    def on_stopped_leading(self, term: Term, reason: str) -> None:
        self.transitions.inc()

"""Prometheus metrics of design.md section 3, fed by an `ElectionObserver`.

Gauges whose truth depends on time (is_leader, lease_remaining) are computed at
scrape time from the elector, never cached.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from ._version import __version__
from .election import ElectionObserver, Elector, Term


class Metrics(ElectionObserver):
    """All metrics for one elector, in their own registry (label `election`)."""

    def __init__(self, election: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r, label = self.registry, election
        self.label = label
        names = ["election"]
        self.is_leader = Gauge(
            "leaderd_is_leader", "1 if this instance is the valid leader now", names, registry=r
        )
        self.transitions = Counter(
            "leaderd_leadership_transitions_total",
            "Times this instance became or stopped being leader",
            names,
            registry=r,
        ).labels(label)
        attempts = Counter(
            "leaderd_acquire_attempts_total",
            "Acquire attempts by result",
            [*names, "result"],
            registry=r,
        )
        self.attempts = {res: attempts.labels(label, res) for res in ("acquired", "held", "error")}
        refreshes = Counter(
            "leaderd_refresh_total", "Lease refreshes by result", [*names, "result"], registry=r
        )
        self.refreshes = {res: refreshes.labels(label, res) for res in ("ok", "lost", "error")}
        self.refresh_duration = Histogram(
            "leaderd_refresh_duration_seconds",
            "Duration of lease refresh calls",
            names,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        ).labels(label)
        self.eligible = Gauge(
            "leaderd_eligible",
            "1 if this candidate may lead now (its app is healthy, it has not resigned)",
            names,
            registry=r,
        )
        self.remaining = Gauge(
            "leaderd_lease_remaining_seconds",
            "Seconds this leadership stays valid without another refresh (0 if not leader)",
            names,
            registry=r,
        )
        self.token = Gauge(
            "leaderd_fencing_token", "Fencing token of the current or last term", names, registry=r
        ).labels(label)
        Gauge(
            "leaderd_build_info",
            "leaderd build information (always 1)",
            [*names, "version"],
            registry=r,
        ).labels(label, __version__).set(1)
        ProcessCollector(registry=r)
        self.k8s_errors = Counter(
            "leaderd_k8s_errors_total", "Failed Kubernetes API calls", names, registry=r
        ).labels(label)

    def bind(self, elector: Elector) -> None:
        """Gauges whose truth depends on time are evaluated at scrape time."""

        def lease_remaining() -> float:
            term = elector.term
            if term is None:
                return 0.0
            return max(0.0, term.deadline - elector.clock.now())

        self.is_leader.labels(self.label).set_function(lambda: float(elector.is_leader()))
        self.remaining.labels(self.label).set_function(lease_remaining)
        self.eligible.labels(self.label).set_function(lambda: float(elector.eligible))

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

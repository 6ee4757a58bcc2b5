"""Prometheus metrics of design.md section 3, fed by an `ElectionObserver`.

Gauges whose truth depends on time (is_leader, lease_remaining) are computed at
scrape time from the elector, never cached. The handful of counters, gauges and one
histogram are rendered here in the Prometheus text format (0.0.4), with the
standard `process_*` metrics from /proc: a client library would cost the sidecar
2 MiB of memory for the same output.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Callable, Iterator

from ._version import __version__
from .election import ElectionObserver, Elector, Term

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    return repr(float(value))


class Family:
    """One metric name: its help, type and samples (label values -> value or function)."""

    def __init__(self, name: str, help: str, kind: str, labels: tuple[str, ...]) -> None:
        self.name, self.help, self.kind, self.labels = name, help, kind, labels
        self.values: dict[tuple[str, ...], float | Callable[[], float]] = {}

    def _labels(self, values: tuple[str, ...], extra: str = "") -> str:
        pairs = [f'{k}="{_escape(v)}"' for k, v in zip(self.labels, values, strict=True)]
        if extra:
            pairs.append(extra)
        return "{" + ",".join(pairs) + "}" if pairs else ""

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        for values, value in self.values.items():
            number = value() if callable(value) else value
            yield f"{self.name}{self._labels(values)} {_number(number)}"


class Counter:
    """A monotonically increasing sample of a `Family`."""

    def __init__(self, family: Family, values: tuple[str, ...]) -> None:
        self.family, self.key = family, values
        family.values[values] = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.family.values[self.key] = float(self.family.values[self.key]) + amount  # type: ignore[arg-type]

    def get(self) -> float:
        return float(self.family.values[self.key])  # type: ignore[arg-type]


class Gauge(Counter):
    """A sample that is set, or computed by a function at every scrape."""

    def set(self, value: float) -> None:
        self.family.values[self.key] = float(value)

    def set_function(self, function: Callable[[], float]) -> None:
        self.family.values[self.key] = function


class Histogram(Family):
    """Cumulative buckets, sum and count of observations (one label set)."""

    def __init__(self, name: str, help: str, labels: dict[str, str], buckets: tuple[float, ...]):
        super().__init__(name, help, "histogram", tuple(labels))
        self.label_values = tuple(labels.values())
        self.bounds = (*buckets, math.inf)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break

    def lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            total += count
            le = self._labels(self.label_values, f'le="{_number(bound)}"')
            yield f"{self.name}_bucket{le} {_number(total)}"
        plain = self._labels(self.label_values)
        yield f"{self.name}_sum{plain} {_number(self.sum)}"
        yield f"{self.name}_count{plain} {_number(total)}"


class Registry:
    """The metric families of one process, rendered in registration order."""

    def __init__(self) -> None:
        self.families: list[Family] = []

    def family(self, name: str, help: str, kind: str, labels: tuple[str, ...]) -> Family:
        family = Family(name, help, kind, labels)
        self.families.append(family)
        return family

    def render(self) -> bytes:
        lines = [line for family in self.families for line in family.lines()]
        return ("\n".join(lines) + "\n").encode("utf-8")


def _process_metrics(registry: Registry) -> None:
    """process_* as Prometheus client libraries export them (Linux /proc)."""
    if not os.path.exists("/proc/self/stat"):
        return
    ticks = os.sysconf("SC_CLK_TCK")
    page = resource.getpagesize()
    with open("/proc/stat") as f:
        boot = next(float(line.split()[1]) for line in f if line.startswith("btime"))

    def stat() -> list[str]:
        with open("/proc/self/stat", "rb") as f:
            return f.read().split(b")")[-1].decode().split()

    def value(name: str, help: str, kind: str, fn: Callable[[], float]) -> None:
        Gauge(registry.family(name, help, kind, ()), ()).set_function(fn)

    value("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
          "counter", lambda: (int(stat()[11]) + int(stat()[12])) / ticks)  # fmt: skip
    value("process_virtual_memory_bytes", "Virtual memory size in bytes.", "gauge",
          lambda: float(stat()[20]))  # fmt: skip
    value("process_resident_memory_bytes", "Resident memory size in bytes.", "gauge",
          lambda: float(int(stat()[21]) * page))  # fmt: skip
    start = boot + int(stat()[19]) / ticks
    value("process_start_time_seconds", "Start time of the process since unix epoch in "
          "seconds.", "gauge", lambda: start)  # fmt: skip
    value("process_open_fds", "Number of open file descriptors.", "gauge",
          lambda: float(len(os.listdir("/proc/self/fd"))))  # fmt: skip
    value("process_max_fds", "Maximum number of open file descriptors.", "gauge",
          lambda: float(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))  # fmt: skip


class Metrics(ElectionObserver):
    """All metrics for one elector, in their own registry (label `election`)."""

    def __init__(self, election: str, registry: Registry | None = None) -> None:
        self.registry = r = registry or Registry()
        self.label = label = election
        one = ("election",)
        self.is_leader = Gauge(r.family(
            "leaderd_is_leader", "1 if this instance is the valid leader now", "gauge", one,
        ), (label,))  # fmt: skip
        self.transitions = Counter(r.family(
            "leaderd_leadership_transitions_total",
            "Times this instance became or stopped being leader", "counter", one,
        ), (label,))  # fmt: skip
        attempts = r.family("leaderd_acquire_attempts_total", "Acquire attempts by result",
                            "counter", ("election", "result"))  # fmt: skip
        self.attempts = {res: Counter(attempts, (label, res))
                         for res in ("acquired", "held", "error")}  # fmt: skip
        refreshes = r.family("leaderd_refresh_total", "Lease refreshes by result", "counter",
                             ("election", "result"))  # fmt: skip
        self.refreshes = {res: Counter(refreshes, (label, res)) for res in ("ok", "lost", "error")}
        self.refresh_duration = Histogram(
            "leaderd_refresh_duration_seconds", "Duration of lease refresh calls",
            {"election": label},
            (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )  # fmt: skip
        r.families.append(self.refresh_duration)
        self.eligible = Gauge(r.family(
            "leaderd_eligible",
            "1 if this candidate may lead now (its app is healthy, it has not resigned)",
            "gauge", one,
        ), (label,))  # fmt: skip
        self.remaining = Gauge(r.family(
            "leaderd_lease_remaining_seconds",
            "Seconds this leadership stays valid without another refresh (0 if not leader)",
            "gauge", one,
        ), (label,))  # fmt: skip
        self.token = Gauge(r.family(
            "leaderd_fencing_token", "Fencing token of the current or last term", "gauge", one,
        ), (label,))  # fmt: skip
        Gauge(r.family("leaderd_build_info", "leaderd build information (always 1)", "gauge",
                       ("election", "version")), (label, __version__)).set(1)  # fmt: skip
        _process_metrics(r)
        self.k8s_errors = Counter(r.family(
            "leaderd_k8s_errors_total", "Failed Kubernetes API calls", "counter", one,
        ), (label,))  # fmt: skip

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

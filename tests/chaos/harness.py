"""Fault injection for `leaderd run`: daemons, a Redis behind per-daemon TCP proxies,
a workload (an HTTP app) beside each daemon, seeded random faults (processes, network,
Redis, the workloads, and operators' resign and switchover requests), and a checker
that rebuilds every leadership term from the daemons' JSON logs and proves the safety
properties.

Short run: `pytest tests/chaos` (inside `make test`). Long run: `make chaos`.
"""

from __future__ import annotations

import contextlib
import datetime
import http.server
import json
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.devserver import RedisServer

from ..daemons import REPO, Daemon, leaderd_cmd
from .proxy import TcpProxy

TTL = 1.0
REFRESH = TTL / 3
TIMEOUT = min(REFRESH, 2.0)
RETRY = 0.3
#: Documented bound on an overlap caused by Redis losing the lock: the old leader's
#: next refresh finds the key gone: at most one refresh interval plus one call.
DATA_LOSS_BOUND = REFRESH + TIMEOUT
SLACK = 0.05  # log timestamps and process scheduling
#: The workload's health check: every 100 ms, 100 ms each, unhealthy after 2 failures.
APP_INTERVAL, APP_TIMEOUT, APP_FAILURES = 0.1, 0.1, 2
#: The invariant: nobody leads once its app has been unhealthy longer than this
#: (failures x interval + timeout + one hand-over; 250 ms for a hand-over on a busy
#: 2-core machine running five daemons and the faults).
APP_BOUND = APP_FAILURES * APP_INTERVAL + APP_TIMEOUT + 0.25
APP_FAULTS = ("app_500", "app_hang", "app_closed")
#: Faults at the edges of the hand-over: a restart from a snapshot taken before some
#: hand-overs, a PSUBSCRIBE * client, a frozen follower while the leader hands over,
#: CLIENT PAUSE WRITE while the leader resigns and waiters give up.
HANDOVER_FAULTS = ("snapshot_restart", "psubscribe", "frozen_follower", "pause_writes")


class App:
    """The workload beside one daemon: an HTTP server answering 200, or 500, or hanging,
    or not listening at all, as the fault injector says."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.server: http.server.ThreadingHTTPServer | None = None
        self.port = 0
        self.start()

    def start(self) -> None:
        app = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                deadline = time.monotonic() + 5
                while app.mode == "hang" and time.monotonic() < deadline:
                    time.sleep(0.01)
                code = 500 if app.mode == "500" else 200
                with contextlib.suppress(OSError):
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        server.allow_reuse_address = True
        self.port = server.server_address[1]
        self.server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"


def _ts(event: dict[str, Any]) -> float:
    stamp = event["timestamp"].replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp).timestamp()


@dataclass
class Term:
    daemon: str
    token: int
    start: float
    end: float
    stepped_down: str | None = None


@dataclass
class Fault:
    kind: str
    target: str
    start: float
    end: float = 0.0


@dataclass
class Report:
    seed: int
    faults: list[Fault] = field(default_factory=list)
    terms: list[Term] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    app_checked: int = 0
    documented_overlaps: list[tuple[str, str, float]] = field(default_factory=list)
    recovery_s: float | None = None

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        worst = max((o for *_, o in self.documented_overlaps), default=0.0)
        return (
            f"seed {self.seed}: {len(self.faults)} faults {kinds}, {len(self.terms)} terms "
            f"checked, {len(self.documented_overlaps)} documented overlaps (worst "
            f"{worst * 1000:.0f} ms, bound {DATA_LOSS_BOUND * 1000:.0f} ms), "
            f"{self.app_checked} workload faults checked against the {APP_BOUND * 1000:.0f} ms "
            f"bound, {len(self.violations)} violations, recovery "
            f"{self.recovery_s if self.recovery_s is None else round(self.recovery_s, 3)} s"
        )


class Chaos:
    """`topology`: "single" (one Redis, a TCP proxy per daemon, network faults) or
    "sentinel" (primary, replica and Sentinel; Sentinel failovers as faults)."""

    def __init__(self, workdir: Path, n: int = 4, seed: int = 1, topology: str = "single") -> None:
        self.workdir = workdir
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.topology = topology
        self.redis = RedisServer(extra_args=["--repl-diskless-sync-delay", "0"]).start()
        self.extra: list[RedisServer] = []
        self.sentinel_args: list[str] = []
        if topology == "sentinel":
            replica = RedisServer(extra_args=["--replicaof", "127.0.0.1", str(self.redis.port)])
            sentinel = RedisServer(sentinel=True, config=(
                f"sentinel monitor m 127.0.0.1 {self.redis.port} 1\n"
                "sentinel down-after-milliseconds m 1000\n"
                "sentinel failover-timeout m 2000\n"))  # fmt: skip
            self.extra = [replica.start(), sentinel.start()]
            self.sentinel_port = sentinel.port
            # A write counts only once the replica has it: after a failover the old
            # primary has no replica, so a leader stuck on it cannot refresh there.
            self.sentinel_args = ["--sentinel", f"127.0.0.1:{sentinel.port}",
                                  "--sentinel-master", "m", "--min-replicas-ack", "1"]  # fmt: skip
            import redis

            deadline = time.monotonic() + 30
            s = redis.Redis(port=sentinel.port)
            while time.monotonic() < deadline and not (  # replica in sync and known
                redis.Redis(port=replica.port).info("replication").get("master_link_status") == "up"
                and len(s.execute_command("SENTINEL", "replicas", "m")) == 1
            ):
                time.sleep(0.1)
        self.proxies = [TcpProxy(self.redis.port) for _ in range(n)]
        self.apps = [App() for _ in range(n)]
        self.names = [f"d{i}" for i in range(n)]
        self.incarnation = dict.fromkeys(self.names, 0)
        self.daemons: dict[str, Daemon] = {}
        for i in range(n):
            self._start(i)

    def _start(self, i: int) -> None:
        name = self.names[i]
        self.incarnation[name] += 1
        url = "" if self.sentinel_args else f"redis://127.0.0.1:{self.proxies[i].port}/0"
        self.daemons[name] = Daemon(
            self.workdir, url, name, *self.sentinel_args,
            "--log-level", "debug", "--retry-interval", f"{int(RETRY * 1000)}ms",
            "--app-health-url", self.apps[i].url,
            "--app-health-interval", f"{int(APP_INTERVAL * 1000)}ms",
            "--app-health-timeout", f"{int(APP_TIMEOUT * 1000)}ms",
            "--app-health-failures", str(APP_FAILURES),
            ttl=f"{TTL}s",
            log_name=f"{name}.{self.incarnation[name]}.log",
        )  # fmt: skip

    # -- faults ------------------------------------------------------------------------
    #: faults drawn only from these, if set (`run(kinds=...)`)
    kinds: tuple[str, ...] | None = None

    def inject(self, duration: float) -> None:
        """Run random faults for `duration` seconds."""
        end = time.monotonic() + duration
        while time.monotonic() < end:
            kinds = ["kill", "stop", "redis_restart", "partition", "blackhole", "latency",
                     *APP_FAULTS, "resign", "switchover", "none", *HANDOVER_FAULTS]  # fmt: skip
            if self.topology == "sentinel":
                kinds = ["kill", "stop", "failover", "failover", "app_500", "switchover", "none"]
            if self.kinds:
                kinds = list(self.kinds)
            kind = self.rng.choice(kinds)
            i = self.rng.randrange(len(self.names))
            hold = self.rng.uniform(0.2, 2.5 * TTL)
            on_redis = kind in ("redis_restart", "failover", "snapshot_restart", "psubscribe",
                                "pause_writes")  # fmt: skip
            target = "redis" if on_redis else self.names[i]
            fault = Fault(kind, target, time.time())
            self._apply(kind, i, hold)
            fault.end = time.time()
            if kind != "none":
                self.report.faults.append(fault)
            time.sleep(self.rng.uniform(0.1, 1.0))

    def _apply(self, kind: str, i: int, hold: float) -> None:
        name = self.names[i]
        d = self.daemons[name]
        if kind == "kill":
            d.signal(signal.SIGKILL)
            d.stop()
            time.sleep(hold)
            self._start(i)
        elif kind == "stop":
            d.signal(signal.SIGSTOP)
            time.sleep(hold + TTL)  # beyond the lease
            d.signal(signal.SIGCONT)
        elif kind == "redis_restart":
            self.redis.restart()  # no persistence: the lock and the counter are gone
        elif kind in HANDOVER_FAULTS:
            self._handover_fault(kind, i, hold)
        elif kind == "failover":
            import redis

            s = redis.Redis(port=self.sentinel_port)
            with contextlib.suppress(redis.RedisError):
                s.execute_command("SENTINEL", "FAILOVER", "m")
            time.sleep(hold + 1.0)  # let the switch happen before the next fault
        elif kind in ("partition", "blackhole"):
            proxy = self.proxies[i]
            if kind == "partition":
                proxy.partition()
            else:
                proxy.blackhole = True
            time.sleep(hold)
            proxy.heal()
        elif kind == "latency":
            self.proxies[i].latency = self.rng.uniform(0.05, 0.4)
            time.sleep(hold)
            self.proxies[i].latency = 0.0
        elif kind in APP_FAULTS:
            app = self.apps[i]
            if kind == "app_closed":
                app.close()
            app.mode = kind.removeprefix("app_")
            time.sleep(hold)
            app.mode = "ok"
            if kind == "app_closed":
                app.start()
        elif kind in ("resign", "switchover"):
            self._control(kind, name, hold)
        else:
            time.sleep(hold / 4)

    def _handover_fault(self, kind: str, i: int, hold: float) -> None:
        """The faults at the edges of the hand-over (issue 18)."""
        import redis

        r = redis.Redis(port=self.redis.port, socket_timeout=5)
        try:
            if kind == "snapshot_restart":  # hand-overs happen after the snapshot, then
                r.save()  # Redis restarts from it: the lock and counter roll back
                time.sleep(hold)
                self.redis.kill()
                self.redis.start()
            elif kind == "psubscribe":  # PUBLISH counts it: liveness must not
                watcher = r.pubsub()
                watcher.psubscribe("*")
                time.sleep(hold)
                watcher.close()
            elif kind == "frozen_follower":  # a follower, likely queued first, freezes
                leader = next((n for n, d in self.daemons.items() if d.ready() == 200), None)
                name = next(n for n in self.names if n != leader)
                self.daemons[name].signal(signal.SIGSTOP)
                if leader is not None:
                    self._control("resign", leader, hold)
                time.sleep(hold)
                self.daemons[name].signal(signal.SIGCONT)
            elif kind == "pause_writes":  # followers give up (resign) while writes pause
                leader = next((n for n, d in self.daemons.items() if d.ready() == 200), None)
                with contextlib.suppress(redis.RedisError):
                    r.execute_command("CLIENT", "PAUSE", round(min(hold, 1.5) * 1000), "WRITE")
                if leader is not None:
                    self._control("resign", leader, hold)
        finally:
            r.close()

    def _control(self, kind: str, target: str, hold: float) -> None:
        """An operator's request through Redis: resign (held off `hold`), or switchover
        to `target` (refused if it is not a live, eligible waiter: that is fine too)."""
        url = (f"redis://127.0.0.1:{self.redis.port}/0" if not self.sentinel_args
               else "redis://")  # fmt: skip
        args = ["resign", "--hold-off", f"{hold:.3f}s"] if kind == "resign" else [
            "switchover", "--to", target]  # fmt: skip
        subprocess.run(
            leaderd_cmd(*args, "--redis-url", url, "--election", "jobs", "--wait", "3s",
                        *self.sentinel_args[:4]),
            capture_output=True, timeout=30, cwd=REPO,
        )  # fmt: skip

    # -- after the faults ----------------------------------------------------------------
    def recover(self) -> None:
        """Faults stop: measure the time until exactly one daemon leads."""
        started = time.monotonic()
        deadline = started + 30
        while time.monotonic() < deadline:
            leaders = [d for d in self.daemons.values() if d.ready() == 200]
            if len(leaders) == 1:
                self.report.recovery_s = time.monotonic() - started
                return
            time.sleep(0.02)

    def close(self) -> None:
        for d in self.daemons.values():
            d.stop()
        for p in self.proxies:
            p.close()
        for app in self.apps:
            app.close()
        self.redis.stop()
        for server in self.extra:
            server.stop()

    # -- the checker ---------------------------------------------------------------------
    def terms(self) -> list[Term]:
        terms: list[Term] = []
        for path in sorted(self.workdir.glob("d*.log")):
            current: Term | None = None
            for line in path.read_text(errors="replace").splitlines():
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                ev = e.get("event")
                if ev == "became_leader":
                    current = Term(e["identity"], e["token"], e["term_started_at"],
                                   e["valid_until"])  # fmt: skip
                    terms.append(current)
                elif ev == "lease_renewed" and current and e.get("token") == current.token:
                    if e.get("valid_until"):
                        current.end = max(current.end, e["valid_until"])
                elif ev == "stepped_down" and current and e.get("token") == current.token:
                    current.end = min(current.end, _ts(e))
                    current.stepped_down = e.get("reason")
                    current = None
        return sorted(terms, key=lambda t: t.start)

    def check(self) -> Report:
        report = self.report
        report.terms = self.terms()
        # Redis data loss: a restart without persistence, or a failover to a replica
        # that may not have the last write (asynchronous replication).
        # (a snapshot_restart loses its data at the restart, when the fault ends)
        restarts = [f.end if f.kind == "snapshot_restart" else f.start for f in report.faults
                    if f.kind in ("redis_restart", "failover", "snapshot_restart")]  # fmt: skip
        for a_i, a in enumerate(report.terms):
            for b in report.terms[a_i + 1 :]:
                overlap = min(a.end, b.end) - max(a.start, b.start)
                if overlap <= SLACK:
                    continue
                lost = any(r - SLACK <= b.start <= r + DATA_LOSS_BOUND + TTL for r in restarts)
                if lost and overlap <= DATA_LOSS_BOUND + SLACK:
                    report.documented_overlaps.append(
                        (f"{a.daemon}#{a.token}", f"{b.daemon}#{b.token}", overlap)
                    )
                else:
                    report.violations.append(
                        f"overlap {overlap:.3f}s: {a.daemon} token {a.token} "
                        f"[{a.start:.3f}, {a.end:.3f}] and {b.daemon} token {b.token} "
                        f"[{b.start:.3f}, {b.end:.3f}]"
                    )
        for a, b in zip(report.terms, report.terms[1:], strict=False):
            if b.token <= a.token:
                report.violations.append(
                    f"token did not increase: {a.daemon} {a.token} then {b.daemon} {b.token}"
                )
        # Nobody leads once its workload has been unhealthy for longer than APP_BOUND.
        for f in report.faults:
            if f.kind not in APP_FAULTS:
                continue
            report.app_checked += 1
            for t in report.terms:
                if t.daemon != f.target:
                    continue
                late = max(t.start, f.start + APP_BOUND)
                if min(t.end, f.end) - late > SLACK:
                    report.violations.append(
                        f"{t.daemon} led (token {t.token}) {min(t.end, f.end) - f.start:.3f}s "
                        f"into its workload fault {f.kind}, bound {APP_BOUND:.3f}s"
                    )
        # After a Sentinel failover the old primary must resync before WAIT can succeed.
        bound = TTL + RETRY + 0.5 + (15.0 if self.topology == "sentinel" else 0.0)
        if report.recovery_s is None or report.recovery_s > bound:
            report.violations.append(f"no single leader within {bound:.1f}s: {report.recovery_s}")
        return report

    def plot(self, path: Path) -> bool:
        """A timeline PNG: one lane per daemon, terms as bars, faults shaded."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return False
        report = self.report
        t0 = min([t.start for t in report.terms] + [f.start for f in report.faults] or [0])
        fig, ax = plt.subplots(figsize=(14, 1 + 0.6 * len(self.names)))
        lanes = {name: i for i, name in enumerate(self.names)}
        for t in report.terms:
            ax.barh(lanes[t.daemon], t.end - t.start, left=t.start - t0, height=0.5,
                    color="tab:green", edgecolor="black", linewidth=0.3)  # fmt: skip
        colors = {"kill": "red", "stop": "purple", "redis_restart": "black", "failover": "blue",
                  "partition": "orange", "blackhole": "brown", "latency": "gold",
                  "app_500": "pink", "app_hang": "magenta", "app_closed": "grey",
                  "resign": "cyan", "switchover": "teal", "snapshot_restart": "dimgray",
                  "psubscribe": "olive", "frozen_follower": "indigo",
                  "pause_writes": "salmon"}  # fmt: skip
        for f in report.faults:
            y = lanes.get(f.target)
            if y is None:
                ax.axvspan(f.start - t0, max(f.end, f.start + 0.05) - t0, color="black",
                           alpha=0.25)  # fmt: skip
            else:
                ax.barh(y + 0.35, max(f.end - f.start, 0.05), left=f.start - t0, height=0.15,
                        color=colors.get(f.kind, "lightgray"))  # fmt: skip
        ax.set_yticks(range(len(self.names)), self.names)
        ax.set_xlabel("seconds")
        ax.set_title(f"leaderd fault injection: {report.summary()}", fontsize=8)
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
        ax.legend(handles, list(colors), loc="upper right", fontsize=7, ncol=6)
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return True


def run(
    workdir: Path,
    seconds: float,
    seed: int,
    n: int = 4,
    plot: Path | None = None,
    topology: str = "single",
    kinds: tuple[str, ...] | None = None,
) -> Report:
    """`kinds`: draw faults only from these (default: every kind of the topology)."""
    chaos = Chaos(workdir, n=n, seed=seed, topology=topology)
    chaos.kinds = kinds
    try:
        for d in chaos.daemons.values():
            d.wait_http()
        chaos.inject(seconds)
        chaos.recover()
        time.sleep(0.2)
    finally:
        chaos.close()
    report = chaos.check()
    if plot is not None:
        chaos.plot(plot)
    return report

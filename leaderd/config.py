"""`leaderd run` configuration: flags, their LEADERD_* environment variables, validation.

Each option is declared once in `RUN_OPTIONS` (flag, env, default, help, and the parser
that checks one value); the rules between options are checked once per concern
(Redis, election, outputs). Every user error becomes one `ConfigError` line naming the
flag, its env variable, the value and the rule; the CLI prints it and exits 1.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn
from urllib.parse import urlsplit

from .apphealth import HealthCheck, check_health_url
from .connection import (
    PasswordFile,
    RedisTarget,
    URLError,
    check_tls_files,
    check_url,
    redact_url,
)
from .election import TimingError, timing
from .statusfile import unsafe_directory
from .strategy import FixedIntervalStrategy, NonFixedIntervalStrategy, RetryStrategy


class ConfigError(Exception):
    """Invalid or inconsistent configuration; the message is one line for the user."""


#: Upper bound of every duration: Redis accepts it, and a crashed leader's lease cannot
#: block an election for longer than a day because of a typo.
MAX_DURATION = 24 * 3600.0
#: Room left for one Redis round trip: the least refresh interval, and the least time
#: between a refresh falling due and the renew deadline.
MIN_ROUND_TRIP = 0.02
#: Lower bound of the follower's retry intervals.
MIN_RETRY_INTERVAL = 0.01
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_duration(text: str) -> float:
    """Seconds from `500ms`, `2s`, `1m30s`, `1h` or a bare number of seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pos, value = 0, 0.0
        for match in _DURATION_PART.finditer(text):
            if match.start() != pos:
                break
            value += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(text) from None
    if not math.isfinite(value):
        raise ValueError(text)
    return value


# -- one value: each parser returns the value or raises ValueError(rule) ----------------
def _text(text: str) -> str | None:
    return text.strip() or None


def _duration(minimum: float = 0.0, rule: str = "") -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            seconds = parse_duration(text)
        except ValueError:
            if text.strip().startswith("-"):
                raise ValueError("must be greater than zero") from None
            raise ValueError("must be a duration like 500ms, 2s, 1m30s or seconds") from None
        if seconds <= 0:
            raise ValueError("must be greater than zero")
        if seconds > MAX_DURATION:
            raise ValueError("must be at most 24h (a typo here could block an election)")
        if seconds < minimum:
            raise ValueError(rule)
        return seconds

    return parse


def _whole(low: int, high: int, rule: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        text = text.strip()
        if not re.fullmatch(r"-?\d{1,9}", text) or not low <= int(text) <= high:
            raise ValueError(rule)
        return int(text)

    return parse


def _choice(*values: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip().lower() not in values:
            raise ValueError("must be " + (" or ".join(values) if len(values) < 3 else
                                            "one of " + ", ".join(values)))  # fmt: skip
        return text.strip().lower()

    return parse


def _switch(text: str) -> bool:
    text = text.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false")


def _pattern(regex: str, rule: str) -> Callable[[str], str | None]:
    compiled = re.compile(regex)

    def parse(text: str) -> str | None:
        if not text:
            return None  # empty: as if unset
        if not compiled.fullmatch(text):
            raise ValueError(rule)
        return text

    return parse


def _host_ports(text: str) -> list[tuple[str, int]]:
    out = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{item!r} must be HOST:PORT, e.g. sentinel-0:26379")
        out.append((host.strip("[]"), int(port)))
    return out


def _http_addr(text: str) -> tuple[str, int] | None:
    text = text.strip()
    if not text:
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("must be HOST:PORT with a port 0-65535, e.g. :4040")
    return host.strip("[]") or "0.0.0.0", int(port)


def _health_url(text: str) -> str | None:
    url = text.strip()
    if not url:
        return None
    problem = check_health_url(url)
    if problem:
        raise ValueError(problem)
    return url


def _readable(text: str) -> str | None:
    path = text.strip()
    if path and (not os.path.isfile(path) or not os.access(path, os.R_OK)):
        raise ValueError("cannot be read")
    return path or None


def _password_file(text: str) -> str | None:
    path = text.strip()
    if not path:
        return None
    try:
        PasswordFile(path).read()  # read again at every connect; checked once here
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ValueError(f"cannot be read ({reason})") from None
    except ValueError:
        raise ValueError("is empty") from None
    return path


def _status_file(text: str) -> str | None:
    path = text.strip()
    if not path:
        return None
    if os.path.isdir(path):
        raise ValueError(
            "is a directory: give the path of the file to write in it, e.g. "
            f"{os.path.join(path, 'status.json')}"
        )
    if os.path.lexists(path) and not os.path.islink(path) and not os.path.isfile(path):
        raise ValueError("exists and is not a regular file: give the path of a file")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"directory {directory} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ValueError(f"directory {directory} is not writable")
    unsafe = unsafe_directory(path)
    if unsafe:
        raise ValueError(unsafe)
    return path


_LABEL = r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_NAMES = "letters, digits and . _ : / -"


@dataclass(frozen=True)
class Option:
    """One flag of `leaderd run`: its environment variable, default and value parser."""

    flag: str
    env: str
    default: str | None
    help: str
    parse: Callable[[str], Any] = _text
    is_switch: bool = False
    is_list: bool = False  # repeatable flag; the env variable is comma-separated

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


RUN_OPTIONS = [
    Option("--redis-url", "LEADERD_REDIS_URL", None,
           "redis://, rediss:// (TLS) or unix:// URL of the Redis server (required unless "
           "--sentinel)"),
    Option("--redis-password-file", "LEADERD_REDIS_PASSWORD_FILE", None,
           "file holding the Redis password (e.g. a mounted Secret); never logged",
           _password_file),
    Option("--sentinel", "LEADERD_SENTINELS", None,
           "Redis Sentinel HOST:PORT (repeat for each); the URL then only gives "
           "db, username and password", _host_ports, is_list=True),
    Option("--sentinel-master", "LEADERD_SENTINEL_MASTER", None,
           "name of the Sentinel-monitored primary (required with --sentinel)"),
    Option("--redis-cluster", "LEADERD_REDIS_CLUSTER", None,
           "the URL names one node of a Redis Cluster (no pub/sub wake-ups there: "
           "followers poll and wake at lease expiry)", _switch, is_switch=True),
    Option("--redis-tls-ca", "LEADERD_REDIS_TLS_CA", None,
           "CA bundle to verify the Redis server's certificate (rediss:// URLs)", _readable),
    Option("--redis-tls-cert", "LEADERD_REDIS_TLS_CERT", None,
           "client certificate for mutual TLS (with --redis-tls-key)", _readable),
    Option("--redis-tls-key", "LEADERD_REDIS_TLS_KEY", None,
           "client private key for mutual TLS (with --redis-tls-cert)", _readable),
    Option("--redis-scripts", "LEADERD_REDIS_SCRIPTS", "auto",
           "auto: call leaderd's Redis Functions library (FCALL), loading it if the user "
           "may, else EVAL if the user may; functions: FCALL only; eval: EVAL only "
           "(Redis 6.2)", _choice("auto", "functions", "eval")),
    Option("--min-replicas-ack", "LEADERD_MIN_REPLICAS_ACK", "0",
           "after acquire and refresh, WAIT for this many replicas; else count a failure "
           "(default 1 with --sentinel)", _whole(0, 100, "must be a whole number from 0 to 100")),
    Option("--election", "LEADERD_ELECTION", None,
           "name of the election; the lock key is leaderd:{<election>} (required)",
           _pattern(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,252}",
                    f"must be 1-253 characters of {_NAMES} starting with a letter or digit")),
    Option("--identity", "LEADERD_IDENTITY", None,
           "who this candidate is (default: $POD_NAME, else the hostname)",
           _pattern(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,252}",
                    f"must be 1-253 characters of {_NAMES} @ starting with a letter or digit")),
    Option("--ttl", "LEADERD_TTL", "10s", "lease length in Redis",
           _duration(0.1, "must be at least 100ms")),
    Option("--refresh-interval", "LEADERD_REFRESH_INTERVAL", None,
           "leader refresh period (default: ttl/3); at least 20ms, and at least 20ms less "
           "than --renew-deadline", _duration()),
    Option("--renew-deadline", "LEADERD_RENEW_DEADLINE", None,
           "leader steps down if no refresh succeeded for this long (default: ttl*2/3)",
           _duration()),
    Option("--retry", "LEADERD_RETRY", "fixed", "follower strategy: fixed or exponential",
           _choice("fixed", "exponential")),
    Option("--retry-interval", "LEADERD_RETRY_INTERVAL", "2s",
           "fixed interval, or first exponential interval",
           _duration(MIN_RETRY_INTERVAL, "must be at least 10ms (a busy loop would burn a CPU)")),
    Option("--retry-max-interval", "LEADERD_RETRY_MAX_INTERVAL", "30s", "cap for exponential",
           _duration(MIN_RETRY_INTERVAL, "must be at least 10ms (a busy loop would burn a CPU)")),
    Option("--retry-max", "LEADERD_RETRY_MAX", "0",
           "give up after this many failed attempts, exit 4 (0: forever)",
           _whole(0, 10**9, "must be a whole number >= 0 (0: retry forever)")),
    Option("--priority", "LEADERD_PRIORITY", "0",
           "when the lease is released or expires, the waiting candidate with the highest "
           "priority gets it (FIFO among equals)",
           _whole(-100, 100, "must be a whole number from -100 to 100")),
    Option("--preempt", "LEADERD_PREEMPT", None,
           "a waiting candidate of higher priority than the leader asks it to hand over, "
           "once it has waited --preempt-delay", _switch, is_switch=True),
    Option("--preempt-delay", "LEADERD_PREEMPT_DELAY", "10s",
           "how long a candidate waits before it preempts, and the least time between two "
           "of its requests", _duration(0.1, "must be at least 100ms")),
    Option("--advertise", "LEADERD_ADVERTISE", None,
           "published with this candidate's leadership (e.g. $(POD_IP):8080); shown as "
           "leader_address", _pattern(r"[!-~]{1,253}",
                                      "must be 1-253 printable ASCII characters, no spaces")),
    Option("--app-health-url", "LEADERD_APP_HEALTH_URL", None,
           "the workload's health: http(s):// URL (GET, any 2xx is healthy) or tcp://HOST:PORT "
           "(a connect is healthy); while unhealthy this candidate does not lead",
           _health_url),
    Option("--app-health-interval", "LEADERD_APP_HEALTH_INTERVAL", "2s",
           "time between app-health checks", _duration(0.05, "must be at least 50ms")),
    Option("--app-health-timeout", "LEADERD_APP_HEALTH_TIMEOUT", "1s",
           "bound of one app-health check", _duration(0.01, "must be at least 10ms")),
    Option("--app-health-failures", "LEADERD_APP_HEALTH_FAILURES", "3",
           "consecutive failed checks that make the app unhealthy",
           _whole(1, 100, "must be a whole number from 1 to 100")),
    Option("--app-health-successes", "LEADERD_APP_HEALTH_SUCCESSES", "1",
           "consecutive passed checks that make the app healthy again",
           _whole(1, 100, "must be a whole number from 1 to 100")),
    Option("--http-addr", "LEADERD_HTTP_ADDR", "0.0.0.0:4040",
           "health, status and metrics server (empty: off)", _http_addr),
    Option("--status-file", "LEADERD_STATUS_FILE", None,
           "JSON status file, replaced atomically on every change", _status_file),
    Option("--exit-on-loss", "LEADERD_EXIT_ON_LOSS", None,
           "exit 3 after stepping down from leadership for any reason (lost, deadline, "
           "app_unhealthy, resigned, switchover, preempted); not on its own shutdown "
           "(SIGTERM/SIGINT: exit 0) nor when CMD exits by itself (exec mode: CMD's code)",
           _switch, is_switch=True),
    Option("--k8s-label", "LEADERD_K8S_LABEL", None,
           "label this pod KEY=true while leader and KEY=false otherwise (needs POD_NAME)",
           _pattern(_LABEL, "must be a label key like leader or example.com/leader (name: "
                            "up to 63 letters, digits, - _ .)")),
    Option("--k8s-events", "LEADERD_K8S_EVENTS", None,
           "record a Kubernetes Event on this pod for each transition", _switch, is_switch=True),
    Option("--log-format", "LEADERD_LOG_FORMAT", "json", "json or console",
           _choice("json", "console")),
    Option("--log-level", "LEADERD_LOG_LEVEL", "info", "debug, info, warning or error",
           _choice(*LOG_LEVELS)),
]  # fmt: skip

#: The options that say how to reach Redis; `status` (and other clients) take them too.
CONNECTION_OPTIONS = frozenset({
    "redis_url", "redis_password_file", "sentinel", "sentinel_master", "redis_cluster",
    "redis_tls_ca", "redis_tls_cert", "redis_tls_key", "redis_scripts",
})  # fmt: skip


# -- the settings, grouped by concern -----------------------------------------------------
@dataclass(frozen=True)
class RedisSettings:
    """How to reach Redis, and what a write must reach before it counts."""

    url: str
    password_file: str | None = None
    sentinels: list[tuple[str, int]] = field(default_factory=list)
    sentinel_master: str | None = None
    cluster: bool = False
    tls: dict[str, str] = field(default_factory=dict)
    min_replicas_ack: int = 0
    scripts: str = "auto"

    def redacted_url(self) -> str:
        """The Redis URL with any password replaced, for logs."""
        return redact_url(self.url)


@dataclass(frozen=True)
class ElectionSettings:
    """Who contends for what, with which timing and follower strategy."""

    name: str
    identity: str
    ttl: float
    refresh_interval: float
    renew_deadline: float
    retry: RetryStrategy
    retry_name: str
    retry_max: int
    priority: int = 0
    preempt: bool = False
    preempt_delay: float = 10.0
    advertise: str | None = None


@dataclass(frozen=True)
class OutputSettings:
    """Where the role is published: HTTP, status file, logs, Kubernetes."""

    http_host: str | None
    http_port: int
    status_file: str | None
    log_format: str
    log_level: str
    k8s_label: str | None = None
    k8s_events: bool = False
    pod_name: str | None = None
    pod_namespace: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """Validated settings of `leaderd run`."""

    redis: RedisSettings
    election: ElectionSettings
    outputs: OutputSettings
    command: list[str] = field(default_factory=list)
    exit_on_loss: bool = False
    app_health: HealthCheck | None = None

    def redis_target(self, client_name: str | None = None) -> RedisTarget:
        """Where and how to connect to Redis, for `leaderd.connection`."""
        r = self.redis
        return RedisTarget(
            url=r.url, password_file=r.password_file, tls=dict(r.tls),
            sentinels=list(r.sentinels), sentinel_master=r.sentinel_master, cluster=r.cluster,
            connect_timeout=min(2.0, self.election.refresh_interval), client_name=client_name,
        )  # fmt: skip


# -- reading and checking ---------------------------------------------------------------
class _Values:
    """Flags over environment over defaults, each parsed once by its option."""

    def __init__(self, args: argparse.Namespace, env: dict[str, str]) -> None:
        self.args = args
        self.env = env
        self.options = {o.dest: o for o in RUN_OPTIONS}
        self._parsed: dict[str, Any] = {}

    def raw(self, dest: str) -> tuple[str | None, str]:
        """The text of an option and where it came from: its flag, its env, or default."""
        opt = self.options[dest]
        value = getattr(self.args, dest, None)
        if value is not None:
            if opt.is_list:
                return ",".join(value if isinstance(value, list) else [str(value)]), opt.flag
            return (str(value) if not opt.is_switch else "true"), opt.flag
        if opt.env in self.env:
            return self.env[opt.env], opt.env
        return opt.default, "default"

    def __getitem__(self, dest: str) -> Any:
        if dest not in self._parsed:
            text, _ = self.raw(dest)
            opt = self.options[dest]
            try:
                self._parsed[dest] = None if text is None else opt.parse(text)
            except ValueError as exc:
                self.fail(dest, str(exc), text)
        return self._parsed[dest]

    def fail(self, dest: str, rule: str, value: str | None = None) -> NoReturn:
        opt = self.options[dest]
        shown = "" if value is None else f"={value[:200]!r}"
        raise ConfigError(f"{opt.flag} (env {opt.env}){shown}: {rule}")


def build_run_config(
    args: argparse.Namespace, command: list[str], env: dict[str, str] | None = None
) -> RunConfig:
    """Merge flags over environment over defaults, then validate everything once."""
    values = _Values(args, dict(os.environ if env is None else env))
    redis = _redis_settings(values)
    election = _election_settings(values)
    outputs = _output_settings(values)
    if redis.cluster and election.preempt:
        values.fail("preempt", "is not supported with --redis-cluster (a hand-over proves its "
                    "target alive by its pub/sub subscription, which leaderd has not there)",
                    "true")  # fmt: skip
    if command:
        _check_command(command, values.env.get("PATH", os.defpath))
    return RunConfig(redis, election, outputs, command=command,
                     exit_on_loss=bool(values["exit_on_loss"]),
                     app_health=_app_health(values))  # fmt: skip


def _check_command(command: list[str], path: str) -> None:
    """Exec mode's CMD must be runnable now, found as a shell would (PATH unless it
    names a path), not only once this candidate first leads."""
    name = command[0]
    if name and shutil.which(name, path=path) is not None:
        return
    shown = repr(name[:200])
    if "/" in name:
        if not os.path.exists(name):
            why = "does not exist"
        elif os.path.isdir(name):
            why = "is a directory"
        else:
            why = "is not executable (chmod +x it)"
        raise ConfigError(f"the command after -- {shown} {why}")
    raise ConfigError(
        f"the command after -- {shown} is not an executable file on PATH ({path[:300]}): "
        "give its full path or fix PATH"
    )


def _app_health(v: _Values) -> HealthCheck | None:
    url = v["app_health_url"]
    if url is None:
        return None
    interval, timeout = v["app_health_interval"], v["app_health_timeout"]
    if timeout > interval:
        v.fail("app_health_timeout", f"must not exceed --app-health-interval ({interval:g}s)",
               v.raw("app_health_timeout")[0])  # fmt: skip
    return HealthCheck(url, interval, timeout, v["app_health_failures"],
                       v["app_health_successes"])  # fmt: skip


def build_client_config(
    args: argparse.Namespace, env: dict[str, str] | None = None, election: bool = True
) -> tuple[RedisSettings, str]:
    """Only what a Redis client of an election needs (`leaderd status`): the connection
    options and the election name (unless not `election`: `leaderd functions`); a
    sidecar's other settings are not checked."""
    values = _Values(args, dict(os.environ if env is None else env))
    redis = _redis_settings(values)
    if not election:
        return redis, ""
    name = values["election"]
    if not name:
        values.fail("election", "is required, e.g. --election my-cron")
    return redis, name


def client_target(redis: RedisSettings, client_name: str) -> RedisTarget:
    """A `RedisTarget` for a short-lived client (2 s to connect and per reply)."""
    return RedisTarget(
        url=redis.url, password_file=redis.password_file, tls=dict(redis.tls),
        sentinels=list(redis.sentinels), sentinel_master=redis.sentinel_master,
        cluster=redis.cluster, connect_timeout=2.0, socket_timeout=2.0,
        client_name=client_name,
    )  # fmt: skip


def _redis_settings(v: _Values) -> RedisSettings:
    sentinels: list[tuple[str, int]] = v["sentinel"] or []
    master = v["sentinel_master"]
    if sentinels and not master:
        v.fail("sentinel_master", "is required with --sentinel, e.g. mymaster")
    if master and not sentinels:
        v.fail("sentinel", "is required with --sentinel-master")
    url = v["redis_url"] or ("redis://" if sentinels else None)  # Sentinel gives the host
    if not url:
        v.fail("redis_url", "is required, e.g. redis://redis:6379/0")
    if not url.isprintable():  # never echoed: the error stays one line
        v.fail("redis_url", "contains control characters (a newline or a tab?)")
    try:
        check_url(url, host_required=not sentinels)
    except URLError as exc:
        v.fail("redis_url", str(exc))
    tls = _tls(v, url, bool(sentinels))
    acks = v["min_replicas_ack"]
    if sentinels and v.raw("min_replicas_ack")[1] == "default":
        acks = 1  # a Sentinel failover can otherwise leave two leaders for seconds
    cluster = bool(v["redis_cluster"])
    if cluster and sentinels:
        v.fail("redis_cluster", "cannot be combined with --sentinel", "true")
    if cluster and acks:
        v.fail("min_replicas_ack", "is not supported with --redis-cluster (WAIT must share "
               "the write's connection)", str(acks))  # fmt: skip
    return RedisSettings(url=url, password_file=v["redis_password_file"], sentinels=sentinels,
                         sentinel_master=master, cluster=cluster, tls=tls,
                         min_replicas_ack=acks, scripts=v["redis_scripts"])  # fmt: skip


def _tls(v: _Values, url: str, sentinels: bool) -> dict[str, str]:
    tls: dict[str, str] = {}
    for dest, option in (("redis_tls_ca", "ssl_ca_certs"), ("redis_tls_cert", "ssl_certfile"),
                         ("redis_tls_key", "ssl_keyfile")):  # fmt: skip
        path = v[dest]
        if path is None:
            continue
        if urlsplit(url).scheme != "rediss":
            v.fail(dest, "needs a rediss:// URL (TLS)", path)
        tls[option] = path
    if ("ssl_certfile" in tls) != ("ssl_keyfile" in tls):
        v.fail("redis_tls_cert", "and --redis-tls-key (env LEADERD_REDIS_TLS_KEY) go together",
               v.raw("redis_tls_cert")[0])  # fmt: skip
    try:
        check_tls_files(tls)
    except ValueError as exc:
        dest = "redis_tls_cert" if "its key" in str(exc) else "redis_tls_ca"
        v.fail(dest, str(exc), v.raw(dest)[0])
    return tls


def _election_settings(v: _Values) -> ElectionSettings:
    name = v["election"]
    if not name:
        v.fail("election", "is required, e.g. --election my-cron")
    identity = v["identity"]
    if identity is None:  # the default must pass the same rule
        identity = v.env.get("POD_NAME") or socket.gethostname()
        try:
            v.options["identity"].parse(identity)
        except ValueError as exc:
            v.fail("identity", str(exc), identity[:80])
    ttl = v["ttl"]
    try:
        refresh, renew = timing(ttl, v["refresh_interval"], v["renew_deadline"])
    except TimingError as exc:  # the rule is the elector's; here it is tied to a flag
        text, source = v.raw(exc.setting)
        rule = exc.rule.replace("renew_deadline (", "--renew-deadline (").replace(
            "ttl (", "--ttl (")  # fmt: skip
        v.fail(exc.setting, rule, text if source != "default" else f"{exc.value:g}s")
    text = v.raw("refresh_interval")[0] or f"{refresh:g}s"
    if refresh < MIN_ROUND_TRIP:
        v.fail("refresh_interval", f"must be at least {MIN_ROUND_TRIP * 1000:g}ms: every Redis "
               "call (a connect included) is bounded by min(refresh-interval, 2s), so a "
               "shorter one leaves no room for a round trip and the candidate never leads",
               text)  # fmt: skip
    if renew - refresh < MIN_ROUND_TRIP:
        v.fail("refresh_interval", f"must be at least {MIN_ROUND_TRIP * 1000:g}ms less than "
               f"--renew-deadline ({renew:g}s): a refresh that starts on time needs room for "
               "a Redis round trip before the leader steps down", text)  # fmt: skip
    retry_name, interval = v["retry"], v["retry_interval"]
    max_interval, retry_max = v["retry_max_interval"], v["retry_max"]
    max_retry = None if retry_max == 0 else retry_max
    retry: RetryStrategy
    if retry_name == "fixed":
        retry = FixedIntervalStrategy(interval, max_retry, jitter=0.1)
    else:
        if max_interval < interval:
            v.fail("retry_max_interval", f"must be >= --retry-interval ({interval:g}s)",
                   v.raw("retry_max_interval")[0])  # fmt: skip
        retry = NonFixedIntervalStrategy(interval, max_retry, max_interval=max_interval)
    return ElectionSettings(name=name, identity=identity, ttl=ttl, refresh_interval=refresh,
                            renew_deadline=renew, retry=retry, retry_name=retry_name,
                            retry_max=retry_max, priority=v["priority"],
                            preempt=bool(v["preempt"]), preempt_delay=v["preempt_delay"],
                            advertise=v["advertise"])  # fmt: skip


def _output_settings(v: _Values) -> OutputSettings:
    http = v["http_addr"]
    label, events = v["k8s_label"], bool(v["k8s_events"])
    pod_name = v.env.get("POD_NAME") or None
    namespace = _kubernetes(v, label, events, pod_name) if label or events else None
    return OutputSettings(
        http_host=http[0] if http else None, http_port=http[1] if http else 0,
        status_file=v["status_file"], log_format=v["log_format"], log_level=v["log_level"],
        k8s_label=label, k8s_events=events, pod_name=pod_name, pod_namespace=namespace,
    )  # fmt: skip


def _kubernetes(v: _Values, label: str | None, events: bool, pod_name: str | None) -> str:
    from .k8s import pod_namespace

    dest, shown = ("k8s_label", label) if label is not None else ("k8s_events", "true")
    if importlib.util.find_spec("kubernetes") is None:
        v.fail(dest, "needs the kubernetes client: pip install 'leaderd[k8s]'", shown)
    if not pod_name:
        v.fail(dest, "needs POD_NAME (set it from the downward API: fieldRef metadata.name)",
               shown)  # fmt: skip
    namespace = pod_namespace(v.env)
    if not namespace:
        v.fail(dest, "needs POD_NAMESPACE (downward API: fieldRef metadata.namespace) or a "
               "service-account namespace file", shown)  # fmt: skip
    return namespace


# -- argparse -----------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit status 1."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def new_parser(prog: str) -> argparse.ArgumentParser:
    return _Parser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter)


def join_negative_values(argv: list[str]) -> list[str]:
    """`--ttl -1s` -> `--ttl=-1s`, so a negative value gets the real error message."""
    valued = {o.flag for o in RUN_OPTIONS if not o.is_switch} | {"--wait", "--hold-off"}
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        nxt = argv[i + 1] if i + 1 < len(argv) else None
        if arg in valued and nxt is not None and nxt.startswith("-") and nxt[1:2].isdigit():
            out.append(f"{arg}={nxt}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def add_run_options(parser: argparse.ArgumentParser, only: frozenset[str] | None = None) -> None:
    """Add the options (all, or those in `only`) to `parser`, with their env and default."""
    for opt in RUN_OPTIONS:
        if only is not None and opt.dest not in only:
            continue
        default = f" [default: {opt.default}]" if opt.default is not None else ""
        text = f"{opt.help}{default} (env {opt.env})"
        if opt.is_list:
            parser.add_argument(opt.flag, dest=opt.dest, action="append", metavar="VALUE",
                                help=text)  # fmt: skip
        elif opt.is_switch:
            parser.add_argument(opt.flag, dest=opt.dest, action="store_true", default=None,
                                help=text)  # fmt: skip
        else:
            parser.add_argument(opt.flag, dest=opt.dest, metavar="VALUE", help=text)

"""`leaderd run` configuration: flags, their LEADERD_* environment variables, validation.

Every user error becomes one `ConfigError` line naming the flag, its env variable,
the value and the rule; the CLI prints it and exits 1, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import re
import socket
from dataclasses import dataclass, field
from typing import NoReturn
from urllib.parse import urlsplit

from .connection import (
    PasswordFile,
    RedisTarget,
    URLError,
    check_tls_files,
    check_url,
    redact_url,
)
from .statusfile import unsafe_directory
from .strategy import FixedIntervalStrategy, NonFixedIntervalStrategy, RetryStrategy


class ConfigError(Exception):
    """Invalid or inconsistent configuration; the message is one line for the user."""


#: Upper bound of every duration: Redis accepts it, and a crashed leader's lease cannot
#: block an election for longer than a day because of a typo.
MAX_DURATION = 24 * 3600.0
#: Lower bound of the follower's retry intervals.
MIN_RETRY_INTERVAL = 0.01
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,252}")
_IDENTITY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,252}")


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


@dataclass(frozen=True)
class Option:
    """One flag of `leaderd run` with its environment variable and default."""

    flag: str
    env: str
    default: str | None
    help: str
    is_switch: bool = False
    is_list: bool = False  # repeatable flag; the env variable is comma-separated

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


RUN_OPTIONS = [
    Option("--redis-url", "LEADERD_REDIS_URL", None,
           "redis://, rediss:// (TLS) or unix:// URL of the Redis server (required)"),
    Option("--redis-password-file", "LEADERD_REDIS_PASSWORD_FILE", None,
           "file holding the Redis password (e.g. a mounted Secret); never logged"),
    Option("--sentinel", "LEADERD_SENTINELS", None,
           "Redis Sentinel HOST:PORT (repeat for each); the URL then only gives "
           "db, username and password", is_list=True),
    Option("--sentinel-master", "LEADERD_SENTINEL_MASTER", None,
           "name of the Sentinel-monitored primary (required with --sentinel)"),
    Option("--redis-cluster", "LEADERD_REDIS_CLUSTER", None,
           "the URL names one node of a Redis Cluster (no pub/sub wake-ups there: "
           "followers poll and wake at lease expiry)", is_switch=True),
    Option("--redis-tls-ca", "LEADERD_REDIS_TLS_CA", None,
           "CA bundle to verify the Redis server's certificate (rediss:// URLs)"),
    Option("--redis-tls-cert", "LEADERD_REDIS_TLS_CERT", None,
           "client certificate for mutual TLS (with --redis-tls-key)"),
    Option("--redis-tls-key", "LEADERD_REDIS_TLS_KEY", None,
           "client private key for mutual TLS (with --redis-tls-cert)"),
    Option("--election", "LEADERD_ELECTION", None,
           "name of the election; the lock key is leaderd:{<election>} (required)"),
    Option("--identity", "LEADERD_IDENTITY", None,
           "who this candidate is (default: $POD_NAME, else the hostname)"),
    Option("--ttl", "LEADERD_TTL", "10s", "lease length in Redis"),
    Option("--refresh-interval", "LEADERD_REFRESH_INTERVAL", None,
           "leader refresh period (default: ttl/3)"),
    Option("--renew-deadline", "LEADERD_RENEW_DEADLINE", None,
           "leader steps down if no refresh succeeded for this long (default: ttl*2/3)"),
    Option("--retry", "LEADERD_RETRY", "fixed", "follower strategy: fixed or exponential"),
    Option("--retry-interval", "LEADERD_RETRY_INTERVAL", "2s",
           "fixed interval, or first exponential interval"),
    Option("--retry-max-interval", "LEADERD_RETRY_MAX_INTERVAL", "30s", "cap for exponential"),
    Option("--retry-max", "LEADERD_RETRY_MAX", "0",
           "give up after this many failed attempts, exit 4 (0: forever)"),
    Option("--min-replicas-ack", "LEADERD_MIN_REPLICAS_ACK", "0",
           "after acquire and refresh, WAIT for this many replicas; else count a failure"),
    Option("--http-addr", "LEADERD_HTTP_ADDR", "0.0.0.0:4040",
           "health, status and metrics server (empty: off)"),
    Option("--status-file", "LEADERD_STATUS_FILE", None,
           "JSON status file, replaced atomically on every change"),
    Option("--exit-on-loss", "LEADERD_EXIT_ON_LOSS", None,
           "exit 3 after stepping down from leadership", is_switch=True),
    Option("--k8s-label", "LEADERD_K8S_LABEL", None,
           "label this pod KEY=true while leader and KEY=false otherwise (needs POD_NAME)"),
    Option("--k8s-events", "LEADERD_K8S_EVENTS", None,
           "record a Kubernetes Event on this pod for each transition", is_switch=True),
    Option("--log-format", "LEADERD_LOG_FORMAT", "json", "json or console"),
    Option("--log-level", "LEADERD_LOG_LEVEL", "info", "debug, info, warning or error"),
]  # fmt: skip

_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class RunConfig:
    """Validated settings of `leaderd run`."""

    redis_url: str
    sentinels: list[tuple[str, int]]
    sentinel_master: str | None
    redis_cluster: bool
    tls: dict[str, str]
    redis_password_file: str | None
    election: str
    identity: str
    ttl: float
    refresh_interval: float
    renew_deadline: float
    retry: RetryStrategy
    retry_name: str
    retry_max: int
    min_replicas_ack: int
    http_host: str | None
    http_port: int
    status_file: str | None
    exit_on_loss: bool
    log_format: str
    log_level: str
    command: list[str] = field(default_factory=list)
    k8s_label: str | None = None
    k8s_events: bool = False
    pod_name: str | None = None
    pod_namespace: str | None = None

    def redacted_url(self) -> str:
        """The Redis URL with any password replaced, for logs."""
        return redact_url(self.redis_url)

    def redis_target(self, client_name: str | None = None) -> RedisTarget:
        """Where and how to connect to Redis, for `leaderd.connection`."""
        return RedisTarget(
            url=self.redis_url, password_file=self.redis_password_file, tls=dict(self.tls),
            sentinels=list(self.sentinels), sentinel_master=self.sentinel_master,
            cluster=self.redis_cluster, connect_timeout=min(2.0, self.refresh_interval),
            client_name=client_name,
        )  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit status 1."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def join_negative_values(argv: list[str]) -> list[str]:
    """`--ttl -1s` -> `--ttl=-1s`, so a negative value gets the real error message."""
    valued = {o.flag for o in RUN_OPTIONS if not o.is_switch}
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


#: The options that say how to reach Redis; `status` (and other clients) take them too.
CONNECTION_OPTIONS = frozenset({
    "redis_url", "redis_password_file", "sentinel", "sentinel_master", "redis_cluster",
    "redis_tls_ca", "redis_tls_cert", "redis_tls_key",
})  # fmt: skip


def add_run_options(parser: argparse.ArgumentParser, only: frozenset[str] | None = None) -> None:
    for opt in RUN_OPTIONS:
        if only is not None and opt.dest not in only:
            continue
        default = f" [default: {opt.default}]" if opt.default is not None else ""
        text = f"{opt.help}{default} (env {opt.env})"
        if opt.is_list:
            parser.add_argument(
                opt.flag, dest=opt.dest, action="append", metavar="VALUE", help=text
            )
        elif opt.is_switch:
            parser.add_argument(
                opt.flag, dest=opt.dest, action="store_true", default=None, help=text
            )
        else:
            parser.add_argument(opt.flag, dest=opt.dest, metavar="VALUE", help=text)


def _raw(args: argparse.Namespace, opt: Option, env: dict[str, str]) -> tuple[str | None, str]:
    """The value of `opt` and where it came from (for error messages)."""
    value = getattr(args, opt.dest, None)
    if value is not None:
        if opt.is_list:
            return ",".join(value if isinstance(value, list) else [str(value)]), opt.flag
        return (str(value) if not opt.is_switch else "true"), opt.flag
    if opt.env in env:
        return env[opt.env], opt.env
    return opt.default, "default"


def _fail(opt: Option, value: str | None, rule: str) -> NoReturn:
    shown = "" if value is None else f"={value!r}"
    raise ConfigError(f"{opt.flag} (env {opt.env}){shown}: {rule}")


def build_run_config(
    args: argparse.Namespace, command: list[str], env: dict[str, str] | None = None
) -> RunConfig:
    """Merge flags over environment over defaults, then validate everything."""
    env = dict(os.environ if env is None else env)
    opts = {o.dest: o for o in RUN_OPTIONS}
    raw = {dest: _raw(args, opt, env)[0] for dest, opt in opts.items()}

    def duration(dest: str) -> float:
        value = raw[dest]
        assert value is not None
        try:
            seconds = parse_duration(value)
        except ValueError:
            if value.strip().startswith("-"):
                _fail(opts[dest], value, "must be greater than zero")
            _fail(opts[dest], value, "must be a duration like 500ms, 2s, 1m30s or seconds")
        if seconds <= 0:
            _fail(opts[dest], value, "must be greater than zero")
        if seconds > MAX_DURATION:
            _fail(opts[dest], value, "must be at most 24h (a typo here could block an election)")
        return seconds

    sentinels: list[tuple[str, int]] = []
    for item in (raw["sentinel"] or "").split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            _fail(opts["sentinel"], item, "must be HOST:PORT, e.g. sentinel-0:26379")
        sentinels.append((host.strip("[]"), int(port)))
    sentinel_master = (raw["sentinel_master"] or "").strip() or None
    if sentinels and not sentinel_master:
        _fail(opts["sentinel_master"], None, "is required with --sentinel, e.g. mymaster")
    if sentinel_master and not sentinels:
        _fail(opts["sentinel"], None, "is required with --sentinel-master")
    url = (raw["redis_url"] or "").strip()
    if not url and sentinels:
        url = "redis://"  # db, user and password defaults; the host comes from Sentinel
    if not url:
        _fail(opts["redis_url"], None, "is required, e.g. redis://redis:6379/0")
    try:
        check_url(url, host_required=not sentinels)
    except URLError as exc:
        opt = opts["redis_url"]
        raise ConfigError(f"{opt.flag} (env {opt.env}): {exc}") from None
    scheme = urlsplit(url).scheme

    tls: dict[str, str] = {}
    for dest, option in (("redis_tls_ca", "ssl_ca_certs"), ("redis_tls_cert", "ssl_certfile"),
                         ("redis_tls_key", "ssl_keyfile")):  # fmt: skip
        path = raw[dest]
        if not path:
            continue
        if scheme != "rediss" and not (sentinels and url.startswith("rediss")):
            _fail(opts[dest], path, "needs a rediss:// URL (TLS)")
        if not os.access(path, os.R_OK) or not os.path.isfile(path):
            _fail(opts[dest], path, "cannot be read")
        tls[option] = path
    if ("ssl_certfile" in tls) != ("ssl_keyfile" in tls):
        _fail(
            opts["redis_tls_cert"],
            raw["redis_tls_cert"],
            "and --redis-tls-key (env LEADERD_REDIS_TLS_KEY) go together",
        )
    try:
        check_tls_files(tls)
    except ValueError as exc:
        dest = "redis_tls_cert" if "its key" in str(exc) else "redis_tls_ca"
        _fail(opts[dest], raw[dest], str(exc))

    if raw["redis_password_file"]:
        path = raw["redis_password_file"]
        try:
            PasswordFile(path).read()  # read again at every connect; checked once here
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            _fail(opts["redis_password_file"], path, f"cannot be read ({reason})")
        except ValueError:
            _fail(opts["redis_password_file"], path, "is empty")

    election = raw["election"] or ""
    if not election:
        _fail(opts["election"], None, "is required, e.g. --election my-cron")
    if not _NAME.fullmatch(election):
        _fail(
            opts["election"],
            election[:80],
            "must be 1-253 characters of letters, digits and . _ : / - "
            "starting with a letter or digit",
        )

    identity = raw["identity"] or env.get("POD_NAME") or socket.gethostname()
    if not _IDENTITY.fullmatch(identity):
        _fail(
            opts["identity"],
            identity[:80],
            "must be 1-253 characters of letters, digits and . _ : @ / - "
            "starting with a letter or digit",
        )

    ttl = duration("ttl")
    refresh = duration("refresh_interval") if raw["refresh_interval"] else ttl / 3
    renew = duration("renew_deadline") if raw["renew_deadline"] else ttl * 2 / 3
    if ttl < 0.1:
        _fail(opts["ttl"], raw["ttl"], "must be at least 100ms")
    if renew >= ttl:
        _fail(
            opts["renew_deadline"],
            raw["renew_deadline"] or f"{renew:g}s",
            f"must be less than --ttl ({ttl:g}s), or a leader could outlive its lease",
        )
    if refresh >= renew:
        _fail(
            opts["refresh_interval"],
            raw["refresh_interval"] or f"{refresh:g}s",
            f"must be less than --renew-deadline ({renew:g}s), "
            "or the leader could not refresh before stepping down",
        )

    retry_name = (raw["retry"] or "").strip().lower()
    if retry_name not in ("fixed", "exponential"):
        _fail(opts["retry"], raw["retry"], "must be fixed or exponential")
    interval = duration("retry_interval")
    max_interval = duration("retry_max_interval")
    for dest, seconds in (("retry_interval", interval), ("retry_max_interval", max_interval)):
        if seconds < MIN_RETRY_INTERVAL:
            _fail(opts[dest], raw[dest], "must be at least 10ms (a busy loop would burn a CPU)")
    retry_max_text = (raw["retry_max"] or "0").strip()
    try:
        retry_max = int(retry_max_text)
    except ValueError:
        _fail(opts["retry_max"], retry_max_text, "must be a whole number (0: retry forever)")
    if retry_max < 0:
        _fail(opts["retry_max"], retry_max_text, "must be >= 0 (0: retry forever)")
    max_retry = None if retry_max == 0 else retry_max
    retry: RetryStrategy
    if retry_name == "fixed":
        retry = FixedIntervalStrategy(interval, max_retry, jitter=0.1)
    else:
        if max_interval < interval:
            _fail(
                opts["retry_max_interval"],
                raw["retry_max_interval"],
                f"must be >= --retry-interval ({interval:g}s)",
            )
        retry = NonFixedIntervalStrategy(interval, max_retry, max_interval=max_interval)

    acks_text = (raw["min_replicas_ack"] or "0").strip()
    if sentinels and _raw(args, opts["min_replicas_ack"], env)[1] == "default":
        acks_text = "1"  # a Sentinel failover can otherwise leave two leaders for seconds
    if not acks_text.isdigit() or int(acks_text) > 100:
        _fail(opts["min_replicas_ack"], acks_text, "must be a whole number from 0 to 100")
    min_replicas_ack = int(acks_text)

    http_host: str | None = None
    http_port = 0
    addr = (raw["http_addr"] or "").strip()
    if addr:
        host, sep, port_text = addr.rpartition(":")
        if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            _fail(opts["http_addr"], addr, "must be HOST:PORT with a port 0-65535, e.g. :4040")
        http_host = host.strip("[]") or "0.0.0.0"
        http_port = int(port_text)

    status_file = raw["status_file"] or None
    if status_file:
        directory = os.path.dirname(os.path.abspath(status_file))
        if not os.path.isdir(directory):
            _fail(opts["status_file"], status_file, f"directory {directory} does not exist")
        if not os.access(directory, os.W_OK | os.X_OK):
            _fail(opts["status_file"], status_file, f"directory {directory} is not writable")
        unsafe = unsafe_directory(status_file)
        if unsafe:
            _fail(opts["status_file"], status_file, unsafe)

    def switch(dest: str) -> bool:
        opt = opts[dest]
        value, _ = _raw(args, opt, env)
        text = (value or "").strip().lower()
        if text not in _TRUE | _FALSE:
            _fail(opt, value, "must be true or false")
        return text in _TRUE

    exit_on_loss = switch("exit_on_loss")
    redis_cluster = switch("redis_cluster")
    if redis_cluster and sentinels:
        _fail(opts["redis_cluster"], "true", "cannot be combined with --sentinel")
    if redis_cluster and min_replicas_ack:
        _fail(
            opts["min_replicas_ack"],
            str(min_replicas_ack),
            "is not supported with --redis-cluster (WAIT must share the write's connection)",
        )
    k8s_events = switch("k8s_events")
    k8s_label = (raw["k8s_label"] or "").strip() or None
    if k8s_label is not None:
        prefix, _, name = k8s_label.rpartition("/")
        if not _LABEL_NAME.fullmatch(name) or (prefix and not _DNS_SUBDOMAIN.fullmatch(prefix)):
            _fail(
                opts["k8s_label"],
                k8s_label,
                "must be a label key like leader or example.com/leader (name: up to 63 "
                "letters, digits, - _ .)",
            )
    pod_name = env.get("POD_NAME") or None
    namespace = None
    if k8s_label is not None or k8s_events:
        from .k8s import pod_namespace

        flag = opts["k8s_label"] if k8s_label is not None else opts["k8s_events"]
        if importlib.util.find_spec("kubernetes") is None:
            _fail(
                flag, k8s_label or "true", "needs the kubernetes client: pip install 'leaderd[k8s]'"
            )
        if not pod_name:
            _fail(
                flag,
                k8s_label or "true",
                "needs POD_NAME (set it from the downward API: fieldRef metadata.name)",
            )
        namespace = pod_namespace(env)
        if not namespace:
            _fail(
                flag,
                k8s_label or "true",
                "needs POD_NAMESPACE (downward API: fieldRef metadata.namespace) "
                "or a service-account namespace file",
            )

    log_format = (raw["log_format"] or "").strip().lower()
    if log_format not in ("json", "console"):
        _fail(opts["log_format"], raw["log_format"], "must be json or console")
    log_level = (raw["log_level"] or "").strip().lower()
    if log_level not in LOG_LEVELS:
        _fail(opts["log_level"], raw["log_level"], "must be one of " + ", ".join(LOG_LEVELS))

    return RunConfig(
        redis_url=url, sentinels=sentinels, sentinel_master=sentinel_master,
        redis_cluster=redis_cluster, tls=tls,
        redis_password_file=raw["redis_password_file"] or None,
        election=election, identity=identity,
        ttl=ttl, refresh_interval=refresh, renew_deadline=renew, retry=retry,
        retry_name=retry_name, retry_max=retry_max, min_replicas_ack=min_replicas_ack,
        http_host=http_host, http_port=http_port,
        status_file=status_file, exit_on_loss=exit_on_loss, log_format=log_format,
        log_level=log_level, command=command, k8s_label=k8s_label, k8s_events=k8s_events,
        pod_name=pod_name, pod_namespace=namespace,
    )  # fmt: skip


def new_parser(prog: str) -> argparse.ArgumentParser:
    return _Parser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter)

"""Configuration: durations, flags over env over defaults, and one-line errors."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from leaderd.cli import main
from leaderd.config import (
    RUN_OPTIONS,
    ConfigError,
    build_run_config,
    parse_duration,
    redact_url,
)
from leaderd.strategy import FixedIntervalStrategy, NonFixedIntervalStrategy

from .daemons import leaderd_cmd

BASE = {"LEADERD_REDIS_URL": "redis://localhost:6379/0", "LEADERD_ELECTION": "jobs"}


def config(env: dict[str, str] | None = None, **flags: Any):  # type: ignore[no-untyped-def]
    ns = argparse.Namespace(**{o.dest: None for o in RUN_OPTIONS})
    for k, v in flags.items():
        setattr(ns, k, v)
    return build_run_config(ns, [], {**BASE, **(env or {})})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("2s", 2.0), ("1m30s", 90.0), ("1.5", 1.5), ("1h", 3600.0),
     ("10", 10.0), ("1m", 60.0), (" 3s ", 3.0), ("0.25s", 0.25)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "1x", "s", "1m30", "nan", "inf", "1s2", "--1s"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@given(st.text(max_size=30))
def test_duration_parser_fails_only_cleanly(text: str) -> None:
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert value == value and value not in (float("inf"), float("-inf"))


def test_defaults() -> None:
    cfg = config(env={"POD_NAME": "pod-7"})
    assert (
        cfg.election.ttl,
        cfg.election.refresh_interval,
        cfg.election.renew_deadline,
    ) == pytest.approx((10.0, 10 / 3, 20 / 3))
    assert cfg.election.identity == "pod-7"
    assert (
        isinstance(cfg.election.retry, FixedIntervalStrategy)
        and cfg.election.retry.max_retry is None
    )
    assert (cfg.outputs.http_host, cfg.outputs.http_port) == ("0.0.0.0", 4040)
    assert cfg.outputs.log_format == "json" and not cfg.exit_on_loss


def test_sentinels_from_flags_or_env() -> None:
    cfg = config(sentinel=["a:26379", "b:26380"], sentinel_master="m", redis_url="")
    assert cfg.redis.sentinels == [("a", 26379), ("b", 26380)] and cfg.redis.sentinel_master == "m"
    cfg = config(env={"LEADERD_SENTINELS": "a:1, b:2", "LEADERD_SENTINEL_MASTER": "m",
                      "LEADERD_REDIS_URL": "redis://:pw@/3"})  # fmt: skip
    assert cfg.redis.sentinels == [("a", 1), ("b", 2)]


def test_flags_win_over_env() -> None:
    cfg = config(env={"LEADERD_TTL": "30s", "LEADERD_RETRY": "exponential",
                      "LEADERD_RETRY_MAX": "5", "LEADERD_EXIT_ON_LOSS": "true"},
                 ttl="6s", identity="me")  # fmt: skip
    assert cfg.election.ttl == 6.0 and cfg.election.identity == "me" and cfg.exit_on_loss
    assert (
        isinstance(cfg.election.retry, NonFixedIntervalStrategy)
        and cfg.election.retry.max_retry == 5
    )


@pytest.mark.parametrize(
    ("env", "flags", "needle"),
    [
        ({"LEADERD_TTL": "-1s"}, {}, "--ttl (env LEADERD_TTL)='-1s': must be greater than zero"),
        ({}, {"ttl": "ten"}, "--ttl (env LEADERD_TTL)='ten': must be a duration"),
        ({}, {"renew_deadline": "11s"}, "must be less than --ttl"),
        ({}, {"refresh_interval": "7s"}, "must be less than --renew-deadline"),
        ({}, {"ttl": "50ms"}, "at least 100ms"),
        # A refresh needs room for a Redis round trip (1ms was accepted and never led).
        ({}, {"refresh_interval": "1ms"},
         "--refresh-interval (env LEADERD_REFRESH_INTERVAL)='1ms': must be at least 20ms"),
        ({"LEADERD_REFRESH_INTERVAL": "0.015"}, {}, "must be at least 20ms"),
        ({}, {"ttl": "1s", "refresh_interval": "660ms"},
         "must be at least 20ms less than --renew-deadline (0.666667s)"),
        ({}, {"refresh_interval": "2s", "renew_deadline": "2010ms"},
         "'2s': must be at least 20ms less than --renew-deadline (2.01s)"),
        ({"LEADERD_REDIS_URL": ""}, {}, "--redis-url (env LEADERD_REDIS_URL): is required"),
        ({}, {"redis_url": "http://x"}, "must start with redis://"),
        ({}, {"redis_url": "redis://:hunter2@"}, "has no host"),
        ({"LEADERD_ELECTION": ""}, {}, "--election (env LEADERD_ELECTION): is required"),
        ({}, {"election": "a b"}, "--election"),
        ({}, {"election": "{braces}"}, "--election"),
        ({}, {"election": "x" * 1024}, "--election"),
        ({}, {"election": "ünïcode"}, "--election"),
        ({}, {"identity": "has space"}, "--identity"),
        ({}, {"retry": "random"}, "must be fixed or exponential"),
        ({}, {"retry_max": "-1"}, "whole number >= 0"),
        ({}, {"retry_max": "many"}, "whole number"),
        ({}, {"retry": "exponential", "retry_interval": "5s", "retry_max_interval": "1s"},
         "--retry-max-interval"),
        ({}, {"http_addr": "localhost"}, "HOST:PORT"),
        ({}, {"http_addr": ":99999"}, "HOST:PORT"),
        ({}, {"status_file": "/nonexistent-dir/x.json"}, "does not exist"),
        ({}, {"log_format": "xml"}, "json or console"),
        ({}, {"log_level": "loud"}, "--log-level"),
        ({"LEADERD_EXIT_ON_LOSS": "maybe"}, {}, "true or false"),
        ({}, {"redis_password_file": "/nonexistent/pw"}, "cannot be read"),
        ({}, {"sentinel": ["nohostport"], "sentinel_master": "m"}, "must be HOST:PORT"),
        ({}, {"sentinel": ["s:26379"]}, "--sentinel-master (env LEADERD_SENTINEL_MASTER): is"),
        ({}, {"sentinel_master": "m"}, "--sentinel (env LEADERD_SENTINELS): is required"),
        ({}, {"min_replicas_ack": "-1"}, "--min-replicas-ack"),
        ({}, {"redis_tls_ca": "/etc/hostname"}, "needs a rediss:// URL"),
        ({}, {"redis_url": "rediss://h", "redis_tls_ca": "/nonexistent"}, "cannot be read"),
        ({}, {"redis_url": "rediss://h", "redis_tls_cert": "/etc/hostname"}, "go together"),
        ({}, {"redis_cluster": True, "min_replicas_ack": "1"}, "not supported with"),
        # Limits that keep a typo from hurting.
        ({}, {"ttl": "1000000h"}, "--ttl (env LEADERD_TTL)='1000000h': must be at most 24h"),
        ({}, {"ttl": "1e300"}, "must be at most 24h"),
        ({}, {"ttl": "25h", "renew_deadline": "1h"}, "must be at most 24h"),
        ({}, {"retry_interval": "1e-9"}, "--retry-interval (env LEADERD_RETRY_INTERVAL)="),
        ({}, {"retry_interval": "5ms"}, "must be at least 10ms"),
        ({}, {"retry": "exponential", "retry_max_interval": "1ms", "retry_interval": "1ms"},
         "must be at least 10ms"),
        ({}, {"retry_max_interval": "48h"}, "must be at most 24h"),
        # Workload-aware leadership and priority.
        ({}, {"priority": "101"}, "--priority (env LEADERD_PRIORITY)='101': must be a whole"),
        ({}, {"priority": "high"}, "from -100 to 100"),
        ({}, {"app_health_url": "ftp://x"}, "must start with http://, https:// or tcp://"),
        ({}, {"app_health_url": "tcp://host"}, "must be tcp://HOST:PORT"),
        ({}, {"app_health_url": "http://"}, "has no host"),
        ({}, {"app_health_url": "tcp://h:1", "app_health_interval": "10ms"}, "at least 50ms"),
        ({}, {"app_health_url": "tcp://h:1", "app_health_timeout": "5s"},
         "must not exceed --app-health-interval"),
        ({}, {"app_health_url": "tcp://h:1", "app_health_failures": "0"}, "from 1 to 100"),
        ({"LEADERD_APP_HEALTH_SUCCESSES": "x"}, {"app_health_url": "tcp://h:1"},
         "--app-health-successes (env LEADERD_APP_HEALTH_SUCCESSES)='x'"),
        # URLs are validated at start, without a traceback and without the secret.
        ({}, {"redis_url": "redis://[::1"}, "is not a valid URL"),
        ({}, {"redis_url": "0\n0"}, "contains control characters"),
        ({}, {"redis_url": "redis://:hunter2\t@h/0"}, "contains control characters"),
        ({}, {"redis_url": "redis://h:99999/0"}, "Port out of range"),
        ({}, {"redis_url": "redis://h:0/0"}, "port outside 1-65535"),
        ({}, {"redis_url": "redis://h/notadb"}, "--redis-url"),
        ({}, {"redis_url": "unix://"}, "no socket path"),
        ({}, {"redis_url": "redis://bad host/0"}, "invalid host"),
        ({}, {"redis_url": "http://u:hunter2@h/0?password=hunter2"}, "must start with redis://"),
        ({}, {"redis_url": "ftp://h/0?password=hunter2&db=1"}, "password=***"),
    ],
)  # fmt: skip
def test_config_errors_name_flag_env_and_rule(
    env: dict[str, str], flags: dict[str, Any], needle: str
) -> None:
    with pytest.raises(ConfigError) as err:
        config(env=env, **flags)
    text = str(err.value)
    assert needle in text and "\n" not in text
    assert "hunter2" not in text


def test_empty_password_file(tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        config(redis_password_file=str(pw))


def test_sentinel_defaults_to_one_replica_ack_unless_set() -> None:
    sentinel = {"sentinel": ["s:26379"], "sentinel_master": "m"}
    assert config(**sentinel).redis.min_replicas_ack == 1
    assert config(**sentinel, min_replicas_ack="0").redis.min_replicas_ack == 0  # explicit: kept
    assert config(env={"LEADERD_MIN_REPLICAS_ACK": "2"}, **sentinel).redis.min_replicas_ack == 2
    assert config().redis.min_replicas_ack == 0


def test_smallest_accepted_timings() -> None:
    e = config(ttl="100ms").election  # the least ttl with its default timings
    assert (e.refresh_interval, e.renew_deadline) == pytest.approx((0.1 / 3, 0.2 / 3))
    e = config(refresh_interval="20ms", renew_deadline="40ms", ttl="100ms").election
    assert (e.refresh_interval, e.renew_deadline) == pytest.approx((0.02, 0.04))


def test_password_is_redacted() -> None:
    assert redact_url("redis://u:hunter2@h:1/0") == "redis://u:***@h:1/0"
    assert redact_url("redis://:hunter2@h:1/0") == "redis://:***@h:1/0"
    assert redact_url("redis://h:1/0") == "redis://h:1/0"
    assert redact_url("redis://h:1/0?password=hunter2&db=2") == "redis://h:1/0?password=***&db=2"
    assert redact_url("unix://u:hunter2@/run/r.sock?db=1") == "unix://u:***@/run/r.sock?db=1"
    assert "hunter2" not in redact_url("redis://[::1:hunter2@")  # unparseable: nothing shown


def test_status_command_never_prints_a_query_string_password() -> None:
    out = subprocess.run(
        leaderd_cmd("status", "--redis-url", "redis://127.0.0.1:1/0?password=hunter2",
                    "--election", "jobs"),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1 and "cannot read" in out.stderr
    assert "hunter2" not in out.stdout + out.stderr and "Traceback" not in out.stderr


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(st.sampled_from([o.dest for o in RUN_OPTIONS if not o.is_switch]),
                       st.text(max_size=40), max_size=6))  # fmt: skip
def test_fuzzed_flags_give_a_config_or_a_clean_error(flags: dict[str, str]) -> None:
    flags.pop("redis_password_file", None)
    flags.pop("status_file", None)
    try:
        config(**flags)
    except ConfigError as exc:
        assert "\n" not in str(exc)


def test_cli_errors_exit_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--election", "jobs", "--redis-url", "redis://h", "--ttl", "-2s"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("leaderd: error: --ttl")
    assert main(["run", "--no-such-flag"]) == 1
    assert "unrecognized arguments" in capsys.readouterr().err
    assert main([]) == 1


def test_cli_error_in_a_real_process_has_no_traceback() -> None:
    out = subprocess.run(leaderd_cmd("run", "--election", "jobs"), capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"}, timeout=30)  # fmt: skip
    assert out.returncode == 1
    assert "Traceback" not in out.stderr and "--redis-url" in out.stderr


def test_status_checks_only_what_a_client_needs(tmp_path: Path) -> None:
    """`leaderd status` run inside a sidecar whose env holds settings of `run` (here a
    status file in a shared directory, which `run` refuses) still works."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    env = {"PATH": "/usr/bin:/bin", "LEADERD_STATUS_FILE": str(shared / "s.json"),
           "LEADERD_TTL": "not-a-duration"}  # fmt: skip
    out = subprocess.run(
        leaderd_cmd("status", "--redis-url", "redis://127.0.0.1:1/0", "--election", "jobs"),
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert out.returncode == 1 and "cannot read leaderd:{jobs}" in out.stderr, out.stderr


def test_preempt_and_advertise_from_env_and_flags() -> None:
    e = config({"LEADERD_PREEMPT": "true", "LEADERD_PREEMPT_DELAY": "3s",
                "LEADERD_ADVERTISE": "10.0.0.7:8080"}).election  # fmt: skip
    assert e.preempt is True and e.preempt_delay == 3.0 and e.advertise == "10.0.0.7:8080"
    e = config({"LEADERD_ADVERTISE": "x:1"}, advertise="y:2", preempt_delay="500ms").election
    assert e.advertise == "y:2" and e.preempt_delay == 0.5 and e.preempt is False
    default = config().election
    assert default.preempt is False and default.preempt_delay == 10.0 and default.advertise is None


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_help_texts(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in ("run", "check", "status", "resign", "switchover", "watch"):
        text = _help(capsys, cmd)
        description = text.split("\n\n", 2)[1]  # between the usage and the options
        assert not description.startswith("options:") and len(description) > 40, cmd
    run = _help(capsys, "run")
    exit_codes = run[run.index("exit codes:") :]
    for code, meaning in (("0", "clean stop"), ("1", "configuration error"),
                          ("3", "--exit-on-loss"), ("4", "--retry-max")):  # fmt: skip
        assert f"\n  {code} " in exit_codes and meaning in exit_codes
    assert "LEADERD_*" in exit_codes and "README" in exit_codes  # where the env is listed
    flat = " ".join(run.split())
    assert "(required unless --sentinel)" in flat
    assert "--exit-on-loss exit 3 after stepping down from leadership for any reason" in flat
    assert "resigned, switchover, preempted); not on its own shutdown" in flat
    check = " ".join(_help(capsys, "check").split())
    assert "--status-file FILE the status file of the leaderd run to check" in check


def test_a_command_without_separator_gets_a_one_line_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["run", "--redis-url", "redis://h", "--election", "e", "sleep", "100"]) == 1
    err = capsys.readouterr().err
    assert err == ("leaderd: error: unexpected 'sleep': put -- before the command: "
                   "leaderd run [options] -- CMD ARGS\n")  # fmt: skip
    assert main(["run", "--redis-url", "redis://h", "--bogus"]) == 1
    assert "unrecognized arguments: --bogus (see `leaderd run --help`)" in capsys.readouterr().err

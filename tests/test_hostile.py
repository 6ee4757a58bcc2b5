"""Values in Redis chosen by someone hostile: no value can stop a candidate, and what
is shown of it (status, logs, `leaderd status`, errors) is escaped and bounded."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable

import pytest
import redis

import leaderd
from devtools.devserver import RedisServer
from leaderd.redis_backend import MAX_SHOWN, display, parse_holder

from .daemons import Daemon, leaderd_cmd, poll

KEY = "leaderd:{jobs}"

HOSTILE = {
    "deep-brackets": "[" * 100_000,
    "deep-objects": '{"a":' * 5_000 + "1" + "}" * 5_000,
    "control-chars": "\x1b[2J\x1b[31mevil\x07\r\nnext",
    "one-megabyte": "x" * 1_000_000,
    "json-with-odd-identity": json.dumps({"identity": "\x1b]0;pwned\x07" + "y" * 999}),
    "json-list": "[1,2,3]",
    "bad-utf8": "\udcff",
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_parse_holder_never_raises_and_bounds_what_is_shown(name: str) -> None:
    holder = parse_holder(HOSTILE[name])
    assert len(holder.identity) <= MAX_SHOWN + 1
    assert holder.identity.isprintable()
    assert holder.token is None


def test_display_escapes_and_truncates() -> None:
    assert display("pod-a") == "pod-a"
    assert display("a\x1b[31m") == "a\\x1b[31m"
    assert display("é✓") == "é✓"  # printable non-ASCII is kept
    assert display("z" * 300) == "z" * 253 + "…"


def test_no_value_in_redis_stops_a_candidate(
    redis_server: RedisServer, spawn: Callable[..., Daemon]
) -> None:
    r = redis.Redis.from_url(redis_server.url)
    ds = [spawn(redis_server.url, f"pod-{i}") for i in range(2)]
    for d in ds:
        d.wait_http()
    poll(lambda: sum(d.ready() == 200 for d in ds) == 1, 10)
    for name, value in HOSTILE.items():
        if name == "bad-utf8":
            raw: bytes = b"\xff\xfe" * 10
        else:
            raw = value.encode("utf-8")
        r.delete(KEY)
        r.set(KEY, raw, px=600_000)  # taken over by a hostile writer
        poll(lambda: all(d.ready() == 503 for d in ds), 10)
        for d in ds:
            poll(lambda d=d: d.status()["leader"] is not None, 10)
            shown = d.status()["leader"]
            assert d.proc.poll() is None, (name, d.logs()[-2000:])
            assert len(shown) <= MAX_SHOWN + 1 and shown.isprintable(), name
        out = subprocess.run(
            leaderd_cmd("status", "--redis-url", redis_server.url, "--election", "jobs"),
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert out.returncode == 0, (name, out.stderr)
        assert "\x1b" not in out.stdout and len(out.stdout) < 1000, name
        check = subprocess.run(
            leaderd_cmd("status", "--redis-url", redis_server.url, "--election", "jobs", "--json"),
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        info = json.loads(check.stdout)
        assert info["foreign_holder"] is True or name == "json-with-odd-identity", name
    r.delete(KEY)
    poll(lambda: sum(d.ready() == 200 for d in ds) == 1, 10)  # and the election goes on
    for d in ds:
        assert d.proc.poll() is None
        assert "\x1b" not in d.logs()
        assert max(len(line) for line in d.logs().splitlines()) < 2000  # no 1 MB log lines
        assert "RecursionError" not in d.logs()


def test_library_errors_bound_a_hostile_holder(r: redis.Redis) -> None:
    r.set("jobs", "\x1b[31m" + "v" * 100_000, px=60_000)
    client = leaderd.LockClient(r)
    with pytest.raises(leaderd.FailedToPreemptLockError) as err:
        client.try_lock("jobs")
    assert len(str(err.value)) < 400 and "\x1b" not in str(err.value)


def test_candidate_values_round_trip_and_bound_what_they_publish() -> None:
    from leaderd.backend import Candidate
    from leaderd.redis_backend import candidate_value

    value = candidate_value(Candidate("pod-a", priority=5, address="10.0.0.7:8080"))
    holder = parse_holder(value[:-1] + ',"token":42}')  # as the acquire script stores it
    assert (holder.identity, holder.token, holder.address) == ("pod-a", 42, "10.0.0.7:8080")
    assert not holder.foreign
    odd = parse_holder('{"identity":"a","token":1,"address":"\\u001b[2J' + "x" * 999 + '"}')
    assert odd.address is not None and odd.address.isprintable() and len(odd.address) <= 254

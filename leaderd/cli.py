"""The `leaderd` command: `run` the daemon, `check` a status file, show `status` from Redis.

User errors print one line and exit 1; nothing here prints a traceback for them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import redis

from ._core import parse_holder as core_holder
from ._version import __version__
from .config import (
    CONNECTION_OPTIONS,
    MAX_DURATION,
    ConfigError,
    Option,
    add_run_options,
    build_client_config,
    build_run_config,
    client_target,
    join_negative_values,
    new_parser,
    parse_duration,
)
from .connection import redact_url, sync_client
from .errors import FunctionsNotLoadedError
from .redis_backend import election_key, parse_holder


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


RUN_EPILOG = """\
exit codes:
  0      clean stop (SIGTERM/SIGINT: the child is stopped and the lock released)
  1      configuration error (one line on stderr), or the HTTP address is in use
  3      with --exit-on-loss: stepped down for any reason but its own shutdown
         (lost, deadline, app_unhealthy, resigned, switchover, preempted)
  4      --retry-max attempts failed
  other  exec mode: the command's own exit code when it exits by itself

Every option can also be set by the LEADERD_* environment variable shown in its
help; a flag wins over its variable. The README's section "The daemon: leaderd run"
lists them all with their defaults.
"""

#: What `leaderd run` says when words follow the options without `--` before them.
SEPARATOR_HINT = "put -- before the command: leaderd run [options] -- CMD ARGS"


def _parser() -> argparse.ArgumentParser:
    parser = new_parser("leaderd")
    parser.description = "Redis leader election sidecar and lock tool."
    parser.add_argument("--version", action="version", version=f"leaderd {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=type(parser))
    run = sub.add_parser(
        "run",
        help="contend for leadership; publish the role; "
        "optionally run `-- CMD ARGS` only while leader",
        description=textwrap.fill(
            "Contend for leadership of an election in Redis and publish the role (HTTP "
            "/readyz, /status, /metrics, a status file, a pod label). With -- CMD ARGS, run "
            "CMD only while this candidate leads: it is started on each new term and "
            "stopped (SIGTERM, then SIGKILL after a grace period) on step-down.",
            78,
        ),
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # the epilog is a table
    )
    run.usage = "leaderd run [options] [-- CMD ARGS...]"
    add_run_options(run)
    check = sub.add_parser(
        "check", help="exit 0 iff a status file says this instance leads now",
        description="Read the status file `leaderd run --status-file` writes and exit 0 only "
        "if it says leader and its valid_until is still in the future (for exec probes); "
        "exit 1 otherwise, with the reason on stdout.",
    )  # fmt: skip
    check.add_argument("--status-file", required=True, metavar="FILE",
                       help="the status file of the leaderd run to check (the same path as "
                            "its --status-file), e.g. /run/leaderd/status.json")  # fmt: skip
    status = sub.add_parser(
        "status", help="show the current leader of an election from Redis",
        description="Show the current leader of an election as Redis holds it: identity, "
        "fencing token, remaining lease and advertised address.",
    )  # fmt: skip
    add_run_options(status, only=CONNECTION_OPTIONS | {"election"})
    status.add_argument("--json", action="store_true", help="print JSON")
    resign = sub.add_parser(
        "resign", help="make the current leader step down and stay out for --hold-off",
        description="Ask the current leader to step down and release the lock; it stays "
        "ineligible for --hold-off so that another candidate takes over. Exit 0 once it "
        "stepped down within --wait, else 1.",
    )  # fmt: skip
    add_run_options(resign, only=CONNECTION_OPTIONS | {"election"})
    resign.add_argument("--hold-off", default="30s", metavar="DURATION",
                        help="the old leader stays out this long [default: 30s]")  # fmt: skip
    _add_wait(resign)
    switch = sub.add_parser(
        "switchover", help="make the current leader hand over to the live candidate --to ID",
        description="Ask the current leader to hand the lock directly to candidate --to, "
        "which must be a live, eligible candidate of this election; no other candidate can "
        "take it in between. Exit 0 once handed over within --wait, else 1.",
    )  # fmt: skip
    add_run_options(switch, only=CONNECTION_OPTIONS | {"election"})
    switch.add_argument("--to", required=True, metavar="ID", help="the candidate to lead next")
    _add_wait(switch)
    watch = sub.add_parser(
        "watch", help="follow an election from Redis: the leader, then one line per change",
        description="Follow an election from Redis without being a candidate: the current "
        "leader first, then one line per change of leader or term, until SIGINT/SIGTERM.",
    )  # fmt: skip
    add_run_options(watch, only=CONNECTION_OPTIONS | {"election"})
    watch.add_argument("--json", action="store_true", help="print one JSON object per line")
    functions = sub.add_parser(
        "functions", help="load leaderd's Redis Functions library (an admin step, Redis >= 7)",
        description="Candidates and operator commands call leaderd's scripts as a Redis "
        "Functions library (FCALL), so their ACL user needs +fcall and never +eval. Load the "
        "library once per Redis (each primary of a Cluster; it persists and replicates) as a "
        "user allowed FUNCTION LOAD, and again after an upgrade of leaderd: `load` loads this "
        "version's library, `status` shows which are loaded (exit 3 if this version's is "
        "missing somewhere, 1 on an error), `prune` deletes the other versions' once no "
        "older candidate runs.",
    )  # fmt: skip
    functions.add_argument("action", choices=("load", "status", "prune"),
                           help="load, status or prune")  # fmt: skip
    add_run_options(functions, only=CONNECTION_OPTIONS)
    return parser


def _add_wait(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--wait", default="10s", metavar="DURATION",
                        help="how long to wait for the result [default: 10s]")  # fmt: skip


def _duration_arg(flag: str, text: str, minimum: float) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = -1.0
    if not minimum <= seconds <= MAX_DURATION:
        raise ConfigError(f"{flag}={text[:80]!r}: must be a duration from {minimum:g}s to 24h, "
                          "like 500ms, 10s or 1m30s")  # fmt: skip
    return seconds


def _control(args: argparse.Namespace) -> int:
    from .operator import CommandError, control

    redis_settings, election = build_client_config(args)
    wait = _duration_arg("--wait", args.wait, 0.1)
    target = client_target(redis_settings, f"leaderd-{args.cmd}")
    if args.cmd == "resign":
        hold_off = _duration_arg("--hold-off", args.hold_off, 0.0)
        to = None
    else:
        hold_off, to = 0.0, args.to
        if redis_settings.cluster:
            raise ConfigError(
                "switchover is not supported with --redis-cluster: a hand-over proves its "
                "target alive by its pub/sub subscription, which leaderd has not there "
                "(use resign)"
            )
    try:
        outcome = asyncio.run(
            control(target, election, args.cmd, to, hold_off, wait, redis_settings.scripts)
        )
    except (CommandError, FunctionsNotLoadedError) as exc:
        print(f"leaderd {args.cmd}: error: {exc}", file=sys.stderr)
        return 1
    print(outcome.line("resigned" if to is None else "switched over"))
    return 0


def _watch(args: argparse.Namespace) -> int:
    from .operator import watch

    redis_settings, election = build_client_config(args)
    target = client_target(redis_settings, "leaderd-watch")
    return asyncio.run(watch(target, election, args.json, lambda line: print(line, flush=True)))


#: `leaderd functions status`: this version's library is missing on a primary.
EXIT_NOT_LOADED = 3


def _functions(args: argparse.Namespace) -> int:
    from . import functions

    redis_settings, _ = build_client_config(args, election=False)
    where = redact_url(redis_settings.url)
    client = sync_client(client_target(redis_settings, "leaderd-functions"))
    try:
        if not redis_settings.cluster:
            _not_a_cluster_node(client, where)
        if args.action == "load":
            nodes = functions.load(client)
            on = ", ".join(n for n in nodes if n) or where
            print(f"loaded Redis Functions library {functions.LIBRARY} on {on}")
            return 0
        if args.action == "prune":
            deleted = functions.prune(client)
            for node, names in deleted.items():
                at = f" on {node}" if node else ""
                print(f"deleted {', '.join(names)}{at}" if names else f"nothing to delete{at}")
            return 0
        loaded = functions.libraries(client)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConfigError(f"cannot reach Redis at {where}: {exc}") from exc
    except redis.RedisError as exc:
        text = str(exc)
        if "unknown command" in text.lower() and "function" in text.lower():
            raise ConfigError(
                f"{where} has no Redis Functions (Redis < 7): candidates run the scripts "
                "with EVAL there (--redis-scripts eval or auto)"
            ) from exc
        hint = ""
        if isinstance(exc, redis.exceptions.NoPermissionError):
            hint = (" (the admin step needs +function|load +function|list "
                    "+function|delete +client|setname +hello +ping: see the README's "
                    "\"A minimal Redis ACL\")")  # fmt: skip
        elif "read only replica" in text.lower():
            hint = " (give the primary's URL)"
        raise ConfigError(
            f"Redis at {where} refused `functions {args.action}`: {text}{hint}"
        ) from exc
    missing = 0
    for node, names in loaded.items():
        at = f"{node}: " if node else ""
        state = "loaded" if functions.LIBRARY in names else "NOT loaded"
        missing += functions.LIBRARY not in names
        others = [n for n in names if n != functions.LIBRARY]
        extra = f" (other versions: {', '.join(others)})" if others else ""
        print(f"{at}{functions.LIBRARY} {state}{extra}")
    return EXIT_NOT_LOADED if missing else 0


def _not_a_cluster_node(client: redis.Redis, where: str) -> None:
    """Functions live per node: on a Cluster, one node's answer is not the cluster's."""
    try:
        info: Any = client.info("cluster")  # typed sync-or-async before redis-py 8
        enabled = info.get("cluster_enabled")
    except redis.exceptions.NoPermissionError:
        return  # INFO not granted: the admin knows its topology
    if str(enabled) == "1":
        raise ConfigError(
            f"{where} is a node of a Redis Cluster: add --redis-cluster, so that every "
            "primary is loaded and listed"
        )


def _status(args: argparse.Namespace) -> int:
    redis_settings, election = build_client_config(args)
    client = sync_client(client_target(redis_settings, "leaderd-status"))
    key = election_key(election)
    try:
        pipe = client.pipeline(transaction=False)
        pipe.get(key)
        pipe.pttl(key)
        raw, pttl = pipe.execute()
    except redis.RedisError as exc:
        raise ConfigError(
            f"cannot read {key} from {redact_url(redis_settings.url)}: {exc}"
        ) from exc
    value, _ = core_holder(raw, pttl)  # a lock being handed over has no holder yet
    holder = parse_holder(value) if value is not None else None
    token = holder.token if holder is not None else None
    info = {
        "election": election,
        "key": key,
        "leader": holder.identity if holder is not None else None,
        "foreign_holder": holder.foreign if holder is not None else None,
        "fencing_token": token,
        "leader_address": holder.address if holder is not None else None,
        "ttl_seconds": round(pttl / 1000, 3) if holder is not None and pttl >= 0 else None,
    }
    if args.json:
        print(json.dumps(info))
    elif holder is None:
        print(f"election {election}: no leader")
    else:
        address = f"  address {holder.address}" if holder.address else ""
        print(
            f"election {election}: leader {info['leader']}  token {token}  "
            f"ttl {info['ttl_seconds']}s{address}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, command = _split_command(argv)
    try:
        parser = _parser()
        args, extra = parser.parse_known_args(join_negative_values(options))
        if extra:
            if args.cmd == "run" and not extra[0].startswith("-"):
                raise ConfigError(f"unexpected {extra[0][:80]!r}: {SEPARATOR_HINT}")
            raise ConfigError(
                f"unrecognized arguments: {' '.join(extra)[:200]} (see `leaderd {args.cmd} --help`)"
            )
        if args.cmd == "check":
            from .statusfile import check_status_file

            if os.path.isdir(args.status_file):
                raise ConfigError(
                    f"--status-file {args.status_file[:200]!r} is a directory: give the file "
                    "that `leaderd run --status-file` writes, e.g. /run/leaderd/status.json"
                )
            ok, why = check_status_file(args.status_file)
            print(why)
            return 0 if ok else 1
        # Operator commands say what went wrong in their one error line; the library's
        # log lines (e.g. `functions_missing`) would repeat it.
        logging.getLogger("leaderd").addHandler(logging.NullHandler())
        if args.cmd == "status":
            return _status(args)
        if args.cmd in ("resign", "switchover"):
            return _control(args)
        if args.cmd == "watch":
            return _watch(args)
        if args.cmd == "functions":
            return _functions(args)
        if "--" in argv and not command:
            raise ConfigError("-- must be followed by a command: leaderd run [options] -- CMD ARGS")
        cfg = build_run_config(args, command)
    except ConfigError as exc:
        print(f"leaderd: error: {exc}", file=sys.stderr)
        return 1
    try:
        from .daemon import run_daemon
        from .logs import configure
    except ImportError as exc:
        print(
            f"leaderd: error: `leaderd run` needs the daemon extra ({exc.name} is missing): "
            "pip install 'leaderd[daemon]'",
            file=sys.stderr,
        )
        return 1

    configure(cfg.outputs.log_format, cfg.outputs.log_level)
    try:
        return asyncio.run(run_daemon(cfg))
    except KeyboardInterrupt:  # pragma: no cover - SIGINT before the loop took over
        return 0


__all__ = ["Option", "main"]


if __name__ == "__main__":
    sys.exit(main())

"""leaderd's scripts as a Redis Functions library (Redis >= 7), and how a client picks
FCALL or EVAL for each call, so that candidates need `+fcall` and never `+eval`.

The library is built from the same `.lua` files as the EVAL scripts, each wrapped in a
function; its name carries a digest of that code (`leaderd_<12 hex>`), so versions with
different scripts live side by side during a rolling upgrade. `ScriptRunner.flow` is
sans-I/O: it yields the commands to send and gets their replies, and both clients drive
it over their own connections.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Literal

import redis

from . import _core
from ._core import Script
from .errors import FunctionsNotLoadedError

#: How a client runs the scripts: `auto` (FCALL; the library is loaded if missing and
#: the user may, else EVAL if the user may), `functions` (FCALL only), `eval` (EVAL only:
#: Redis 6.2, or a proxy without FCALL).
ScriptsMode = Literal["auto", "functions", "eval"]
MODES: tuple[ScriptsMode, ...] = ("auto", "functions", "eval")
#: After the library was found missing and EVAL serves instead, FCALL is tried again
#: this often, so that a library loaded later is picked up (and at once if EVAL is
#: refused meanwhile).
RECHECK_SECONDS = 30.0
#: The same after a Redis without FCALL (6.2): it may be upgraded in place.
NO_FCALL_RECHECK_SECONDS = 600.0
#: Scripts that only keep existing state coherent may run when Redis is out of memory
#: (as their EVAL form could); acquire and control requests, which add state, may not.
_FLAGS: dict[str, tuple[str, ...]] = {
    "refresh": ("allow-oom",),
    "release": ("allow-oom",),
    "confirm": ("allow-oom",),
}
SCRIPTS: tuple[Script, ...] = (
    _core.ACQUIRE,
    _core.REFRESH,
    _core.RELEASE,
    _core.CONFIRM,
    _core.CONTROL,
)
log = logging.getLogger("leaderd")


def _build() -> tuple[str, str]:
    digest = hashlib.sha1()
    for script in SCRIPTS:
        for part in (script.name, script.source, *_FLAGS.get(script.name, ())):
            digest.update(part.encode("utf-8") + b"\0")
    name = f"leaderd_{digest.hexdigest()[:12]}"
    lines = [f"#!lua name={name}"]
    for script in SCRIPTS:
        flags = ", ".join(f"'{f}'" for f in _FLAGS.get(script.name, ()))
        lines += [
            f"local function {script.name}_script(KEYS, ARGV)",
            script.source.rstrip("\n"),
            "end",
            f"redis.register_function{{function_name = '{name}_{script.name}', "
            f"callback = {script.name}_script, flags = {{{flags}}}}}",
        ]
    return name, "\n".join(lines) + "\n"


#: The library this version of leaderd calls, and its code (for FUNCTION LOAD).
LIBRARY, LIBRARY_CODE = _build()
_FUNCTION = {script.name: f"{LIBRARY}_{script.name}" for script in SCRIPTS}


def function_name(script: Script) -> str:
    """The function of `LIBRARY` that runs `script`."""
    return _FUNCTION[script.name]


def load_command() -> tuple[str, ...]:
    """FUNCTION LOAD REPLACE of this version's library (idempotent: the name is a digest
    of the code)."""
    return ("FUNCTION", "LOAD", "REPLACE", LIBRARY_CODE)


def check_mode(mode: str) -> ScriptsMode:
    for known in MODES:
        if mode == known:
            return known
    raise ValueError(f"scripts must be one of {', '.join(MODES)}, got {mode!r}")


def _text(reply: object) -> str:
    return str(reply).lower() if isinstance(reply, redis.ResponseError) else ""


def is_missing(reply: object) -> bool:
    """FCALL's reply when the function is not loaded."""
    return _text(reply).startswith("function not found")


def no_fcall(reply: object) -> bool:
    """FCALL's reply from a Redis without Functions (6.2), or with FCALL renamed."""
    text = _text(reply)
    return text.startswith("unknown command") and "fcall" in text


def refused(reply: object, command: str) -> bool:
    """An ACL refusal of `command` itself (not of a key or a command inside a script)."""
    text = _text(reply)
    return ("no permissions to run the '" + command + "' command") in text or (
        text.startswith("unknown command") and command.split("|")[0] in text
    )


Command = tuple[Any, ...]
#: Yields commands to send on one connection; is sent their replies (errors in place);
#: returns the replies of the script call (the script's first, then WAIT's if any).
Flow = Generator[list[Command], list[Any], list[Any]]


class ScriptRunner:
    """One client's choice between FCALL and EVAL, learnt from Redis's replies and kept
    between calls, so that a steady state costs one round trip per call.

    A change of choice is logged once (`leaderd` logger): the library loaded by this
    client, the library missing and EVAL used instead, or neither possible.
    """

    def __init__(self, mode: str = "auto", clock: Callable[[], float] = time.monotonic) -> None:
        self.mode = check_mode(mode)
        self.clock = clock
        #: FCALL is not tried before this time (EVAL serves); 0: FCALL first.
        self.eval_until = float("inf") if self.mode == "eval" else 0.0
        self.no_load_until = 0.0  # FUNCTION LOAD was refused: not tried again before
        self._said = ""  # the last state logged, so each is logged once

    def first(
        self, script: Script, keys: list[str], args: list[str], min_replicas: int, wait_ms: int
    ) -> list[Command]:
        """The call to try first: FCALL, or EVALSHA while EVAL serves."""
        if self.eval_until and self.clock() < self.eval_until:
            return _core.script_commands("EVALSHA", script.sha, keys, args, min_replicas,
                                         wait_ms)  # fmt: skip
        return _core.script_commands("FCALL", _FUNCTION[script.name], keys, args,
                                     min_replicas, wait_ms)  # fmt: skip

    def rest(
        self,
        script: Script,
        keys: list[str],
        args: list[str],
        min_replicas: int,
        wait_ms: int,
        sent: list[Command],
        replies: list[Any],
    ) -> Flow | None:
        """None if `replies` (to `sent`, from `first`) are final, as they almost always
        are; else the flow that goes on (load the library, EVALSHA, EVAL)."""
        reply = replies[0]
        fcall = sent[0][0] == "FCALL"
        if not isinstance(reply, redis.ResponseError):
            if fcall and self._said != "functions":
                self._say("functions", logging.INFO, "scripts_fcall",
                          "calling the Redis Functions library %s", LIBRARY)  # fmt: skip
            return None
        if fcall and (is_missing(reply) or no_fcall(reply) or refused(reply, "fcall")):
            return self._without_fcall(script, keys, args, min_replicas, wait_ms, reply)
        if not fcall and _core.is_noscript(reply):
            return self._eval(script, keys, args, min_replicas, wait_ms, source_only=True)
        if not fcall and self.mode != "eval" and _eval_refused(reply):
            # EVAL served until the ACL took it away (as `functions_missing` advised):
            # FCALL now, in this same call, rather than fail until the next recheck
            self.eval_until = 0.0
            return self.flow(script, keys, args, min_replicas, wait_ms)
        return None

    def flow(
        self, script: Script, keys: list[str], args: list[str], min_replicas: int, wait_ms: int
    ) -> Flow:
        """The whole call as one flow: `first`, then `rest` if needed."""
        sent = self.first(script, keys, args, min_replicas, wait_ms)
        replies = yield sent
        rest = self.rest(script, keys, args, min_replicas, wait_ms, sent, replies)
        if rest is None:
            return replies
        return (yield from rest)

    def _without_fcall(
        self,
        script: Script,
        keys: list[str],
        args: list[str],
        min_replicas: int,
        wait_ms: int,
        first: redis.ResponseError,
    ) -> Flow:
        """FCALL failed with `first`: load the library where the user may and FCALL
        again, else EVAL where the user may, else `FunctionsNotLoadedError`."""
        now = self.clock()
        if is_missing(first) and now >= self.no_load_until:
            loaded = (yield [load_command()])[0]
            if not isinstance(loaded, Exception):
                self._say("loaded", logging.INFO, "functions_loaded",
                          "loaded the Redis Functions library %s", LIBRARY)  # fmt: skip
                replies = yield self.first(script, keys, args, min_replicas, wait_ms)
                if not is_missing(replies[0]):
                    return replies
            else:
                self.no_load_until = now + RECHECK_SECONDS
        if self.mode == "functions":
            message = f"{_why(first)}, and scripts='functions' allows no EVAL instead"
            if no_fcall(first):
                message += ": " + _NO_FCALL_HINT
            elif is_missing(first):
                message += ": " + _HOW_TO_LOAD
            self._say("none", logging.ERROR, "functions_missing", "%s", message)
            raise FunctionsNotLoadedError(message)
        self.eval_until = now + (NO_FCALL_RECHECK_SECONDS if no_fcall(first) else RECHECK_SECONDS)
        replies = yield from self._eval(script, keys, args, min_replicas, wait_ms)
        if _eval_refused(replies[0]):
            self.eval_until = 0.0  # nothing serves: try FCALL again next time
            message = f"{_why(first)}, and this user may not run EVAL instead: {_HOW_TO_LOAD}"
            self._say("none", logging.ERROR, "functions_missing", "%s", message)
            raise FunctionsNotLoadedError(message)
        if no_fcall(first):
            self._say("eval", logging.WARNING, "functions_missing",
                      "%s; using EVAL (its users need +evalsha +eval, and so may run any "
                      "Lua: Redis >= 7 avoids that with Functions)", _why(first))  # fmt: skip
        else:
            self._say("eval", logging.WARNING, "functions_missing",
                      "%s; using EVAL instead (load it with `leaderd functions load`, then "
                      "grant +fcall instead of +eval)", _why(first))  # fmt: skip
        return replies

    @staticmethod
    def _eval(
        script: Script,
        keys: list[str],
        args: list[str],
        min_replicas: int,
        wait_ms: int,
        source_only: bool = False,
    ) -> Flow:
        """EVALSHA, and EVAL if the script is not cached (`source_only`: EVALSHA was
        sent already and found nothing)."""
        replies: list[Any] = [redis.exceptions.NoScriptError("NOSCRIPT")]
        if not source_only:
            replies = yield _core.script_commands("EVALSHA", script.sha, keys, args,
                                                  min_replicas, wait_ms)  # fmt: skip
        if _core.is_noscript_reply(replies[0]):
            replies = yield _core.script_commands("EVAL", script.source, keys, args,
                                                  min_replicas, wait_ms)  # fmt: skip
        return replies

    def _say(self, state: str, level: int, event: str, message: str, *args: Any) -> None:
        """Log a change of state once; FCALL working from the start is not news."""
        previous, self._said = self._said, state
        if previous == state or (state == "functions" and previous in ("", "loaded")):
            return
        log.log(level, message, *args, extra={"leaderd_event": event, "library": LIBRARY})


_HOW_TO_LOAD = (
    "load it with `leaderd functions load` as a user allowed FUNCTION LOAD (an admin); "
    "on Redis < 7 use scripts='eval' (--redis-scripts eval) and grant +evalsha +eval"
)


_NO_FCALL_HINT = "use scripts='eval' (--redis-scripts eval) there, or Redis >= 7"


def _eval_refused(reply: object) -> bool:
    """EVALSHA or EVAL refused by the ACL, or absent (renamed away)."""
    return refused(reply, "evalsha") or refused(reply, "eval")


def _why(reply: object) -> str:
    if no_fcall(reply):
        return "this Redis has no FCALL (Redis < 7, or the command is renamed)"
    if refused(reply, "fcall"):
        return f"this user may not run FCALL (grant +fcall) for the library {LIBRARY}"
    return f"the Redis Functions library {LIBRARY} is not loaded"


def run_flow(flow: Flow, roundtrip: Callable[[list[Command]], list[Any]]) -> list[Any]:
    """Drive `flow` with a blocking `roundtrip` (send commands, read every reply)."""
    commands = next(flow)
    while True:
        try:
            commands = flow.send(roundtrip(commands))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


async def arun_flow(
    flow: Flow, roundtrip: Callable[[list[Command]], Awaitable[list[Any]]]
) -> list[Any]:
    """Drive `flow` with an awaitable `roundtrip`."""
    commands = next(flow)
    while True:
        replies = await roundtrip(commands)
        try:
            commands = flow.send(replies)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


def client_call(client: Any, key: str, command: Command) -> tuple[Command, dict[str, Any]]:
    """`command` as arguments to a redis-py client's `execute_command` (Redis Cluster, or
    a client bound to one connection).

    On a cluster, FCALL goes straight to `key`'s node (redis-py would otherwise ask a
    node for FCALL's keys first, a second round trip), and FUNCTION LOAD, named as one
    word, goes to every primary."""
    if command[:2] == ("FUNCTION", "LOAD"):
        return ("FUNCTION LOAD", *command[2:]), {}
    if command[0] == "FCALL" and hasattr(client, "get_node_from_key"):
        return command, {"target_nodes": client.get_node_from_key(key)}
    return command, {}


def client_roundtrip(client: Any, key: str) -> Callable[[list[Command]], list[Any]]:
    """A blocking roundtrip through a client's own commands: each command alone,
    errors returned in place."""

    def roundtrip(commands: list[Command]) -> list[Any]:
        replies: list[Any] = []
        for command in commands:
            args, options = client_call(client, key, command)
            try:
                replies.append(client.execute_command(*args, **options))
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies

    return roundtrip


def aclient_roundtrip(client: Any, key: str) -> Callable[[list[Command]], Awaitable[list[Any]]]:
    """`client_roundtrip` for a `redis.asyncio` client."""

    async def roundtrip(commands: list[Command]) -> list[Any]:
        if hasattr(client, "get_node_from_key") and hasattr(client, "initialize"):
            await client.initialize()  # a cluster client learns its slots lazily
        replies: list[Any] = []
        for command in commands:
            args, options = client_call(client, key, command)
            try:
                replies.append(await client.execute_command(*args, **options))
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies

    return roundtrip


# -- the admin step: load, list and prune the library (sync, for `leaderd functions`) ----
def _primaries(client: Any) -> list[tuple[str, Callable[..., Any]]]:
    """(node name, execute_command) of every primary: each primary of a Redis Cluster
    (Functions are per node there), else one, named ""."""
    if hasattr(client, "get_primaries"):
        return [
            (node.name, lambda *a, _n=node: client.execute_command(*a, target_nodes=_n))
            for node in client.get_primaries()
        ]
    return [("", client.execute_command)]


def libraries(client: Any) -> dict[str, list[str]]:
    """node -> the leaderd libraries loaded there (this version's is `LIBRARY`)."""
    found: dict[str, list[str]] = {}
    for node, execute in _primaries(client):
        listed = execute("FUNCTION LIST", "LIBRARYNAME", "leaderd_*")
        names = []
        for entry in listed or []:
            fields = (
                entry
                if isinstance(entry, dict)
                else dict(zip(entry[::2], entry[1::2], strict=False))
            )  # RESP3 answers a map, RESP2 a flat list
            name = fields.get(b"library_name", fields.get("library_name"))
            name = name.decode() if isinstance(name, bytes) else str(name)
            if name.startswith("leaderd_"):
                names.append(name)
        found[node] = sorted(names)
    return found


def load(client: Any) -> list[str]:
    """Load (or replace, with identical code) this version's library on every primary;
    the nodes it was loaded on."""
    nodes = []
    for node, execute in _primaries(client):
        execute("FUNCTION LOAD", "REPLACE", LIBRARY_CODE)
        nodes.append(node)
    return nodes


def prune(client: Any) -> dict[str, list[str]]:
    """Delete the leaderd libraries other than this version's (after a rolling upgrade:
    candidates of an older version fall back to EVAL or fail); node -> deleted."""
    deleted: dict[str, list[str]] = {}
    targets = dict(_primaries(client))
    for node, names in libraries(client).items():
        deleted[node] = [n for n in names if n != LIBRARY]
        for name in deleted[node]:
            targets[node]("FUNCTION DELETE", name)
    return deleted

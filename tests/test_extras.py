"""Packaging: the library needs only redis-py; the sidecar comes with the `daemon` extra."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import requires


def test_the_library_depends_on_redis_only() -> None:
    base = [r for r in requires("leaderd") or [] if "extra ==" not in r]
    assert [r.split(";")[0].replace(" ", "") for r in base] == ["redis>=5.3"]
    daemon = {r.split(";")[0].split(">")[0].strip() for r in requires("leaderd") or []
              if 'extra == "daemon"' in r}  # fmt: skip
    assert daemon == {"structlog", "prometheus-client", "h11"}


def test_importing_the_library_loads_no_daemon_dependency() -> None:
    code = ("import sys, leaderd, leaderd.connection; "
            "print(sorted(m for m in ('aiohttp', 'structlog', 'prometheus_client', "
            "'kubernetes') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=30)  # fmt: skip
    assert out.stdout.strip() == "[]"


def _without_the_daemon_extra(command: str) -> subprocess.CompletedProcess[str]:
    """`leaderd <command>` against an unreachable Redis, structlog not importable."""
    code = (
        "import sys; sys.modules['structlog'] = None; from leaderd.cli import main; "
        f"sys.exit(main(['{command}', '--redis-url', 'redis://127.0.0.1:1', '--election', 'e']))"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30)  # fmt: skip


def test_run_without_the_extra_says_what_to_install() -> None:
    out = _without_the_daemon_extra("run")
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "pip install 'leaderd[daemon]'" in out.stderr and "Traceback" not in out.stderr


def test_the_operator_commands_need_only_the_library() -> None:
    out = _without_the_daemon_extra("resign")
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "cannot reach Redis at redis://127.0.0.1:1" in out.stderr

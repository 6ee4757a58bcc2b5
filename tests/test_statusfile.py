"""The status file and `leaderd check` against files someone else may have touched."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from leaderd import statusfile
from leaderd.config import ConfigError
from leaderd.statusfile import StatusFileWriter, check_status_file, write_status

from .daemons import leaderd_cmd
from .test_config import config


def leader_status(valid_until: Any) -> str:
    return '{"role": "leader", "valid_until": ' + str(valid_until) + "}"


def test_written_0644_through_the_descriptor_never_by_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_chmod(*args: object, **kwargs: object) -> None:
        raise AssertionError("chmod by path can be redirected by a symlink")

    monkeypatch.setattr(os, "chmod", no_chmod)
    path = tmp_path / "s.json"
    write_status(str(path), {"role": "leader", "valid_until": time.time() + 5})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text())["role"] == "leader"


def test_a_directory_others_can_write_is_refused_unless_sticky(tmp_path: Path) -> None:
    open_dir = tmp_path / "shared"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(Exception, match=r"writable by other users .* without the sticky bit"):
        config(status_file=str(open_dir / "s.json"))
    open_dir.chmod(0o1777)  # like /tmp: only owners may rename or delete
    assert config(status_file=str(open_dir / "s.json")).outputs.status_file
    open_dir.chmod(0o777)
    out = subprocess.run(
        leaderd_cmd("run", "--redis-url", "redis://127.0.0.1:1", "--election", "e",
                    "--status-file", str(open_dir / "s.json")),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "sticky" in out.stderr


@pytest.mark.parametrize(
    "value", ["Infinity", "-Infinity", "NaN", "1e400", "true", '"9999999999"', "null"]
)
def test_check_accepts_only_finite_numbers(tmp_path: Path, value: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(leader_status(value))
    ok, why = check_status_file(str(path))
    assert not ok, why


def test_check_accepts_a_valid_own_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(leader_status(time.time() + 5))
    assert check_status_file(str(path))[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
def test_check_distrusts_a_file_of_another_user(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_text(leader_status(time.time() + 60))
    os.chown(path, 12345, 12345)  # planted by someone else (e.g. in sticky /tmp)
    ok, why = check_status_file(str(path))
    assert not ok and "not trusted" in why


def test_check_distrusts_links_huge_and_deep_files(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text(leader_status(time.time() + 60))
    link = tmp_path / "link.json"
    link.symlink_to(real)
    assert not check_status_file(str(link))[0]
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    ok, why = check_status_file(str(deep))
    assert not ok and "\n" not in why
    big = tmp_path / "big.json"
    big.write_text(" " * 100_000 + leader_status(time.time() + 60))
    assert not check_status_file(str(big))[0]
    out = subprocess.run(leaderd_cmd("check", "--status-file", str(deep)), capture_output=True,
                         text=True, timeout=30)  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr


def test_check_of_a_directory_is_one_line_naming_the_flag(tmp_path: Path) -> None:
    out = subprocess.run(leaderd_cmd("check", "--status-file", str(tmp_path)),
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1 and "--status-file" in out.stderr
    assert "is a directory" in out.stderr and out.stdout == ""
    ok, why = check_status_file(str(tmp_path))  # the library call answers, never raises
    assert not ok and "not a regular file" in why


def test_run_refuses_a_directory_as_status_file_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        config(status_file=str(tmp_path))
    out = subprocess.run(
        leaderd_cmd("run", "--redis-url", "redis://127.0.0.1:1", "--election", "e",
                    "--http-addr", "", "--status-file", str(tmp_path)),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("leaderd: error: --status-file (env LEADERD_STATUS_FILE)")
    assert "is a directory" in out.stderr and "starting" not in out.stderr


def test_a_group_writable_directory_is_refused_unless_sticky(tmp_path: Path) -> None:
    group_dir = tmp_path / "group"
    group_dir.mkdir()
    group_dir.chmod(0o775)
    with pytest.raises(ConfigError, match=r"writable by its group \(mode 775\) without the sticky"):
        config(status_file=str(group_dir / "s.json"))
    out = subprocess.run(
        leaderd_cmd("run", "--redis-url", "redis://127.0.0.1:1", "--election", "e",
                    "--http-addr", "", "--status-file", str(group_dir / "s.json")),
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert "chmod g-w,o-w" in out.stderr
    group_dir.chmod(0o1775)  # sticky: only a file's owner may replace it
    assert config(status_file=str(group_dir / "s.json")).outputs.status_file
    group_dir.chmod(0o755)
    assert config(status_file=str(group_dir / "s.json")).outputs.status_file


class _Elector:
    def __init__(self) -> None:
        self.role = "follower"

    def status(self) -> dict[str, Any]:
        return {"role": self.role, "valid_until": None}


class _Log:
    def error(self, *args: Any, **kw: Any) -> None: ...
    def info(self, *args: Any, **kw: Any) -> None: ...


def test_close_waits_for_the_write_in_flight_then_writes_the_final_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write running in its thread when the daemon stops cannot be cancelled: it must
    not land after the final one (the file ended `follower` in 2 of 5 SIGTERMs)."""
    path = tmp_path / "s.json"
    release, first_done = threading.Event(), threading.Event()
    roles: list[str] = []

    def slow_first(target: str, status: dict[str, Any]) -> None:
        roles.append(status["role"])
        if len(roles) == 1:
            release.wait(10)  # still running in its thread when close() is called
            write_status(target, status)
            first_done.set()
        else:
            write_status(target, status)

    monkeypatch.setattr(statusfile, "write_status", slow_first)

    async def scenario() -> None:
        elector = _Elector()
        writer = StatusFileWriter(str(path), _Log())
        writer.bind(elector)  # type: ignore[arg-type]
        writer.start()
        deadline = time.monotonic() + 5
        while roles != ["follower"]:
            assert time.monotonic() < deadline, roles
            await asyncio.sleep(0.005)
        elector.role = "stopped"
        closing = asyncio.create_task(writer.close())
        done, _ = await asyncio.wait({closing}, timeout=0.2)
        assert not done, "close() returned while a write was still running"
        release.set()
        await asyncio.wait_for(closing, 10)
        assert first_done.is_set() and roles == ["follower", "stopped"]

    asyncio.run(scenario())
    assert json.loads(path.read_text())["role"] == "stopped"

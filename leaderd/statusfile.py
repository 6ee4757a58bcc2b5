"""The status file: the status JSON, replaced atomically (temp file, fsync, rename)."""

from __future__ import annotations

import json
import os
import tempfile
import time
from typing import Any


def write_status(path: str, status: dict[str, Any]) -> None:
    """Replace `path` with `status` so that readers see the old or the new file, whole."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".leaderd-status-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(status, fh, separators=(",", ":"), sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def check_status_file(path: str, now: float | None = None) -> tuple[bool, str]:
    """(True, why) iff the file says leader and `valid_until` is in the future."""
    try:
        with open(path, encoding="utf-8") as fh:
            status = json.load(fh)
    except FileNotFoundError:
        return False, f"{path} does not exist"
    except (OSError, ValueError) as exc:
        return False, f"{path} is not readable JSON ({exc})"
    if not isinstance(status, dict):
        return False, f"{path} does not hold a status object"
    now = time.time() if now is None else now
    role = status.get("role")
    valid_until = status.get("valid_until")
    if role != "leader":
        return False, f"role is {role}"
    if not isinstance(valid_until, int | float) or valid_until <= now:
        return False, f"leadership expired (valid_until={valid_until}, now={now:.3f})"
    return True, f"leader, valid for {valid_until - now:.3f}s more"

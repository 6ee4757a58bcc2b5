"""The docs run: every ```python block in README.md, as written, against a real Redis.

A block whose first line is `# fragment` is exempt. The only change made before
running a block is the address: `localhost:6379` becomes the test's own server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from devtools.devserver import RedisServer

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """(line number, code) of each ```python block that is not a `# fragment`."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in BLOCK.finditer(text):
        code = match.group(1)
        if not code.lstrip().startswith("# fragment"):
            blocks.append((text.count("\n", 0, match.start()) + 1, code))
    return blocks


BLOCKS = python_blocks(ROOT / "README.md")


def test_the_readme_has_python_blocks_to_run() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize(("line", "code"), BLOCKS, ids=[f"README.md:{n}" for n, _ in BLOCKS])
def test_a_readme_python_block_runs_as_written(
    line: int, code: str, redis_server: RedisServer, r: redis.Redis
) -> None:
    r.flushall()
    code = code.replace("localhost:6379", f"127.0.0.1:{redis_server.port}")
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, f"README.md:{line} failed:\n{done.stderr[-3000:]}"

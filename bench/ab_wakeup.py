"""A/B of leaderd's wake-up (release -> first waiter holds the lock) between a git
revision and the working tree, runs alternating, python-redis-lock as the yardstick.

Machine noise moves absolute figures by 20 % from one run to the next; alternating the
two trees in one session tells a regression from a slow machine. Run with
`python bench/ab_wakeup.py REV [--runs 3] [--samples 16]`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: One measurement in a fresh interpreter: `lock_bench.wakeup` of the tree on sys.path.
CHILD = """
import json, statistics, sys
sys.argv = ["x"]
import lock_bench as b
from devtools.devserver import RedisServer
samples = int(SAMPLES)
res = b.Results()
libs = dict(b.LIBS)
with RedisServer() as server:
    pool = b.WaiterPool(server.url, 3)
    for _ in range(samples):
        b.wakeup(server.url, "leaderd", libs["leaderd"], res, None)
        b.wakeup(server.url, "leaderd", libs["leaderd"], res, pool)
        b.wakeup(server.url, "python-redis-lock", libs["python-redis-lock"], res, None)
    pool.close()
print(json.dumps([statistics.median(res.wake_ms["leaderd"]),
                  statistics.median(res.wake_proc_ms["leaderd"]),
                  statistics.median(res.wake_ms["python-redis-lock"])]))
"""


def measure(tree: Path, samples: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{tree / 'bench'}"}
    out = subprocess.run([sys.executable, "-c", CHILD.replace("SAMPLES", str(samples))],
                         cwd=tree, env=env, capture_output=True, text=True, check=True)  # fmt: skip
    return [float(x) for x in json.loads(out.stdout.strip().splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("rev", help="the git revision to compare the working tree with")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=16, help="wake-ups per run and kind")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leaderd-ab-") as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base),
                        args.rev], check=True, capture_output=True)  # fmt: skip
        try:
            print("| run | tree | leaderd threads p50 ms | leaderd processes p50 ms | "
                  "python-redis-lock threads p50 ms |")  # fmt: skip
            print("|---|---|---:|---:|---:|")
            for run in range(1, args.runs + 1):
                for name, tree in ((args.rev, base), ("working tree", REPO)):
                    t, p, prl = measure(tree, args.samples)
                    print(f"| {run} | {name} | {t:.3f} | {p:.3f} | {prl:.3f} |", flush=True)
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force",
                            str(base)], check=False, capture_output=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""`make chaos`: the long fault-injection run; prints a summary, writes bench/chaos-timeline.png."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .harness import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--daemons", type=int, default=5)
    parser.add_argument("--topology", choices=["single", "sentinel"], default="single")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="leaderd-chaos-") as tmp:
        name = "chaos-timeline.png" if args.topology == "single" else "chaos-sentinel.png"
        report = run(Path(tmp), args.seconds, args.seed, n=args.daemons,
                     plot=root / "bench" / name, topology=args.topology)  # fmt: skip
    print(report.summary())
    for v in report.violations:
        print("VIOLATION:", v)
    sys.exit(1 if report.violations else 0)

"""`make bench`: every benchmark, one after the other; paste the output into bench/README.md."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = [["lock_bench.py", "--rounds", "5"], ["daemon_bench.py"], ["scale_bench.py"]]

if __name__ == "__main__":
    for bench in BENCHES:
        print(f"\n## {' '.join(['python', 'bench/' + bench[0], *bench[1:]])}", flush=True)
        subprocess.run([sys.executable, str(HERE / bench[0]), *bench[1:]], check=True)

"""Run every benchmark script in turn (each prints its own table); `make bench` calls this.

    python benchmarks/run.py [core prune expand quantize kmeans reading sign_ablation app cli]
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = ["core", "sketch", "prune", "expand", "quantize", "kmeans", "reading", "sign_ablation", "app", "cli"]


def main() -> int:
    chosen = sys.argv[1:] or SCRIPTS
    unknown = [c for c in chosen if c not in SCRIPTS]
    if unknown:
        print(f"unknown benchmark(s) {unknown}; choose from {SCRIPTS}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"\n## bench_{name}.py\n", flush=True)
        if subprocess.call([sys.executable, str(HERE / f"bench_{name}.py")], cwd=HERE) != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

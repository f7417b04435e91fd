"""The cost of ``covers`` on the worst admissible delegations: pairwise (before) against indexed.

    .venv/bin/python bench/attenuation_bench.py [REV]

REV (default 3594b06, the last commit with the pairwise check) is the revision whose
``verifier/attenuation.py`` is the baseline; both run in this process, on the same
entries (``tests/test_attenuation_cost.py`` builds them at the 64 KB entry limit), and
must give the same answer. Results: docs/BENCH.md.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lineage.verifier.attenuation import covers  # noqa: E402
from tests.test_attenuation_cost import WORST_CASES, admissible  # noqa: E402


def baseline(rev: str):
    source = subprocess.run(
        ["git", "show", f"{rev}:verifier/attenuation.py"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "attenuation_old.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("lineage.verifier.attenuation_old", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def best(run, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    old = baseline(sys.argv[1] if len(sys.argv) > 1 else "3594b06")
    print("| case | parent / child | pairwise | indexed | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for name in WORST_CASES:
        parent, child, psize, csize = admissible(name)
        assert old.covers(parent, child) == covers(parent, child), name
        before = best(lambda: old.covers(parent, child), 1)  # noqa: B023
        after = best(lambda: covers(parent, child), 5)  # noqa: B023
        print(
            f"| {name} | {psize:,} / {csize:,} B | {before * 1000:,.1f} ms"
            f" | {after * 1000:.1f} ms | {before / after:,.0f}x |",
            flush=True,
        )


if __name__ == "__main__":
    main()

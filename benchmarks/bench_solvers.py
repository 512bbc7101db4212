"""Work-precision benchmark of every solver (issue: every solver on the same problem).

    python benchmarks/bench_solvers.py [--problems digits-gf-a1 ...] [--quick]

Same as `gflow bench solvers`: prints the table, writes benchmarks/results/solvers.csv
and work_precision.png.
"""

import sys

from gflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "solvers", *sys.argv[1:]]))

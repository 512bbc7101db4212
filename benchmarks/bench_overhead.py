"""Cost of one gradient evaluation inside a stored run, over one raw forward+backward.

    python benchmarks/bench_overhead.py [--quick]

Same as `gflow bench overhead`: runs the default `gflow run` (digits, FC L=3 h=100, the
paper's stepper, t_end 1e4, 100 saves) with and without storage, and prints the ratios
(see gflow.bench.overhead for how each is measured). Run it on an otherwise idle machine:
the ratios are of wall times.
"""

import sys

from gflow.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "overhead", *sys.argv[1:]]))

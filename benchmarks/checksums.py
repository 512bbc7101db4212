"""What the file format's integrity costs: Fletcher-32 on every dataset and the checkpoint's
SHA-256 digest (format version 5), as a share of the default run's wall time.

    python benchmarks/checksums.py [--repeats 5] [--config run.toml] [--out benchmarks/results/checksums]

Runs the configuration (default: the quick start's run) alternately with the checksums and
digests as written, and with both switched off in this process, ``repeats`` times each, and
reports the seconds inside the trajectory writer over the run's wall time (the writer's
share, measured within each run: the machine's speed drifts between runs more than the
difference). The cost of the checksums is the difference of the median shares. Prints a
table and writes checksums.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import h5py
import numpy as np

import gflow
from gflow.bench import _timed_run
from gflow.store import format as store_format
from gflow.store import writer as store_writer


@contextmanager
def without_checksums():
    """create_dataset without fletcher32, and a digest that hashes nothing."""
    create = h5py.Group.create_dataset

    def plain(self, name, *args, **kwargs):
        kwargs.pop("fletcher32", None)
        return create(self, name, *args, **kwargs)

    with mock.patch.object(h5py.Group, "create_dataset", plain), \
            mock.patch.object(store_writer, "state_digest", lambda state: b"0" * 64), \
            mock.patch.object(store_format, "state_digest", lambda state: b"0" * 64):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--config", help="TOML of RunConfig fields (default: the default run)")
    parser.add_argument("--out", default="benchmarks/results/checksums")
    args = parser.parse_args()
    cfg = gflow.RunConfig.load(args.config) if args.config else gflow.RunConfig()
    shares: dict[str, list[float]] = {"with": [], "without": []}
    sizes: dict[str, list[float]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.repeats):
            for variant in ("with", "without") if k % 2 == 0 else ("without", "with"):
                path = Path(tmp) / f"{variant}{k}.h5"
                if variant == "with":
                    timed = _timed_run(cfg, path)
                else:
                    with without_checksums():
                        timed = _timed_run(cfg, path)
                shares[variant].append(timed["storage_share"])
                sizes[variant].append(path.stat().st_size)
    result = {
        "repeats": args.repeats,
        "writer_share_with": float(np.median(shares["with"])),
        "writer_share_without": float(np.median(shares["without"])),
        "checksum_share": float(np.median(shares["with"]) - np.median(shares["without"])),
        "file_bytes_with": int(np.median(sizes["with"])), "file_bytes_without": int(np.median(sizes["without"])),
    }
    print(f"{'':32s} {'with':>10s} {'without':>10s}")
    shares_row = f"{result['writer_share_with']:10.4f} {result['writer_share_without']:10.4f}"
    print(f"{'writer share of wall time':32s} {shares_row}")
    print(f"{'file bytes':32s} {result['file_bytes_with']:10d} {result['file_bytes_without']:10d}")
    print(f"checksums and digests: {100 * result['checksum_share']:.2f}% of the run's wall time")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checksums.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out / 'checksums.json'}")


if __name__ == "__main__":
    main()

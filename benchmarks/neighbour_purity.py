"""Support-set quality over training (issue #9): the class purity of the nearest neighbours that
NNCLR / pNNCLR (``train/nn_purity``) and MSF (``train/purity``) chose, per epoch, from the
``metrics.csv`` of finished runs. Labels are used for monitoring only.

    python benchmarks/neighbour_purity.py /tmp/cmpcpu/runs/compare-cpu-{nnclr,pnnclr,msf}-seed0

Prints a Markdown table: epoch mean of the per-step purity (the share of neighbours whose stored
label equals the query's), and the share of neighbours that are the query's own stale copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

from relssl.evaluate.plots import read_metrics_csv


def per_epoch(rows, key):
    by = {}
    for r in rows:
        if key in r and "epoch" in r:
            by.setdefault(int(r["epoch"]), []).append(r[key])
    return {e: sum(v) / len(v) for e, v in sorted(by.items())}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    table = {}
    for run in map(Path, argv):
        rows = read_metrics_csv(run / "metrics.csv")
        key = "train/nn_purity" if any("train/nn_purity" in r for r in rows) else "train/purity"
        table[run.name] = (per_epoch(rows, key), per_epoch(rows, "train/nn_self"))
    epochs = sorted({e for p, _ in table.values() for e in p})
    print("| run | " + " | ".join(f"epoch {e + 1}" for e in epochs) + " | self-copies (last epoch) |")
    print("|---|" + "---|" * (len(epochs) + 1))
    for name, (pur, self_) in table.items():
        cells = [f"{100 * pur[e]:.1f}" if e in pur else "-" for e in epochs]
        last = f"{100 * self_[max(self_)]:.1f}" if self_ else "-"
        print(f"| {name} | " + " | ".join(cells) + f" | {last} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

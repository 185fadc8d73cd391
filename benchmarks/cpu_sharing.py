"""Does one run use all the cores, or do N runs at a time train more? (``compare.py --jobs N`` on a CPU)

    python benchmarks/cpu_sharing.py                                  # cpu-budget SimCLR: 1 run, then 2 at once
    python benchmarks/cpu_sharing.py --combo mocov2 --shares 1 2 --save

For each N in ``--shares``, N processes time the same training step at once (``steptime.py``: the
comparison preset's config of ``--combo``, seed 0, monitor off), each with cores // N torch threads,
the share ``compare.py --jobs N`` gives its workers. The machine's rate is the sum of the runs'
steps per second; the table gives it against the rate of one run alone. Run it on an idle machine:
the lone run reports the share of the CPUs that other processes used while it was timed.
``--save`` writes ``benchmarks/results/cpu_sharing_<preset>_<combo>.json`` with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def worker(preset: str, combo: str, steps: int, runs_dir: str, share: int) -> None:
    """One timing run in this process, with the threads a ``--jobs share`` worker gets; a JSON line out."""
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import compare

    compare.share_cores(share)
    (combo, method, plugins), = compare.select([combo], compare.PRESETS[preset], compare.RESULTS_DIR)
    timed = compare.time_steps(combo, method, plugins, compare.PRESETS[preset], None, Path(runs_dir), "cpu",
                               steps=steps)
    print(json.dumps({"seconds_per_step": timed["seconds_per_step"], "threads": torch.get_num_threads(),
                      "others_cpu_share": timed["others_cpu_share"]}), flush=True)


def measure(preset: str, combo: str, shares: list[int], steps: int) -> list[dict]:
    rows = []
    for n in shares:
        with tempfile.TemporaryDirectory(prefix="cpu_sharing_") as tmp:
            procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--preset", preset, "--combo", combo,
                                       "--steps", str(steps), "--share", str(n), "--runs-dir", str(Path(tmp) / str(i))],
                                      stdout=subprocess.PIPE, text=True) for i in range(n)]
            outs = [p.communicate()[0] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit(f"cpu_sharing: a timing run of {n} at once failed (exit codes {[p.returncode for p in procs]})")
        runs = [json.loads(o.strip().splitlines()[-1]) for o in outs]
        rate = sum(1.0 / r["seconds_per_step"] for r in runs)
        rows.append({"runs_at_once": n, "threads_each": runs[0]["threads"], "seconds_per_step": [r["seconds_per_step"] for r in runs],
                     "steps_per_s_total": round(rate, 4), "runs": runs})
    alone = next((r["steps_per_s_total"] for r in rows if r["runs_at_once"] == 1), None)
    for r in rows:
        r["vs_one_run"] = round(r["steps_per_s_total"] / alone, 3) if alone else None
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="cpu-budget", help="a compare.py preset (default cpu-budget)")
    ap.add_argument("--combo", default="simclr", help="a combination of compare.py (default simclr)")
    ap.add_argument("--shares", type=int, nargs="+", default=[1, 2], help="runs at a time to try (default 1 2)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per run, after 5 warm-up steps (default 20)")
    ap.add_argument("--save", action="store_true", help="write benchmarks/results/cpu_sharing_<preset>_<combo>.json")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--runs-dir", help=argparse.SUPPRESS)
    ap.add_argument("--share", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.preset, args.combo, args.steps, args.runs_dir, args.share)
        return 0
    if any(n < 1 for n in args.shares) or args.steps < 1:
        raise SystemExit("cpu_sharing: error: --shares and --steps must be >= 1")
    rows = measure(args.preset, args.combo, args.shares, args.steps)
    print(f"{args.preset} {args.combo}: {os.cpu_count()} cores")
    print("| runs at once | threads each | s / step of each | steps / s in all | vs one run |")
    print("|---|---|---|---|---|")
    for r in rows:
        each = ", ".join(f"{s:.3f}" for s in r["seconds_per_step"])
        print(f"| {r['runs_at_once']} | {r['threads_each']} | {each} | {r['steps_per_s_total']:.3f} | {r['vs_one_run']} |")
    lone = [x["others_cpu_share"] for r in rows if r["runs_at_once"] == 1 for x in r["runs"]]
    if lone and lone[0] is not None:  # (with N at once, each run sees the others: that share is expected)
        print(f"CPU share other processes used while the lone run was timed: {lone[0]:.0%} (should be near 0)")
    if args.save:
        sys.path.insert(0, str(ROOT / "src"))
        from relssl.engine.rundir import environment

        path = RESULTS / f"cpu_sharing_{args.preset}_{args.combo}.json"
        path.write_text(json.dumps({"command": "python benchmarks/cpu_sharing.py " + " ".join(argv or sys.argv[1:]),
                                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                    "machine": environment(), "rows": rows}, indent=1) + "\n")
        print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Cost of WCL's graph step (issue #7): the weak labels and the graph term against plain NT-Xent.

    python benchmarks/graph_step.py                 # batch 256 .. 4096 on the current device
    python benchmarks/graph_step.py --save          # also write benchmarks/results/graph_step_<device>.json

Per global batch size N, on random head outputs (128-d, the small-data recipes' graph head): the
time of the weak labels alone (1-NN index + ``nn_graph_labels``), of ``connected_components`` on the
same index (the looping version, for comparison), of ``ntxent_loss`` forward + backward (SimCLR's
loss) and of ``wcl_loss`` forward + backward (instance + graph term). The graph term's extra cost is
``wcl - ntxent``; put it beside the step time of ``benchmarks/throughput.py`` for its share. bf16
autocast on a GPU, float32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from relssl.engine.rundir import environment  # noqa: E402
from relssl.losses import connected_components, ntxent_loss, wcl_loss  # noqa: E402
from relssl.losses.graph import nn_graph_labels, one_nn_index  # noqa: E402


def timed(fn, device: torch.device, repeats: int, warmup: int = 3) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls, the device synchronised around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def measure(n: int, dim: int, device: torch.device, repeats: int) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    a1, a2, g1, g2 = (torch.randn(n, dim, device=device, generator=g, requires_grad=True) for _ in range(4))
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    nn_index = one_nn_index(F.normalize(g1.detach(), dim=1))

    def labels():
        nn_graph_labels(one_nn_index(F.normalize(g1.detach(), dim=1)))

    def ntxent():
        with amp:
            loss = ntxent_loss(a1, a2, 0.1)
        loss.backward()

    def wcl():
        with amp:
            loss = wcl_loss(a1, a2, g1, g2, 0.1)
        loss.backward()

    return {"batch": n, "dim": dim,
            "weak_labels_ms": round(timed(labels, device, repeats), 3),
            "nn_graph_labels_ms": round(timed(lambda: nn_graph_labels(nn_index), device, repeats), 3),
            "connected_components_ms": round(timed(lambda: connected_components(nn_index), device, repeats), 3),
            "ntxent_fwd_bwd_ms": round(timed(ntxent, device, repeats), 3),
            "wcl_fwd_bwd_ms": round(timed(wcl, device, repeats), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[256, 512, 1024, 4096])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--save", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [measure(n, args.dim, device, args.repeats) for n in args.batches]
    env = environment()
    print(f"device {env['device']}; head dim {args.dim}; median ms of {args.repeats}")
    print(f"{'batch':>6s} {'labels':>8s} {'nn_graph':>9s} {'loop cc':>8s} {'ntxent':>8s} {'wcl':>8s} {'graph term':>10s}")
    for r in rows:
        print(f"{r['batch']:6d} {r['weak_labels_ms']:8.2f} {r['nn_graph_labels_ms']:9.2f} "
              f"{r['connected_components_ms']:8.2f} {r['ntxent_fwd_bwd_ms']:8.2f} {r['wcl_fwd_bwd_ms']:8.2f} "
              f"{r['wcl_fwd_bwd_ms'] - r['ntxent_fwd_bwd_ms']:10.2f}")
    if args.save:
        out = Path(__file__).parent / "results" / f"graph_step_{'cuda' if device.type == 'cuda' else 'cpu'}.json"
        out.write_text(json.dumps({"command": "python " + " ".join(sys.argv), "rows": rows, "environment": env,
                                   "date": datetime.now().isoformat(timespec="seconds")}, indent=2))
        print(f"saved {out}")


if __name__ == "__main__":
    main()

"""The ``relssl`` command line: pretrain | eval | export | demo | list.

Every command validates its input before any work and reports bad input as one line
(``relssl: error: ...``) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from relssl.errors import RelsslError

CONFIG_DIR = Path(__file__).parent / "configs"


def resolve_recipe(name: str) -> Path:
    """A YAML path, or a packaged recipe name such as ``fashion_mnist/mocov2``."""
    p = Path(name)
    if p.is_file():
        return p
    packaged = CONFIG_DIR / (name if name.endswith(".yaml") else name + ".yaml")
    if packaged.is_file():
        return packaged
    from relssl.errors import ConfigError

    raise ConfigError(f"no config file {name!r}; pass a YAML path or a packaged recipe ({', '.join(list_recipes())})")


def list_recipes() -> list[str]:
    return sorted(str(p.relative_to(CONFIG_DIR).with_suffix("")) for p in CONFIG_DIR.glob("*/*.yaml"))


def _epilog() -> str:
    from relssl.augment import RECIPES
    from relssl.data import DATASETS
    from relssl.methods import METHODS
    from relssl.nn import BACKBONES

    return (f"methods:   {', '.join(METHODS)}\n"
            f"datasets:  {', '.join(DATASETS)}\n"
            f"backbones: {', '.join(BACKBONES)}\n"
            f"views:     {', '.join(RECIPES)}\n"
            f"recipes:   {', '.join(list_recipes())}\n\n"
            "examples:\n"
            "  relssl demo\n"
            "  relssl pretrain fashion_mnist/mocov2 optim.epochs=50 trainer.knn_every=5\n"
            "  relssl pretrain my.yaml --resume runs/fashion_mnist-mocov2-20261123-101500\n"
            "  relssl eval knn runs/fashion_mnist-mocov2-20261123-101500\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relssl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Self-supervised representation learning beyond instance discrimination.",
        epilog=_epilog())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("pretrain", help="pretrain a method from a YAML recipe plus key=value overrides",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog())
    p.add_argument("config", nargs="?", help="YAML recipe path or packaged name (e.g. fashion_mnist/mocov2)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.1 method.queue_size=8192")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")

    e = sub.add_parser("eval", help="evaluate a checkpoint")
    esub = e.add_subparsers(dest="protocol", metavar="PROTOCOL")
    k = esub.add_parser("knn", help="weighted kNN (or majority-vote) accuracy of a checkpoint's backbone")
    k.add_argument("checkpoint", help="a run directory (uses checkpoints/last.ckpt) or a .ckpt file")
    k.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.root=/data/fmnist")
    k.add_argument("--k", type=int, default=200)
    k.add_argument("--t", type=float, default=0.1)
    k.add_argument("--weighting", choices=("exp", "uniform"), default="exp")
    k.add_argument("--json", action="store_true", help="print the result as JSON")

    d = sub.add_parser("demo", help="pretrain the default method on Fashion-MNIST and evaluate it with kNN")
    d.add_argument("--method", default="mocov2", help="method to pretrain (default mocov2)")
    d.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: the ResNet-18 recipe on a GPU, a small CPU budget otherwise")
    d.add_argument("overrides", nargs="*", help="key=value overrides of the chosen recipe")

    sub.add_parser("list", help="list methods, datasets, backbones, view recipes and packaged recipes")
    return parser


def cmd_pretrain(args) -> int:
    from relssl.config import load_config
    from relssl.engine import pretrain

    if args.resume:
        if args.overrides or (args.config and "=" in args.config):
            from relssl.errors import ConfigError

            raise ConfigError("--resume continues a run with its saved config; do not pass overrides with it")
        res = pretrain(None, resume=args.resume)
    else:
        if not args.config:
            from relssl.errors import ConfigError

            raise ConfigError("pretrain needs a config: relssl pretrain fashion_mnist/mocov2 [key=value ...]")
        cfg = load_config(resolve_recipe(args.config), args.overrides)
        res = pretrain(cfg)
    print_summary(res)
    return 0


def print_summary(res: dict) -> None:
    print(f"\nrun directory: {res['run_dir']}")
    if res.get("knn_last_top1") is not None:
        init = res.get("knn_init_top1")
        init_txt = f"; random-init backbone {init:.2f}%" if init is not None else ""
        print(f"kNN top-1 (k=200, T=0.1, last epoch): {res['knn_last_top1']:.2f}%{init_txt}")


def cmd_eval(args) -> int:
    if args.protocol != "knn":
        build_parser().parse_args(["eval", "--help"])
        return 2
    from relssl.evaluate.checkpoint import evaluate_knn_checkpoint

    res = evaluate_knn_checkpoint(args.checkpoint, args.overrides, k=args.k, t=args.t, weighting=args.weighting)
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{res['checkpoint']}: kNN ({args.weighting}, k={args.k}, T={args.t}) "
              f"top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  ({res['bank']} bank / {res['test']} test images)")
    return 0


def cmd_demo(args) -> int:
    from relssl.demo import run_demo

    return run_demo(args.method, args.device, args.overrides)


def cmd_list(args) -> int:
    print(_epilog().split("\n\nexamples")[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return {"pretrain": cmd_pretrain, "eval": cmd_eval, "demo": cmd_demo, "list": cmd_list}[args.command](args)
    except RelsslError as err:
        print(f"relssl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relssl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

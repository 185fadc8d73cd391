"""The ``relssl`` command line: pretrain | eval | export | embed | report | demo | list.

Every command validates its input before any work and reports bad input as one line
(``relssl: error: ...``) with exit status 2. ``python -m relssl`` is the same command.
Every argument parser lives in this package: the training and evaluation commands here and in
:mod:`relssl.cli.eval_commands`, the demo in :mod:`relssl.cli.demo`; the layers below (``relssl.engine``,
``relssl.evaluate``) take plain arguments and know nothing of ``argparse``.
"""

from __future__ import annotations

import argparse
import sys

from relssl.errors import AlreadyFinished, ConfigError, RelsslError, RunInterrupted

def _epilog() -> str:
    from relssl.augment import RECIPES
    from relssl.config import list_recipes
    from relssl.data import DATASETS
    from relssl.methods import METHODS
    from relssl.methods.plugins import PLUGINS, hosts_of
    from relssl.nn import BACKBONE_FACTORIES, BACKBONES

    plugins = ", ".join(f"{name} (on {'/'.join(hosts_of(cls))})" for name, cls in PLUGINS.items())
    return (f"methods:   {', '.join(METHODS)}\n"
            f"plugins:   {plugins}\n"
            f"datasets:  {', '.join(DATASETS)}\n"
            f"backbones: {', '.join(BACKBONES)}; torchvision:<model> (any classification model), timm:<model> "
            f"(pip install 'relssl[timm]'), package.module:factory"
            + (f"; registered: {', '.join(BACKBONE_FACTORIES)}" if BACKBONE_FACTORIES else "") + "\n"
            f"views:     {', '.join(RECIPES)}\n"
            f"recipes:   {', '.join(list_recipes())}\n\n"
            "examples:\n"
            "  relssl demo\n"
            "  relssl pretrain fashion_mnist/mocov2 optim.epochs=50 trainer.knn_every=5\n"
            "  relssl pretrain --resume runs/fashion_mnist-mocov2-20261123-101500\n"
            "  relssl eval knn runs/fashion_mnist-mocov2-20261123-101500 --protocol all\n"
            "  relssl eval linear runs/fashion_mnist-mocov2-20261123-101500\n"
            "  relssl export runs/fashion_mnist-mocov2-20261123-101500 -o backbone.safetensors\n"
            "  relssl embed runs/fashion_mnist-mocov2-20261123-101500 -o embeddings.npz\n"
            "  relssl report runs/fashion_mnist-mocov2-20261123-101500\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relssl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Self-supervised representation learning beyond instance discrimination.",
        epilog=_epilog())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("pretrain", help="pretrain a method from a YAML recipe plus key=value overrides",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_epilog())
    p.add_argument("config", nargs="?", help="YAML recipe path or packaged name (e.g. fashion_mnist/mocov2); more "
                   "recipes may follow, laid over it in order (e.g. backbones/vit_tiny)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. optim.lr=0.1 method.queue_size=8192")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")

    from relssl.cli.eval_commands import add_embed_parser, add_eval_parsers

    add_eval_parsers(sub)  # eval knn|linear|semisup|tsne, export, report
    add_embed_parser(sub)

    d = sub.add_parser("demo", help="pretrain the default method on Fashion-MNIST and evaluate it with kNN")
    d.add_argument("--method", default="simclr", help="method to pretrain (default simclr)")
    d.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                   help="auto: the ResNet-18 recipe on a GPU, a small CPU budget otherwise")
    d.add_argument("overrides", nargs="*", help="key=value overrides of the chosen recipe")

    sub.add_parser("list", help="list methods, datasets, backbones, view recipes and packaged recipes")
    return parser


def cmd_pretrain(args) -> int:
    from relssl.config import load_config, load_data, resolve_recipes
    from relssl.fileio import resume_paths

    if args.resume:
        overrides = ([args.config] if args.config else []) + list(args.overrides)
        if any("=" not in o for o in overrides):
            raise ConfigError("--resume continues a run with its saved config; pass no recipe with it (only "
                              "trainer.* overrides, e.g. trainer.devices=1)")
        resume_paths(args.resume)  # a wrong path fails before the engine (Lightning) loads
        from relssl.engine import pretrain

        res = pretrain(None, resume=args.resume, resume_overrides=overrides)
    else:
        if not args.config:
            raise ConfigError("pretrain needs a config: relssl pretrain fashion_mnist/mocov2 [key=value ...]")
        # several recipes (no '='), laid over each other in order: a method recipe, then e.g. backbones/vit_tiny
        recipes = [args.config] + [o for o in args.overrides if "=" not in o]
        cfg = load_config(resolve_recipes(recipes), [o for o in args.overrides if "=" in o])
        splits = load_data(cfg)
        # the engine (Lightning) is imported once the config and the data hold: importing it takes seconds
        # on a small CPU, and a bad key or value, or a missing or corrupt dataset, is reported before that
        from relssl.engine import pretrain

        res = pretrain(cfg, splits=splits)
    from relssl.nn import rank

    if rank() == 0:  # under DDP every process runs this command (the process group outlives fit); one summary
        print_summary(res)
    return 0


def print_summary(res: dict) -> None:
    print(f"\nrun directory: {res['run_dir']}")
    if res.get("knn_last_top1") is not None:
        init = res.get("knn_init_top1")
        init_txt = f"; random-init backbone {init:.2f}%" if init is not None else ""
        k, t = res.get("knn_k", 200), res.get("knn_t", 0.1)
        print(f"kNN top-1 (k={k}, T={t:g}, last epoch): {res['knn_last_top1']:.2f}%{init_txt}")
    if res.get("rankme_last") is not None:
        init = res.get("rankme_init")
        init_txt = f"; random-init backbone {init:.1f}" if init is not None else ""
        print(f"RankMe (effective rank of the backbone features, label-free, last epoch): {res['rankme_last']:.1f}{init_txt}")


def cmd_eval(args) -> int:
    from relssl.cli.eval_commands import run_eval

    return run_eval(args)


def cmd_export(args) -> int:
    from relssl.cli.eval_commands import run_export

    return run_export(args)


def cmd_embed(args) -> int:
    from relssl.cli.eval_commands import run_embed

    return run_embed(args)


def cmd_report(args) -> int:
    from relssl.cli.eval_commands import run_report

    return run_report(args)


def cmd_demo(args) -> int:
    from relssl.cli.demo import run_demo

    return run_demo(args.method, args.device, args.overrides)


def cmd_list(args) -> int:
    print(_epilog().split("\n\nexamples")[0])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in t and not t.startswith("-") for t in extra):
        args.overrides += extra  # key=value after an option: `relssl embed RUN -o x.npz data.root=DIR`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    try:
        commands = {"pretrain": cmd_pretrain, "eval": cmd_eval, "export": cmd_export, "embed": cmd_embed,
                    "report": cmd_report, "demo": cmd_demo, "list": cmd_list}
        return commands[args.command](args)
    except AlreadyFinished as err:  # a requeued job's resume of a finished run: success, nothing to do
        print(f"relssl: {err}", file=sys.stderr)
        return 0
    except RunInterrupted as err:
        print(f"relssl: {err}", file=sys.stderr)
        return err.exit_code
    except RelsslError as err:
        print(f"relssl: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relssl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

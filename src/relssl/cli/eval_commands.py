"""The evaluation commands of the CLI: ``relssl eval knn|linear|semisup|tsne``, ``relssl export``,
``relssl embed``, ``relssl report`` (parsers and what they run; ``relssl.cli`` wires them in).

Every eval command takes a run directory (its ``checkpoints/last.ckpt``) or a ``.ckpt`` file plus
``data.*`` overrides, writes its JSON (and PNGs) into ``RUN_DIR/eval/`` when the checkpoint
belongs to a run directory (``--out DIR`` elsewhere, ``--no-save`` nowhere) and prints a short
summary (``--json``: the whole result). Bad input is one line: ``relssl: error: ...``, exit 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from relssl.errors import ConfigError
from relssl.fileio import resolve_checkpoint


class _OneLineParser(argparse.ArgumentParser):
    """argparse errors as one line (``relssl: error: ...``, exit 2), like every other bad input."""

    def error(self, message: str):  # noqa: D401 - argparse API
        print(f"relssl: error: {self.prog}: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def _fraction(text: str) -> float:
    t = text.strip()
    try:
        return float(t[:-1]) / 100.0 if t.endswith("%") else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction such as 0.01 or 1%") from None


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not true or false")


def _common(p: argparse.ArgumentParser, random_init: bool = True) -> None:
    p.add_argument("checkpoint", help="a run directory (uses checkpoints/last.ckpt) or a .ckpt file")
    p.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.root=/data/fmnist data.bank_subset=null")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    if random_init:
        p.add_argument("--random-init", action="store_true",
                       help="evaluate the same architecture randomly initialised (the baseline); saved as *_random")
    p.add_argument("--out", metavar="DIR", help="write the results here instead of RUN_DIR/eval/")
    p.add_argument("--no-save", action="store_true", help="write no files, only print")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")


def add_eval_parsers(sub) -> None:
    """Add ``eval`` (with knn, linear, semisup, tsne), ``export`` and ``report`` to the CLI's sub-parsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    e = sub.add_parser("eval", help="evaluate a checkpoint: knn, linear, semisup, tsne, diagnose",
                       description="Evaluate a checkpoint's backbone. Results go to RUN_DIR/eval/ "
                                   "(see docs/evaluation.md for the protocols and their sources).")
    esub = e.add_subparsers(dest="protocol", metavar="PROTOCOL", parser_class=_OneLineParser)

    k = esub.add_parser("knn", formatter_class=fmt,
                        help="weighted kNN, 1-NN / 20-NN majority vote; random-init and raw-pixel baselines",
                        description="kNN accuracy (top-1 / top-5) on L2-normalised backbone features: bank = the "
                                    "probe-train split, queries = the test split.\n"
                                    "  weighted: k nearest, votes exp(sim/T) (InstDisc / MoCo CIFAR monitor)\n"
                                    "  msf:      1-NN and 20-NN majority vote (MSF)\n"
                                    "  all:      both")
    _common(k)
    k.add_argument("--protocol", dest="knn_protocol", choices=("weighted", "msf", "all"), default="weighted")
    k.add_argument("--k", type=int, default=200, help="neighbours of the weighted protocol (default 200)")
    k.add_argument("--t", type=float, default=0.1, help="temperature of the weighted protocol (default 0.1)")
    k.add_argument("--weighting", choices=("exp", "uniform"), default="exp",
                   help="weighted protocol's votes: exp(sim/T) or uniform (default exp)")
    k.add_argument("--no-baselines", action="store_true", help="skip the random-init and raw-pixel baselines")

    lp = esub.add_parser("linear", formatter_class=fmt,
                         help="linear probe on the frozen backbone (cosine lr 1.0 or step lr 10)",
                         description="Linear probe: frozen backbone in eval mode, Linear(D, C) ~ N(0, 0.01), SGD "
                                     "Nesterov momentum 0.9, wd 0, batch 256, 100 epochs.\n"
                                     "  --schedule cosine: lr 1.0, cosine per iteration (MSVQ)\n"
                                     "  --schedule step:   lr 10 (ASCL; --lr 30 for pc-cp / MoCo), x0.1 at epochs 60, 80\n"
                                     "Without --augment the features are computed once. Reports the last epoch "
                                     "(headline) and the best over epochs (test-selected: optimistic).")
    _common(lp)
    lp.add_argument("--schedule", choices=("cosine", "step"), default="cosine")
    lp.add_argument("--lr", type=float, help="base learning rate (default 1.0 cosine, 10 step)")
    lp.add_argument("--epochs", type=int, default=100)
    lp.add_argument("--batch-size", type=int, default=256)
    lp.add_argument("--milestones", type=int, nargs="+", default=[60, 80], help="step schedule: x0.1 at these epochs")
    lp.add_argument("--weight-decay", type=float, default=0.0)
    lp.add_argument("--augment", action="store_true",
                    help="train on a fresh RandomResizedCrop(0.08-1)+flip view each epoch (made on the device)")
    lp.add_argument("--feature-norm", choices=("none", "l2", "l2_standardize"), default="none",
                    help="none (the official probes), l2, or l2_standardize (MSF's fixed BatchNorm)")
    lp.add_argument("--eval-every", type=int, default=1, help="test every N epochs for best-over-epochs (0: last only)")
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("-v", "--verbose", action="store_true", help="print every evaluated epoch")

    ss = esub.add_parser("semisup", formatter_class=fmt,
                         help="fine-tune backbone + linear head on 1%% or 10%% of the labels",
                         description="Semi-supervised: fine-tune the whole network on a class-balanced, seeded "
                                     "label subset of the probe-train split (indices saved with the result).\n"
                                     "Recipe (OUR CHOICE, not from a paper): SGD Nesterov 0.9, lr 0.01 backbone / "
                                     "0.1 head, wd 5e-4, batch 64,\ncosine per iteration, RRC(0.08-1)+flip views, "
                                     "60 epochs up to 5%% labels, 30 above (SimCLR v2's counts).")
    _common(ss)
    ss.add_argument("--fraction", type=_fraction, default=0.01, help="labelled share: 0.01, 1%%, 10%% ... (default 1%%)")
    ss.add_argument("--subset-seed", type=int, default=0, help="seed of the label subset")
    ss.add_argument("--epochs", type=int, help="default 60 (<= 5%% labels) or 30")
    ss.add_argument("--batch-size", type=int, default=64)
    ss.add_argument("--lr-backbone", type=float, default=0.01)
    ss.add_argument("--lr-head", type=float, default=0.1)
    ss.add_argument("--weight-decay", type=float, default=5e-4)
    ss.add_argument("--augment", default="linear", help="view recipe of the training images (default linear; none)")
    ss.add_argument("--eval-every", type=int, default=0, help="test every N epochs for best-over-epochs (0: last only)")
    ss.add_argument("--seed", type=int, default=0)
    ss.add_argument("-v", "--verbose", action="store_true", help="print every evaluated epoch")

    ts = esub.add_parser("tsne", help="t-SNE (or UMAP) plot of test embeddings coloured by class",
                         description="2-D embedding of L2-normalised backbone features of the test split, "
                                     "coloured by class, as a PNG.")
    _common(ts)
    ts.add_argument("--method", choices=("tsne", "umap"), default="tsne", help="umap needs umap-learn installed")
    ts.add_argument("--n", type=int, default=2000, help="test images plotted (class-balanced sample; 0 = all)")
    ts.add_argument("--perplexity", type=float, default=30.0)
    ts.add_argument("--seed", type=int, default=0)

    dg = esub.add_parser("diagnose", formatter_class=fmt,
                         help="false-negative diagnostics: in-batch FN rate / mass, queue fill, age, purity, self-match",
                         description="False-negative diagnostics of a checkpoint (labels used for monitoring only).\n"
                                     "  in-batch: test embeddings (method.online when present, else the backbone) in "
                                     "batches of --batch;\n            share of negatives of the anchor's class and "
                                     "the softmax mass they take\n  queues:   every FeatureQueue: fill, age in steps, "
                                     "labels, and for training images the purity and\n            self-match rate "
                                     "of their nearest queue rows (docs/evaluation.md, Diagnostics)")
    _common(dg, random_init=False)
    dg.add_argument("--batch", type=int, default=256, help="in-batch size and number of probe training images")
    dg.add_argument("--n", type=int, default=2000, help="test images (class-balanced subset)")
    dg.add_argument("--temperature", type=float, help="softmax temperature (default: the method's)")
    dg.add_argument("--topk", type=int, default=5, help="queue neighbours for purity / self-match (default 5)")
    dg.add_argument("--seed", type=int, default=0)

    x = sub.add_parser("export", help="write a checkpoint's backbone as torchvision-loadable safetensors (or ONNX)",
                       formatter_class=fmt,
                       description="Export the backbone (state dict + architecture metadata in the header) as "
                                   "safetensors.\nLoad it with relssl.evaluate.export.load_backbone(path), or with "
                                   "plain torchvision (ResNets):\n"
                                   "  net = torchvision.models.resnet18()\n"
                                   "  net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)  # CIFAR stem\n"
                                   "  net.maxpool = nn.Identity()  # when maxpool is false\n"
                                   "  net.fc = nn.Identity()\n"
                                   "  net.load_state_dict(safetensors.torch.load_file(path))")
    x.add_argument("checkpoint", help="a run directory (uses checkpoints/last.ckpt) or a .ckpt file")
    x.add_argument("overrides", nargs="*", help="data.* overrides (data.root=DIR where the dataset lives)")
    x.add_argument("-o", "--output", metavar="FILE",
                   help="default RUN_DIR/backbone.safetensors or .onnx (backbone_best.* for best.ckpt)")
    x.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors",
                   help="safetensors (default: the state dict, for torchvision / relssl) or onnx (the frozen "
                        "network with a dynamic batch axis, for onnxruntime and other runtimes; needs relssl[onnx])")
    x.add_argument("--fold-normalization", action="store_true",
                   help="onnx: the model takes images in [0, 1] and applies the dataset's mean / std itself")
    x.add_argument("--l2-normalize", action="store_true", help="onnx: unit-length output features (for cosine search)")
    x.add_argument("--maxpool", type=_bool, help="true|false: only needed when the dataset is not on this machine "
                                                 "and the config leaves the max-pool to the dataset")
    x.add_argument("--json", action="store_true", help="print the metadata as JSON")

    r = sub.add_parser("report", help="write RUN_DIR/report.md: config, curves, metrics, plots",
                       description="One Markdown page for a run: config, training curves (curves.png), "
                                   "results.json and every eval/*.json with its plots.")
    r.add_argument("run_dir", help="a run directory of relssl pretrain")
    r.add_argument("-o", "--output", metavar="FILE.md", help="default RUN_DIR/report.md")

    # the sub-parsers of export and report also report errors in one line
    for p in (e, x, r):
        p.__class__ = _OneLineParser


def add_embed_parser(sub) -> None:
    """Add ``embed`` (features of every image of a split, to .npz / .safetensors / .csv) to the CLI."""
    m = sub.add_parser("embed", formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="write a checkpoint's embeddings of every image of a split (.npz, .safetensors, .csv)",
                       description="Embed every image of a split with the frozen backbone (eval mode, the run's "
                                   "evaluation size and normalisation,\nas relssl eval knn) and write them atomically "
                                   "to -o FILE; the format follows its suffix:\n"
                                   "  .npz          embeddings (N, D) float32, index, split, labels, paths, meta\n"
                                   "  .safetensors  the same tensors; paths and split names in the metadata\n"
                                   "  .csv          index, split, path, label, e0 .. e{D-1}, one row per image\n"
                                   "Embed other images with data.* overrides, e.g. data.dataset=unlabeled_folder "
                                   "data.root=/my/images\n(docs/embeddings.md).",
                       epilog="examples:\n"
                              "  relssl embed runs/my-run -o embeddings.npz\n"
                              "  relssl embed runs/my-run data.dataset=unlabeled_folder data.root=/my/images "
                              "-o new.npz --normalize\n"
                              "  relssl embed runs/my-run --split test data.test_subset=1000 -o test.csv")
    m.add_argument("checkpoint", help="a run directory (uses checkpoints/last.ckpt) or a .ckpt file")
    m.add_argument("overrides", nargs="*",
                   help="data.* overrides, e.g. data.dataset=unlabeled_folder data.root=/my/images; "
                        "data.test_subset=N (bank_subset, subset) embeds a seeded class-balanced subset")
    m.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="where to write: FILE.npz, FILE.safetensors or FILE.csv")
    m.add_argument("--split", choices=("pretrain", "bank", "test", "all"), default="all",
                   help="which split (default all: pretrain, bank and test, each set of images once)")
    m.add_argument("--head", choices=("backbone", "projector"), default="backbone",
                   help="backbone features (default; what the evaluations use) or backbone + projection head")
    m.add_argument("--normalize", action="store_true", help="L2-normalise each embedding")
    m.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    m.add_argument("--batch-size", type=int, default=1024,
                   help="images per forward pass (default 1024, as relssl eval knn)")
    m.add_argument("--json", action="store_true", help="print the file's metadata as JSON")
    m.add_argument("-v", "--verbose", action="store_true", help="print progress")
    m.__class__ = _OneLineParser


# ----------------------------------------------------------------------------------- running


def _setup(args):
    from relssl.evaluate.checkpoint import prepare

    return prepare(args.checkpoint, args.overrides, device=args.device, random_init=getattr(args, "random_init", False))


def _save(setup, args, name: str, res: dict) -> dict:
    """Write ``res`` (without private ``_`` keys) to the eval directory; returns the public dict."""
    from relssl.evaluate.checkpoint import eval_dir, write_json

    public = {k: v for k, v in res.items() if not k.startswith("_")}
    out = None if args.no_save else eval_dir(setup, args.out)
    if out is not None:
        public["json"] = str(write_json(public, out / f"{name}.json"))
    if setup.run_dir is not None and not args.no_save:  # the run's experiment trackers (trainer.loggers)
        from relssl.engine.loggers import log_to_run

        public["logged_to"] = log_to_run(setup.run_dir, setup.cfg, public, f"eval/{name}")
    return public


def _print(args, res: dict, line: str) -> None:
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(line)
        if res.get("json"):
            print(f"saved: {res['json']}")


def _log(args):
    return (lambda msg: print(msg, file=sys.stderr, flush=True)) if getattr(args, "verbose", False) else None


def run_eval(args) -> int:
    if args.protocol is None:
        raise ConfigError("eval needs a protocol: relssl eval knn|linear|semisup|tsne|diagnose RUN_DIR (see relssl eval --help)")
    resolve_checkpoint(args.checkpoint)  # a wrong path fails before the evaluation modules (and Lightning) load
    return {"knn": _eval_knn, "linear": _eval_linear, "semisup": _eval_semisup, "tsne": _eval_tsne,
            "diagnose": _eval_diagnose}[args.protocol](args)


def _eval_knn(args) -> int:
    if args.k < 1 or args.t <= 0:
        raise ConfigError(f"--k must be >= 1 and --t > 0, got k={args.k}, t={args.t}")
    from relssl.evaluate.checkpoint import result_name
    from relssl.evaluate.knn import evaluate_knn

    s = _setup(args)
    res = evaluate_knn(s, protocol=args.knn_protocol, k=args.k, t=args.t, baselines=not args.no_baselines,
                       weighting=args.weighting)
    res = _save(s, args, result_name(s, "knn"), res)
    parts = []
    for name, acc in res["results"].items():
        label = f"weighted k={args.k} T={args.t}" if name == "weighted" else {"nn1": "1-NN", "nn20": "20-NN"}[name]
        if name == "weighted" and args.weighting == "uniform":
            label = f"vote k={args.k}"
        base = res.get("baselines") or {}
        extra = ", ".join(f"{b.replace('_', ' ')} {base[b][name]['top1']:.2f}%" for b in base if name in base[b])
        top5 = f"  top-5 {acc['top5']:.2f}%" if acc.get("top5") is not None else ""
        parts.append(f"  {label}: top-1 {acc['top1']:.2f}%{top5}" + (f"   (baselines: {extra})" if extra else ""))
    tag = " [random init]" if s.random_init else ""
    _print(args, res, f"{res['checkpoint']}{tag}: kNN on {res['bank']} bank / {res['test']} test images\n" + "\n".join(parts))
    return 0


def _eval_linear(args) -> int:
    from relssl.evaluate.checkpoint import eval_dir, result_name
    from relssl.evaluate.linear import linear_probe, make_probe_config
    from relssl.evaluate.plots import plot_confusion

    cfg = make_probe_config(schedule=args.schedule, lr=args.lr, epochs=args.epochs, batch_size=args.batch_size,
                            milestones=list(args.milestones), weight_decay=args.weight_decay, augment=args.augment,
                            feature_norm=args.feature_norm, eval_every=args.eval_every, seed=args.seed)
    s = _setup(args)
    res = linear_probe(s, cfg, log=_log(args))
    name = result_name(s, "linear")
    out = None if args.no_save else eval_dir(s, args.out)
    if out is not None:
        title = f"linear probe ({cfg.schedule}), last epoch: top-1 {res['top1']:.2f}%"
        res["confusion_png"] = str(plot_confusion(res["confusion"], res["class_names"], out / f"{name}_confusion.png", title))
    res = _save(s, args, name, res)
    tag = " [random init]" if s.random_init else ""
    _print(args, res, f"{res['checkpoint']}{tag}: linear probe ({cfg.schedule}, lr {cfg.base_lr:g}, {cfg.epochs} epochs, "
                      f"augment {'on' if cfg.augment else 'off'}; {res['train_size']} train / {res['test_size']} test)\n"
                      f"  last epoch: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%\n"
                      f"  best over epochs (test-selected, optimistic): top-1 {res['best_top1']:.2f}% at epoch {res['best_epoch']}")
    return 0


def _eval_semisup(args) -> int:
    from relssl.evaluate.checkpoint import eval_dir, result_name
    from relssl.evaluate.plots import plot_confusion
    from relssl.evaluate.semisup import fine_tune, make_semisup_config

    cfg = make_semisup_config(fraction=args.fraction, subset_seed=args.subset_seed, epochs=args.epochs,
                              batch_size=args.batch_size, lr_backbone=args.lr_backbone, lr_head=args.lr_head,
                              weight_decay=args.weight_decay, augment=args.augment, eval_every=args.eval_every,
                              seed=args.seed)
    s = _setup(args)
    res = fine_tune(s, cfg, log=_log(args))
    name = result_name(s, f"semisup_{100 * cfg.fraction:g}pct".replace(".", "p"))
    out = None if args.no_save else eval_dir(s, args.out)
    if out is not None:
        title = f"fine-tuned on {100 * cfg.fraction:g}% labels, last epoch: top-1 {res['top1']:.2f}%"
        res["confusion_png"] = str(plot_confusion(res["confusion"], res["class_names"], out / f"{name}_confusion.png", title))
    res = _save(s, args, name, res)
    sub = res["subset"]
    best = (f"\n  best over epochs (test-selected, optimistic): top-1 {res['best_top1']:.2f}% at epoch {res['best_epoch']}"
            if "best_top1" in res else "")
    tag = " [random init]" if s.random_init else ""
    _print(args, res, f"{res['checkpoint']}{tag}: fine-tuned on {100 * cfg.fraction:g}% of the labels "
                      f"({sub['size']} images, {sub['per_class']} per class, seed {sub['seed']}), {cfg.num_epochs} epochs\n"
                      f"  last epoch: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%{best}")
    return 0


def _eval_tsne(args) -> int:
    from relssl.evaluate.checkpoint import eval_dir, result_name
    from relssl.evaluate.plots import embedding_plot

    if args.method == "umap":
        try:
            import umap  # noqa: F401
        except ImportError:
            raise ConfigError("--method umap needs the optional package umap-learn: pip install umap-learn "
                              "(or use --method tsne)") from None
    s = _setup(args)
    name = result_name(s, args.method)
    out = None if args.no_save else eval_dir(s, args.out)
    res = embedding_plot(s, out / f"{name}.png" if out is not None else None, method=args.method, n=args.n,
                         seed=args.seed, perplexity=args.perplexity)
    res.pop("points")
    res = _save(s, args, name, res)
    kind = {"tsne": "t-SNE", "umap": "UMAP"}[args.method]
    _print(args, res, f"{res['checkpoint']}: {kind} of {res['n']} test embeddings"
                      + (f" -> {res['png']}" if res.get("png") else " (not saved: --no-save or a loose checkpoint without --out)"))
    return 0


def _eval_diagnose(args) -> int:
    if args.batch < 2 or args.n < 2 or args.topk < 1 or (args.temperature is not None and args.temperature <= 0):
        raise ConfigError(f"--batch and --n must be >= 2, --topk >= 1, --temperature > 0; got batch={args.batch}, "
                          f"n={args.n}, topk={args.topk}, temperature={args.temperature}")
    from relssl.evaluate.checkpoint import result_name
    from relssl.evaluate.diagnostics import diagnose

    s = _setup(args)
    res = diagnose(s, batch=args.batch, n=args.n, temperature=args.temperature, topk=args.topk, seed=args.seed)
    res = _save(s, args, result_name(s, "diagnose"), res)

    def f(v, pct=True):
        return "n/a" if v is None else (f"{100 * v:.1f}%" if pct else f"{v:.3g}")

    ib = res["in_batch"]
    lines = [f"{res['checkpoint']}: false-negative diagnostics (labels for monitoring only; {res['embedding']} "
             f"embeddings, T={res['temperature']:g}, step {res['global_step']})",
             f"  in-batch ({ib['images']} test images, batch {ib['batch']}): FN rate {f(ib['fn_rate'])}  "
             f"FN softmax mass {f(ib['fn_mass'])}  cos FN {f(ib['fn_sim'], False)} / TN {f(ib['tn_sim'], False)}"]
    for name, q in res["queues"].items():
        line = (f"  queue {name} ({q['size']} rows): fill {f(q['fill'])}  age mean {f(q['age_mean'], False)} "
                f"max {f(q['age_max'], False)} steps  duplicates {f(q['duplicate_rate'])}")
        if "nn1_purity" in q:
            qn = q["queue_negatives"]
            line += (f"\n    nearest rows: purity top-1 {f(q['nn1_purity'])}  self-match top-1 {f(q['nn1_self_match'])};"
                     f"  queue as negatives: FN rate {f(qn['fn_rate'])}  FN mass {f(qn['fn_mass'])}")
        lines.append(line)
    _print(args, res, "\n".join(lines))
    return 0


def run_export(args) -> int:
    resolve_checkpoint(args.checkpoint)  # before the export modules (and Lightning) load
    from relssl.evaluate.export import export_backbone, export_onnx

    if args.format == "onnx":
        path, meta = export_onnx(args.checkpoint, args.output, args.overrides, maxpool=args.maxpool,
                                 fold_normalization=args.fold_normalization, l2_normalize=args.l2_normalize)
        if args.json:
            print(json.dumps({"file": str(path), **meta}, indent=2))
        else:
            scale = "images in [0, 1]" if args.fold_normalization else "images normalised with the metadata's mean / std"
            print(f"exported {meta['backbone']} of {meta['method']} to {path} (ONNX)\n  input 'images' (batch, "
                  f"{meta['in_channels']}, {meta['input_size']}, {meta['input_size']}): {scale}; output 'features' "
                  f"(batch, {meta['feat_dim']}){', L2-normalised' if args.l2_normalize else ''}")
        return 0
    if args.fold_normalization or args.l2_normalize:
        raise ConfigError("--fold-normalization and --l2-normalize apply to --format onnx only")
    path, meta = export_backbone(args.checkpoint, args.output, args.overrides, maxpool=args.maxpool)
    if args.json:
        print(json.dumps({"file": str(path), **meta}, indent=2))
    else:
        arch = (f"{meta['backbone']} (in_channels {meta['in_channels']}, cifar_stem {meta['cifar_stem']}, "
                f"maxpool {meta['maxpool']}, {meta['feat_dim']}-d features)")
        note = ("loads into torchvision.models." + meta["backbone"] + " with conv1 / maxpool / fc set as in "
                "`relssl export --help`") if meta["torchvision_compatible"] else "load it with relssl.evaluate.export.load_backbone"
        print(f"exported {arch} of {meta['method']} to {path}\n  {note}")
    return 0


def run_embed(args) -> int:
    from relssl.evaluate.embed import check_output, embed_checkpoint, write_embeddings

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = check_output(args.output)  # a bad -o fails before any work
    emb = embed_checkpoint(args.checkpoint, args.overrides, split=args.split, head=args.head,
                           normalize=args.normalize, batch_size=args.batch_size, device=args.device,
                           log=_log(args))
    path = write_embeddings(out, emb)
    meta = emb.meta
    for note in meta.get("notes", []):
        print(f"relssl: note: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps({"file": str(path), **meta}, indent=2))
    else:
        parts = ", ".join(f"{n} {role}" for role, n in meta["splits"].items())
        known = [w for w, have in (("labels", emb.labels is not None), ("paths", emb.paths is not None)) if have]
        print(f"embedded {meta['count']} images ({parts}) of {meta['dataset']} with {meta['checkpoint']}: "
              f"{meta['dim']}-d {meta['head']} features{', L2-normalised' if meta['normalize'] else ''}, "
              f"{meta['eval_size']} px\n  -> {path}" + (f" (with {' and '.join(known)})" if known else ""))
    return 0


def run_report(args) -> int:
    from relssl.evaluate.report import write_report

    path = write_report(args.run_dir, args.output)
    print(f"report: {path}")
    return 0

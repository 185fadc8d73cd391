"""Published backbones: the weights of chosen comparison runs, each with the number it gave there.

``compare.py`` keeps the backbone it evaluated in every run directory (``backbone.safetensors``) and
records its sha256. This script publishes chosen ones in ``zoo/``: the file, its hash, where it
comes from (the results file, the combination, the seed, the config hash) and the kNN and
linear-probe accuracy the comparison recorded for it, after recomputing both from the published
file. The test suite recomputes them again for every entry (``tests/test_zoo.py``), so a
published number is one that the published weights give, with the evaluation relssl ships.
A file exported before the run's config travelled with its weights is published with the run
directory's ``config.yaml`` added to its metadata (the tensors unchanged, which is checked), so that
``relssl eval ... FILE`` can evaluate it alone; its hash is then not the record's, and the manifest
keeps both.

    python benchmarks/zoo.py add --results benchmarks/results/compare_cpu-budget.json --combo wcl --seed 2
    python benchmarks/zoo.py verify          # recompute every entry's kNN and probe; exit 1 on a mismatch
    python benchmarks/zoo.py --docs docs/zoo.md README.md   # rewrite the pages' generated block

Load one with relssl (``relssl.evaluate.load_backbone(path)``) or with the library its metadata
names (docs/zoo.md).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

import compare  # noqa: E402
from relssl.config import config_from_dict  # noqa: E402
from relssl.errors import CheckpointError, ConfigError  # noqa: E402

ZOO = ROOT / "zoo"
MANIFEST = "manifest.json"
# top-1 on the evaluation split: the same weights on another CPU or thread count round a few floats
# differently, which may flip a near-tie or two (kNN: 0.05 points = 5 of 10,000 test images); the
# linear probe's 30 epochs of SGD may carry such a difference a little further
TOLERANCE = {"knn_top1": 0.05, "linear_top1": 0.2}
BEGIN, END = "<!-- begin generated block: zoo/manifest.json (zoo.py --docs) -->", "<!-- end generated block: zoo -->"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(zoo: Path) -> dict:
    path = zoo / MANIFEST
    if not path.is_file():
        return {"entries": []}
    return json.loads(path.read_text())


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def find_record(results: Path, combo: str, seed: int) -> tuple[dict, dict]:
    """(the results file's data, the record of ``combo`` and ``seed``); one line when there is none."""
    if not results.is_file():
        raise ConfigError(f"results file {results} does not exist; pass --results benchmarks/results/compare_<preset>.json")
    data = json.loads(results.read_text())
    runs = [r for r in data.get("runs", []) if r["combo"] == combo and r["seed"] == seed]
    if not runs:
        have = sorted({(r["combo"], r["seed"]) for r in data.get("runs", []) if "backbone_sha256" in r})
        raise ConfigError(f"{results.name} has no run of {combo} seed {seed}; with weights it has "
                          f"{', '.join(f'{c} seed {s}' for c, s in have) or 'none'}")
    if not runs[-1].get("backbone_sha256"):
        raise ConfigError(f"{combo} seed {seed} was recorded before compare.py kept the evaluated backbone; "
                          "publish a run recorded since, or rerun this one")
    return data, runs[-1]


def run_config(path: Path, weights: Path) -> dict:
    """The config a run directory's ``config.yaml`` holds, as ``relssl export`` writes it into a file."""
    from relssl.config import read_yaml

    if not path.is_file():
        raise ConfigError(f"{weights} was exported without its config and {path} is gone; publish a run whose "
                          "directory still holds config.yaml, or one recorded since")
    return config_from_dict(read_yaml(path)).to_dict()


def write_with_metadata(src: Path, out: Path, meta: dict) -> None:
    """``src``'s tensors, unchanged, under the metadata ``meta`` (values JSON-encoded, as relssl export does)."""
    from safetensors.torch import load_file, save

    # serialised in memory, then written by Python: a full disk raises an OSError that names its cause
    out.write_bytes(save(load_file(str(src)), metadata={k: json.dumps(v) for k, v in meta.items()}))


def same_tensors(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def recompute(entry: dict, path: Path, splits=None, device: torch.device | None = None) -> dict:
    """kNN and linear-probe accuracy of the weights at ``path`` on the entry's evaluation split,
    computed as compare.py computes them (the same features, kNN and probe recipe and seed)."""
    from relssl.data import load_dataset
    from relssl.evaluate.export import load_backbone

    device = device or torch.device("cpu")
    ev = entry["eval"]
    splits = splits if splits is not None else load_dataset(ev["dataset"])
    net = load_backbone(path, map_location=device)
    train = splits.bank.subset(ev["bank"], seed=ev["split_seed"]).materialize()
    test = splits.test.subset(ev["test"], seed=ev["split_seed"]).materialize()
    if (len(train), len(test)) != (ev["bank"], ev["test"]):
        raise ConfigError(f"{ev['dataset']} here has {len(train)} bank / {len(test)} test images; the entry was "
                          f"evaluated on {ev['bank']} / {ev['test']}")
    ftr = compare.eval_features(net, train.images, ev["size"], splits.info, device)
    fte = compare.eval_features(net, test.images, ev["size"], splits.info, device)
    ev = compare.evaluate(ftr, train.labels, fte, test.labels, splits.info.num_classes, entry["eval"]["linear_epochs"],
                          entry["eval"]["split_seed"], device)
    return {"knn_top1": ev["knn_last_top1"], "knn_top5": ev["knn_last_top5"], "linear_top1": ev["linear_last_top1"]}


def check(entry: dict, got: dict) -> None:
    for key, tol in TOLERANCE.items():
        want = entry["recorded"][key]
        if abs(got[key] - want) > tol:
            what = "kNN" if key.startswith("knn") else "linear"
            raise CheckpointError(f"{entry['file']}: {what} top-1 {got[key]:.2f}% here, {want:.2f}% recorded "
                                  f"(more than {tol} points apart): the weights or the evaluation changed")


def add(results: Path, combo: str, seed: int, runs_dir: Path | None, zoo: Path, splits=None) -> dict:
    """Publish the backbone of one recorded run: checked against the record's hash, its accuracies recomputed."""
    from relssl.evaluate.export import read_metadata

    data, rec = find_record(results, combo, seed)
    src = (runs_dir / Path(rec["run_dir"]).name if runs_dir else Path(rec["run_dir"])) / "backbone.safetensors"
    if not src.is_file():
        raise ConfigError(f"{src} does not exist (the run directory is gone?); pass --runs-dir where the run is")
    digest = sha256(src)
    if digest != rec["backbone_sha256"]:
        raise CheckpointError(f"{src} has sha256 {digest[:12]}..., the record {rec['backbone_sha256'][:12]}...: "
                              "not the backbone the comparison evaluated")
    meta = read_metadata(src)
    added_config = "config" not in meta
    if added_config:
        # exported before the run's config travelled with its weights: the published file gets the
        # run directory's config.yaml (same tensors), so that the command line can evaluate it alone
        meta["config"] = run_config(src.parent / "config.yaml", src)
    trained = compare.config_hash(config_from_dict(meta["config"]))
    if trained != rec["config_hash"]:
        where = src.parent / "config.yaml" if added_config else src
        raise CheckpointError(f"{where} holds config {trained}, the record's run was trained with {rec['config_hash']}: "
                              "not the backbone of this run")
    name = compare.run_name(data["preset"], combo, seed).removeprefix("compare-")
    entry = {
        "name": name, "file": f"{name}.safetensors", "sha256": digest, "bytes": src.stat().st_size,
        "backbone": meta["backbone"], "feat_dim": meta["feat_dim"], "in_channels": meta["in_channels"],
        "method": meta["method"], "plugins": rec["plugins"], "combo": combo, "seed": seed,
        "source": {"results": _relative(results), "preset": data["preset"], "config_hash": rec["config_hash"],
                   "backbone_sha256": digest, "config_added": added_config,
                   "epochs": rec["epochs"], "steps": rec["steps"], "pretrain_images": rec["pretrain_images"]},
        "eval": {"dataset": meta["dataset"], "bank": rec["eval_train"], "test": rec["eval_test"], "split_seed": seed,
                 "size": rec.get("eval_size") or meta["input_size"], "k": compare.KNN_K, "t": compare.KNN_T,
                 "linear_epochs": data["settings"]["linear_epochs"]},
        "recorded": {"knn_top1": rec["knn_last_top1"], "knn_top5": rec["knn_last_top5"],
                     "linear_top1": rec["linear_last_top1"]},
    }
    got = recompute(entry, src, splits)
    check(entry, got)
    entry["verified"] = {**got, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
                         "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                         "torch": torch.__version__}
    manifest = read_manifest(zoo)
    manifest["entries"] = [e for e in manifest["entries"] if e["name"] != name] + [entry]
    manifest["entries"].sort(key=lambda e: e["name"])
    # both files are written in full before either replaces anything (renames need no space)
    tmps = (zoo / (entry["file"] + ".tmp"), zoo / (MANIFEST + ".tmp"))
    target = zoo / entry["file"]
    try:
        zoo.mkdir(parents=True, exist_ok=True)
        if added_config:
            write_with_metadata(src, tmps[0], meta)
            intact = sha256(src) == digest and same_tensors(src, tmps[0])
        else:
            shutil.copyfile(src, tmps[0])
            intact = sha256(tmps[0]) == digest
        if not intact:  # the run's file changed while it was checked
            raise CheckpointError(f"{src} changed while it was being published; publish it again")
        entry["sha256"], entry["bytes"] = sha256(tmps[0]), tmps[0].stat().st_size
        target = zoo / MANIFEST
        tmps[1].write_text(json.dumps(manifest, indent=1) + "\n")
        tmps[0].replace(zoo / entry["file"])
        tmps[1].replace(zoo / MANIFEST)
    except (OSError, CheckpointError) as err:
        for t in tmps:
            t.unlink(missing_ok=True)
        if isinstance(err, CheckpointError):
            raise
        raise ConfigError(f"cannot write {target}: {err.strerror or err}; choose a writable --zoo") from err
    return entry


def verify(zoo: Path, splits=None) -> list[str]:
    """Every entry's file hash and recomputed accuracies against the manifest; the problems, one line each."""
    problems = []
    for entry in read_manifest(zoo)["entries"]:
        path = zoo / entry["file"]
        try:
            if not path.is_file():
                raise CheckpointError(f"{path} is missing")
            if sha256(path) != entry["sha256"]:
                raise CheckpointError(f"{path}: sha256 differs from the manifest's")
            got = recompute(entry, path, splits)
            check(entry, got)
            print(f"zoo: {entry['name']}: kNN {got['knn_top1']:.2f}% (recorded {entry['recorded']['knn_top1']:.2f}%), "
                  f"linear {got['linear_top1']:.2f}% (recorded {entry['recorded']['linear_top1']:.2f}%)")
        except (CheckpointError, ConfigError) as err:
            problems.append(str(err))
    return problems


def render_block(manifest: dict) -> str:
    lines = ["Generated from `zoo/manifest.json` by `python benchmarks/zoo.py --docs <pages>` (do not edit by hand: "
             "a test compares this block with the manifest). kNN top-1 (k=200, T=0.1) and linear-probe top-1 of the "
             "last epoch's backbone on the evaluation split named, as the comparison recorded them; "
             "`tests/test_zoo.py` recomputes both from the published file.", ""]
    if not manifest["entries"]:
        return "\n".join(lines + ["No backbone is published yet.", ""])
    lines += ["| file | backbone | method | seed | pretraining | evaluation | kNN top-1 % | linear top-1 % | size | sha256 |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for e in manifest["entries"]:
        s, ev = e["source"], e["eval"]
        lines.append(f"| `zoo/{e['file']}` | {e['backbone']} ({e['feat_dim']}-d) | {e['combo']} | {e['seed']} "
                     f"| {s['preset']}: {s['pretrain_images']:,} images, {s['epochs']} epochs | {ev['dataset']}, "
                     f"bank {ev['bank']:,}, test {ev['test']:,}, {ev['size']} px | {e['recorded']['knn_top1']:.2f} "
                     f"| {e['recorded']['linear_top1']:.2f} | {e['bytes'] / 2**20:.1f} MiB | `{e['sha256'][:12]}` |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    # --zoo and --docs before or after the subcommand
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--zoo", type=Path, default=argparse.SUPPRESS, help="the published folder (default: zoo/)")
    common.add_argument("--docs", type=Path, nargs="+", default=argparse.SUPPRESS,
                        help="pages whose generated zoo block to rewrite")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[common])
    sub = ap.add_subparsers(dest="cmd")
    a = sub.add_parser("add", parents=[common], help="publish the backbone of one recorded comparison run")
    a.add_argument("--results", type=Path, required=True, help="a compare.py results file")
    a.add_argument("--combo", required=True, help="the combination, as in the results file (e.g. mocov2+ascl)")
    a.add_argument("--seed", type=int, required=True)
    a.add_argument("--runs-dir", type=Path, default=None, help="where the run directories are (default: as recorded)")
    sub.add_parser("verify", parents=[common], help="recompute every entry's kNN and linear probe from its published file")
    args = ap.parse_args(argv)
    args.zoo, args.docs = getattr(args, "zoo", ZOO), getattr(args, "docs", [])
    for page in args.docs:
        if not page.is_file():
            ap.error(f"--docs page {page} does not exist")
    try:
        if args.cmd == "add":
            e = add(args.results, args.combo, args.seed, args.runs_dir, args.zoo)
            print(f"zoo: published {args.zoo / e['file']} (kNN {e['verified']['knn_top1']:.2f}%, recorded "
                  f"{e['recorded']['knn_top1']:.2f}%; linear {e['verified']['linear_top1']:.2f}%, recorded "
                  f"{e['recorded']['linear_top1']:.2f}%)")
        elif args.cmd == "verify":
            problems = verify(args.zoo)
            for p in problems:
                print(f"zoo: error: {p}", file=sys.stderr)
            if problems:
                return 1
    except (CheckpointError, ConfigError) as err:
        print(f"zoo: error: {err}", file=sys.stderr)
        return 2
    body = render_block(read_manifest(args.zoo))
    for page in args.docs:
        if compare.replace_block(page, BEGIN, END, body, "zoo", "zoo/manifest.json"):
            print(f"zoo: rewrote the block in {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/zoo.py and zoo/: every published backbone gives the accuracies it was published with.

The published entries are checked for real (their files, their hashes, the comparison records they
come from, and their kNN and linear-probe accuracies recomputed on Fashion-MNIST); publishing is
checked on a tiny comparison run made here (cpu-smoke preset, 384 images, 1 epoch)."""

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file, save_file

from relssl.config import config_from_dict
from relssl.errors import CheckpointError, ConfigError
from relssl.evaluate.export import read_metadata
from utils import digest, fill

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = json.loads((ROOT / "zoo" / "manifest.json").read_text())["entries"]


@pytest.fixture(scope="module")
def zoo():
    spec = importlib.util.spec_from_file_location("relssl_bench_zoo", ROOT / "benchmarks" / "zoo.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_the_manifest_publishes_something(zoo):
    assert ENTRIES and zoo.read_manifest(zoo.ZOO)["entries"] == ENTRIES


@pytest.mark.parametrize("e", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_a_published_backbone_gives_its_recorded_accuracies(e, zoo, fmnist):
    path = zoo.ZOO / e["file"]
    assert zoo.sha256(path) == e["sha256"], e["file"]
    meta = read_metadata(path)
    assert (meta["backbone"], meta["feat_dim"], meta["method"]) == (e["backbone"], e["feat_dim"], e["method"])
    # the entry is the comparison's record of that run: the same weights, config and numbers
    _, rec = zoo.find_record(ROOT / e["source"]["results"], e["combo"], e["seed"])
    assert rec["backbone_sha256"] == e["source"]["backbone_sha256"] and rec["config_hash"] == e["source"]["config_hash"]
    # the file is the run's, byte for byte, unless its config was added at publication
    assert (rec["backbone_sha256"] == e["sha256"]) != e["source"]["config_added"]
    # the file carries the run's config, so that the command line evaluates it alone
    assert zoo.compare.config_hash(config_from_dict(meta["config"])) == rec["config_hash"]
    assert (rec["knn_last_top1"], rec["linear_last_top1"]) == (e["recorded"]["knn_top1"], e["recorded"]["linear_top1"])
    got = zoo.recompute(e, path, fmnist)
    for key, tol in zoo.TOLERANCE.items():
        assert abs(got[key] - e["recorded"][key]) <= tol, (e["file"], key, got, e["recorded"])


def test_the_docs_block_is_the_manifest(zoo, tmp_path):
    body = zoo.render_block(zoo.read_manifest(zoo.ZOO))
    for page in (ROOT / "docs" / "zoo.md", ROOT / "README.md"):
        copy = tmp_path / page.name
        copy.write_text(page.read_text())
        assert zoo.compare.replace_block(copy, zoo.BEGIN, zoo.END, body, "zoo", "zoo") is False, (
            f"{page.name}'s zoo block is stale: python benchmarks/zoo.py --docs docs/zoo.md README.md")


def smoke_run(zoo, tmp: Path) -> Path:
    """One tiny comparison run (SimCLR, seed 0) in ``tmp``; its results file."""
    out = tmp / "compare_cpu-smoke.json"
    zoo.compare.main(["--preset", "cpu-smoke", "--methods", "simclr", "--seeds", "0", "--subset", "384",
                      "--epochs", "1", "--linear-epochs", "2", "--accelerator", "cpu", "--out", str(out),
                      "--runs-dir", str(tmp / "runs")])
    return out


@pytest.fixture(scope="module")
def smoke(zoo, tmp_path_factory, fmnist):
    """A run whose record and backbone file zoo.py can publish."""
    return smoke_run(zoo, tmp_path_factory.mktemp("smoke"))


def test_add_publishes_a_recorded_run_and_verify_catches_any_change(zoo, smoke, fmnist, tmp_path):
    published = tmp_path / "zoo"
    e = zoo.add(smoke, "simclr", 0, None, published, splits=fmnist)
    rec = json.loads(smoke.read_text())["runs"][0]
    # the same machine and threads as the comparison's evaluation: the same number, exactly
    assert e["verified"]["knn_top1"] == e["recorded"]["knn_top1"] == rec["knn_last_top1"]
    assert e["verified"]["linear_top1"] == e["recorded"]["linear_top1"] == rec["linear_last_top1"]
    assert e["eval"]["linear_epochs"] == 2
    assert zoo.sha256(published / e["file"]) == rec["backbone_sha256"] == e["sha256"]
    # cpu-smoke crops 32 px from 28-px images (upsampled): it evaluates at 32, and the entry says so
    assert (e["eval"]["bank"], e["eval"]["test"], e["eval"]["size"]) == (192, 192, 32) == (
        rec["eval_train"], rec["eval_test"], rec["eval_size"])
    zoo.add(smoke, "simclr", 0, None, published, splits=fmnist)  # again: replaced, not duplicated
    assert [x["name"] for x in zoo.read_manifest(published)["entries"]] == ["cpu-smoke-simclr-seed0"]
    assert zoo.verify(published, fmnist) == []

    # other weights under the manifest's hash: the kNN check catches them
    path = published / e["file"]
    state = load_file(str(path))
    last = sorted(k for k in state if k.endswith(".weight") and state[k].dim() == 4)[-1]
    state[last].zero_()  # the last convolution: every feature becomes a function of its bias alone
    save_file(state, str(path), metadata={k: json.dumps(v) for k, v in read_metadata(path).items()})
    manifest = json.loads((published / "manifest.json").read_text())
    manifest["entries"][0]["sha256"] = zoo.sha256(path)
    (published / "manifest.json").write_text(json.dumps(manifest))
    problems = zoo.verify(published, fmnist)
    assert len(problems) == 1 and "recorded" in problems[0] and "changed" in problems[0], problems

    # a file that is not the one the manifest names: the hash check catches it
    manifest["entries"][0]["sha256"] = "0" * 64
    (published / "manifest.json").write_text(json.dumps(manifest))
    assert "sha256 differs" in zoo.verify(published, fmnist)[0]


def test_add_refuses_what_it_cannot_vouch_for(zoo, smoke, fmnist, tmp_path):
    with pytest.raises(ConfigError, match="no run of mocov2 seed 0; with weights it has simclr seed 0"):
        zoo.add(smoke, "mocov2", 0, None, tmp_path / "zoo", splits=fmnist)
    with pytest.raises(ConfigError, match="does not exist"):
        zoo.add(tmp_path / "nothing.json", "simclr", 0, None, tmp_path / "zoo", splits=fmnist)
    # the run's backbone file changed after the comparison evaluated it
    run_dir = Path(json.loads(smoke.read_text())["runs"][0]["run_dir"])
    moved = tmp_path / "runs" / run_dir.name
    moved.mkdir(parents=True)
    data = bytearray((run_dir / "backbone.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (moved / "backbone.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="not the backbone the comparison evaluated"):
        zoo.add(smoke, "simclr", 0, tmp_path / "runs", tmp_path / "zoo", splits=fmnist)
    assert not (tmp_path / "zoo").exists()  # nothing written
    # a file of the record's hash whose config is another run's (the record's hash made to match it)
    meta = read_metadata(run_dir / "backbone.safetensors")
    meta["config"]["optim"]["lr"] *= 2
    other = tmp_path / "runs2" / run_dir.name / "backbone.safetensors"
    other.parent.mkdir(parents=True)
    save_file(load_file(str(run_dir / "backbone.safetensors")), str(other),
              metadata={k: json.dumps(v) for k, v in meta.items()})
    forged = json.loads(smoke.read_text())
    forged["runs"][0]["backbone_sha256"] = zoo.sha256(other)
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    with pytest.raises(CheckpointError, match="backbone.safetensors holds config .*not the backbone of this run"):
        zoo.add(tmp_path / "forged.json", "simclr", 0, tmp_path / "runs2", tmp_path / "zoo", splits=fmnist)
    # a record whose number the weights do not give: recomputed at publication, refused
    off = json.loads(smoke.read_text())
    off["runs"][0]["knn_last_top1"] += 1.0
    (tmp_path / "off.json").write_text(json.dumps(off))
    with pytest.raises(CheckpointError, match="kNN top-1 .* recorded .more than 0.05 points apart"):
        zoo.add(tmp_path / "off.json", "simclr", 0, None, tmp_path / "zoo", splits=fmnist)
    off["runs"][0]["knn_last_top1"] -= 1.0
    off["runs"][0]["linear_last_top1"] += 1.0
    (tmp_path / "off.json").write_text(json.dumps(off))
    with pytest.raises(CheckpointError, match="linear top-1 .* recorded .more than 0.2 points apart"):
        zoo.add(tmp_path / "off.json", "simclr", 0, None, tmp_path / "zoo", splits=fmnist)
    assert not (tmp_path / "zoo").exists()
    # a record from before compare.py kept the backbone
    old = json.loads(smoke.read_text())
    del old["runs"][0]["backbone_sha256"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(ConfigError, match="recorded before compare.py kept the evaluated backbone"):
        zoo.add(tmp_path / "old.json", "simclr", 0, None, tmp_path / "zoo", splits=fmnist)


def test_a_file_exported_without_its_config_is_published_with_the_run_directorys(zoo, smoke, fmnist, tmp_path):
    run_dir = Path(json.loads(smoke.read_text())["runs"][0]["run_dir"])
    meta = read_metadata(run_dir / "backbone.safetensors")
    config = meta.pop("config")
    old = tmp_path / "runs" / run_dir.name  # the run as exported before the config travelled in the file
    old.mkdir(parents=True)
    save_file(load_file(str(run_dir / "backbone.safetensors")), str(old / "backbone.safetensors"),
              metadata={k: json.dumps(v) for k, v in meta.items()})
    data = json.loads(smoke.read_text())
    data["runs"][0]["backbone_sha256"] = zoo.sha256(old / "backbone.safetensors")
    results = tmp_path / "old.json"
    results.write_text(json.dumps(data))
    # without the run directory's config.yaml: refused in one line, nothing written
    with pytest.raises(ConfigError, match="exported without its config and .*config.yaml is gone"):
        zoo.add(results, "simclr", 0, tmp_path / "runs", tmp_path / "zoo", splits=fmnist)
    # another run's config.yaml: refused
    other = json.loads(json.dumps(config))
    other["optim"]["lr"] *= 2
    (old / "config.yaml").write_text(yaml.safe_dump(other))
    with pytest.raises(CheckpointError, match="config.yaml holds config .*not the backbone of this run"):
        zoo.add(results, "simclr", 0, tmp_path / "runs", tmp_path / "zoo", splits=fmnist)
    assert not (tmp_path / "zoo").exists()
    # the run's own: published with it, the tensors unchanged, both hashes in the manifest
    shutil.copyfile(run_dir / "config.yaml", old / "config.yaml")
    e = zoo.add(results, "simclr", 0, tmp_path / "runs", tmp_path / "zoo", splits=fmnist)
    published = tmp_path / "zoo" / e["file"]
    assert e["source"]["config_added"] and e["source"]["backbone_sha256"] == data["runs"][0]["backbone_sha256"]
    assert e["sha256"] == zoo.sha256(published) != e["source"]["backbone_sha256"]
    assert read_metadata(published)["config"] == config
    assert zoo.same_tensors(published, old / "backbone.safetensors")
    assert e["verified"]["knn_top1"] == data["runs"][0]["knn_last_top1"]
    assert zoo.verify(tmp_path / "zoo", fmnist) == []


def test_the_command_line_says_one_line_and_exits_2(zoo, tmp_path, capsys):
    assert zoo.main(["--zoo", str(tmp_path / "z"), "add", "--results", str(tmp_path / "none.json"),
                     "--combo", "simclr", "--seed", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("zoo: error: results file") and "--results" in err[0]
    assert not (tmp_path / "z").exists()
    # the options after the subcommand too: an empty zoo verifies, and its block says so
    page = tmp_path / "page.md"
    page.write_text(f"intro\n{zoo.BEGIN}\nold\n{zoo.END}\nrest\n")
    assert zoo.main(["verify", "--zoo", str(tmp_path / "z"), "--docs", str(page)]) == 0
    text = page.read_text()
    assert "No backbone is published yet." in text and "old" not in text and text.endswith(f"{zoo.END}\nrest\n")


def test_a_full_disk_leaves_the_published_zoo_as_it_was(zoo, smoke, fmnist, small_disk, tmp_path):
    published = small_disk / "zoo"
    zoo.add(smoke, "simclr", 0, None, published, splits=fmnist)
    before = digest(published)
    fill(small_disk)
    with pytest.raises(ConfigError, match="cannot write .*cpu-smoke-simclr-seed0.safetensors.*choose a writable --zoo"):
        zoo.add(smoke, "simclr", 0, None, published, splits=fmnist)
    assert digest(published) == before  # the published file and the manifest as they were, no temporary left
    # the same run made again elsewhere (another file: its metadata names another source), with room
    # for its weights but not for the manifest: the weights written must not replace the published ones
    again = smoke_run(zoo, tmp_path)
    filler = small_disk / "filler"
    weights = Path(json.loads(again.read_text())["runs"][0]["run_dir"]) / "backbone.safetensors"
    room = -(-weights.stat().st_size // 4096) * 4096  # tmpfs gives whole pages
    os.truncate(filler, filler.stat().st_size - room)
    with pytest.raises(ConfigError, match="cannot write .*manifest.json: No space left"):  # the weights went in
        zoo.add(again, "simclr", 0, None, published, splits=fmnist)
    assert digest(published) == before

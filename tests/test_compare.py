"""benchmarks/compare.py: the equal-budget comparison runs, records, skips what is done, renders.

One real (tiny) end-to-end invocation: the cpu-smoke preset on 384 Fashion-MNIST images, two
combinations (a method and a plug-in on a host) x one seed, 1 epoch, a 3-epoch linear probe.
"""

import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import pytest

from relssl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _load_compare():
    spec = importlib.util.spec_from_file_location("relssl_bench_compare", ROOT / "benchmarks" / "compare.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def compare():
    return _load_compare()


def _has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def test_combinations_cover_every_method_and_plugin_host(compare):
    from relssl.methods import METHODS

    names = [c[0] for c in compare.combinations()]
    assert set(METHODS) <= set(names)
    assert {"mocov2+ascl", "byol+ascl", "simclr+bsim", "mocov2+bsim", "byol+bsim"} <= set(names)
    for name, method, plugins in compare.combinations():
        assert (compare.CONFIG_DIR / (compare.recipe_name(name) + ".yaml")).is_file()
        assert name == "+".join((method,) + plugins) or compare.is_control(name)
    assert names[-2:] == list(compare.CONTROLS)  # the controls after the combinations they control


def test_the_ascl_controls_are_their_plugin_rows_with_only_the_soft_targets_off(compare, tmp_path):
    """mocov2-ascl-form / byol-ascl-form: everything of mocov2+ascl / byol+ascl (views, loss form,
    heads, temperature) but ASCL's soft targets, and the claims table sets ASCL against them."""
    p = compare.PRESETS["cpu-budget"]
    combos = {c[0]: c for c in compare.combinations()}
    cfg = {c: compare.build_config(*combos[c], p, 0, tmp_path, "cpu").to_dict()
           for c in ("mocov2+ascl", "mocov2-ascl-form", "byol+ascl", "byol-ascl-form", "mocov2", "byol")}
    for plugin_row, control in (("mocov2+ascl", "mocov2-ascl-form"), ("byol+ascl", "byol-ascl-form")):
        a, b = dict(cfg[plugin_row]), dict(cfg[control])
        assert a.pop("name") != b.pop("name")
        assert a.pop("plugins") != b.pop("plugins")
        assert a == b  # the same run but for the plug-in
        assert (plugin_row, control) in compare.CLAIMS
        # and the form alone against the plain host, so that the two add up to the ASCL row's difference
        assert (control, plugin_row.split("+")[0]) in compare.CLAIMS
    assert cfg["mocov2+ascl"]["plugins"]["ascl"]["relation"] == "ascl"
    assert cfg["mocov2-ascl-form"]["plugins"]["ascl"] == {**cfg["mocov2+ascl"]["plugins"]["ascl"], "relation": "moco"}
    assert cfg["byol-ascl-form"]["plugins"] == {} and cfg["byol+ascl"]["plugins"].keys() == {"ascl"}
    # and the controls are not the plain hosts: ASCL's code runs them in another form
    assert cfg["mocov2-ascl-form"]["views"] != cfg["mocov2"]["views"]
    assert cfg["byol-ascl-form"]["method"]["symmetric"] is False and cfg["byol"]["method"].get("symmetric", True)
    assert compare.recipe_label("mocov2-ascl-form") == "fashion_mnist/mocov2_ascl plugins.ascl.relation=moco"
    assert not compare.is_control("mocov2+ascl") and not compare.is_oracle("byol-ascl-form")


def test_shared_budget_overrides_recipe_but_keeps_method_lr(compare, tmp_path):
    p = compare.PRESETS["gpu"]
    cfgs = {c: compare.build_config(c, m, pl, p, 1, tmp_path, "cpu") for c, m, pl in compare.combinations()}
    for name, cfg in cfgs.items():
        assert (cfg.backbone.name, cfg.backbone.cifar_stem, cfg.backbone.bn_splits) == ("resnet18", True, 8)
        assert (cfg.optim.name, cfg.optim.batch_size, cfg.optim.epochs) == ("sgd", 512, 10)
        assert cfg.optim.warmup_epochs == 1.0 and cfg.backbone.weights is None
        assert (cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.lr_scaling) == (0.9, 5e-4, "linear")
        assert cfg.data.crop_size == 32 and cfg.data.subset is None and cfg.seed == 1
        recipe = compare.read_yaml(compare.resolve_recipe(compare.recipe_name(name)))
        assert cfg.optim.lr == recipe["optim"]["lr"]  # the method's own base lr
    assert cfgs["wcl"].method["weak_aug_epochs"] == 1  # tied to the warm-up epochs, as in its recipe
    assert cfgs["mocov2+ascl"].plugins.keys() == {"ascl"}


def test_table_reports_last_epoch_mean_and_spread_not_best(compare, tmp_path):
    def run(combo, seed, knn, lin):
        return {"combo": combo, "seed": seed, "config_hash": "h", "knn_last_top1": knn, "linear_last_top1": lin,
                "knn_monitor_best_top1": 99.5, "linear_best_top1": 99.25, "img_s": 1000.0, "peak_mem_gib": 1.5,
                "peak_mem_kind": "cuda_max_allocated", "pretrain_wall_s": 60.0, "train_s": 50.0, "eval_wall_s": 5.0,
                "knn_init_top1": 70.0, "knn_history": [{"epoch": 1, "top1": knn - 1}, {"epoch": 2, "top1": knn}],
                "environment": {"device": "NVIDIA H100", "torch": "x", "lightning": "y", "date": "2026-01-01T00:00:00"}}

    data = {"preset": "gpu", "settings": compare.preset_settings(compare.PRESETS["gpu"], 100),
            "runs": [run("mocov2", 0, 90.0, 91.0), run("mocov2", 1, 92.0, 93.0), run("simclr", 0, 88.0, 89.0)]}
    text = compare.render_table(data, tmp_path / "compare_gpu.json")
    assert "| mocov2 | 2 | 91.00 ± 1.41 | 92.00 ± 1.41 |" in text
    assert "| simclr | 1 | 88.00 | 89.00 |" in text
    assert "99.5" not in text and "99.25" not in text  # best-over-epochs numbers never in the table
    assert "last epoch" in text and "mean ± sample standard deviation" in text
    assert "python benchmarks/compare.py --preset gpu" in text
    row = next(r for r in compare.aggregate(data) if r["combo"] == "mocov2")
    assert row["curve"] == [(0, 70.0), (1, 90.0), (2, 91.0)]
    # the long run's "best" is the best self-supervised combination, never the label oracle
    data["runs"].append(run("simclr+mask_false_negatives", 0, 95.0, 96.0))
    (tmp_path / "res.json").write_text(json.dumps(data))
    assert compare.best_combo(tmp_path / "res.json") == "mocov2"


@pytest.mark.usefixtures("fmnist")
def test_cpu_smoke_end_to_end_records_skips_and_renders(compare, tmp_path, monkeypatch):
    out = tmp_path / "results" / "compare_cpu-smoke.json"
    argv = ["--preset", "cpu-smoke", "--methods", "simclr", "mocov2+ascl", "--seeds", "0", "--subset", "384",
            "--epochs", "1", "--linear-epochs", "3", "--accelerator", "cpu",
            "--out", str(out), "--runs-dir", str(tmp_path / "runs")]
    res = compare.main(argv)
    assert sorted(res["ran"]) == [("mocov2+ascl", 0), ("simclr", 0)] and not res["failed"]

    data = json.loads(out.read_text())
    runs = {r["combo"]: r for r in data["runs"]}
    assert set(runs) == {"simclr", "mocov2+ascl"}
    assert runs["mocov2+ascl"]["plugins"] == ["ascl"] and runs["simclr"]["plugins"] == []
    for r in runs.values():
        for key in ("knn_last_top1", "linear_last_top1"):
            assert math.isfinite(r[key]) and 0 < r[key] <= 100, (r["combo"], key, r[key])
        assert r["epochs"] == 1 and r["seed"] == 0 and r["eval_train"] == 192 and r["eval_test"] == 192
        assert [h["epoch"] for h in r["knn_history"]] == [1] and r["knn_init_top1"] is not None
        assert r["pretrain_wall_s"] > 0 and r["eval_wall_s"] > 0 and r["peak_mem_gib"] > 0
        assert r["peak_mem_kind"] == "cpu_process_max_rss" and r["config_hash"]
        assert r["environment"]["torch"] and r["environment"]["date"]
        assert not (Path(r["run_dir"]) / "checkpoints").exists()  # removed once recorded
    assert data["settings"]["subset"] == 384 and data["invocations"][0]["machine"]["cpus"]
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # the usual mode, not a temporary file's 0600

    table = out.with_suffix(".md").read_text()
    for combo, r in runs.items():
        line = next(ln for ln in table.splitlines() if ln.startswith(f"| {combo} | 1 |"))
        assert f"{r['knn_last_top1']:.2f}" in line and f"{r['linear_last_top1']:.2f}" in line
    if _has_matplotlib():
        for suffix in ("_accuracy_vs_time.png", "_knn_curves.png"):
            png = out.with_name(out.stem + suffix)
            assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG"

    # a rerun skips the finished combinations: nothing is pretrained or evaluated again
    def no_run(*a, **k):
        raise AssertionError("a finished combination was run again")

    monkeypatch.setattr(compare, "run_one", no_run)
    monkeypatch.setattr(compare, "pretrain", no_run)
    before = data["runs"]
    res2 = compare.main(argv)
    assert res2["ran"] == [] and sorted(res2["skipped"]) == [("mocov2+ascl", 0), ("simclr", 0)]
    assert json.loads(out.read_text())["runs"] == before

    # another budget must not be appended to the same file
    with pytest.raises(ConfigError, match="other shared settings"):
        compare.main([a if a != "1" else "2" for a in argv])


@pytest.mark.usefixtures("fmnist")
def test_a_signal_stops_the_comparison_instead_of_failing_the_run(compare, tmp_path, monkeypatch):
    """SIGTERM / SIGINT during a run (it has written a resumable checkpoint and raised RunInterrupted)
    ends the whole comparison with the signal's exit code; it is not recorded as that run's failure,
    and no later combination starts."""
    from relssl.errors import RunInterrupted

    calls = []

    def interrupted(combo, *a, **k):
        calls.append(combo)
        raise RunInterrupted("interrupted by SIGTERM at step 3 (epoch 0)", exit_code=143)

    monkeypatch.setattr(compare, "run_one", interrupted)
    out = tmp_path / "compare_cpu-smoke.json"
    argv = ["--preset", "cpu-smoke", "--methods", "simclr", "mocov2", "--seeds", "0", "--subset", "384",
            "--epochs", "1", "--accelerator", "cpu", "--out", str(out), "--runs-dir", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as stop:
        compare.main(argv)
    assert stop.value.code == 143
    assert calls == ["simclr"]  # mocov2 never started
    data = json.loads(out.read_text())
    assert data["failures"] == [] and data["runs"] == []


def test_recorded_runs_hash_as_their_config_today(compare, tmp_path):
    """A key added to the config later (at its default), or where metrics are logged, does not make a
    recorded run look like another config: every run in the committed CPU-budget results hashes as the
    config that build_config makes for it now (else seeds of one row would be flagged as mixed)."""
    data = json.loads((ROOT / "benchmarks" / "results" / "compare_cpu-budget.json").read_text())
    combos = {c[0]: c for c in compare.combinations()}
    p = compare.PRESETS["cpu-budget"]
    runs = [r for r in data["runs"] if r["combo"] in combos]
    assert runs
    for r in runs:
        name, method, plugins = combos[r["combo"]]
        cfg = compare.build_config(name, method, plugins, p, r["seed"], tmp_path, "cpu")
        assert compare.config_hash(cfg) == r["config_hash"], r["combo"]
        cfg.trainer.loggers = ["csv"]  # where metrics go is not the budget
        assert compare.config_hash(cfg) == r["config_hash"]
        cfg.optim.grad_clip = 1.0  # a real change is
        assert compare.config_hash(cfg) != r["config_hash"]


def _row(combo, knn, lin=None):
    """Run records of ``combo``, one per seed, from per-seed kNN (and linear) values."""
    lin = knn if lin is None else lin
    runs = [{"combo": combo, "seed": i, "config_hash": "h", "knn_last_top1": k, "linear_last_top1": v, "steps": 100}
            for i, (k, v) in enumerate(zip(knn, lin))]
    return runs


def test_claims_need_every_seed_and_a_difference_beyond_the_spread(compare, tmp_path):
    runs = (_row("mocov2", [80.0, 81.0, 82.0])  # mean 81, sd 1
            + _row("msvq", [84.0, 84.5, 85.0])  # mean 84.5, sd 0.5: +3.5 > 1.5
            + _row("ressl", [83.0, 84.0, 85.0], [90.0, 90.0, 90.0])  # kNN +0.5 < 1.5; linear msvq 84.5 < 90
            + _row("simclr", [80.0, 82.0])  # two seeds only
            + _row("wcl", [90.0, 90.0])
            + _row("simclr+mask_false_negatives", [88.0, 88.0, 88.0])
            + _row("mocov2-ascl-form", [81.0, 81.0, 81.0])
            + [{"combo": "pixels", "seed": 0, "knn_last_top1": 80.0, "linear_last_top1": 82.0}])
    data = {"preset": "cpu-budget", "settings": {}, "runs": runs,
            "steptime": {"msvq": {"seconds_per_step": 0.6, "img_s": 426.7, "timed_steps": 30, "warmup_steps": 5,
                                  "others_cpu_share": 0.01, "date": "2026-12-04T14:00:00"},
                         "mocov2-ascl-form": {"seconds_per_step": 0.3, "img_s": 853.3, "timed_steps": 30,
                                              "warmup_steps": 5, "others_cpu_share": 0.01,
                                              "date": "2026-12-04T14:10:00"},
                         "mocov2": {"seconds_per_step": 0.3, "img_s": 853.3, "timed_steps": 30, "warmup_steps": 5,
                                    "others_cpu_share": 0.032, "date": "2026-12-04T14:05:00"}}}
    text = compare.render_table(data, tmp_path / "compare_cpu-budget.json")
    lines = {ln.split(" |")[0]: ln for ln in text.splitlines() if " beats " in ln}
    assert lines["| msvq beats mocov2"].startswith("| msvq beats mocov2 | +3.50 | 1.50 | reproduced |")
    assert lines["| msvq beats ressl"] == ("| msvq beats ressl | +0.50 | 1.50 | not reproduced at this scale "
                                          "| -5.50 | 0.50 | reversed (beyond the spread) | 2/3, 0/3 |")
    assert lines["| msvq beats mocov2"].endswith("| 3/3, 3/3 |")
    assert "| wcl beats simclr | +9.00 | - | pending (2 of 3 seeds) |" in lines["| wcl beats simclr"]
    assert "| pnnclr beats nnclr" not in lines  # neither row has run
    # the oracle's distance, and the cost per point with the step timed alone (100 steps x 0.6 s = 1.0 min)
    assert "| msvq | 3 | +3.50 | +3.50 |" in text
    assert "| mocov2 * | 0.5 | +1.00 | +2.000 |" in text and "| msvq * | 1.0 | +4.50 | +4.500 |" in text
    # the oracle's gain over the host and the share of it the method recovers: msvq on mocov2 has no oracle
    # row of its host here (only simclr's), so no row; wcl on simclr has one (2 seeds of simclr)
    assert "| wcl | simclr | 2 | +7.00, +7.00 | +9.00, +9.00 | 129%, 129% |" in text
    assert "| msvq | mocov2 |" not in text
    # a control row is a recipe, not a method: the oracle and cost tables say so
    assert "| mocov2-ascl-form (control) | 3 | +7.00 | +7.00 |" in text
    assert "| mocov2-ascl-form (control) * | 0.5 | +1.00 | +2.000 |" in text  # as good as mocov2, as fast
    table_line = next(ln for ln in text.splitlines() if ln.startswith("| msvq | 3 |") and "±" in ln)
    assert "| 427 | 1.0 |" in table_line
    assert ("Step times alone: 3 combinations, 30 steps timed after 5 warm-up steps, dated 2026-12-04 to 2026-12-04; "
            "other processes used at most 3.2% of the CPUs meanwhile") in text
    # exactly at the spread is not beyond it
    a = {"n": 3, "knn_last_top1": (82.0, 0.5)}
    b = {"n": 3, "knn_last_top1": (81.0, 0.5)}
    assert compare.verdict(a, b, "knn_last_top1", 3)[0] == "not reproduced at this scale"
    assert compare.verdict({**a, "knn_last_top1": (82.01, 0.5)}, b, "knn_last_top1", 3)[0] == "reproduced"


def test_the_oracle_share_has_no_share_where_the_oracle_gains_nothing(compare):
    row = lambda combo, knn, lin: {"combo": combo, "n": 3, "baseline": False,  # noqa: E731
                                   "knn_last_top1": (knn, 0.1), "linear_last_top1": (lin, 0.1)}
    by = {r["combo"]: r for r in (row("mocov2", 80.0, 85.0), row("mocov2+bsim", 81.0, 84.0),
                                  row("mocov2+mask_false_negatives", 82.0, 85.0))}
    lines = compare.render_oracle_share(by)
    # kNN: the oracle gains 2, BSIM 1 of them; linear: the oracle gains nothing, so no share (not a division by 0)
    assert lines[-1] == "| mocov2+bsim | mocov2 | 3 | +2.00, +0.00 | +1.00, -1.00 | 50%, - |"
    del by["mocov2+mask_false_negatives"]
    assert compare.render_oracle_share(by) == []  # no oracle row of the host: no table


@pytest.mark.usefixtures("fmnist")
def test_time_steps_records_each_step_alone_and_the_table_uses_it(compare, tmp_path):
    out = tmp_path / "results" / "compare_cpu-smoke.json"
    argv = ["--preset", "cpu-smoke", "--methods", "mocov2", "pixels", "--time-steps", "--timed-steps", "2",
            "--warmup-steps", "1", "--subset", "384", "--accelerator", "cpu", "--out", str(out),
            "--runs-dir", str(tmp_path / "runs")]
    res = compare.main(argv)
    assert set(res["timed"]) == {"mocov2"}  # the no-pretraining baselines have no step
    entry = json.loads(out.read_text())["steptime"]["mocov2"]
    assert entry["timed_steps"] == 2 and entry["warmup_steps"] == 1 and entry["batch_size"] == 128
    assert entry["seconds_per_step"] > 0 and entry["img_s"] == pytest.approx(128 / entry["seconds_per_step"], rel=1e-2)
    assert entry["machine"]["cpus"] and entry["date"]
    assert entry["channels_last"] is True  # the layout the step was timed in (the default since 2026-12-05)
    if sys.platform.startswith("linux"):
        assert 0.0 <= entry["others_cpu_share"] <= 1.0
    assert not any((tmp_path / "runs").iterdir())  # the timing run leaves no run directory
    with pytest.raises(ConfigError, match="--timed-steps"):
        compare.main([a if a != "2" else "0" for a in argv])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_cpu_usage_sees_another_process_burn_the_cpu(compare):
    """The step timing's "others" share: a real busy process is counted, this process's own time is not."""
    import subprocess
    import time

    cpu_usage = sys.modules["steptime"].cpu_usage  # benchmarks/steptime.py, imported by compare.py
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        (busy0, own0), t0 = cpu_usage(), time.perf_counter()
        time.sleep(1.0)
        (busy1, own1), t1 = cpu_usage(), time.perf_counter()
    finally:
        burner.kill()
        burner.wait()
    others = (busy1 - busy0) - (own1 - own0)
    assert own1 - own0 < 0.2  # this process slept
    assert others > 0.5 * (t1 - t0)  # the burner had a core for most of the second


def test_the_docs_block_is_what_the_committed_results_file_renders(compare, tmp_path):
    """docs/comparison.md and the README show the cpu-budget results through a generated block: it must
    equal what compare.py renders from the results file (run `compare.py --preset cpu-budget --table-only
    --docs docs/comparison.md README.md` after a run is recorded)."""
    results = ROOT / "benchmarks" / "results" / "compare_cpu-budget.json"
    for page in (ROOT / "docs" / "comparison.md", ROOT / "README.md"):
        copy = tmp_path / page.name
        copy.write_text(page.read_text())
        assert compare.sync_docs(copy, results, compare.read_results(results)) is False, (
            f"{page.name}'s generated block is stale: python benchmarks/compare.py --preset cpu-budget "
            "--table-only --docs docs/comparison.md README.md")


def test_sync_docs_rewrites_only_its_block_and_refuses_a_page_without_one(compare, tmp_path):
    out = tmp_path / "compare_cpu-budget.json"
    runs = (_row("mocov2", [80.0, 81.0, 82.0]) + _row("msvq", [84.0, 84.5, 85.0])
            + _row("mocov2+mask_false_negatives", [88.0, 88.0, 88.0])
            + [{"combo": "pixels", "seed": 0, "knn_last_top1": 82.0, "linear_last_top1": 84.0}])
    data = {"preset": "cpu-budget", "settings": {}, "runs": runs,
            "steptime": {"msvq": {"seconds_per_step": 0.6, "img_s": 426.7}}}
    begin, end = compare.docs_markers(out)
    page = tmp_path / "page.md"
    page.write_text(f"# Title\n\nbefore\n\n{begin}\nold numbers\n{end}\n\nafter\n")
    assert compare.sync_docs(page, out, data) is True
    text = page.read_text()
    assert text.startswith(f"# Title\n\nbefore\n\n{begin}\n") and text.endswith(f"{end}\n\nafter\n")
    assert "old numbers" not in text
    assert "| msvq | 3 | 84.50 ± 0.50 | 84.50 ± 0.50 | 1.0 |" in text  # 100 steps x 0.6 s
    assert "| mocov2+mask_false_negatives (label oracle) | 3 |" in text
    assert "| pixels (no pretraining) | 1 | 82.00 | 84.00 | - |" in text
    # pretrained rows against the pixels row: msvq above in both, mocov2 below in both
    assert ("Against this file's raw-pixels row (kNN 82.00%: 1 of 2 self-supervised rows above it (from -1.00 to "
            "+2.50 points); linear 84.00%: 1 of 2 self-supervised rows above it (from -3.00 to +0.50 points)).") in text
    assert "| msvq beats mocov2 | +3.50 | 1.50 | reproduced |" in text
    assert "| msvq | mocov2 | 3 | +7.00, +7.00 | +3.50, +3.50 | 50%, 50% |" in text  # half the oracle's gain
    assert compare.sync_docs(page, out, data) is False  # nothing to change the second time
    assert page.read_text() == text
    # a page without the block: a one-line error naming the markers; the page stays as it was
    bare = tmp_path / "bare.md"
    bare.write_text("# Nothing here\n")
    with pytest.raises(SystemExit, match="has no generated block for compare_cpu-budget.json; put the two lines"):
        compare.sync_docs(bare, out, data)
    assert bare.read_text() == "# Nothing here\n"
    reversed_page = tmp_path / "reversed.md"
    reversed_page.write_text(f"{end}\n{begin}\n")
    with pytest.raises(SystemExit, match="has no generated block"):
        compare.sync_docs(reversed_page, out, data)


def test_docs_option_needs_an_existing_page(compare, tmp_path):
    with pytest.raises(SystemExit, match="--docs .*missing.md: no such file"):
        compare.main(["--preset", "cpu-smoke", "--table-only", "--out", str(tmp_path / "r.json"),
                      "--docs", str(tmp_path / "missing.md")])


def test_a_claimed_run_is_busy_for_another_process_until_released(compare, tmp_path):
    """--jobs workers claim runs with a lock file; another process sees the claim, and a finished or
    killed holder leaves none behind."""
    import subprocess

    probe = ("import importlib.util, sys; from pathlib import Path; "
             f"spec = importlib.util.spec_from_file_location('c', {str(ROOT / 'benchmarks' / 'compare.py')!r}); "
             "m = importlib.util.module_from_spec(spec); sys.modules['c'] = m; spec.loader.exec_module(m)\n"
             f"with m.claimed(Path({str(tmp_path)!r}), 'compare-cpu-smoke-simclr-seed0') as mine: print(mine)")
    with compare.claimed(tmp_path, "compare-cpu-smoke-simclr-seed0") as mine:
        assert mine is True
        with compare.claimed(tmp_path, "compare-cpu-smoke-simclr-seed0") as again:  # a second holder, here too
            assert again is False
        other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        assert other.stdout.strip() == "False", other.stderr
        with compare.claimed(tmp_path, "compare-cpu-smoke-mocov2-seed0") as different:
            assert different is True  # another run is free
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert other.stdout.strip() == "True", other.stderr


def test_jobs_share_the_plan_and_run_each_combination_once(compare, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # (set by the test workers) the workers choose their own
    out = tmp_path / "results" / "compare_cpu-smoke.json"
    argv = ["--preset", "cpu-smoke", "--methods", "simclr", "mocov2", "pixels", "--seeds", "0", "--subset", "384",
            "--epochs", "1", "--linear-epochs", "3", "--accelerator", "cpu", "--jobs", "2",
            "--out", str(out), "--runs-dir", str(tmp_path / "runs")]
    res = compare.main(argv)
    assert res["workers"] == [0, 0] and not res["failed"]
    data = json.loads(out.read_text())
    assert sorted((r["combo"], r["seed"]) for r in data["runs"]) == [("mocov2", 0), ("pixels", 0), ("simclr", 0)]
    assert {r["concurrent_jobs"] for r in data["runs"]} == {2}
    assert {r["threads"] for r in data["runs"]} == {max(1, (os.cpu_count() or 1) // 2)}  # the cores shared out
    workers = [i for i in data["invocations"] if "--worker-of 2" in i["command"]]
    assert len(workers) == 2 and data["failures"] == []
    table = out.with_suffix(".md").read_text()
    assert "| simclr § | 1 |" in table and "ran as one of 2 workers sharing the machine" in table
    with pytest.raises(SystemExit, match="--jobs 0: give 1 or more"):
        compare.main([a if a != "2" else "0" for a in argv])


def test_cpu_sharing_times_runs_at_once_with_the_cores_shared_out(tmp_path, monkeypatch):
    """benchmarks/cpu_sharing.py (the measurement behind --jobs on a CPU): N processes time the step at
    once, each with cores // N threads; the machine's rate is the sum of theirs."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    spec = importlib.util.spec_from_file_location("cpu_sharing", ROOT / "benchmarks" / "cpu_sharing.py")
    sharing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sharing)
    (row,) = sharing.measure("cpu-smoke", "mocov2", [2], steps=2)
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert row["runs_at_once"] == 2 and row["threads_each"] == threads
    assert [r["threads"] for r in row["runs"]] == [threads, threads]
    assert all(s > 0 for s in row["seconds_per_step"])
    assert row["steps_per_s_total"] == pytest.approx(sum(1 / s for s in row["seconds_per_step"]), rel=1e-3)
    with pytest.raises(SystemExit, match="must be >= 1"):
        sharing.main(["--shares", "0"])


def test_the_comparison_evaluates_in_nchw_on_the_cpu_whatever_the_run_trained_in(compare, fmnist):
    """relssl's own evaluation follows the run's layout; the comparison keeps every seed's evaluation
    alike (its first seeds were evaluated in NCHW on the CPU), even for a backbone left in channels_last."""
    import torch

    from relssl.nn import build_backbone

    net = build_backbone("convnet_grid", in_channels=1)[0].to(memory_format=torch.channels_last)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1]
    seen = set()
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.add(
        args[0].is_contiguous(memory_format=torch.channels_last))) for m in convs]
    compare.eval_features(net, fmnist.test.images[:8], 28, fmnist.info, torch.device("cpu"))
    for h in hooks:
        h.remove()
    assert seen == {False}
    assert not any(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)

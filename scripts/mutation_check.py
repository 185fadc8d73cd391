"""Targeted mutation check of the trust-critical code: does the suite fail when a promise is broken?

    python scripts/mutation_check.py                 # every mutant; writes scripts/mutation_results.json
    python scripts/mutation_check.py --only resume-disabled atomic-io-unused
    python scripts/mutation_check.py --list

Each mutant replaces one exact snippet of the source (resume, checkpoint writing, the NaN guard,
gathers and shuffles, queue persistence, EMA updates, evaluation isolation, run-directory safety)
with a broken version, runs the tests that claim to guard it, and restores the file (also on
Ctrl-C). A mutant is *killed* when those tests fail, *survived* when they pass. A snippet that is
no longer in the source is reported as *stale* (the list must follow the code). Survivors are
either killed by a new test or explained in ``SURVIVORS_EXPLAINED`` below.

It runs the real tests, so it takes a while (about a minute per mutant on 2 cores); it is not
part of CI. Results (killed / survived per mutant, seconds) go to ``scripts/mutation_results.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "relssl"


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str  # relative to src/relssl
    old: str
    new: str
    tests: tuple[str, ...]  # pytest node ids or files (relative to the repository)
    promise: str


MUTANTS = [
    Mutant("resume-disabled", "engine/run.py",
           "trainer.fit(module, ckpt_path=str(ckpt_path) if ckpt_path else None)",
           "trainer.fit(module, ckpt_path=None)",
           ("tests/test_interrupt.py::test_signal_mid_epoch_then_resume_equals_uninterrupted",),
           "--resume continues from the checkpoint"),
    Mutant("mid-epoch-skip-off", "engine/module.py",
           'sampler.resume_at(self._resume_position["epoch"], self._resume_position["batches_done"])',
           "pass",
           ("tests/test_interrupt.py::test_signal_mid_epoch_then_resume_equals_uninterrupted",),
           "a mid-epoch resume skips the batches already trained"),
    Mutant("interrupt-no-checkpoint", "engine/lifecycle.py",
           "            trainer.save_checkpoint(self.path)",
           "            pass",
           ("tests/test_interrupt.py::test_signal_mid_epoch_then_resume_equals_uninterrupted",),
           "SIGTERM / SIGINT leave a checkpoint of the step where the run stopped"),
    Mutant("sigint-not-routed", "engine/lifecycle.py",
           "    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)",
           "    SIGNALS = (signal.SIGTERM,)",
           ("tests/test_interrupt.py::test_signal_mid_epoch_then_resume_equals_uninterrupted",),
           "Ctrl-C stops at a step boundary with a checkpoint and exit 130"),
    Mutant("history-deleted-on-resume", "engine/lifecycle.py",
           "            self.metrics_keys = sorted(set(header))",
           "            os.remove(self.metrics_file_path)",
           ("tests/test_interrupt.py::test_signal_mid_epoch_then_resume_equals_uninterrupted",),
           "metrics.csv is appended across resumes"),
    Mutant("resume-checks-off", "engine/run.py",
           "        check_resumable(point.ckpt, module, cfg.to_dict(), point.run_dir, total)",
           "        pass",
           ("tests/test_interrupt.py::test_resume_of_a_finished_run_changes_nothing",
            "tests/test_interrupt.py::test_resume_after_config_edit_is_refused_before_any_change"),
           "a resume that cannot proceed is refused before anything changes"),
    Mutant("lock-ignored", "engine/lifecycle.py",
           "                if pid is not None and pid != os.getpid() and _alive(pid):",
           "                if False:",
           ("tests/test_interrupt.py::test_second_process_on_a_run_directory_is_refused",),
           "one process per run directory"),
    Mutant("atomic-write-in-place", "engine/checkpoint.py",
           "        with open(tmp, \"wb\") as f:",
           "        tmp = path\n        with open(tmp, \"wb\") as f:",
           ("tests/test_trust.py", "tests/test_interrupt.py::test_checkpoint_write_on_a_full_disk_is_one_error_and_leaves_no_partial_file"),
           "a checkpoint is replaced atomically, never half-written"),
    Mutant("torch-runtimeerror-uncaught", "engine/checkpoint.py",
           "if isinstance(err, (OSError, RuntimeError)):",
           "if isinstance(err, (OSError,)):",
           ("tests/test_interrupt.py::test_checkpoint_write_on_a_full_disk_is_one_error_and_leaves_no_partial_file",),
           "a full disk inside torch.save is one line"),
    Mutant("atomic-io-unused", "engine/trainer.py",
           "plugins: list = [AtomicCheckpointIO()]",
           "plugins: list = []",
           ("tests/test_interrupt.py::test_the_trainer_writes_checkpoints_through_the_atomic_writer",),
           "the trainer writes every checkpoint through the atomic writer"),
    Mutant("nan-saved-at-epoch-end", "engine/module.py",
           "        # a non-finite loss on the epoch's last step must stop the run, not be saved in last.ckpt\n"
           "        self.guard.check(self.trainer)",
           "        pass",
           ("tests/test_engine.py::test_no_checkpoint_ever_holds_a_non_finite_tensor",),
           "no checkpoint holds a non-finite tensor"),
    Mutant("nan-guard-off", "engine/guard.py",
           "        finite = bool(torch.isfinite(self._pending).item())",
           "        finite = True",
           ("tests/test_engine.py::test_nan_loss_stops_with_step_named",),
           "a non-finite loss stops the run naming the step"),
    Mutant("signals-not-agreed", "engine/lifecycle.py",
           "        self.stop.agree()",
           "        pass",
           ("tests/test_ddp_lightning.py::test_signal_to_a_two_process_run_then_resume_equals_uninterrupted",),
           "a signalled multi-process run stops every process after the same step"),
    Mutant("ema-wrong-direction", "nn/ema.py",
           "        torch._foreach_mul_(t_params, m)\n        torch._foreach_add_(t_params, s_params, alpha=1.0 - m)",
           "        torch._foreach_mul_(t_params, 1.0 - m)\n        torch._foreach_add_(t_params, s_params, alpha=m)",
           ("tests/test_nn.py",),
           "the EMA teacher moves by m"),
    Mutant("queue-pointer-stuck", "nn/queue.py",
           "        self.ptr.add_(n).remainder_(self.size)",
           "        self.ptr.add_(0)",
           ("tests/test_nn.py",),
           "the queue is a FIFO"),
    Mutant("shuffle-bn-no-permutation", "nn/shuffle.py",
           "    perm = _randperm(x_all.shape[0], x.device, generator)\n    dist.broadcast(perm, src=0)",
           "    perm = torch.arange(x_all.shape[0], device=x.device)\n    dist.broadcast(perm, src=0)",
           ("tests/test_ddp.py",),  # test_shuffle_bn_permutes_the_global_batch_across_processes
           "Shuffle-BN permutes the global batch across processes"),
    Mutant("knn-monitor-leaves-eval-mode", "metrics/knn.py",
           "        backbone.train(was_training)",
           "        pass",
           ("tests/test_engine.py", "tests/test_knn_optim.py"),
           "the kNN monitor leaves the training weights and mode untouched"),
    Mutant("weights-head-keys-kept", "nn/backbones.py",
           "    state = {k: v for k, v in state.items() if not (prefixes and (k in prefixes or k.startswith(prefixes)))}",
           "    state = dict(state)",
           ("tests/test_backbones.py::test_weights_in_torchvision_and_timm_layouts",),
           "torchvision and timm checkpoints load with their classifier left out"),
    Mutant("built-kwargs-not-recorded", "engine/module.py",
           "        cfg.backbone.kwargs = dict(built.arch.get(\"kwargs\", {}))",
           "        pass",
           ("tests/test_backbones.py::test_a_vit_run_exports_weights_that_load_into_timm_itself",),
           "a run's config rebuilds the architecture it trained (a ViT's patch and size)"),
    Mutant("size-probe-on-another-size", "nn/backbones.py",
           "    dims = {probe_features(net, in_channels, s, name) for s in dict.fromkeys(sizes)}",
           "    dims = {probe_features(net, in_channels, 224, name)}",
           ("tests/test_backbones.py::test_a_bad_backbone_is_refused_by_the_config_and_before_the_run_directory",),
           "a size the backbone cannot take fails before the run directory exists"),
    Mutant("vit-decay-on-position-embedding", "engine/optim.py",
           "    skip = no_decay_names(model) if exclude_bn_bias else set()",
           "    skip = set()",
           ("tests/test_backbones.py::test_vit_optimizer_skips_decay_on_norms_biases_position_embedding_and_class_token",),
           "no weight decay on a ViT's position embedding and class token"),
    Mutant("timm-vit-not-sized", "nn/zoo.py",
           "        if \"img_size\" not in kw:",
           "        if False:",
           ("tests/test_backbones.py::test_timm_vit_is_sized_for_the_crop_and_kwargs_win",),
           "a timm ViT is built for the crop size"),
    # the comparison's verdicts on the papers' claims (issue #19), in benchmarks/compare.py
    Mutant("claim-at-the-spread-counts", "../../benchmarks/compare.py",
           "    if diff > spread:\n        return \"reproduced\", diff, spread",
           "    if diff >= spread:\n        return \"reproduced\", diff, spread",
           ("tests/test_compare.py::test_claims_need_every_seed_and_a_difference_beyond_the_spread",),
           "a claim is reproduced only when the difference exceeds the seeds' spread"),
    Mutant("claim-spread-one-row-only", "../../benchmarks/compare.py",
           "    spread = (sa or 0.0) + (sb or 0.0)",
           "    spread = max(sa or 0.0, sb or 0.0)",
           ("tests/test_compare.py::test_claims_need_every_seed_and_a_difference_beyond_the_spread",),
           "the spread is both rows' sample standard deviations"),
    Mutant("claim-judged-before-every-seed", "../../benchmarks/compare.py",
           "    if min(a[\"n\"], b[\"n\"]) < seeds_needed:",
           "    if min(a[\"n\"], b[\"n\"]) < 1:",
           ("tests/test_compare.py::test_claims_need_every_seed_and_a_difference_beyond_the_spread",),
           "no verdict before both rows have every seed of the preset"),
    Mutant("docs-block-eats-the-end-marker", "../../benchmarks/compare.py",
           "render_docs_block(data, out_json) + text[j:]",
           "render_docs_block(data, out_json) + text[j + len(end):]",
           ("tests/test_compare.py::test_sync_docs_rewrites_only_its_block_and_refuses_a_page_without_one",),
           "the docs' generated block is rewritten in place, the page around it kept"),
    Mutant("docs-block-counts-every-row-above-pixels", "../../benchmarks/compare.py",
           "            above = sum(g > 0 for g in gains)",
           "            above = len(gains)",
           ("tests/test_compare.py::test_sync_docs_rewrites_only_its_block_and_refuses_a_page_without_one",),
           "the docs say how many rows beat raw pixels, not how many there are"),
    Mutant("jobs-claim-never-busy", "../../benchmarks/compare.py",
           "            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n        except BlockingIOError:",
           "            pass\n        except BlockingIOError:",
           ("tests/test_compare.py::test_a_claimed_run_is_busy_for_another_process_until_released",),
           "two workers of one comparison never run the same combination and seed"),
    Mutant("jobs-workers-keep-every-core", "../../benchmarks/compare.py",
           "    torch.set_num_threads(threads)\n",
           "    pass\n",
           ("tests/test_compare.py::test_jobs_share_the_plan_and_run_each_combination_once",),
           "--jobs N on a CPU gives each worker cores // N threads (N pools of every core fight over them)"),
    Mutant("compare-eval-follows-the-run-layout", "../../benchmarks/compare.py",
           "    backbone.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)\n",
           "    pass\n",
           ("tests/test_compare.py::test_the_comparison_evaluates_in_nchw_on_the_cpu_whatever_the_run_trained_in",),
           "every seed of a comparison is evaluated in one layout on the CPU"),
    Mutant("compare-control-unlabelled", "../../benchmarks/compare.py",
           "            out.append(f\"| {row_name(r)}{' *' if front(r) else ''} |",
           "            out.append(f\"| {r['combo']}{' *' if front(r) else ''} |",
           ("tests/test_compare.py::test_claims_need_every_seed_and_a_difference_beyond_the_spread",),
           "a control row in the cost-per-point table is named as a control, not taken for a method"),
    Mutant("compare-oracle-share-without-room", "../../benchmarks/compare.py",
           "            cells[2].append(f\"{(m - h) / (o - h):.0%}\" if o - h > 0 else \"-\")",
           "            cells[2].append(f\"{(m - h) / (o - h or 1e-9):.0%}\")",
           ("tests/test_compare.py::test_the_oracle_share_has_no_share_where_the_oracle_gains_nothing",),
           "no share of the oracle's gain is printed where the oracle gains nothing over its host"),
    Mutant("eval-ignores-the-run-layout", "evaluate/checkpoint.py",
           "    if cfg.backbone.channels_last:  # the layout it trained in (EvalSetup.channels_last)\n        method.to(memory_format=torch.channels_last)\n",
           "",
           ("tests/test_precision.py::test_evaluation_on_the_cpu_uses_the_layout_the_run_trained_in",),
           "relssl's evaluation extracts features in the layout the run trained in"),
    # published weights (benchmarks/zoo.py): only what the comparison evaluated, with the numbers it gives
    Mutant("zoo-hash-unchecked", "../../benchmarks/zoo.py",
           "    if digest != rec[\"backbone_sha256\"]:",
           "    if False:",
           ("tests/test_zoo.py::test_add_refuses_what_it_cannot_vouch_for",),
           "zoo.py publishes only the file whose hash the comparison recorded"),
    Mutant("zoo-accuracy-unchecked", "../../benchmarks/zoo.py",
           "    got = recompute(entry, src, splits)\n    check(entry, got)",
           "    got = recompute(entry, src, splits)",
           ("tests/test_zoo.py::test_add_refuses_what_it_cannot_vouch_for",),
           "zoo.py publishes a number only when the weights give it again"),
    Mutant("zoo-config-yaml-unchecked", "../../benchmarks/zoo.py",
           "    if trained != rec[\"config_hash\"]:",
           "    if False:",
           ("tests/test_zoo.py::test_add_refuses_what_it_cannot_vouch_for",
            "tests/test_zoo.py::test_a_file_exported_without_its_config_is_published_with_the_run_directorys"),
           "a published file's config is the recorded run's"),
    Mutant("zoo-config-not-added", "../../benchmarks/zoo.py",
           "        if added_config:\n            write_with_metadata(src, tmps[0], meta)",
           "        if False:\n            write_with_metadata(src, tmps[0], meta)",
           ("tests/test_zoo.py::test_a_file_exported_without_its_config_is_published_with_the_run_directorys",),
           "a file exported without its config is published with the run's, so the CLI evaluates it alone"),
    # bad input is refused before the heavy imports (seconds on a small CPU)
    Mutant("cli-engine-before-config", "cli/__init__.py",
           "    from relssl.config import load_config, resolve_recipes\n",
           "    from relssl.config import load_config, resolve_recipes\n    from relssl.engine import pretrain  # noqa\n",
           ("tests/test_trust.py::test_bad_config_path_or_data_is_refused_before_lightning_loads",),
           "a bad config is refused before Lightning loads"),
    Mutant("torchvision-at-import", "nn/backbones.py",
           "from torch import Tensor, nn\n",
           "from torch import Tensor, nn\nfrom torchvision import models  # noqa\n",
           ("tests/test_trust.py::test_bad_config_path_or_data_is_refused_before_lightning_loads",),
           "torchvision loads only where a ResNet is built"),
    # a conv net's own widths travel with the checkpoint; the CPU trains in NHWC; the demo's margin is over pixels
    Mutant("convnet-kwargs-not-in-arch", "nn/backbones.py",
           "    return net, {\"library\": \"relssl\", \"model\": name, \"kwargs\": kwargs,",
           "    return net, {\"library\": \"relssl\", \"model\": name, \"kwargs\": {},",
           ("tests/test_eval_export.py::test_a_conv_net_with_its_own_widths_is_rebuilt_by_evaluation_and_export",),
           "a conv net trained with backbone.kwargs widths is rebuilt with those widths by eval and export"),
    Mutant("builtin-kwargs-unchecked-by-config", "config.py",
           "            check_builtin_kwargs(self.name, self.kwargs)\n",
           "            pass\n",
           ("tests/test_config.py::test_bad_overrides",),
           "bad backbone.kwargs of a built-in are refused with the config, before data or a run directory"),
    Mutant("cpu-trains-nchw", "engine/module.py",
           "        return bool(self.cfg.backbone.channels_last)",
           "        return bool(self.cfg.backbone.channels_last) and self.device.type == \"cuda\"",
           ("tests/test_precision.py::test_a_cpu_run_trains_in_channels_last_unless_told_not_to",),
           "a CPU run trains in channels_last (the faster layout there too) unless backbone.channels_last=false"),
    Mutant("demo-margin-against-init", "cli/demo.py",
           "{trained - pix:+6.2f} points",
           "{trained - res['knn_init_top1']:+6.2f} points",
           ("tests/test_cli.py::test_demo_prints_result_and_baselines",),
           "the demo's margin is the trained kNN minus raw pixels'"),
]

# mutants the suite lets live on purpose, with the reason (kept short and honest)
SURVIVORS_EXPLAINED = {
}


def run_tests(tests: tuple[str, ...], timeout: int) -> tuple[bool, float, str]:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        failed = proc.returncode != 0
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    except subprocess.TimeoutExpired:
        failed, tail = True, ["timeout (counted as killed: the promise broke badly enough to hang)"]
    return failed, time.perf_counter() - t0, tail[0]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", help="mutant names")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--timeout", type=int, default=900)
    ap.add_argument("--out", type=Path, default=ROOT / "scripts" / "mutation_results.json")
    args = ap.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.list:
        for m in mutants:
            print(f"{m.name:32s} {m.file:24s} {m.promise}")
        return 0
    results = json.loads(args.out.read_text()) if args.out.is_file() else {"mutants": {}}
    started = False
    for m in mutants:
        path = SRC / m.file
        original = path.read_text()
        if original.count(m.old) != 1:
            results["mutants"][m.name] = {"status": "stale", "promise": m.promise,
                                          "why": f"snippet found {original.count(m.old)} times in {m.file}"}
            print(f"{m.name}: STALE", flush=True)
            continue
        try:
            path.write_text(original.replace(m.old, m.new))
            failed, secs, tail = run_tests(m.tests, args.timeout)
        finally:
            path.write_text(original)
        status = "killed" if failed else "survived"
        results["mutants"][m.name] = {"status": status, "promise": m.promise, "file": m.file, "tests": list(m.tests),
                                      "seconds": round(secs, 1), "pytest": tail,
                                      "explained": SURVIVORS_EXPLAINED.get(m.name)}
        print(f"{m.name}: {status.upper()} ({secs:.0f} s) {tail}", flush=True)
        now = datetime.now().isoformat(timespec="seconds")
        if args.only:  # a partial run: the full run's date and command stay; this one is listed under updates
            if not started:
                results.setdefault("updates", []).append(
                    {"date": now, "command": "python scripts/mutation_check.py --only " + " ".join(args.only),
                     "mutants": []})
                started = True
            results["updates"][-1]["mutants"].append(m.name)
        else:
            results.update(date=now, command="python scripts/mutation_check.py")
        args.out.write_text(json.dumps(results, indent=2))
    done = [r for r in results["mutants"].values() if r["status"] in ("killed", "survived")]
    killed = sum(r["status"] == "killed" for r in done)
    print(f"mutation check: {killed} of {len(done)} mutants killed", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""kNN evaluation of a checkpoint (the InstDisc / MoCo CIFAR protocol), beside the two baselines a
result must beat (docs/evaluation.md, "Baselines"): the same backbone randomly initialised, and
mean-centred raw pixels. The measurements themselves live in :mod:`relssl.metrics.knn`.
"""

from __future__ import annotations

from relssl.evaluate.checkpoint import build_method, timed
from relssl.metrics.knn import PROTOCOL_SETS, knn_accuracy, knn_protocols, pixel_features_pair


def evaluate_knn(setup, protocol: str = "weighted", k: int = 200, t: float = 0.1, baselines: bool = True,
                 weighting: str = "exp") -> dict:
    """kNN evaluation of a checkpoint (an :class:`relssl.evaluate.checkpoint.EvalSetup`).

    ``protocol``: ``weighted`` (k, t; ``weighting="uniform"`` turns it into a plain vote count),
    ``msf`` (1-NN and 20-NN majority vote) or ``all``. Bank = the probe-train split
    (``data.bank_subset`` applied), queries = the test split (``data.test_subset`` applied).
    Features: backbone output in eval mode, L2-normalised. With ``baselines`` the same protocols
    run on the randomly initialised backbone (seed = the config's) and on mean-centred raw pixels.

    Returns a dict with ``results`` (protocol -> top1/top5), ``baselines`` (``random_init`` and
    ``pixels`` -> protocol -> top1/top5) and, when ``weighted`` is among the protocols, its
    ``top1`` / ``top5`` at the top level.
    """
    if protocol not in PROTOCOL_SETS:
        raise ValueError(f"unknown kNN protocol set {protocol!r}; allowed: {', '.join(PROTOCOL_SETS)}")
    if weighting not in ("exp", "uniform"):
        raise ValueError(f"weighting must be 'exp' or 'uniform', got {weighting!r}")
    names = PROTOCOL_SETS[protocol]
    res = {**setup.header("knn"), "protocol_set": protocol, "k": k, "t": t, "weighting": weighting}
    with timed(res):
        bank, test = setup.train_split(), setup.test_split()
        dev = setup.device
        yb, yt = bank.labels.to(dev), test.labels.to(dev)
        C = setup.num_classes

        def run(fb, ft):
            out = knn_protocols(fb, yb, ft, yt, C, [n for n in names if n != "weighted"], k=k, t=t)
            if "weighted" in names:
                out = {"weighted": knn_accuracy(fb, yb, ft, yt, C, k=k, t=t, weighting=weighting), **out}
            return out

        fb = setup.features(bank.images)
        res["results"] = run(fb, setup.features(test.images))
        res.update(bank=len(bank), test=len(test), feature_dim=int(fb.shape[1]))
        if baselines:
            res["baselines"] = {}
            if not setup.random_init:
                channels = bank.images.shape[1]
                b = setup.cfg.backbone
                maxpool = setup.splits.info.maxpool if b.maxpool is None else b.maxpool
                rand, _ = build_method(setup.cfg, channels, maxpool, setup.template)
                rb = rand.backbone.to(dev)
                res["baselines"]["random_init"] = run(setup.features(bank.images, backbone=rb),
                                                      setup.features(test.images, backbone=rb))
                del rand, rb
            pb, pt = pixel_features_pair(bank.images, test.images)
            res["baselines"]["pixels"] = run(pb.to(dev), pt.to(dev))
    if "weighted" in res["results"]:
        res["top1"], res["top5"] = res["results"]["weighted"]["top1"], res["results"]["weighted"]["top5"]
    return res

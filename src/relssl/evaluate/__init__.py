"""Evaluation protocols on frozen (or fine-tuned) backbones, plots, export and run reports.

Python API (every protocol takes an :class:`EvalSetup` from :func:`prepare`)::

    from relssl.evaluate import prepare, evaluate_knn, linear_probe, fine_tune, embedding_plot

    s = prepare("runs/fashion_mnist-mocov2-...")            # or a .ckpt; random_init=True: baseline
    evaluate_knn(s, protocol="all")                          # weighted k=200 T=0.1, 1-NN, 20-NN
    linear_probe(s, LinearProbeConfig(schedule="step"))       # frozen backbone, last + best epoch
    fine_tune(s, SemiSupConfig(fraction=0.01))               # 1% labels, whole network
    embedding_plot(s, "tsne.png")                            # t-SNE of test features
    export_backbone("runs/...", "backbone.safetensors"); load_backbone("backbone.safetensors")
    emb = embed_checkpoint("runs/...", split="all")          # or embed_split(s, "test"): evaluate.embed
    write_embeddings("embeddings.npz", emb)                   # .npz / .safetensors / .csv, atomically
    write_report("runs/...")                                 # RUN_DIR/report.md
    diagnose(s)                                              # false-negative diagnostics (evaluate.diagnostics)
    rankme(features); uniformity(z); alignment(z1, z2)       # label-free quality (relssl.metrics.labelfree)

Protocols, defaults and their sources: ``docs/evaluation.md``.
"""

import importlib

# name -> module (of relssl.evaluate unless dotted); imported on first use, so the CLI's parser
# does not pull in every protocol and its dependencies
_EXPORTS = {
    "EvalSetup": "checkpoint", "prepare": "checkpoint", "load_method": "checkpoint",
    "evaluate_knn": "knn", "extract_features": "relssl.metrics.knn", "knn_accuracy": "relssl.metrics.knn",
    "knn_protocols": "relssl.metrics.knn", "knn_scores": "relssl.metrics.knn", "pixel_features": "relssl.metrics.knn",
    "topk_accuracy": "relssl.metrics.knn",
    "LinearProbeConfig": "linear", "linear_probe": "linear", "linear_probe_features": "linear",
    "SemiSupConfig": "semisup", "fine_tune": "semisup", "label_subset_indices": "semisup",
    "embedding_plot": "plots", "plot_confusion": "plots", "plot_curves": "plots",
    "export_backbone": "export", "load_backbone": "export", "read_metadata": "export",
    "write_report": "report",
    "Embeddings": "embed", "embed_split": "embed", "embed_checkpoint": "embed", "write_embeddings": "embed",
    "rankme": "relssl.metrics.labelfree", "uniformity": "relssl.metrics.labelfree",
    "alignment": "relssl.metrics.labelfree", "labelfree_metrics": "relssl.metrics.labelfree",
    "diagnose": "diagnostics", "false_negative_stats": "relssl.metrics.falseneg",
    "queue_stats": "relssl.metrics.falseneg",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name] if "." in _EXPORTS[name] else f"relssl.evaluate.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'relssl.evaluate' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)

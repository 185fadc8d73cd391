"""Pure measurements of representations, used by methods (diagnostics), the engine (its monitors)
and ``relssl.evaluate`` (the protocols on checkpoints): kNN accuracy and feature extraction
(:mod:`~relssl.metrics.knn`), label-free quality (:mod:`~relssl.metrics.labelfree`: RankMe,
uniformity, alignment) and false-negative / purity / queue statistics
(:mod:`~relssl.metrics.falseneg`). Nothing here reads a checkpoint, a file or a config.
"""

from relssl.metrics.falseneg import (
    SIZE_BINS,
    ascl_candidate_labels,
    component_stats,
    false_negative_stats,
    graph_stats,
    mixture_similarity_profile,
    neighbour_metrics,
    neighbour_purity,
    queue_stats,
    self_match_rate,
    soft_target_stats,
    target_stats,
    topk_neighbour_purity,
)
from relssl.metrics.knn import (
    extract_features,
    knn_accuracy,
    knn_protocols,
    knn_scores,
    pixel_features,
    pixel_features_pair,
    topk_accuracy,
)
from relssl.metrics.labelfree import alignment, labelfree_metrics, rankme, uniformity, view_features

__all__ = [
    "SIZE_BINS", "ascl_candidate_labels", "component_stats", "false_negative_stats", "graph_stats", "mixture_similarity_profile",
    "neighbour_metrics", "neighbour_purity", "queue_stats", "topk_neighbour_purity", "self_match_rate", "soft_target_stats", "target_stats",
    "extract_features", "knn_accuracy", "knn_protocols", "knn_scores", "pixel_features", "pixel_features_pair",
    "topk_accuracy", "alignment", "labelfree_metrics", "rankme", "uniformity", "view_features",
]

"""Evaluation protocols on frozen (or fine-tuned) backbones."""

from relssl.evaluate.knn import extract_features, knn_accuracy, knn_scores, pixel_features, topk_accuracy

__all__ = ["extract_features", "knn_accuracy", "knn_scores", "pixel_features", "topk_accuracy"]

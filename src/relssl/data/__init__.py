"""Datasets as uint8 image tensors, and index batches drawn on the device."""

from relssl.data.datasets import (
    DATASETS,
    DatasetInfo,
    DatasetSplits,
    ImageDataset,
    load_dataset,
    load_idx_dataset,
)
from relssl.data.idx import read_idx
from relssl.data.sampler import EpochBatchSampler, IndexBatchDataset

__all__ = [
    "DATASETS", "DatasetInfo", "DatasetSplits", "ImageDataset", "load_dataset", "load_idx_dataset",
    "read_idx", "EpochBatchSampler", "IndexBatchDataset",
]

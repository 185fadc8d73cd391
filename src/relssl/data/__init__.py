"""Datasets as uint8 image tensors (in memory, or read from files in batches), and index batches."""

from relssl.data.cifar import load_cifar10, load_cifar100, read_cifar_batch, read_cifar_pickle
from relssl.data.core import DEFAULT_MEMORY_LIMIT, channel_stats, resize_images
from relssl.data.datasets import (
    DATASET_INFO,
    DATASETS,
    DatasetInfo,
    DatasetSplits,
    ImageDataset,
    dataset_info,
    load_dataset,
    load_idx_dataset,
)
from relssl.data.filebacked import (
    ArraySource,
    DecodedBatchDataset,
    FileImageDataset,
    FileListSource,
    decode_image,
    image_extensions,
)
from relssl.data.folders import load_image_folder, load_imagenet, load_unlabeled_folder
from relssl.data.idx import read_idx
from relssl.data.medmnist import load_medmnist
from relssl.data.sampler import EpochBatchSampler, IndexBatchDataset
from relssl.data.stl10 import load_stl10, read_stl10_images
from relssl.data.tiny_imagenet import load_tiny_imagenet

__all__ = [
    "DATASETS", "DATASET_INFO", "dataset_info", "DatasetInfo", "DatasetSplits", "ImageDataset", "load_dataset", "load_idx_dataset",
    "read_idx", "EpochBatchSampler", "IndexBatchDataset",
    "FileImageDataset", "DecodedBatchDataset", "ArraySource", "FileListSource", "decode_image", "image_extensions",
    "DEFAULT_MEMORY_LIMIT", "channel_stats", "resize_images",
    "load_cifar10", "load_cifar100", "read_cifar_batch", "read_cifar_pickle",
    "load_stl10", "read_stl10_images", "load_tiny_imagenet", "load_medmnist",
    "load_image_folder", "load_unlabeled_folder", "load_imagenet",
]

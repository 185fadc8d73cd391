"""Network building blocks: backbones, split BN, heads, EMA teachers, feature queues, gathers.

Everything here is a plain ``torch.nn`` part with no engine or method logic (DEVELOPERS.md, "Layout").
"""

from .backbones import BACKBONES, ConvNet, build_backbone, load_torchvision_weights
from .distributed import gather_no_grad, gather_with_grad, is_distributed, rank, world_size
from .ema import ema_update, make_teacher, momentum_at
from .heads import byol_head, mlp, moco_head, nnclr_predictor, nnclr_projector, simclr_head, wcl_head
from .queue import FeatureQueue
from .shuffle import shuffle_forward, teacher_forward
from .splitbn import SplitBatchNorm2d, convert_to_split_bn

__all__ = [
    "BACKBONES",
    "ConvNet",
    "FeatureQueue",
    "SplitBatchNorm2d",
    "build_backbone",
    "byol_head",
    "convert_to_split_bn",
    "ema_update",
    "gather_no_grad",
    "gather_with_grad",
    "is_distributed",
    "load_torchvision_weights",
    "make_teacher",
    "mlp",
    "moco_head",
    "momentum_at",
    "nnclr_predictor",
    "nnclr_projector",
    "rank",
    "shuffle_forward",
    "simclr_head",
    "teacher_forward",
    "wcl_head",
    "world_size",
]

"""Network building blocks: backbones, split BN, heads, EMA teachers, feature queues, gathers.

Everything here is a plain ``torch.nn`` part with no engine or method logic (DEVELOPERS.md, "Layout").
"""

from .backbones import (
    BACKBONES,
    Backbone,
    ConvNet,
    build_backbone,
    check_backbone_name,
    check_builtin_kwargs,
    load_weights,
    make_backbone,
    read_state_dict,
)
from .distributed import gather_no_grad, gather_with_grad, is_distributed, rank, world_size
from .ema import ema_update, make_teacher, momentum_at
from .heads import byol_head, mlp, moco_head, nnclr_predictor, nnclr_projector, simclr_head, wcl_head
from .queue import FeatureQueue
from .shuffle import shuffle_forward, teacher_forward
from .splitbn import SplitBatchNorm2d, convert_to_split_bn
from .zoo import BACKBONE_FACTORIES, FAMILIES, register_backbone

__all__ = [
    "BACKBONES",
    "BACKBONE_FACTORIES",
    "Backbone",
    "FAMILIES",
    "check_backbone_name",
    "check_builtin_kwargs",
    "load_weights",
    "make_backbone",
    "read_state_dict",
    "register_backbone",
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

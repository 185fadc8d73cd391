"""The training engine: one LightningModule for every method, optimizers, checkpoints, callbacks."""

from relssl.engine.checkpoint import AtomicCheckpointIO, atomic_torch_save, load_checkpoint_file
from relssl.engine.optim import LARS, build_optimizer, build_scheduler, warmup_cosine
from relssl.engine.run import pretrain

__all__ = ["AtomicCheckpointIO", "atomic_torch_save", "load_checkpoint_file", "LARS", "build_optimizer",
           "build_scheduler", "warmup_cosine", "pretrain"]

"""Index batches: the training loop receives only sample indices; images stay on the device.

Each epoch's order is a pure function of (seed, epoch), so a run resumed at an epoch boundary
sees exactly the batches an uninterrupted run would; a run resumed mid-epoch (after SIGTERM or
SIGINT) skips the batches its checkpoint had already trained on (``resume_at``). With several processes, each takes its
rank's contiguous slice of every global batch, so the global batch is the same as one process
would draw with the global batch size.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, Sampler


class EpochBatchSampler(Sampler[torch.Tensor]):
    """Yields index tensors of one (per-process) batch, shuffled per epoch, dropping the last partial batch."""

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = True, rank: int = 0, world_size: int = 1) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        global_batch = batch_size * world_size
        if drop_last and global_batch > num_samples:
            raise ValueError(
                f"global batch {global_batch} is larger than the dataset ({num_samples} images); "
                "lower optim.batch_size or use more data"
            )
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.shuffle, self.drop_last, self.rank, self.world_size = shuffle, drop_last, rank, world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """The next pass over ``epoch`` starts after its first ``batches_done`` batches (once)."""
        if batches_done < 0:
            raise ValueError(f"batches_done must be >= 0, got {batches_done}")
        self._resume = (epoch, batches_done)

    def __len__(self) -> int:
        g = self.batch_size * self.world_size
        return self.num_samples // g if self.drop_last else -(-self.num_samples // g)

    def __iter__(self):
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.num_samples, generator=gen)
        else:
            order = torch.arange(self.num_samples)
        g = self.batch_size * self.world_size
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        for i in range(start, len(self)):
            block = order[i * g:(i + 1) * g]
            yield block[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]


class IndexBatchDataset(Dataset):
    """A dataset whose item for an index tensor is that tensor: use with ``batch_size=None``."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return idx

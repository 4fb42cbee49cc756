"""The training data as one process reads it: its shard, its batches, the run's length in steps.

Each rank reads its shard through a DistributedSampler (one process: the whole set, shuffled the
same way); the batch size given is the GLOBAL batch, split evenly over ranks, so one step sees
the same samples whatever the number of processes. A resumed epoch skips the batches it had
already consumed. Labels are checked against the model's outputs before they reach the loss.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from ghostify.data.specs import ImageData
from ghostify.errors import GhostifyError, InvalidValueError
from ghostify.train.config import FinetuneConfig
from ghostify.train.distributed import DistContext

__all__ = ["TrainData", "SkipSampler", "training_subset"]


def training_subset(data: ImageData, train_samples: int | None, seed: int = 0) -> ImageData:
    """A fixed random subset of ``train_samples`` samples of ``data`` (all of them for None)."""
    if train_samples is None:
        return data
    if train_samples < 1:
        raise InvalidValueError("train_samples", f"must be >= 1, got {train_samples}")
    return data.subset(train_samples, seed)


class SkipSampler(Sampler[int]):
    """The epoch's indices from a DistributedSampler, minus those already consumed (resume)."""

    def __init__(self, inner: DistributedSampler, skip: int) -> None:
        self.inner, self.skip = inner, skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(self.inner)[self.skip:])

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


class TrainData:
    """This rank's view of the training set: per-rank batches, steps per epoch, the run's total steps."""

    def __init__(self, dataset: Dataset, cfg: FinetuneConfig, ctx: DistContext) -> None:
        if cfg.batch_size % ctx.world_size:
            raise GhostifyError(f"batch size {cfg.batch_size} must be divisible by the {ctx.world_size} processes",
                                param="batch_size")
        self.per_rank = cfg.batch_size // ctx.world_size
        n = len(dataset)  # type: ignore[arg-type]
        if n < cfg.batch_size:
            raise GhostifyError(f"the training data has {n} samples, fewer than one batch of {cfg.batch_size}")
        self.dataset = dataset
        self.classes: int | None = None  # the model's outputs, once check_labels knows them
        self.seed, self.num_workers = cfg.seed, cfg.num_workers
        self.sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                          seed=cfg.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // self.per_rank
        total = cfg.epochs * self.steps_per_epoch
        self.total = min(total, cfg.max_steps) if cfg.max_steps is not None else total

    @property
    def sample_size(self) -> tuple[int, ...]:
        """The shape of one input sample (C, H, W for images): what the models are checked with."""
        return tuple(self.dataset[0][0].shape)

    def check_labels(self, classes: int) -> None:
        """No label may name an output the model lacks: an in-memory label tensor is checked here, once;
        other data sets batch by batch, in :meth:`batches` (their labels come with the samples)."""
        self.classes = classes
        labels = getattr(self.dataset, "labels", None)
        if isinstance(labels, torch.Tensor) and labels.numel() and int(labels.max()) >= classes:
            raise GhostifyError(f"the training data has labels up to {int(labels.max())}, but the model has "
                                f"{classes} outputs: the data has more classes than the model", param="train_data")

    def batches(self, epoch: int, skip: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Epoch ``epoch``'s batches for this rank, from its ``skip``-th on; labels checked on the CPU."""
        self.sampler.set_epoch(epoch)
        # its own generator: a DataLoader iterator otherwise draws a seed from the global RNG,
        # which would shift dropout's random stream on resume
        loader = DataLoader(self.dataset, batch_size=self.per_rank,
                            sampler=SkipSampler(self.sampler, skip * self.per_rank), drop_last=True,
                            num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed + epoch))
        for x, y in loader:
            if self.classes is not None and y.numel() and int(y.max()) >= self.classes:
                raise GhostifyError(f"label {int(y.max())} in the training data, but the model has {self.classes} "
                                    "outputs: the data has more classes than the model", param="train_data")
            yield x, y

"""Distillation fine-tuning (one process or torchrun + DistributedDataParallel)."""

from ghostify.train.distill import (
    CHECKPOINT_FORMAT,
    FinetuneConfig,
    FinetuneResult,
    distill_loss,
    evaluate,
    finetune,
    load_checkpoint,
)

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "evaluate", "distill_loss", "load_checkpoint",
           "CHECKPOINT_FORMAT"]

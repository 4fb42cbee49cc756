"""Distillation fine-tuning (one process or torchrun + DistributedDataParallel).

``finetune`` (``distill.py``) runs config → data → loop → checkpoint: ``config.py``
(``FinetuneConfig``, ``FinetuneResult``), ``distributed.py`` (torchrun, DDP), ``data.py`` (shards,
batches, resume skips), ``loss.py`` (KD + labels, the feature term), ``optim.py`` (optimizer,
warm-up + cosine), ``checkpoint.py`` (save, load, exact resume), ``loop.py`` (the steps),
``evaluate.py`` (test accuracy).
"""

from ghostify.train.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from ghostify.train.config import FinetuneConfig, FinetuneResult
from ghostify.train.distill import finetune
from ghostify.train.evaluate import evaluate
from ghostify.train.loss import distill_loss

__all__ = ["FinetuneConfig", "FinetuneResult", "finetune", "evaluate", "distill_loss", "load_checkpoint",
           "CHECKPOINT_FORMAT"]

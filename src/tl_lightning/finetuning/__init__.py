"""How the model trains, as Lightning callbacks and plugins: `LayerFinetuning` (freeze, then unfreeze layer groups
on a schedule, with the BatchNorm policy) and its presets, early stopping that waits for the last unfreeze, an EMA
scored beside the raw weights, the frozen-phase feature cache, the linear-probe start and floor, the recipe
(`plan`: every automatic choice measured from the data, as one `Recipe`), random states kept for an exact resume,
timm-safe SyncBatchNorm, and the LR range test.
"""

from tl_lightning.finetuning.early_stopping import PhaseAwareEarlyStopping
from tl_lightning.finetuning.ema import EMAEvaluation
from tl_lightning.finetuning.feature_cache import FrozenFeatureCache
from tl_lightning.finetuning.lr_finder import LRRangeTest, RangeTest, lr_range_test
from tl_lightning.finetuning.plan import Recipe, plan
from tl_lightning.finetuning.probe_floor import ProbeFloor
from tl_lightning.finetuning.resume import Preemption, ResumeRNG
from tl_lightning.finetuning.sync_batchnorm import TimmSyncBatchNorm
from tl_lightning.finetuning.unfreezing import LayerFinetuning, gradual, lp_ft, top_k

__all__ = [
    "EMAEvaluation",
    "FrozenFeatureCache",
    "LRRangeTest",
    "LayerFinetuning",
    "PhaseAwareEarlyStopping",
    "Preemption",
    "ProbeFloor",
    "RangeTest",
    "Recipe",
    "ResumeRNG",
    "TimmSyncBatchNorm",
    "gradual",
    "lp_ft",
    "lr_range_test",
    "plan",
    "top_k",
]

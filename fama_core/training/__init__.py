"""Training FAMA models with FBK's recipe: `train(TrainOptions(...))`, then `average(...)` the last checkpoints."""

from .average import average, average_state_dicts, last_checkpoints
from .data import Batch, DataOptions, SpeechDataset, build_manifest, manifest_texts
from .loss import LossWeights, fama_loss, label_smoothed_nll_loss
from .schedule import Schedule
from .trainer import Trainer, TrainOptions, load_preset, merge_options, train

__all__ = [
    "Batch", "DataOptions", "LossWeights", "Schedule", "SpeechDataset", "TrainOptions", "Trainer", "average",
    "average_state_dicts", "build_manifest", "fama_loss", "label_smoothed_nll_loss", "last_checkpoints",
    "load_preset", "manifest_texts", "merge_options", "train",
]

"""fama: run and train the FAMA speech foundation models (English/Italian ASR, EN<->IT speech translation).

The library API mirrors the command line:

    model, tokenizer = fama_core.load_model("fama-small")
    segments = fama_core.transcribe("lecture.mp4", model="fama-small", language="it")
    segments = fama_core.translate("talk.mp3", model="fama-small", to="en")
    report = fama_core.evaluate("test.tsv", model="fama-small", task="asr")
    run_dir = fama_core.train(fama_core.TrainOptions(...)); fama_core.average(...)

`transcribe`, `translate`, `evaluate` and `train` are functions; their code lives in the modules
`fama_core.pipeline`, `fama_core.evaluation` and the package `fama_core.training`, so that every module and
every function is importable by its own name.
"""

from .checkpoints import CheckpointError, load_model, save_model
from .config import ModelConfig, preset
from .decoding import DecodeOptions, Hypothesis, decode, forced_align
from .evaluation import evaluate
from .model import FamaModel
from .pipeline import TranscribeOptions, transcribe, translate
from .tokenizer import Tokenizer
from .training import TrainOptions, average, train

__all__ = [
    "CheckpointError",
    "DecodeOptions",
    "FamaModel",
    "Hypothesis",
    "ModelConfig",
    "Tokenizer",
    "TrainOptions",
    "TranscribeOptions",
    "average",
    "decode",
    "evaluate",
    "forced_align",
    "load_model",
    "preset",
    "save_model",
    "train",
    "transcribe",
    "translate",
]

"""The training loop of FBK's FAMA recipe: options, model set-up, updates, checkpoints, validation, DDP.

One update = `update_freq` micro-batches on each of `world_size` workers; the summed loss gradients are
divided by the update's total `sample_size` (fairseq's normalisation), clipped, and applied by Adam with
decoupled weight decay (fairseq's `adam` is AdamW). Everything random is tied to a position (seed, epoch,
batch index): the batch plan, SpecAugment, dropout and stage 2's ASR/ST draw. Hence a resumed run, or the
same global batch split over more workers, takes the same steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from fama_core.checkpoints import CheckpointError, load_model
from fama_core.config import PRESETS, ModelConfig, preset
from fama_core.model import FamaModel
from fama_core.outputs import atomic_write
from fama_core.precision import FLOAT_DTYPES, TRAIN_DTYPES, normalize
from fama_core.tokenizer import Tokenizer

from .checkpointing import LAST, load_training_checkpoint, numbered_checkpoints, restore, write_checkpoint
from .data import Batch, DataOptions, SpeechDataset, batch_seed, iterate
from .distributed import Dist, init_distributed, torchrun_env
from .loss import LossWeights, fama_loss
from .schedule import Schedule
from .validation import dev_loss, dev_rows, dev_scores

__all__ = ["LAST", "Dist", "TrainOptions", "Trainer", "check_options", "init_distributed", "load_preset",
           "load_training_checkpoint", "merge_options", "model_config", "numbered_checkpoints", "train"]

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainOptions:
    train: list[str] = field(default_factory=list)  # manifests (TSV)
    save_dir: str = "checkpoints"
    stage: int = 1
    valid: list[str] = field(default_factory=list)
    # model: a preset's dimensions (+ overrides), or the weights of an earlier model
    model: str = "small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    finetune_from: str | None = None
    spm: str | None = None
    dict_path: str | None = None
    # optimisation
    schedule: Schedule = field(default_factory=Schedule)
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-8
    weight_decay: float = 0.001
    clip_norm: float = 10.0
    update_freq: int = 1
    max_update: int = 0  # 0: no limit
    max_epoch: int = 0  # 0: no limit
    loss: LossWeights = field(default_factory=LossWeights)
    data: DataOptions = field(default_factory=DataOptions)
    seed: int = 1
    dtype: str = "auto"  # auto (bf16 on GPUs that have it, else fp32), fp32, bf16, fp16
    device: str | None = None
    # checkpoints, validation, logs
    save_interval_updates: int = 1000
    save_interval_epochs: int = 1  # 0: no end-of-epoch checkpoints (the final one is always written)
    keep_interval_updates: int = 25
    resume: bool = False
    validate_interval_updates: int = 1000
    valid_max_utterances: int = 0  # 0: decode the whole dev set
    log_interval: int = 100
    tensorboard: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainOptions:
        d = dict(d)
        nested = {"schedule": Schedule, "loss": LossWeights, "data": DataOptions}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known - {"description"})
        if unknown:
            raise ValueError(f"unknown training options: {', '.join(unknown)}")
        d.pop("description", None)
        for k, c in nested.items():
            if isinstance(d.get(k), dict):
                d[k] = c(**d[k])
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)


def load_preset(name: str, stage: int) -> dict[str, Any]:
    """A recipe as a dict of TrainOptions fields: `small`/`medium` (FBK's commands for `stage`) or a JSON path."""
    path = Path(name)
    if not path.suffix == ".json":
        path = PRESET_DIR / f"{name}-stage{stage}.json"
        if not path.exists():
            known = sorted({p.stem.rsplit("-", 1)[0] for p in PRESET_DIR.glob("*-stage*.json")})
            raise ValueError(f"no preset {name!r} for stage {stage}; known presets: {', '.join(known)}")
    return json.loads(path.read_text())


def merge_options(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` applied; nested dicts (schedule, loss, data) merge key by key."""
    out = dict(base)
    for k, v in overrides.items():
        out[k] = merge_options(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# --------------------------------------------------------------------------------------------- set-up


def _resolve_tokenizer(opts: TrainOptions, save_dir: Path, resuming: bool) -> Tokenizer | None:
    if opts.spm:
        return Tokenizer(opts.spm, opts.dict_path)
    if resuming and (save_dir / "tokenizer.model").exists():
        return Tokenizer.from_folder(save_dir)
    return None


def _initial_model(opts: TrainOptions, tokenizer: Tokenizer | None) -> tuple[FamaModel, Tokenizer]:
    if opts.finetune_from:
        path = Path(opts.finetune_from)
        if path.is_file() and path.suffix == ".pt":
            try:
                ckpt = load_training_checkpoint(path)
            except CheckpointError:
                ckpt = None
            if ckpt is not None:
                model = FamaModel(ModelConfig.from_dict(ckpt["model_config"]))
                model.load_state_dict(ckpt["model"])
                tok = tokenizer or Tokenizer.from_folder(path.parent)
                return model, tok
        model, tok = load_model(opts.finetune_from, device="cpu", spm=opts.spm, trainable=True)
        return model.train(), tokenizer or tok
    if tokenizer is None:
        raise ValueError("no tokenizer: give --spm (train one with `fama data spm`) or --finetune-from a model")
    return FamaModel(model_config(opts, tokenizer.vocab_size)), tokenizer


def model_config(opts: TrainOptions, vocab_size: int) -> ModelConfig:
    """The preset's dimensions with `model_overrides`; the decoder width follows `d_model` unless given (FAMA's
    top CTC head adds the decoder's language embedding to the encoder output, so the two widths are one).
    Raises ValueError for an unknown preset or dimensions that do not fit together."""
    if opts.model not in PRESETS:
        raise ValueError(f"unknown model preset {opts.model!r}; choose one of {', '.join(PRESETS)}")
    over = dict(opts.model_overrides)
    if "d_model" in over and "decoder_dim" not in over:
        over["decoder_dim"] = over["d_model"]
    cfg = ModelConfig.from_dict({**preset(opts.model).to_dict(), "vocab_size": vocab_size,
                                 "src_vocab_size": vocab_size, **over})
    rules = [(cfg.d_model % cfg.encoder_heads == 0, "d_model must be divisible by encoder_heads"),
             (cfg.decoder_dim % cfg.decoder_heads == 0, "decoder_dim must be divisible by decoder_heads"),
             (cfg.decoder_dim == cfg.d_model, "decoder_dim must equal d_model (the top CTC head adds the decoder's "
                                              "language embedding to the encoder output)")]
    for ok, why in rules:
        if not ok:
            raise ValueError(f"model config: {why}")
    if not 1 <= cfg.ctc_encoder_layer <= cfg.encoder_layers or cfg.decoder_layers < 1:
        raise ValueError(f"model config: training needs 1 <= ctc_encoder_layer ({cfg.ctc_encoder_layer}) <= "
                         f"encoder_layers ({cfg.encoder_layers}) for the intermediate CTC loss, and a decoder layer")
    return cfg


def check_options(opts: TrainOptions) -> None:
    """What can be checked before any data or weights are read; ValueError names the problem (a usage error)."""
    if not opts.train:
        raise ValueError("no training data: give --train-subset")
    if opts.stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, not {opts.stage}")
    normalize(opts.dtype, TRAIN_DTYPES)
    if opts.update_freq < 1 or opts.log_interval < 1 or min(opts.max_update, opts.max_epoch) < 0:
        raise ValueError("update_freq and log_interval must be at least 1, max_update and max_epoch at least 0")
    torchrun_env()
    if not opts.finetune_from:
        model_config(opts, 100)  # the dimensions fit together (the vocabulary size does not matter here)
    save_dir = Path(opts.save_dir)
    last = save_dir / LAST
    if opts.resume and not last.exists():
        why = "no such folder" if not save_dir.exists() else f"no {LAST} in it"
        raise ValueError(f"nothing to resume in {save_dir} ({why})")
    if last.exists() and not opts.resume:
        raise ValueError(f"{last} exists: pass --resume to continue that run, or choose another --save-dir")


def _autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    name = normalize(name, TRAIN_DTYPES)
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return None if name == "float32" else FLOAT_DTYPES[name]


# --------------------------------------------------------------------------------------------- trainer


class Trainer:
    """A training run: set-up (distributed, resume, model, data), `update` steps, checkpoints, validation."""

    def __init__(self, opts: TrainOptions, on_log: Callable[[dict], None] | None = None):
        check_options(opts)
        self.opts, self.on_log = opts, on_log
        self.dist, self.device = init_distributed(opts.device)
        self.save_dir = Path(opts.save_dir)
        ckpt = load_training_checkpoint(self.save_dir / LAST) if opts.resume else None
        torch.manual_seed(opts.seed)
        np.random.seed(opts.seed)
        random.seed(opts.seed)
        self.model, self.tokenizer = self._build_model(ckpt)
        self.ddp = self.dist.world > 1
        self.net = self._wrap(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opts.schedule.lr_at(0),
                                           betas=tuple(opts.adam_betas), eps=opts.adam_eps,
                                           weight_decay=opts.weight_decay)
        self.amp = _autocast_dtype(opts.dtype, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=128.0, enabled=self.amp == torch.float16)
        self.num_updates, self.epoch, self.position = 0, 1, 0
        if ckpt is not None:
            self.num_updates, self.epoch, self.position = restore(ckpt, self.model, self.optimizer, self.scaler)
        self._saved_at: tuple[int, int, int] | None = None
        self.data = SpeechDataset(opts.train, self.tokenizer, opts.data, opts.stage, opts.seed)
        if len(self.data) == 0:
            raise ValueError(f"no usable training utterances ({self.data.skipped_summary()})")
        self.valid = SpeechDataset(opts.valid, self.tokenizer, opts.data, opts.stage, opts.seed) if opts.valid \
            else None
        self.tb = self._prepare_save_dir() if self.dist.main else None
        self.log({"event": "start", "parameters": self.model.num_parameters(), "train_utterances": len(self.data),
                  "skipped": self.data.skipped, "skipped_summary": self.data.skipped_summary(),
                  "world_size": self.dist.world, "device": str(self.device),
                  "update": self.num_updates, "epoch": self.epoch, "resumed": ckpt is not None})
        self.dist.barrier()

    def _build_model(self, ckpt: dict[str, Any] | None) -> tuple[FamaModel, Tokenizer]:
        opts = self.opts
        tok = _resolve_tokenizer(opts, self.save_dir, ckpt is not None)
        if ckpt is not None:
            model = FamaModel(ModelConfig.from_dict(ckpt["model_config"]))
            tok = tok or Tokenizer.from_folder(self.save_dir)
        else:
            model, tok = _initial_model(opts, tok)
        if tok.vocab_size != model.cfg.vocab_size:
            raise ValueError(f"the tokenizer has {tok.vocab_size} ids but the model {model.cfg.vocab_size}")
        return model, tok

    def _wrap(self, model: FamaModel) -> nn.Module:
        """Move the model to this worker's device; under DDP, the network that synchronises gradients."""
        if self.ddp and self.device.type == "cuda":
            # FBK trains with SyncBatchNorm; on CPU (gloo) each worker keeps plain BatchNorm statistics
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device).train()
        if not self.ddp:
            return self.model
        return nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device] if self.device.type == "cuda" else None, broadcast_buffers=False)

    def _prepare_save_dir(self) -> Any:
        """The run's folder with its tokenizer and options; a TensorBoard writer when asked for (else None)."""
        self.save_dir.mkdir(parents=True, exist_ok=True)
        if not (self.save_dir / "tokenizer.model").exists():
            self.tokenizer.save(self.save_dir)
        # the run's own record, rewritten by every run of this folder (resumed ones included)
        atomic_write(self.save_dir / "train_options.json", json.dumps(self.opts.to_dict(), indent=2) + "\n",
                     overwrite=True)
        if not self.opts.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self.log({"event": "warning", "message": "tensorboard is not installed; --tensorboard ignored"})
            return None
        return SummaryWriter(self.opts.tensorboard)

    # ------------------------------------------------------------------------------------------- logging

    def log(self, record: dict) -> None:
        if not self.dist.main:
            return
        record = {"time": round(time.time(), 3), **record}
        with open(self.save_dir / LOG_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None and record.get("event") in ("train", "valid"):
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("update", "time", "epoch"):
                    self.tb.add_scalar(f"{record['event']}/{k}", v, record.get("update", self.num_updates))
        if self.on_log is not None:
            self.on_log(record)

    # ------------------------------------------------------------------------------------------- steps

    def _forward(self, batch: Batch, net: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
        """Losses of a batch through `net` (default: the DDP-wrapped training network)."""
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            dec, ctc_top, enc = (net or self.net)(batch.features, batch.lengths, batch.prev_tokens)
        cfg = self.model.cfg
        return fama_loss(dec, ctc_top, enc.ctc_inter_logits, enc.lengths, batch.target, batch.transcript,
                         self.opts.loss, cfg.pad, cfg.eos, cfg.blank, cfg.src_blank)

    def update(self, micro: list[tuple[int, int, Batch] | None], dummy: Batch | None) -> dict[str, float]:
        """One optimiser step over this worker's micro-batches (None: a zero-weight stand-in, as fairseq's)."""
        opts = self.opts
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "ctc_inter": 0.0, "ce": 0.0, "nll": 0.0, "ctc_top": 0.0}
        sample_size = ntokens = frames = sentences = st_batches = 0
        for j, item in enumerate(micro):
            epoch, b, batch = item if item is not None else (0, -1, None)
            weight = 1.0 if batch is not None and len(batch) > 0 else 0.0
            if not weight:
                if not self.ddp:
                    continue
                batch = dummy  # every worker must take part in each gradient all-reduce
            torch.manual_seed(batch_seed(opts.seed, epoch, b, "dropout"))
            batch = batch.to(self.device)
            sync = j == len(micro) - 1 or not self.ddp
            ctx = self.net.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                out = self._forward(batch)
                self.scaler.scale(out["loss"] * weight).backward()
            if weight:
                for k in sums:
                    sums[k] += float(out[k].detach())
                sample_size += batch.sample_size
                ntokens += int(batch.target[:, opts.loss.ignore_prefix_size:].ne(self.model.cfg.pad).sum())
                frames += batch.frames
                sentences += len(batch)
                st_batches += batch.task == "st"
        keys = list(sums)
        counts = [sample_size, ntokens, frames, sentences, st_batches]
        totals = self.dist.all_sum([sums[k] for k in keys] + counts, self.device)
        sums = dict(zip(keys, totals[: len(keys)]))
        sample_size, ntokens, frames, sentences, st_batches = (int(x) for x in totals[len(keys):])
        lr = opts.schedule.lr_at(self.num_updates)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.scaler.unscale_(self.optimizer)
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        if sample_size > 0:
            # DDP averaged over workers; fairseq's gradient is the sum over the update divided by sample_size
            torch._foreach_mul_(grads, self.dist.world / sample_size)
        if opts.clip_norm > 0:
            gnorm = float(nn.utils.clip_grad_norm_(self.model.parameters(), opts.clip_norm)) if grads else 0.0
        else:
            gnorm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))) \
                if grads else 0.0
        skipped = sample_size == 0 or not math.isfinite(gnorm)
        if sample_size > 0 and self.scaler.is_enabled():
            self.scaler.step(self.optimizer)  # skips the step itself on inf/NaN and lowers the scale
        elif not skipped:
            self.optimizer.step()
        self.scaler.update()
        self.num_updates += 1
        ln2 = math.log(2)
        denom = max(sample_size, 1)
        return {"loss": sums["loss"] / denom / ln2, "nll_loss": sums["nll"] / max(ntokens, 1) / ln2,
                "ctc_inter": sums["ctc_inter"] / denom / ln2, "ctc_top": sums["ctc_top"] / denom / ln2,
                "ce": sums["ce"] / denom / ln2, "lr": lr, "gnorm": gnorm, "sample_size": sample_size,
                "frames": frames, "sentences": sentences, "st_batches": st_batches, "skipped_update": bool(skipped)}

    def save(self, epoch_end: bool = False) -> Path | None:
        """Write a checkpoint of the current state (once per state: a second call at the same point is a no-op)."""
        state = (self.num_updates, self.epoch, self.position)
        if not self.dist.main or self._saved_at == state:
            return None
        self._saved_at = state
        progress = {"updates": self.num_updates, "epoch": self.epoch, "batch": self.position}
        path = write_checkpoint(self.save_dir, self.model, self.optimizer, self.scaler, progress,
                                self.opts.to_dict(), self.opts.keep_interval_updates)
        self.log({"event": "checkpoint", "path": str(path), "update": self.num_updates, "epoch_end": epoch_end})
        return path

    def done(self) -> bool:
        o = self.opts
        return (o.max_update > 0 and self.num_updates >= o.max_update) or (o.max_epoch > 0 and self.epoch > o.max_epoch)

    def run(self) -> Path:
        """Train until `max_update` or `max_epoch`; returns the path of the last checkpoint."""
        self._window = {"frames": 0, "t": time.time(), "loss": 0.0, "sample_size": 0}
        self._start = (time.time(), self.num_updates)
        while not self.done():
            interval_save_due = self._run_epoch()
            epoch_end = self.position == 0
            every = self.opts.save_interval_epochs
            if self.done() or (epoch_end and (interval_save_due or (every > 0 and (self.epoch - 1) % every == 0))):
                self.save(epoch_end=epoch_end)
        self.dist.barrier()
        if self.tb is not None:
            self.tb.close()
        return self.save_dir / LAST

    def _run_epoch(self) -> bool:
        """Updates from the current position to the end of the epoch (or until done); True when the last update
        fell on a checkpoint interval at the epoch's end, whose checkpoint is written once, after the epoch."""
        opts, D = self.opts, self.dist
        per_update = D.world * opts.update_freq
        batches = self.data.batches(self.epoch)
        dummy = self.data.collate(batches[0][:1]) if D.world > 1 else None
        groups = [list(range(s, min(s + per_update, len(batches)))) for s in range(self.position, len(batches),
                                                                                    per_update)]
        mine = [[g[j * D.world + D.rank] if j * D.world + D.rank < len(g) else None
                 for j in range(math.ceil(len(g) / D.world))] for g in groups]
        plan = [(self.epoch, b, batches[b]) for m in mine for b in m if b is not None]
        stream = iterate(self.data, plan, augment=True, seed=opts.seed, num_workers=opts.data.num_workers)
        sentences, failed, save_due = 0, [], False
        for g, m in zip(groups, mine):
            micro = [next(stream) if b is not None else None for b in m]
            for item in micro:
                if item is not None and item[2].failed:
                    failed += item[2].failed
                    self.log({"event": "warning", "message": "unreadable audio skipped", "ids": item[2].failed})
            stats = self.update(micro, dummy)
            sentences += stats["sentences"]
            self.position = g[-1] + 1
            self._log_progress(stats)
            save_due = opts.save_interval_updates > 0 and self.num_updates % opts.save_interval_updates == 0
            if save_due and self.position < len(batches):
                self.save()
            if self.valid is not None and opts.validate_interval_updates > 0 \
                    and self.num_updates % opts.validate_interval_updates == 0:
                self.validate()
            if self.done():
                break
        if groups and sentences == 0:
            raise ValueError(f"epoch {self.epoch}: no training audio could be read"
                             + (f", e.g. {failed[0]}" if failed else ""))
        if self.position >= len(batches):
            self.epoch, self.position = self.epoch + 1, 0
            self.log({"event": "epoch_end", "epoch": self.epoch - 1, "update": self.num_updates})
            if self.valid is not None and opts.validate_interval_updates <= 0:
                self.validate()
        return save_due

    def _log_progress(self, stats: dict[str, float]) -> None:
        opts, w = self.opts, self._window
        w["frames"] += stats["frames"]
        w["loss"] += stats["loss"] * stats["sample_size"]
        w["sample_size"] += stats["sample_size"]
        if self.num_updates % opts.log_interval and self.num_updates != opts.max_update:
            return
        now = time.time()
        rate = (self.num_updates - self._start[1]) / max(now - self._start[0], 1e-9)
        left = (opts.max_update - self.num_updates) / rate if opts.max_update and rate > 0 else None
        self.log({"event": "train", "update": self.num_updates, "epoch": self.epoch,
                  **{k: v for k, v in stats.items() if k not in ("frames", "sentences")},
                  "loss": w["loss"] / max(w["sample_size"], 1),
                  "frames_per_s": w["frames"] / max(now - w["t"], 1e-9), "eta_s": left,
                  "max_update": opts.max_update})
        self._window = {"frames": 0, "t": now, "loss": 0.0, "sample_size": 0}

    def validate(self) -> dict[str, float] | None:
        """Dev loss (both tasks in stage 2, as FBK) and greedy WER (ASR) / BLEU (ST) scored as `fama eval`
        scores; rank 0 only (the other workers wait)."""
        if not self.dist.main or self.valid is None:
            self.dist.barrier()
            return None
        tasks = ["asr", "st"] if self.opts.stage == 2 else ["asr"]
        self.model.eval()
        record: dict[str, Any] = {"event": "valid", "update": self.num_updates}
        record.update(dev_loss(self.valid, tasks, lambda b: self._forward(b, self.model), self.device))
        rows = dev_rows(self.opts.valid, self.opts.valid_max_utterances)
        warn = lambda message: self.log({"event": "warning", "message": message})  # noqa: E731
        record.update(dev_scores(self.model, self.tokenizer, rows, tasks, warn))
        self.model.train()
        self.log(record)
        self.dist.barrier()
        return record


def train(options: TrainOptions, on_log: Callable[[dict], None] | None = None) -> Path:
    """Run (or resume) a training run; returns the path of the last checkpoint. `on_log` sees every log record."""
    trainer = Trainer(options, on_log)
    try:
        return trainer.run()
    finally:
        if trainer.ddp and dist.is_initialized():
            dist.destroy_process_group()

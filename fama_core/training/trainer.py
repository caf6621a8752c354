"""The training loop of FBK's FAMA recipe: options, model set-up, updates, checkpoints, validation, DDP.

One update = `update_freq` micro-batches on each of `world_size` workers; the summed loss gradients are
divided by the update's total `sample_size` (fairseq's normalisation), clipped, and applied by Adam with
decoupled weight decay (fairseq's `adam` is AdamW). Everything random is tied to a position (seed, epoch,
batch index): the batch plan, SpecAugment, dropout and stage 2's ASR/ST draw. Hence a resumed run, or the
same global batch split over more workers, takes the same steps.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
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

from fama_core.checkpoints import DTYPES, CheckpointError, load_model
from fama_core.config import ModelConfig, preset
from fama_core.model import FamaModel
from fama_core.tokenizer import Tokenizer

from .data import Batch, DataOptions, SpeechDataset, batch_seed, iterate
from .loss import LossWeights, fama_loss
from .schedule import Schedule

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"
LAST = "checkpoint_last.pt"
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


# --------------------------------------------------------------------------------------------- distributed


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: str | None) -> tuple[Dist, torch.device]:
    """Join torchrun's process group (gloo on CPU, nccl on GPU) and pick this worker's device."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        # generous timeout: the other workers wait at a barrier while rank 0 validates
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=datetime.timedelta(hours=2))
    rank = dist.get_rank() if world > 1 else 0
    return Dist(rank, world, local), dev


# --------------------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    """Every RNG as tensors and lists, so `torch.load(weights_only=True)` can read it back."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos, "has_gauss": has_gauss,
                  "cached": cached},
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _link_or_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        import shutil

        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def numbered_checkpoints(folder: str | Path) -> list[Path]:
    """`checkpoint_<updates>.pt` files of a folder, oldest first."""
    found = []
    for p in Path(folder).glob("checkpoint_*.pt"):
        n = p.stem.split("_", 1)[1]
        if n.isdigit():
            found.append((int(n), p))
    return [p for _, p in sorted(found)]


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable training checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "fama_train" not in ckpt:
        raise CheckpointError(f"{path}: not a fama training checkpoint")
    return ckpt


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
        model, tok = load_model(opts.finetune_from, device="cpu", spm=opts.spm)
        return model.train(), tokenizer or tok
    if tokenizer is None:
        raise ValueError("no tokenizer: give --spm (train one with `fama data spm`) or --finetune-from a model")
    cfg = preset(opts.model) if opts.model in ("small", "medium") else ModelConfig()
    cfg = dataclasses.replace(cfg, vocab_size=tokenizer.vocab_size, src_vocab_size=tokenizer.vocab_size)
    cfg = ModelConfig.from_dict({**cfg.to_dict(), **opts.model_overrides})
    return FamaModel(cfg), tokenizer


def _autocast_dtype(name: str, device: torch.device) -> torch.dtype | None:
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return None if DTYPES[name] == torch.float32 else DTYPES[name]


# --------------------------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(self, opts: TrainOptions, on_log: Callable[[dict], None] | None = None):
        self.opts, self.on_log = opts, on_log
        self.dist, self.device = init_distributed(opts.device)
        self.save_dir = Path(opts.save_dir)
        last = self.save_dir / LAST
        if last.exists() and not opts.resume:
            raise ValueError(f"{last} exists: pass --resume to continue that run, or choose another --save-dir")
        resuming = opts.resume and last.exists()
        ckpt = load_training_checkpoint(last) if resuming else None

        torch.manual_seed(opts.seed)
        np.random.seed(opts.seed)
        random.seed(opts.seed)
        tok = _resolve_tokenizer(opts, self.save_dir, resuming)
        if ckpt is not None:
            model = FamaModel(ModelConfig.from_dict(ckpt["model_config"]))
            tok = tok or Tokenizer.from_folder(self.save_dir)
        else:
            model, tok = _initial_model(opts, tok)
        if tok.vocab_size != model.cfg.vocab_size:
            raise ValueError(f"the tokenizer has {tok.vocab_size} ids but the model {model.cfg.vocab_size}")
        self.tokenizer, self.model = tok, model
        self.ddp = self.dist.world > 1
        if self.ddp and self.device.type == "cuda":
            # FBK trains with SyncBatchNorm; on CPU (gloo) each worker keeps plain BatchNorm statistics
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device).train()
        self.net: nn.Module = self.model
        if self.ddp:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=opts.schedule.lr_at(0),
                                           betas=tuple(opts.adam_betas), eps=opts.adam_eps,
                                           weight_decay=opts.weight_decay)
        self.amp = _autocast_dtype(opts.dtype, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=128.0, enabled=self.amp == torch.float16)
        self.num_updates, self.epoch, self.position = 0, 1, 0
        if ckpt is not None:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scaler.load_state_dict(ckpt["scaler"])
            self.num_updates, self.epoch, self.position = (ckpt["progress"][k] for k in ("updates", "epoch", "batch"))
            _set_rng_state(ckpt["rng"])
        self.data = SpeechDataset(opts.train, tok, opts.data, opts.stage, opts.seed)
        if len(self.data) == 0:
            raise ValueError(f"no usable training utterances ({self.data.skipped} skipped)")
        self.valid = SpeechDataset(opts.valid, tok, opts.data, opts.stage, opts.seed) if opts.valid else None
        self.tb = None
        if self.dist.main:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            if not (self.save_dir / "tokenizer.model").exists():
                tok.save(self.save_dir)
            (self.save_dir / "train_options.json").write_text(json.dumps(opts.to_dict(), indent=2) + "\n")
            if opts.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self.tb = SummaryWriter(opts.tensorboard)
                except ImportError:
                    self.log({"event": "warning", "message": "tensorboard is not installed; --tensorboard ignored"})
        self.log({"event": "start", "parameters": self.model.num_parameters(), "train_utterances": len(self.data),
                  "skipped": self.data.skipped, "world_size": self.dist.world, "device": str(self.device),
                  "update": self.num_updates, "epoch": self.epoch, "resumed": ckpt is not None})
        self.dist.barrier()

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
            ctx = self.net.no_sync() if not sync else _nullcontext()
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
        if not self.dist.main:
            return None
        ckpt = {
            "fama_train": 1,
            "model": self.model.state_dict(),
            "model_config": self.model.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": {"updates": self.num_updates, "epoch": self.epoch, "batch": self.position},
            "rng": _rng_state(),
            "options": json.dumps(self.opts.to_dict()),
        }
        path = self.save_dir / f"checkpoint_{self.num_updates}.pt"
        _atomic_save(ckpt, path)
        _link_or_copy(path, self.save_dir / LAST)
        keep = self.opts.keep_interval_updates
        if keep > 0:
            for old in numbered_checkpoints(self.save_dir)[:-keep]:
                old.unlink(missing_ok=True)
        self.log({"event": "checkpoint", "path": str(path), "update": self.num_updates, "epoch_end": epoch_end})
        return path

    def done(self) -> bool:
        o = self.opts
        return (o.max_update > 0 and self.num_updates >= o.max_update) or (o.max_epoch > 0 and self.epoch > o.max_epoch)

    def run(self) -> Path:
        opts, D = self.opts, self.dist
        per_update = D.world * opts.update_freq
        window = {"frames": 0, "t": time.time(), "n": 0, "loss": 0.0, "sample_size": 0}
        start_time, start_updates = time.time(), self.num_updates
        while not self.done():
            batches = self.data.batches(self.epoch)
            dummy = self.data.collate(batches[0][:1]) if D.world > 1 else None
            groups = [list(range(s, min(s + per_update, len(batches)))) for s in range(self.position, len(batches),
                                                                                        per_update)]
            mine = [[g[j * D.world + D.rank] if j * D.world + D.rank < len(g) else None
                     for j in range(math.ceil(len(g) / D.world))] for g in groups]
            plan = [(self.epoch, b, batches[b]) for m in mine for b in m if b is not None]
            stream = iterate(self.data, plan, augment=True, seed=opts.seed, num_workers=opts.data.num_workers)
            for g, m in zip(groups, mine):
                micro = [next(stream) if b is not None else None for b in m]
                for item in micro:
                    if item is not None and item[2].failed:
                        self.log({"event": "warning", "message": "unreadable audio skipped", "ids": item[2].failed})
                stats = self.update(micro, dummy)
                self.position = g[-1] + 1
                window["frames"] += stats["frames"]
                window["n"] += 1
                window["loss"] += stats["loss"] * stats["sample_size"]
                window["sample_size"] += stats["sample_size"]
                if self.num_updates % opts.log_interval == 0 or self.num_updates == opts.max_update:
                    now = time.time()
                    rate = (self.num_updates - start_updates) / max(now - start_time, 1e-9)
                    left = (opts.max_update - self.num_updates) / rate if opts.max_update and rate > 0 else None
                    self.log({"event": "train", "update": self.num_updates, "epoch": self.epoch,
                              **{k: v for k, v in stats.items() if k not in ("frames", "sentences")},
                              "loss": window["loss"] / max(window["sample_size"], 1),
                              "frames_per_s": window["frames"] / max(now - window["t"], 1e-9),
                              "eta_s": left, "max_update": opts.max_update})
                    window = {"frames": 0, "t": now, "n": 0, "loss": 0.0, "sample_size": 0}
                if opts.save_interval_updates > 0 and self.num_updates % opts.save_interval_updates == 0:
                    self.save()
                if self.valid is not None and opts.validate_interval_updates > 0 \
                        and self.num_updates % opts.validate_interval_updates == 0:
                    self.validate()
                if self.done():
                    break
            if self.position >= len(batches):
                self.epoch, self.position = self.epoch + 1, 0
                self.log({"event": "epoch_end", "epoch": self.epoch - 1, "update": self.num_updates})
                if self.valid is not None and opts.validate_interval_updates <= 0:
                    self.validate()
            epoch_end = self.position == 0
            every = opts.save_interval_epochs
            if self.done() or (epoch_end and every > 0 and (self.epoch - 1) % every == 0):
                self.save(epoch_end=epoch_end)
        D.barrier()
        if self.tb is not None:
            self.tb.close()
        return self.save_dir / LAST

    # ------------------------------------------------------------------------------------------- validation

    @torch.no_grad()
    def validate(self) -> dict[str, float] | None:
        """Dev loss (both tasks in stage 2, as FBK) and greedy WER (ASR rows) / BLEU (ST rows); rank 0 only."""
        if not self.dist.main or self.valid is None:
            self.dist.barrier()
            return None
        model, data = self.model, self.valid
        model.eval()
        tasks = ["asr", "st"] if self.opts.stage == 2 else ["asr"]
        sums, sample_size = {t: 0.0 for t in tasks}, dict.fromkeys(tasks, 0)
        batches = data.batches(0)
        for items in batches:
            for t in tasks:
                b = data.collate(items, t).to(self.device)
                if len(b) == 0:
                    continue
                out = self._forward(b, self.model)
                sums[t] += float(out["loss"])
                sample_size[t] += b.sample_size
        record: dict[str, Any] = {"event": "valid", "update": self.num_updates}
        for t in tasks:
            record[f"loss_{t}" if len(tasks) > 1 else "loss"] = sums[t] / max(sample_size[t], 1) / math.log(2)
        record.update(self._decode_scores(batches, tasks))
        model.train()
        self.log(record)
        self.dist.barrier()
        return record

    def _decode_scores(self, batches: list[np.ndarray], tasks: list[str]) -> dict[str, float]:
        from fama_core.decoding import DecodeOptions, decode
        from fama_core.scoring import bleu, wer

        data, tok, limit = self.valid, self.tokenizer, self.opts.valid_max_utterances
        hyps: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
        n = 0
        for items in batches:
            for t in tasks:
                b = data.collate(items, t)
                if len(b) == 0:
                    continue
                lang_ids = [tok.lang_tag_id(lang) for lang in b.langs]
                out = decode(self.model, b.features.to(self.device), b.lengths.to(self.device), lang_ids,
                             DecodeOptions(beam_size=1, ctc_weight=0.0))
                for k, (nbest, lang) in enumerate(zip(out, b.langs)):
                    row = data.row(int(items[k]))
                    src_lang = row.src_lang or lang
                    kind = "asr" if lang == src_lang else "st"
                    key = (kind, lang if kind == "asr" else f"{src_lang}-{lang}")
                    ref = row.tgt_text if lang == (row.tgt_lang or src_lang) else (row.src_text or row.tgt_text)
                    h, r = hyps.setdefault(key, ([], []))
                    h.append(tok.decode(nbest[0].tokens) if nbest else "")
                    r.append(ref)
            n += len(items)
            if limit and n >= limit:
                break
        scores = {}
        for (kind, lang), (h, r) in sorted(hyps.items()):
            if kind == "asr":
                scores[f"wer_{lang}"] = wer(h, r, lang=lang).wer
            else:
                scores[f"bleu_{lang}"] = bleu(h, r).bleu
        return scores


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def train(options: TrainOptions, on_log: Callable[[dict], None] | None = None) -> Path:
    """Run (or resume) a training run; returns the path of the last checkpoint. `on_log` sees every log record."""
    trainer = Trainer(options, on_log)
    try:
        return trainer.run()
    finally:
        if trainer.ddp and dist.is_initialized():
            dist.destroy_process_group()

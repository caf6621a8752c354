"""Validation during training: the dev loss (teacher-forced, as fairseq's `valid_loss`) and greedy WER / BLEU of
the dev manifests, decoded and scored by the same code as `fama eval` (`fama_core.evaluation.evaluate`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fama_core.decoding import DecodeOptions
from fama_core.evaluation import EvalError, EvalOptions, evaluate
from fama_core.manifest import ManifestRow, read_manifest

from .data import Batch, SpeechDataset

VALID_DECODE = DecodeOptions(beam_size=1, ctc_weight=0.0)  # greedy attention decoding, as FBK's dev BLEU/WER


@torch.no_grad()
def dev_loss(data: SpeechDataset, tasks: list[str], forward: Callable[[Batch], dict[str, torch.Tensor]],
             device: torch.device) -> dict[str, float]:
    """Loss per task in bits per transcript token (`loss`, or `loss_asr`/`loss_st` for several tasks)."""
    sums, sample_size = dict.fromkeys(tasks, 0.0), dict.fromkeys(tasks, 0)
    for items in data.batches(0):
        for t in tasks:
            b = data.collate(items, t).to(device)
            if len(b) == 0:
                continue
            sums[t] += float(forward(b)["loss"])
            sample_size[t] += b.sample_size
    return {f"loss_{t}" if len(tasks) > 1 else "loss": sums[t] / max(sample_size[t], 1) / math.log(2)
            for t in tasks}


def dev_rows(manifests: list[str], limit: int = 0) -> list[ManifestRow]:
    """The dev manifests' rows with their audio paths made absolute (each is relative to its own manifest);
    the first `limit` rows only (0: all)."""
    rows = []
    for m in manifests:
        base = Path(m).resolve().parent
        rows += [dataclasses.replace(r, audio=str(base / r.audio)) for r in read_manifest(m)]
    return rows[:limit] if limit else rows


def dev_scores(model: Any, tokenizer: Any, rows: list[ManifestRow], tasks: list[str],
               warn: Callable[[str], None]) -> dict[str, float]:
    """`wer_<lang>` per spoken language (ASR) and `bleu_<src>-<tgt>` per direction (ST), as `fama eval` scores
    them with greedy decoding; rows `fama eval` cannot decode (e.g. stored fbank features) only get the loss."""
    scores: dict[str, float] = {}
    for task in tasks:
        try:
            report = evaluate(rows, (model, tokenizer), task=task, options=EvalOptions(decode=VALID_DECODE))
        except EvalError as e:
            if task == "asr" or "no rows to evaluate" not in str(e):
                warn(f"validation {task}: {e}")
            continue
        if report.failed:
            warn(f"validation {task}: {len(report.failed)} dev rows not decoded, e.g. {report.failed[0]['id']}: "
                 f"{report.failed[0]['error']}")
        for group, r in sorted(report.groups.items()):
            scores[f"wer_{group}" if task == "asr" else f"bleu_{group}"] = r.wer if task == "asr" else r.bleu
    return scores

"""Token timing from the decoder's cross-attention, for models without the top CTC head.

As whisper's word timestamps do: the decoder is run teacher-forced over the tokens it produced, the
cross-attention weights of the heads that align best are standardised over the tokens, smoothed over time by
a median filter, averaged, and a monotonic path through tokens x frames (dynamic time warping) gives each token
its frames. whisper picks its heads per model from a table; fama has no table for FBK's models, so it takes the
heads of the decoder's upper half whose attention peaks move forward most steadily through the utterance.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .model import EncoderOutput, FamaModel

MEDIAN_FILTER = 7  # frames of the median filter over time (whisper's width)


@torch.no_grad()
def cross_attention(model: FamaModel, enc: EncoderOutput, b: int, tokens: list[int], lang_id: int) -> Tensor:
    """[layers, heads, len(tokens) + 2, frames]: utterance `b`'s cross-attention weights (float32) at the decoder
    positions that predict the language tag, each token of `tokens` and the final `</s>`, teacher-forced. (The
    first and last rows take the silence before and after the speech.)"""
    dec = model.decoder
    n = int(enc.lengths[b])
    one = EncoderOutput(enc.out[b : b + 1, :n], enc.padding_mask[b : b + 1, :n], enc.lengths[b : b + 1])
    prev = torch.tensor([[model.cfg.eos, lang_id, *tokens]], device=enc.out.device)
    queries: list[Tensor] = []
    hooks = [layer.encoder_attn.q_proj.register_forward_hook(lambda _m, _i, out: queries.append(out))
             for layer in dec.layers]
    try:
        dec(prev, one)
    finally:
        for h in hooks:
            h.remove()
    weights = []
    for layer, q in zip(dec.layers, queries):
        att = layer.encoder_attn
        k, _ = att.project_kv(one.out)  # 1 x H x S x D
        q = q.view(1, -1, att.heads, att.head_dim).transpose(1, 2)  # 1 x H x L x D
        scores = torch.matmul(q.float(), k.float().transpose(2, 3)) * att.head_dim**-0.5
        weights.append(torch.softmax(scores, -1)[0])  # H x (len(tokens) + 2) x S
    return torch.stack(weights).cpu()


def _steady(head: np.ndarray) -> float:
    """How steadily a head's attention peak moves forward: the share of consecutive tokens whose peak frame does
    not go back, times how peaked the attention is."""
    peaks = head.argmax(-1)
    forward = float(np.mean(np.diff(peaks) >= 0)) if len(peaks) > 1 else 1.0
    return forward * float(head.max(-1).mean())


def _median_filter(x: np.ndarray, width: int) -> np.ndarray:
    if x.shape[-1] < width:
        return x
    pad = width // 2
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1)


def monotonic_path(score: np.ndarray) -> list[tuple[int, int]]:
    """Each row (token) gets consecutive frames, rows in order, each at least one frame, every frame one row,
    maximising the summed score; per row its (first, last) frame. Needs at least as many frames as rows."""
    rows, frames = score.shape
    best = np.full((frames, rows), -math.inf)
    came = np.zeros((frames, rows), dtype=bool)  # True: the row started at this frame
    best[0, 0] = score[0, 0]
    for t in range(1, frames):
        stay, enter = best[t - 1], np.concatenate([[-math.inf], best[t - 1, :-1]])
        came[t] = enter > stay
        best[t] = np.maximum(stay, enter) + score[:, t]
    spans = [[0, 0] for _ in range(rows)]
    r = rows - 1
    spans[r][1] = frames - 1
    for t in range(frames - 1, 0, -1):
        if came[t, r]:
            spans[r][0] = t
            r -= 1
            spans[r][1] = t - 1
    return [(a, c) for a, c in spans]


def attention_spans(weights: Tensor) -> list[tuple[int, int]]:
    """Per token its (first, last) frame from `cross_attention`'s weights (the language tag's and `</s>`'s rows
    excluded)."""
    layers, heads, rows, frames = weights.shape
    tokens = rows - 2
    if tokens <= 0:
        return []
    if frames < rows:  # more tokens than frames: spread evenly, as forced_align does
        edges = np.linspace(0, frames, tokens + 1)
        return [(int(edges[i]), max(int(edges[i]), int(edges[i + 1]) - 1)) for i in range(tokens)]
    upper = weights[layers // 2 :].reshape(-1, rows, frames).numpy()
    steadiness = np.array([_steady(h) for h in upper])
    chosen = upper[steadiness >= np.median(steadiness)]
    std = chosen.std(axis=1, keepdims=True)
    normed = (chosen - chosen.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
    matrix = _median_filter(normed, MEDIAN_FILTER).mean(0)
    return monotonic_path(matrix)[1 : tokens + 1]


def attention_align(model: FamaModel, enc: EncoderOutput, tokens: list[list[int]],
                    lang_ids: Tensor) -> list[list[tuple[int, int]]]:
    """Per utterance, per token its (first, last) encoder frame, from the cross-attention (`attention_spans`)."""
    return [attention_spans(cross_attention(model, enc, b, toks, int(lang_ids[b]))) if toks else []
            for b, toks in enumerate(tokens)]

"""FAMA's training loss (FBK's `ctc_multi_loss` over `joint_cross_entropy_ctc`), sum-reduced.

    loss = ctc_weight * CTC(intermediate head, transcript)
         + primary_weight * label-smoothed CE(decoder, target without the language-tag position)
         + auxiliary_weight * CTC(top head, target without language tag and </s>)

The gradient denominator (`sample_size`) is, as in fairseq, the number of transcript tokens counting one
`</s>` per utterance, summed over the micro-batches of an update and over all workers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor


@dataclass
class LossWeights:
    ctc_weight: float = 1.0  # intermediate CTC (--ctc-weight)
    primary_weight: float = 5.0  # label-smoothed CE (--primary-loss-weight)
    auxiliary_weight: float = 2.0  # top CTC (--auxiliary-loss-weight)
    label_smoothing: float = 0.1
    ignore_prefix_size: int = 1


def label_smoothed_nll_loss(lprobs: Tensor, target: Tensor, epsilon: float, ignore_index: int) -> tuple[Tensor, Tensor]:
    """fairseq's formula: (1 - eps) * nll + eps / V * sum_v(-log p_v), summed over non-ignored positions.

    lprobs [N, V] log-probabilities, target [N]. Returns (loss, nll_loss), both summed.
    """
    target = target.unsqueeze(-1)
    nll = -lprobs.gather(dim=-1, index=target)
    smooth = -lprobs.sum(dim=-1, keepdim=True)
    pad = target.eq(ignore_index)
    nll, smooth = nll.masked_fill(pad, 0.0).sum(), smooth.masked_fill(pad, 0.0).sum()
    eps_i = epsilon / lprobs.size(-1)
    return (1.0 - epsilon) * nll + eps_i * smooth, nll


def ctc_loss(logits: Tensor, input_lengths: Tensor, targets: Tensor, blank: int, pad: int, eos: int) -> Tensor:
    """Sum-reduced CTC with zero_infinity; `targets` [B, S] right-padded, `pad` and `eos` entries dropped."""
    lprobs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # T x B x V
    keep = targets.ne(pad) & targets.ne(eos)
    return F.ctc_loss(lprobs, targets.masked_select(keep), input_lengths, keep.sum(-1), blank=blank,
                      reduction="sum", zero_infinity=True)


def fama_loss(
    dec_logits: Tensor,
    ctc_top_logits: Tensor,
    ctc_inter_logits: Tensor,
    enc_lengths: Tensor,
    target: Tensor,
    transcript: Tensor,
    weights: LossWeights,
    pad: int,
    eos: int,
    blank: int,
    src_blank: int,
) -> dict[str, Tensor]:
    """All terms of the loss for one batch.

    target: [B, L] `<lang:xx> tokens </s>` right-padded with `pad`; transcript: [B, S] `tokens </s>` padded.
    Returns sums: loss, ctc_inter, ce, nll, ctc_top.
    """
    p = weights.ignore_prefix_size
    lprobs = F.log_softmax(dec_logits[:, p:].float(), dim=-1)
    tgt = target[:, p:]
    ce, nll = label_smoothed_nll_loss(lprobs.reshape(-1, lprobs.size(-1)), tgt.reshape(-1),
                                      weights.label_smoothing, pad)
    ctc_top = ctc_loss(ctc_top_logits, enc_lengths, tgt, blank, pad, eos)
    ctc_inter = ctc_loss(ctc_inter_logits, enc_lengths, transcript, src_blank, pad, eos)
    loss = weights.ctc_weight * ctc_inter + weights.primary_weight * ce + weights.auxiliary_weight * ctc_top
    return {"loss": loss, "ctc_inter": ctc_inter, "ce": ce, "nll": nll, "ctc_top": ctc_top}

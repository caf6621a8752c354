"""The training loss against hand-computed values, and the learning-rate schedules against their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from fama_core.training import LossWeights, Schedule, fama_loss, label_smoothed_nll_loss

PAD, EOS = 1, 2


def _logp(row: list[float]) -> list[float]:
    z = math.log(sum(math.exp(x) for x in row))
    return [x - z for x in row]


def test_label_smoothed_nll_matches_fairseq_formula():
    logits = [[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -2.0, 0.3], [0.0, 0.0, 0.0, 0.0]]
    target = [2, 0, PAD]
    lp = [_logp(r) for r in logits]
    eps, V = 0.1, 4
    nll = -(lp[0][2] + lp[1][0])
    smooth = -(sum(lp[0]) + sum(lp[1]))
    expected = (1 - eps) * nll + eps / V * smooth
    loss, got_nll = label_smoothed_nll_loss(torch.log_softmax(torch.tensor(logits), -1), torch.tensor(target), eps, PAD)
    assert got_nll.item() == pytest.approx(nll, rel=1e-6)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def _ctc_two_frames(lp: list[list[float]], label: int, blank: int) -> float:
    """-log P(label | 2 frames): paths (l, l), (l, blank), (blank, l)."""
    p = [[math.exp(x) for x in row] for row in lp]
    return -math.log(p[0][label] * p[1][label] + p[0][label] * p[1][blank] + p[0][blank] * p[1][label])


def test_fama_loss_hand_computed():
    # vocabulary: 0 <s>, 1 <pad>, 2 </s>, 3 <lang:en>, 4 "a", 5 <ctc_blank>; one utterance, 2 encoder frames
    V, blank, lang, a = 6, 5, 3, 4
    torch.manual_seed(0)
    dec = torch.randn(1, 3, V)  # positions: <lang>, a, </s>
    top = torch.randn(1, 2, V)
    inter = torch.randn(1, 2, V)
    target = torch.tensor([[lang, a, EOS]])
    transcript = torch.tensor([[a, EOS]])
    w = LossWeights()
    out = fama_loss(dec, top, inter, torch.tensor([2]), target, transcript, w, PAD, EOS, blank, blank)

    lp = [_logp(r) for r in dec[0].tolist()]
    # ignore_prefix_size=1: the lang-tag position is not scored
    nll = -(lp[1][a] + lp[2][EOS])
    ce = 0.9 * nll + 0.1 / V * -(sum(lp[1]) + sum(lp[2]))
    ctc_top = _ctc_two_frames([_logp(r) for r in top[0].tolist()], a, blank)
    ctc_inter = _ctc_two_frames([_logp(r) for r in inter[0].tolist()], a, blank)
    assert out["nll"].item() == pytest.approx(nll, rel=1e-5)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["ctc_top"].item() == pytest.approx(ctc_top, rel=1e-5)
    assert out["ctc_inter"].item() == pytest.approx(ctc_inter, rel=1e-5)
    assert out["loss"].item() == pytest.approx(1.0 * ctc_inter + 5.0 * ce + 2.0 * ctc_top, rel=1e-5)


def test_fama_loss_padding_and_impossible_ctc():
    V, blank, lang = 6, 5, 3
    torch.manual_seed(1)
    dec, top, inter = torch.randn(2, 4, V), torch.randn(2, 1, V), torch.randn(2, 1, V)
    target = torch.tensor([[lang, 4, 4, EOS], [lang, 4, EOS, PAD]])
    transcript = torch.tensor([[4, 4, EOS], [4, EOS, PAD]])
    out = fama_loss(dec, top, inter, torch.tensor([1, 1]), target, transcript, LossWeights(), PAD, EOS, blank, blank)
    # "a a" cannot be emitted from one frame: zero_infinity zeroes that utterance, the other one counts
    lp = [_logp(r) for r in top[1].tolist()]
    assert out["ctc_top"].item() == pytest.approx(-lp[0][4], rel=1e-5)
    only_second = fama_loss(dec[1:, :3], top[1:], inter[1:], torch.tensor([1]), target[1:, :3], transcript[1:, :2],
                            LossWeights(), PAD, EOS, blank, blank)
    first = fama_loss(dec[:1], top[:1], inter[:1], torch.tensor([1]), target[:1], transcript[:1], LossWeights(),
                      PAD, EOS, blank, blank)
    assert out["ce"].item() == pytest.approx(first["ce"].item() + only_second["ce"].item(), rel=1e-5)
    assert math.isfinite(out["loss"].item())


@pytest.mark.parametrize("n", [0, 1, 10, 24999, 25000, 25001, 100000])
def test_inverse_sqrt(n):
    s = Schedule("inverse_sqrt", lr=2e-3, warmup_updates=25000)
    expected = n * 2e-3 / 25000 if n < 25000 else 2e-3 * math.sqrt(25000 / n)
    assert s.lr_at(n) == pytest.approx(expected, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("n", [0, 1, 12500, 24999, 25000, 37500, 49999, 50000, 200000])
def test_piecewise_warmup(n):
    s = Schedule("piecewise_warmup", lr=2e-4, warmup_updates=50000, intermediate_lr=2e-5,
                 intermediate_warmup_updates=25000)
    if n < 25000:
        expected = n * 2e-5 / 25000
    elif n < 50000:
        expected = 2e-5 + (n - 25000) * (2e-4 - 2e-5) / 25000
    else:
        expected = 2e-4 * math.sqrt(50000) / math.sqrt(n)
    assert s.lr_at(n) == pytest.approx(expected, rel=1e-12, abs=1e-18)


def test_piecewise_warmup_is_continuous_and_fixed_is_constant():
    s = Schedule("piecewise_warmup", lr=2e-4, warmup_updates=50000, intermediate_lr=2e-5,
                 intermediate_warmup_updates=25000)
    assert s.lr_at(24999) == pytest.approx(s.lr_at(25000), rel=1e-3)
    assert s.lr_at(49999) == pytest.approx(s.lr_at(50000), rel=1e-3)
    assert s.lr_at(50000) == pytest.approx(2e-4)
    f = Schedule("fixed", lr=1e-4)
    assert {f.lr_at(n) for n in (0, 1, 10**6)} == {1e-4}


def test_schedule_validation():
    with pytest.raises(ValueError, match="intermediate_lr"):
        Schedule("piecewise_warmup", lr=2e-4, intermediate_lr=3e-4, warmup_updates=10, intermediate_warmup_updates=5)
    with pytest.raises(ValueError, match="unknown"):
        Schedule("cosine")

"""Kaldi-compatible log-mel filterbanks, utterance CMVN and SpecAugment: the one feature pipeline of FAMA.

`fbank` reproduces `torchaudio.compliance.kaldi.fbank(wave * 32768, num_mel_bins=80, sample_frequency=16000)`
(the features FAMA was trained on through fairseq) in plain torch, batched over padded waveforms, on any
device. `utterance_cmvn` and `spec_augment` follow fairseq's `UtteranceCMVN` and `SpecAugmentTransform`.

The float32 operations run in torchaudio's order, so with the same FFT kernel the result is torchaudio's to
1e-6. FFT libraries (MKL paths, cuFFT) round differently, and bins some 70 dB below a frame's strongest band
are within float32 noise: there, features from two machines differ by up to ~1e-2 (torchaudio's included).
"""

from __future__ import annotations

import math
from functools import cache

import torch
import torch.nn.functional as F

from .audio import SAMPLE_RATE

N_MELS = 80
HOP = 160  # 10 ms
WIN = 400  # 25 ms
N_FFT = 512  # WIN rounded up to a power of two
PREEMPHASIS = 0.97
LOW_FREQ = 20.0
EPS = torch.finfo(torch.float32).eps


def num_frames(n_samples: int) -> int:
    """Frames Kaldi makes from `n_samples` with snip_edges=True."""
    return 0 if n_samples < WIN else 1 + (n_samples - WIN) // HOP


def _mel(freq: float) -> float:
    return 1127.0 * math.log(1.0 + freq / 700.0)


@cache
def _mel_banks(device: torch.device) -> torch.Tensor:
    """[N_FFT // 2 + 1, N_MELS] triangular filters, equally spaced on the mel scale from 20 Hz to Nyquist."""
    low, high = _mel(LOW_FREQ), _mel(SAMPLE_RATE / 2)
    delta = (high - low) / (N_MELS + 1)
    bins = torch.arange(N_MELS).unsqueeze(1)
    left, center, right = low + bins * delta, low + (bins + 1.0) * delta, low + (bins + 2.0) * delta
    mel = 1127.0 * (1.0 + SAMPLE_RATE / N_FFT * torch.arange(N_FFT // 2) / 700.0).log()
    banks = torch.minimum((mel - left) / (center - left), (right - mel) / (right - center)).clamp(min=0)
    banks = F.pad(banks, (0, 1))  # the Nyquist bin gets no weight, as in Kaldi
    return banks.t().contiguous().to(device)


@cache
def _povey_window(device: torch.device) -> torch.Tensor:
    return torch.hann_window(WIN, periodic=False).pow(0.85).to(device)


def _wide(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def fbank(waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """80-bin Kaldi log-mel filterbanks of waveforms in [-1, 1) at 16 kHz.

    waveforms: [B, N] (padded, with `lengths` in samples) or [N]. Returns ([B, T, 80] float32 with the frames
    past each item's length zeroed, frame counts [B] as int64), on the waveforms' device.
    """
    if waveforms.dim() == 1:
        waveforms = waveforms.unsqueeze(0)
    batch, n = waveforms.shape
    device = waveforms.device
    if lengths is None:
        lengths = torch.full((batch,), n, dtype=torch.long, device=device)
    lengths = lengths.to(device=device, dtype=torch.long)
    frame_lengths = torch.where(lengths < WIN, 0, torch.div(lengths - WIN, HOP, rounding_mode="floor") + 1)
    t = num_frames(n)
    if t == 0:
        return waveforms.new_zeros(batch, 0, N_MELS, dtype=torch.float32), frame_lengths

    # Kaldi's per-frame steps, in torchaudio's order of float32 operations (the golden features depend on
    # it), written into zero-padded FFT frames to spare temporaries
    frames = (waveforms.float() * 32768.0).unfold(1, WIN, HOP)  # a [B, T, WIN] view
    padded = torch.zeros(batch, t, N_FFT, device=device)
    x = padded[..., :WIN]
    torch.sub(frames, frames.mean(dim=-1, keepdim=True), out=x)  # DC offset
    previous = torch.cat([x[..., :1], x[..., :-1]], dim=-1).mul_(PREEMPHASIS)
    x.sub_(previous).mul_(_povey_window(device))
    del frames, previous, x
    power = torch.fft.rfft(padded).abs().square_()
    del padded
    # on GPU the product runs in float64 so that a TF32 matmul setting cannot degrade the features
    banks, wide = _mel_banks(device), _wide(device)
    mel = power @ banks if device.type == "cpu" else (power.to(wide) @ banks.to(wide)).float()
    feats = mel.clamp_(min=EPS).log_()
    padding = torch.arange(t, device=device) >= frame_lengths.unsqueeze(1)
    return feats.masked_fill_(padding.unsqueeze(-1), 0.0), frame_lengths


def utterance_cmvn(feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean/variance normalisation over the valid frames (fairseq's UtteranceCMVN).

    feats: [B, T, D], lengths: [B] valid frames. Statistics in float64; padded frames stay 0.
    """
    lengths = lengths.to(feats.device)
    valid = (torch.arange(feats.size(1), device=feats.device) < lengths.unsqueeze(1)).unsqueeze(-1)
    x = feats.to(_wide(feats.device)) * valid
    count = lengths.clamp(min=1).to(x.dtype).view(-1, 1, 1)
    mean = x.sum(dim=1, keepdim=True) / count
    var = x.square().sum(dim=1, keepdim=True) / count - mean.square()
    out = (x - mean) / var.clamp(min=1e-10).sqrt()
    return (out * valid).to(feats.dtype)


def compute_features(
    waveforms: list[torch.Tensor] | torch.Tensor,
    lengths: torch.Tensor | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Model input: fbank + utterance CMVN of one waveform, a padded batch, or a list of 1-D waveforms."""
    if isinstance(waveforms, (list, tuple)):
        items = [torch.as_tensor(w, dtype=torch.float32).reshape(-1) for w in waveforms]
        lengths = torch.tensor([len(w) for w in items], dtype=torch.long)
        waveforms = torch.nn.utils.rnn.pad_sequence(items, batch_first=True) if items else torch.zeros(0, 0)
    if device is not None:
        waveforms = waveforms.to(device)
    feats, frame_lengths = fbank(waveforms, lengths)
    return utterance_cmvn(feats, frame_lengths), frame_lengths


def spec_augment(
    feats: torch.Tensor,
    lengths: torch.Tensor,
    freq_mask_F: int = 27,
    freq_mask_N: int = 1,
    time_mask_T: int = 100,
    time_mask_N: int = 1,
    time_mask_p: float = 1.0,
    mask_value: float | None = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """SpecAugment frequency and time masking per utterance, as fairseq's SpecAugmentTransform (no time warp).

    Each utterance (its valid frames only) gets `freq_mask_N` masks of width uniform in [0, F) and
    `time_mask_N` masks of width uniform in [0, min(T, floor(frames * p))); a zero width masks nothing.
    `mask_value=None` fills with the utterance's mean over its valid frames. Returns a new tensor.
    """
    if (freq_mask_N > 0 and freq_mask_F <= 0) or (time_mask_N > 0 and time_mask_T <= 0):
        raise ValueError("SpecAugment mask widths (freq_mask_F, time_mask_T) must be positive when masks are on")
    out = feats.clone()
    n_freqs = feats.size(-1)

    def randint(high: int) -> int:  # uniform in [0, high)
        return int(torch.randint(high, (1,), generator=generator).item())

    for b, n in enumerate(lengths.tolist()):
        n = int(n)
        if n == 0 or n_freqs < freq_mask_F:
            continue
        x = out[b, :n]
        value = float(feats[b, :n].mean()) if mask_value is None else mask_value
        for _ in range(freq_mask_N):
            f = randint(freq_mask_F)
            f0 = randint(n_freqs - f)
            if f:
                x[:, f0 : f0 + f] = value
        max_t = min(time_mask_T, math.floor(n * time_mask_p))
        if max_t < 1:
            continue
        for _ in range(time_mask_N):
            t = randint(max_t)
            t0 = randint(n - t)
            if t:
                x[t0 : t0 + t, :] = value
    return out

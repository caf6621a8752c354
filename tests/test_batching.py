"""How chunks are grouped into batches: sorted by length, within the item and padded-audio budgets, and with
padding at most MAX_PADDING times the real audio (a 4 s chunk is never padded to 30 s)."""

from __future__ import annotations

import math

from fama_core.pipeline import MAX_PADDING, TranscribeOptions, _batches, batch_padding


def groups(seconds: list[float], batch_size: int = 16, budget_s: float = 480.0,
           device: str = "cuda") -> list[list[float]]:
    """The batches of chunks of these lengths, as decoding on `device` cuts them (a GPU's padding cap by default;
    no CUDA is needed to plan them)."""
    lengths = [int(s * 16000) for s in seconds]
    order = sorted(range(len(lengths)), key=lambda j: -lengths[j])
    options = TranscribeOptions(batch_size=batch_size, batch_seconds=budget_s)
    return [[seconds[j] for j in b] for b in _batches(order, lengths, options, device)]


def test_short_chunks_start_a_new_batch_rather_than_be_padded():
    assert groups([30, 4, 29, 3.5, 28, 4]) == [[30, 29, 28], [4, 4, 3.5]]


def test_padding_cap_is_the_only_new_rule():
    assert MAX_PADDING == 1.3
    # 10 + 8 -> padded 20 / real 18 = 1.11: together; + 7 -> 30 / 25 = 1.2: together; + 5 -> 40 / 30 = 1.33: new
    assert groups([10, 8, 7, 5, 5]) == [[10, 8, 7], [5, 5]]
    assert groups([10, 10, 10, 10, 10], batch_size=2) == [[10, 10], [10, 10], [10]]
    assert groups([10, 10, 10], budget_s=20) == [[10, 10], [10]]
    for b in groups([30, 20, 17, 15, 9, 8, 6, 4, 2, 1.5, 1]):
        assert max(b) * len(b) <= MAX_PADDING * sum(b)


def test_cpu_batches_are_cut_by_count_and_budget_only():
    """On a CPU, `FamaModel.encode` encodes rows of different lengths apart by itself and the decoder attends to
    each row's own frames: cutting by length would only leave the decoder fewer rows per step."""
    assert batch_padding("cpu") == math.inf and batch_padding("cuda:0") == MAX_PADDING
    assert groups([30, 4, 29, 3.5, 28, 4], device="cpu") == [[30, 29, 28, 4, 4, 3.5]]
    assert groups([30, 4, 29, 3.5, 28, 4], batch_size=4, device="cpu") == [[30, 29, 28, 4], [4, 3.5]]
    assert groups([30, 4, 29, 3.5], budget_s=90, device="cpu") == [[30, 29, 4], [3.5]]

"""The library takes multichannel arrays as their readers return them, soundfile's (frames, channels) and
torchaudio's (channels, frames), downmixed by the mean; a shape it cannot read is refused before the model loads."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fama_core import load_model, transcribe
from fama_core.audio import load_audio
from fama_core.pipeline import mono_waveform

from conftest import ROOT

MODEL = ROOT / "tests" / "fixtures" / "tiny_trained"
CATS = MODEL / "clips" / "en_cats.wav"


@pytest.fixture(scope="module")
def pair():
    return load_model(MODEL, device="cpu", dtype="float32")


def test_stereo_arrays_in_either_order_give_the_mono_text(pair) -> None:
    mono = load_audio(CATS)
    expected = transcribe(mono, pair, language="en", beam_size=1).text
    assert expected == "There are twelve cats on the table."
    stereo = np.stack([mono, mono], axis=1)  # soundfile: (frames, channels)
    louder_left = np.stack([mono * 1.5, mono * 0.5], axis=1)  # the mean is the mono signal
    shapes = [stereo, stereo.T, torch.from_numpy(stereo.T.copy()), louder_left, mono[None, :], mono[:, None]]
    texts = transcribe(shapes, pair, language="en", beam_size=1)
    assert [t.text for t in texts] == [expected] * len(shapes)
    assert np.allclose(mono_waveform(louder_left), mono, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 2), (3, 3), (20, 30), (2, 16000, 2), ()])
def test_an_ambiguous_or_3d_shape_is_refused_before_the_model_loads(shape) -> None:
    wave = np.zeros(shape, dtype=np.float32)
    with pytest.raises(ValueError) as e:
        transcribe(wave, MODEL / "no-such-model", language="en")
    assert str(e.value) == (f"<array 0>: a waveform of shape {shape}: give 1-D 16 kHz mono samples, or (frames, "
                            "channels) or (channels, frames) with at most 8 channels")

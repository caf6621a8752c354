"""Simultaneous decoding (`fama_core.live`) with the demo model: the policies against offline decoding,
emission order, StreamAtt's bounded memory, the latency metrics, and the decoder's explicit-weights path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fama_core.audio import load_audio
from fama_core.checkpoints import demo_clips, load_model
from fama_core.decoding import DecodeOptions, decode_encoded
from fama_core.features import SAMPLE_RATE, compute_features
from fama_core.live import LiveDecoder, LiveOptions, complete_words, lagging, waitk_words, word_starts


@pytest.fixture(scope="module")
def demo():
    torch.manual_seed(0)
    return load_model("fama-demo", dtype="float32")


def clip(name: str) -> np.ndarray:
    return load_audio(next(p for p in demo_clips() if p.name == name))


def offline_tokens(model, tokenizer, audio: np.ndarray, lang: str, beam: int = 1) -> list[int]:
    feats, lengths = compute_features([torch.from_numpy(audio)])
    enc = model.encode(feats, lengths)
    hyp = decode_encoded(model, enc, tokenizer.lang_tag_id(lang), DecodeOptions(beam_size=beam),
                         source_lengths=lengths)
    return hyp[0][0].tokens


def run(decoder: LiveDecoder, audio: np.ndarray, step: float) -> list:
    commits = []
    n = int(step * SAMPLE_RATE)
    for i in range(0, len(audio), n):
        commits += decoder.feed(audio[i:i + n])
    return commits + decoder.finish()


@pytest.mark.parametrize("name,lang", [("en_cats.wav", "en"), ("it_bread.wav", "it")])
def test_alignatt_on_the_whole_clip_at_once_is_offline_greedy(demo, name, lang):
    # Delivered at once, the first step sees the whole clip: what AlignAtt commits there is a prefix of the
    # greedy output, and the final step continues it, so the tokens are offline beam-1 decoding's exactly.
    model, tokenizer = demo
    audio = clip(name)
    decoder = LiveDecoder(model, tokenizer, LiveOptions(policy="alignatt", language=lang, latency=0.2))
    commits = decoder.feed(audio) + decoder.finish()
    expected = offline_tokens(model, tokenizer, audio, lang)
    assert decoder.history == expected
    assert " ".join(c.text for c in commits if c.text) == tokenizer.decode(expected)
    assert commits[-1].final


def test_waitk_with_infinite_lag_is_offline(demo):
    model, tokenizer = demo
    audio = clip("en_bag.wav")
    decoder = LiveDecoder(model, tokenizer, LiveOptions(policy="waitk", latency=math.inf, language="en"))
    commits = run(decoder, audio, 0.25)
    assert len(commits) == 1 and commits[0].final
    assert commits[0].read == len(audio) / SAMPLE_RATE
    assert commits[0].text == tokenizer.decode(offline_tokens(model, tokenizer, audio, "en"))


def test_waitk_commits_no_more_words_than_its_schedule(demo):
    model, tokenizer = demo
    audio = clip("en_cats.wav")
    options = LiveOptions(policy="waitk", latency=1.0, language="en")
    decoder = LiveDecoder(model, tokenizer, options)
    words = 0
    for commit in run(decoder, audio, 0.25):
        words += len(commit.words)
        if not commit.final:
            assert words <= waitk_words(commit.read, 1.0, options.word_seconds)
    assert decoder.words == words > 0


@pytest.mark.parametrize("policy", ["alignatt", "streamatt", "waitk"])
def test_emission_times_are_monotonic(demo, policy):
    model, tokenizer = demo
    audio = np.concatenate([clip("en_cats.wav"), clip("en_bag.wav")])
    decoder = LiveDecoder(model, tokenizer, LiveOptions(policy=policy, language="en", latency=0.6))
    commits = run(decoder, audio, 0.1)
    assert len(commits) >= 3
    reads = [c.read for c in commits]
    elapsed = [c.elapsed for c in commits]
    assert reads == sorted(reads) and elapsed == sorted(elapsed)
    assert reads[-1] == len(audio) / SAMPLE_RATE and commits[-1].final
    starts = [w.start for c in commits for w in c.words]
    assert starts == sorted(starts)
    assert all(0 <= w.start <= w.end <= len(audio) / SAMPLE_RATE for c in commits for w in c.words)


def test_streamatt_keeps_memory_bounded_on_a_long_stream(demo):
    model, tokenizer = demo
    sentence = np.concatenate([clip("en_cats.wav"), clip("en_bag.wav"), np.zeros(SAMPLE_RATE // 2, np.float32)])
    stream = np.tile(sentence, 6)  # 45 s
    n = SAMPLE_RATE // 2
    decoder = LiveDecoder(model, tokenizer, LiveOptions(policy="streamatt", language="en", latency=0.6,
                                                          history_words=6))
    peak, words, history = 0.0, 0, 0
    for i in range(0, len(stream), n):
        words += sum(len(c.words) for c in decoder.feed(stream[i:i + n]))
        if i >= 10 * SAMPLE_RATE:
            peak = max(peak, decoder.kept_seconds)
            history = max(history, len(decoder.history))
    assert words >= 30  # it goes on transcribing (6 x 11 words spoken)
    assert peak <= 10.0  # seconds held, against 45 s of audio
    assert history <= 6 * 4  # tokens of at most 6 words
    # AlignAtt alone keeps everything (checked on the first 15 s: its steps grow with the stream)
    decoder = LiveDecoder(model, tokenizer, LiveOptions(policy="alignatt", language="en", latency=0.6))
    for i in range(0, 15 * SAMPLE_RATE, n):
        decoder.feed(stream[i:i + n])
    assert decoder.kept_seconds == 15.0


def test_language_is_detected_once_on_the_first_seconds(demo):
    model, tokenizer = demo
    decoder = LiveDecoder(model, tokenizer, LiveOptions(language=None, detect_seconds=2.0))
    audio = clip("it_bread.wav")
    assert decoder.feed(audio[: SAMPLE_RATE]) == [] and decoder.language is None
    run(decoder, audio[SAMPLE_RATE:], 0.5)
    assert decoder.language == "it"


def test_options_are_checked():
    with pytest.raises(ValueError, match="unknown policy 'greedy'; choose from streamatt, alignatt, waitk"):
        LiveOptions(policy="greedy")
    with pytest.raises(ValueError, match="only meaningful for the waitk policy"):
        LiveOptions(policy="alignatt", latency=math.inf)
    with pytest.raises(ValueError, match="latency must be at least 0"):
        LiveOptions(latency=-1)
    assert LiveOptions(latency=0.2).frame_threshold == 5


def test_bad_language_is_refused(demo):
    model, tokenizer = demo
    with pytest.raises(ValueError, match=r"no language tag <lang:de>.*languages: en, it"):
        LiveDecoder(model, tokenizer, LiveOptions(language="de"))


def test_complete_words(demo):
    _, tokenizer = demo
    starts = word_starts(tokenizer)
    tokens = tokenizer.encode("the cats are here")
    first_of_words = [i for i, t in enumerate(tokens) if starts[t]]
    assert first_of_words[0] == 0 and len(first_of_words) == 4
    # cut inside the last word: back to its start; whole output at </s>: everything
    assert complete_words(tokens, len(tokens), False, starts) == first_of_words[-1]
    assert complete_words(tokens, len(tokens), True, starts) == len(tokens)
    assert complete_words(tokens, first_of_words[2], False, starts) == first_of_words[2]
    assert complete_words(tokens, 0, False, starts) == 0


def test_lagging_metrics():
    # 3 words over 3 s, emitted at 1, 2, 3 s against a 3-word reference: one second behind the ideal rate.
    assert lagging([1.0, 2.0, 3.0], 3.0, 3, length_adaptive=False) == pytest.approx(1.0)
    assert lagging([1.0, 2.0, 3.0], 3.0, 3) == pytest.approx(1.0)
    # an over-generated 4th word: AL's rate still uses the reference (3 words), LAAL's the 4 words
    assert lagging([1.0, 2.0, 3.0, 3.0], 3.0, 3, length_adaptive=False) == pytest.approx(1.0)
    assert lagging([1.0, 2.0, 3.0, 3.0], 3.0, 3) == pytest.approx((1.0 + 1.25 + 1.5) / 3)
    # only the words up to the first one emitted after the whole source count
    assert lagging([3.0, 3.0], 3.0, 2) == pytest.approx(3.0)
    assert math.isnan(lagging([], 3.0, 2))


def test_step_with_cross_weights_changes_nothing_and_gives_distributions(demo):
    model, _ = demo
    audio = clip("en_bag.wav")
    feats, lengths = compute_features([torch.from_numpy(audio)])
    enc = model.encode(feats, lengths)
    tokens = torch.tensor([2])
    plain = model.decoder.step(tokens, model.decoder.init_cache(enc))
    weights: list[torch.Tensor] = []
    with_weights = model.decoder.step(tokens, model.decoder.init_cache(enc), weights, 0)
    assert torch.equal(plain, with_weights)
    assert len(weights) == 1 and weights[0].shape == (1, int(enc.lengths[0]))
    assert torch.allclose(weights[0].sum(-1), torch.ones(1))
    # the same layer's weights computed by hand from its projections
    layer = model.decoder.layers[0]
    x = model.decoder.embed(tokens[:, None], torch.full((1, 1), 2), 3)
    h = layer.self_attn_layer_norm(x)
    x = x + layer.self_attn.attend(h, *layer.self_attn.project_kv(h), None)
    q = layer.encoder_attn.q_proj(layer.encoder_attn_layer_norm(x)).view(1, 1, layer.encoder_attn.heads, -1)
    k, _ = layer.encoder_attn.project_kv(enc.out)
    by_hand = torch.softmax(q.transpose(1, 2) @ k.transpose(2, 3) * layer.encoder_attn.head_dim**-0.5, -1)
    assert torch.allclose(weights[0], by_hand.mean(1)[0], atol=1e-5)

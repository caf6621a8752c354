"""Beam search parity with FBK's generators (beam.json of every reference config), batching invariance,
and the decoding rules (no-repeat-ngram, max length, forced language tag), greedy CTC and forced alignment."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fama_core.checkpoints import load_fairseq
from fama_core.config import ModelConfig
from fama_core.decoding import (
    CTC_MINUS_INF,
    BeamSearch,
    CtcPrefixScorer,
    DecodeOptions,
    NoRepeatNgram,
    ctc_greedy,
    decode,
    forced_align,
)
from fama_core.model import FamaModel, length_groups

from conftest import fbk_reference_configs, require_shared


@pytest.fixture(scope="module", params=fbk_reference_configs())
def ref(request):
    folder = require_shared("fixtures", "fbk_reference", request.param)
    model, _ = load_fairseq(folder / "checkpoint.pt")
    beam = json.loads((folder / "beam.json").read_text())
    return model.eval(), np.load(folder / "inputs.npz"), beam


def options_for(beam: dict, mode: str) -> DecodeOptions:
    s = beam["settings"]
    return DecodeOptions(beam_size=s["beam"], ctc_weight=s["ctc_decode_weight (joint_ctc only)"] if mode == "joint_ctc"
                         else 0.0, max_len_a=s["max_len_a"], max_len_b=s["max_len_b"], min_len=s["min_len"],
                         no_repeat_ngram_size=s["no_repeat_ngram_size"], unk_penalty=s["unkpen"],
                         len_penalty=s["lenpen"], nbest=s["beam"], max_target_positions=s["max_target_positions"])


def assert_same_nbest(hyps, expected: list[dict], lang_id: int, eos: int, what: str) -> None:
    got = [[lang_id, *h.tokens, eos] for h in hyps]
    assert got == [e["tokens"] for e in expected], what
    for h, e in zip(hyps, expected):
        assert abs(h.score - e["score"]) <= 1e-4, what
        assert np.allclose(h.token_scores, e["positional_scores"], atol=1e-4), what


def test_every_nbest_list_matches_fbk_at_batch_size_1(ref):
    model, inputs, beam = ref
    for r in beam["results"]:
        feats = torch.from_numpy(inputs[f"feats_{r['input']}"])[None]
        hyps = decode(model, feats, torch.tensor([feats.shape[1]]), r["lang_id"], options_for(beam, r["mode"]))[0]
        assert_same_nbest(hyps, r["hypos"], r["lang_id"], model.cfg.eos, f"in{r['input']}/{r['lang']}/{r['mode']}")


@pytest.mark.parametrize("mode", ["joint_ctc", "plain"])
def test_padded_batch_gives_the_batch_size_1_result(ref, mode):
    """FBK's own batched joint decoding is wrong for padded rows; fama must give the single-utterance result."""
    model, inputs, beam = ref
    results = {(r["input"], r["lang"]): r for r in beam["results"] if r["mode"] == mode}
    n = len({i for i, _ in results})
    feats = [torch.from_numpy(inputs[f"feats_{i}"]) for i in range(n)]
    batch = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True)
    lengths = torch.tensor([f.shape[0] for f in feats])
    langs = sorted({lang for _, lang in results})
    # Every utterance with every tag, plus a mixed-language batch.
    plans = [[lang] * n for lang in langs] + [[langs[i % len(langs)] for i in range(n)]]
    for plan in plans:
        lang_ids = [results[(i, plan[i])]["lang_id"] for i in range(n)]
        out = decode(model, batch, lengths, lang_ids, options_for(beam, mode))
        for i in range(n):
            r = results[(i, plan[i])]
            assert_same_nbest(out[i], r["hypos"], r["lang_id"], model.cfg.eos, f"batched in{i}/{plan[i]}/{mode}")


def tiny_model(seed: int = 0, vocab: int = 12) -> FamaModel:
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=16, encoder_layers=2, encoder_heads=2, subsampler_channels=16, ctc_encoder_layer=1,
                      decoder_dim=16, decoder_ffn_dim=32, decoder_layers=1, decoder_heads=2, vocab_size=vocab,
                      src_vocab_size=vocab)
    return FamaModel(cfg).eval()


def test_max_length_and_forced_language_tag():
    model = tiny_model()
    with torch.no_grad():  # make </s> very unlikely so that the length limit decides
        proj = model.decoder.output_projection.weight
        proj[model.cfg.eos] = -5.0 * proj.abs().mean()
    feats = torch.randn(1, 60, 80)
    opts = DecodeOptions(beam_size=3, ctc_weight=0.0, max_len_b=7, no_repeat_ngram_size=0, nbest=3)
    hyps = decode(model, feats, torch.tensor([60]), 5, opts)[0]
    assert len(hyps) == 3
    for h in hyps:
        # lang tag + up to max_len_b - 1 tokens + </s>: at most max_len_b + 1 scored positions
        assert len(h.token_scores) <= 8 and len(h.tokens) <= 6
        assert math.isclose(h.score, sum(h.token_scores) / len(h.token_scores), rel_tol=1e-5)
    assert max(len(h.tokens) for h in hyps) == 6
    # the first scored position is the forced tag's own log-probability, identical in every hypothesis
    assert len({round(h.token_scores[0], 6) for h in hyps}) == 1


def test_no_repeat_ngram_blocks_only_repeated_ngrams():
    tokens = torch.tensor([[2, 4, 7, 8, 9, 7, 8], [2, 4, 7, 8, 9, 10, 11]])
    lprobs = torch.zeros(2, 12)
    out = NoRepeatNgram(3).apply(lprobs.clone(), tokens, tokens.shape[1] - 1)
    # row 0 ends with (7, 8), which was followed by 9 before: only 9 is banned
    assert torch.isinf(out[0]).nonzero().view(-1).tolist() == [9]
    assert not torch.isinf(out[1]).any()


@pytest.mark.parametrize("sharpness", [1.0, 60.0])
def test_ctc_prefix_scores_match_brute_force_enumeration(sharpness):
    """psi(g+c) equals the total probability of all CTC paths whose labels start with g+c, also for posteriors so
    peaked (`sharpness` 60) that a product of probabilities would underflow; the bound is never below it."""
    torch.manual_seed(3)
    T, V, blank, eos = 6, 5, 4, 2
    lp = torch.log_softmax(sharpness * torch.randn(1, T, V, dtype=torch.float64), -1)  # rows sum to 1
    scorer = CtcPrefixScorer(lp, torch.tensor([T]), blank, eos)
    r_n, r_b = scorer.initial_state()
    prefix = [1, 3, 3]
    psi_prev = torch.zeros(1, dtype=torch.float64)
    for p, c in enumerate(prefix):
        last = torch.tensor([prefix[p - 1]]) if p else None
        psi = scorer.scores(r_n, r_b, last, p)
        assert (scorer.bound(r_n, r_b, p, psi_prev) >= psi).all()
        # scoring a subset of candidates gives the same values as the whole vocabulary
        subset = torch.tensor([[c, eos, blank]])
        assert torch.equal(scorer.scores(r_n, r_b, last, p, subset), psi.gather(1, subset))
        psi_prev = psi[:, c]
        r_n, r_b = scorer.advance(r_n, r_b, torch.tensor([c]), torch.tensor([p > 0 and prefix[p - 1] == c]), p)

    def collapse(path):
        out, prev = [], None
        for s in path:
            if s != prev and s != blank:
                out.append(s)
            prev = s
        return out

    import itertools

    probs = lp[0].exp()
    prefix_prob = {}
    full_prob = 0.0
    for path in itertools.product(range(V), repeat=T):
        pr = float(torch.prod(probs[torch.arange(T), torch.tensor(path)]))
        lab = collapse(path)
        if lab[:2] == [1, 3]:
            nxt = tuple(lab[:3]) if len(lab) >= 3 else None
            if nxt is not None:
                prefix_prob[nxt[2]] = prefix_prob.get(nxt[2], 0.0) + pr
        if lab == [1, 3]:
            full_prob += pr
    # psi(g + c) for g = [1, 3] is the probability of all label sequences starting with g + c
    for c in (0, 1, 3):
        expected = math.log(prefix_prob[c]) if prefix_prob.get(c, 0.0) > 0 else CTC_MINUS_INF
        assert abs(float(psi[0, c]) - max(expected, CTC_MINUS_INF)) <= 1e-5 * max(1.0, abs(expected))
    assert abs(float(psi[0, eos]) - math.log(full_prob)) <= 1e-5 * abs(math.log(full_prob))
    assert float(psi[0, blank]) == CTC_MINUS_INF


def test_greedy_ctc_merges_repeats_and_drops_blanks():
    blank = 4
    ids = torch.tensor([[4, 1, 1, 4, 1, 2, 2, 4, 3, 3]])
    logits = torch.nn.functional.one_hot(ids, 5).float()
    assert ctc_greedy(logits, torch.tensor([10]), blank) == [[1, 1, 2, 3]]
    assert ctc_greedy(logits, torch.tensor([6]), blank) == [[1, 1, 2]]


def test_forced_alignment_on_a_constructed_posterior():
    blank, T, V = 0, 12, 5
    # frames: blank x2, token 3 x3, blank, token 3 x2, token 1, blank x3  (target 3 3 1)
    frames = [0, 0, 3, 3, 3, 0, 3, 3, 1, 0, 0, 0]
    lp = torch.full((2, T, V), math.log(0.01))
    for t, s in enumerate(frames):
        lp[0, t, s] = math.log(0.96)
    lp[1] = lp[0]
    spans = forced_align(torch.log_softmax(lp, -1), torch.tensor([T, 9]), [[3, 3, 1], [3, 3, 1]], blank)
    assert spans[0] == [(2, 4), (6, 7), (8, 8)]
    assert spans[1] == [(2, 4), (6, 7), (8, 8)]
    # a target longer than the frames cannot be aligned: spans are spread evenly, still ordered
    short = forced_align(torch.log_softmax(lp, -1)[:1], torch.tensor([2]), [[3, 3, 1]], blank)[0]
    assert [a for a, _ in short] == sorted(a for a, _ in short)


def peaked_model(seed: int, vocab: int) -> FamaModel:
    """A random model with sharper decoder and CTC posteriors (closer to a trained one than tiny_model's)."""
    model = tiny_model(seed, vocab)
    with torch.no_grad():
        model.decoder.output_projection.weight.mul_(4.0)
        model.auxiliary_decoder.fc.weight.mul_(8.0)
    return model


def exact_results(hyps):
    return [[(h.tokens, h.score, h.token_scores) for h in n] for n in hyps]


@pytest.mark.parametrize("seed,vocab", [(0, 12), (1, 40), (2, 300)])
def test_pruned_ctc_scoring_returns_exactly_the_full_vocabulary_result(seed, vocab):
    """Scoring CTC prefixes only for the best-bounded candidates (1 and 4 per row force the widening, within
    the step as on the CPU, or by searching again as on a GPU) gives bit for bit the result of scoring the
    whole vocabulary, for several beam sizes and CTC weights."""
    model = peaked_model(seed, vocab)
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([90, 60, 37])
    feats = torch.randn(3, 90, 80, generator=g)
    with torch.no_grad():
        enc = model.encode(feats, lengths)
    langs = torch.tensor([4, 4, 5])
    reruns = 0
    for beam in (1, 3, 5):
        for weight in (0.2, 0.5):
            opts = DecodeOptions(beam_size=beam, ctc_weight=weight, max_len_b=12, nbest=beam,
                                 no_repeat_ngram_size=3 if seed % 2 else 0)
            for widen in (True, False):
                full = BeamSearch(model, opts, ctc_candidates=vocab, host_reads=widen).search(enc, langs, lengths)
                assert all(n for n in full)
                for cands in (1, 4):
                    search = BeamSearch(model, opts, ctc_candidates=cands, host_reads=widen)
                    got = search.search(enc, langs, lengths)
                    assert exact_results(got) == exact_results(full), (beam, weight, cands, widen)
                    assert search.searches == 1 or not widen
                    reruns += search.searches - 1
    assert reruns > 0  # the proof failed somewhere and the wider search took over


def test_a_step_reads_nothing_back_from_the_device(monkeypatch):
    """No .item()/.tolist()/bool(tensor)/nonzero in a step, the decoder's or the search's (it could then run
    in a CUDA graph)."""
    model = peaked_model(1, 40)
    feats = torch.randn(2, 70, 80, generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([70, 41])
    opts = DecodeOptions(beam_size=3, ctc_weight=0.3, max_len_b=10, no_repeat_ngram_size=2)
    with torch.no_grad():
        enc = model.encode(feats, lengths)
    expected = exact_results(BeamSearch(model, opts).search(enc, torch.tensor([4, 5]), lengths))
    search = BeamSearch(model, opts, ctc_candidates=2, host_reads=False)
    guarded = 0

    def forbidden(*args, **kwargs):
        raise AssertionError("device-to-host read inside a decoding step")

    def guard(step):
        def guarded_step(*args, **kwargs):
            nonlocal guarded
            with monkeypatch.context() as m:
                for name in ("item", "tolist", "__bool__", "nonzero", "__int__", "__float__"):
                    m.setattr(torch.Tensor, name, forbidden)
                out = step(*args, **kwargs)
            guarded += 1
            return out
        return guarded_step

    search._step = guard(search._step)
    monkeypatch.setattr(model.decoder, "step", guard(model.decoder.step))
    assert exact_results(search.search(enc, torch.tensor([4, 5]), lengths)) == expected
    assert guarded >= 2 * 11  # both halves of every step ran guarded


def test_finished_utterances_leave_the_batch_on_the_cpu(monkeypatch):
    """On the CPU an utterance whose search is complete is dropped from the batch at once (its rows are not
    computed to the end, masked), with exactly the results of the masked search and of decoding each alone."""
    from fama_core.precision import apply_precision

    model = apply_precision(peaked_model(2, 50), "float32", "cpu")
    feats = torch.randn(3, 90, 80, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([90, 60, 30])
    langs = torch.tensor([4, 5, 4])
    # every hypothesis runs to its length limit (0.2 tokens per input frame: 18, 12 and 6 steps)
    model.decoder.output_projection.register_forward_hook(lambda m, i, out: out.index_fill(-1, torch.tensor([2]), -1e4))
    opts = DecodeOptions(beam_size=3, ctc_weight=0.3, max_len_a=0.2, max_len_b=0, nbest=3)
    with torch.no_grad():
        enc = model.encode(feats, lengths)
    rows = []
    step = model.decoder.step
    monkeypatch.setattr(model.decoder, "step", lambda tokens, cache: (rows.append(len(tokens)), step(tokens, cache))[1])
    dropped = exact_results(BeamSearch(model, opts, host_reads=True).search(enc, langs, lengths))
    assert rows == [9] * 7 + [6] * 6 + [3] * 6
    rows.clear()
    masked = exact_results(BeamSearch(model, opts, host_reads=False).search(enc, langs, lengths))
    assert rows == [9] * 19
    assert dropped == masked
    assert [len(n[0][0]) for n in dropped] == [17, 11, 5]  # + the language tag
    monkeypatch.undo()
    for b in range(3):
        with torch.no_grad():
            alone = model.encode(feats[b:b + 1, : lengths[b]], lengths[b:b + 1])
        got = BeamSearch(model, opts).search(alone, langs[b:b + 1], lengths[b:b + 1])
        assert exact_results(got) == dropped[b:b + 1]


def test_decoder_cache_is_written_in_place_and_grows_only_when_needed():
    """The self-attention keys/values live in one buffer per layer: written in place step after step (same
    storage), doubled only past 32 positions when no capacity is given, and the logits of 40 incremental steps
    equal teacher forcing throughout."""
    model = peaked_model(3, 60)
    feats = torch.randn(2, 50, 80, generator=torch.Generator().manual_seed(3))
    prev = torch.randint(4, 60, (2, 40), generator=torch.Generator().manual_seed(4))
    prev[:, 0] = model.cfg.eos
    with torch.no_grad():
        enc = model.encode(feats, torch.tensor([50, 31]))
        full = model.decoder(prev, enc)
        for capacity in (None, 40):
            cache = model.decoder.init_cache(enc, capacity=capacity)
            steps, storage = [], []
            for t in range(prev.shape[1]):
                steps.append(model.decoder.step(prev[:, t], cache))
                storage.append(cache.self_kv[0][0].data_ptr())
            assert float((torch.stack(steps, 1) - full).abs().max()) < 1e-5
            assert len(set(storage[:32])) == 1  # the first 32 positions: one buffer, written in place
            sizes = {kv[0].shape[2] for kv in cache.self_kv}
            assert sizes == {64 if capacity is None else 40}


def test_finished_utterances_stay_masked_in_the_batch():
    """Checking for completion only every 64 steps (finished rows keep running, masked) changes nothing, and
    utterances that finish at very different steps give their single-utterance result."""
    model = peaked_model(2, 300)
    feats = torch.randn(3, 120, 80, generator=torch.Generator().manual_seed(2))
    lengths = torch.tensor([120, 50, 20])
    opts = DecodeOptions(beam_size=4, ctc_weight=0.2, max_len_a=0.1, max_len_b=3, nbest=4)
    with torch.no_grad():
        enc = model.encode(feats, lengths)
    langs = torch.tensor([4, 4, 4])
    every = BeamSearch(model, opts, sync_every=1).search(enc, langs, lengths)
    rarely = BeamSearch(model, opts, sync_every=64).search(enc, langs, lengths)
    assert exact_results(rarely) == exact_results(every)
    for i in range(3):
        alone = decode(model, feats[i:i + 1, : int(lengths[i])], lengths[i:i + 1], 4, opts)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in every[i]]
        assert np.allclose([h.score for h in alone], [h.score for h in every[i]], atol=1e-5)


def test_cpu_encoder_groups_rows_of_similar_length():
    """On a CPU, rows of very different lengths are encoded in separate groups and stitched: each row equals
    the row encoded alone, padded frames are masked, and the intermediate CTC logits come along."""
    def groups(lengths):
        return list(length_groups(sorted(range(len(lengths)), key=lambda j: -lengths[j]), lengths))

    assert groups([100, 300, 290, 105, 50]) == [[1, 2], [3, 0], [4]]
    assert groups([10, 10, 10]) == [[0, 1, 2]]
    model = tiny_model(5, 40)
    lengths = torch.tensor([100, 300, 290, 105, 50])
    feats = torch.randn(5, 300, 80, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        enc = model.encode(feats, lengths, inter_ctc=True)
        for b, n in enumerate(lengths.tolist()):
            alone = model.encode(feats[b:b + 1, :n], lengths[b:b + 1], inter_ctc=True)
            m = int(alone.lengths[0])
            assert int(enc.lengths[b]) == m
            assert torch.allclose(enc.out[b, :m], alone.out[0], atol=1e-5)
            assert torch.allclose(enc.ctc_inter_logits[b, :m], alone.ctc_inter_logits[0], atol=1e-5)
            assert not enc.padding_mask[b, :m].any() and enc.padding_mask[b, m:].all()
        model.train()
        trained = model.encode(feats, lengths)  # training batches stay one padded batch
        assert trained.out.shape == enc.out.shape

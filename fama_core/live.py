"""Simultaneous decoding over a growing audio buffer: AlignAtt, wait-k, and StreamAtt's history selection.

`LiveDecoder` takes audio as it arrives (`feed`) and, every `step_seconds` of new audio, decodes the audio it
keeps (the window) again, with the text it has already committed forced as the decoder's prefix, and commits
the words the policy allows:
- AlignAtt (Papi et al., Interspeech 2023): a generated token is committed only while the argmax of its
  cross-attention (one decoder layer, averaged over heads) is not within the last `latency` seconds of the
  window's encoder frames; the first token that looks there stops the commit.
- wait-k: word i may be committed once `latency + i * word_seconds` seconds of audio have been read (a fixed
  pre-decision of 280 ms per word, as Ma et al. 2020 for speech); `latency = inf` is offline decoding.
Only whole words are committed (a word is complete when the next token starts a new word, or at `</s>`).
- StreamAtt (Papi et al., ACL 2024) keeps memory and the cost of a step bounded on an unbounded stream: the
  committed text kept as prefix is cut to its last `history_words` words, and the audio before the earliest
  frame that the kept words attend to is dropped. A window that grows past `max_window_seconds` (a long
  silence after the last word) is cut to that length whatever the policy.

The search at each step is fairseq's with one hypothesis (beam 1) and FBK's joint CTC/attention score, pruned
exactly as `decoding.BeamSearch` prunes it; on the whole audio it gives `decode_encoded(beam_size=1)`'s tokens.
The encoder cannot reuse earlier steps: the conformer attends over the whole window (and utterance CMVN
normalises over it), so a step costs one encoder pass over the window plus one decoder step per prefix and
new token; StreamAtt bounds both.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .decoding import BeamSearch, CtcPrefixScorer, DecodeOptions, NoRepeatNgram, forced_align
from .features import SAMPLE_RATE, compute_features, num_frames
from .model import EncoderOutput, FamaModel
from .pipeline import FRAME_SECONDS, SENTENCE_END, language_scores, make_segments
from .subtitles import Segment, Transcript, Word
from .tokenizer import Tokenizer

POLICIES = ("streamatt", "alignatt", "waitk")
FRAME_SAMPLES = round(FRAME_SECONDS * SAMPLE_RATE)  # one encoder frame: 4 feature frames of 10 ms
SEGMENT_PAUSE = 1.5  # seconds between two words that end a caption segment without a sentence end
SEGMENT_WORDS = 40  # words after which a caption segment without a sentence end is closed
STRONG_PUNCTUATION = re.compile(r"[.!?:;…]")  # a token holding one ends StreamAtt's text history
HISTORY_MARGIN = 2  # encoder frames of audio kept before the first word of the text history


@dataclass
class LiveOptions:
    """How `LiveDecoder` decides. `latency` is the policy's knob, in seconds: AlignAtt's (and StreamAtt's)
    frame threshold f = latency / 40 ms; wait-k's lag (`inf`: offline)."""

    policy: str = "streamatt"  # streamatt (AlignAtt + history selection) | alignatt (whole history) | waitk
    latency: float = 1.0
    step_seconds: float = 0.5  # new audio between two decoding steps
    language: str | None = None  # spoken language (None: detected once on the first `detect_seconds`)
    target: str | None = None  # translate into this language (None: transcribe)
    attention_layer: int | None = None  # decoder layer AlignAtt reads (None: the middle one, decoder_layers // 2)
    ctc_weight: float = 0.2
    history_words: int = 20  # StreamAtt's textual history
    max_window_seconds: float = 60.0  # audio kept at most, whatever the policy
    detect_seconds: float = 2.0
    word_seconds: float = 0.28  # wait-k: audio read per committed word
    max_len_b: int = 200  # tokens a step may generate at most (fairseq's max_len_b)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown policy {self.policy!r}; choose from {', '.join(POLICIES)}")
        if not self.latency >= 0:
            raise ValueError(f"latency must be at least 0 seconds, not {self.latency!r}")
        if math.isinf(self.latency) and self.policy != "waitk":
            raise ValueError("an infinite latency is only meaningful for the waitk policy")
        for name in ("step_seconds", "word_seconds", "detect_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be greater than 0, not {getattr(self, name)!r}")
        if not self.max_window_seconds >= 2 * self.step_seconds:
            raise ValueError(f"max_window_seconds must be at least twice step_seconds, not {self.max_window_seconds!r}")
        if self.history_words < 1:
            raise ValueError(f"history_words must be at least 1, not {self.history_words!r}")
        if not self.ctc_weight >= 0:
            raise ValueError(f"ctc_weight must be at least 0, not {self.ctc_weight!r}")

    @property
    def frame_threshold(self) -> int:
        """AlignAtt's f: encoder frames at the end of the window that a committed token may not look at."""
        return max(0, round(self.latency / FRAME_SECONDS))


@dataclass
class Commit:
    """Words committed by one step, with the time they were decided."""

    words: list[Word]  # timed on the stream (CTC alignment), in seconds from its start
    read: float  # seconds of audio received when they were decided (their ideal delay)
    elapsed: float  # seconds of computation this decoder had spent by then (read + elapsed: computation-aware)
    final: bool = False

    @property
    def text(self) -> str:
        return " ".join(w.text for w in self.words)


@dataclass
class Continuation:
    """One step's search: the prefix forced, then `tokens` generated (without `</s>`)."""

    tokens: list[int]
    prefix_frames: list[int]  # argmax encoder frame of each prefix token's cross-attention
    frames: list[int]  # the same for each generated token
    eos: bool  # the search ended with `</s>`
    n_frames: int  # encoder frames of the window
    ctc_log_probs: torch.Tensor  # [1, n_frames, V]


@torch.no_grad()
def continue_greedy(model: FamaModel, enc: EncoderOutput, lang_id: int, prefix: list[int],
                    options: DecodeOptions, source_length: int, weights_layer: int = -1,
                    stop: Callable[[list[int], list[int]], bool] | None = None) -> Continuation:
    """fairseq's search with one hypothesis (the rules of `decoding.BeamSearch` at beam 1: forced language
    tag, no-repeat n-grams, unk penalty, length limits, joint CTC score pruned exactly) for one encoded
    utterance, with `prefix` forced after the tag. `stop(tokens, frames)` is asked after every generated token
    whether to stop there."""
    cfg, opt = model.cfg, options
    device = enc.out.device
    eos, blank = cfg.eos, cfg.blank
    search = BeamSearch(model, opt)  # its candidate count and special tokens
    lang = torch.tensor([lang_id], device=device)
    ctc_lp = F.log_softmax(model.ctc_logits(enc, lang).float(), -1)
    scorer = CtcPrefixScorer(ctc_lp.clone(), enc.lengths, blank, eos) if opt.ctc_weight > 0 else None
    max_positions = opt.max_target_positions or cfg.max_target_positions
    # The limit counts new tokens: a long forced prefix must not leave no room to continue.
    max_len = min(len(prefix) + int(opt.max_len_a * source_length) + opt.max_len_b, max_positions - 1)
    cache = model.decoder.init_cache(enc, beams=1, capacity=max_len + 1)
    tokens = [eos]
    frames: list[int] = []  # the argmax frame of the step that chose each token (the tag's first)
    ended = False
    cum = torch.zeros(1, device=device)
    r_n = r_b = psi_prev64 = psi = None
    for step in range(max_len + 1):
        weights: list[torch.Tensor] = []
        logits = model.decoder.step(torch.tensor([tokens[-1]], device=device), cache, weights, weights_layer)
        lprobs = F.log_softmax(logits.float(), -1)
        forced = prefix[step - 1] if 0 < step <= len(prefix) else None
        last = torch.tensor([tokens[-1]], device=device) if step > 1 else None
        if step == 0:
            choice, score = lang_id, lprobs[:, lang_id]
        elif scorer is None:
            choice, score = _pick(_rules(search, lprobs, tokens, step, max_len) + cum,
                                  torch.ones_like(lprobs, dtype=torch.bool), forced)
        else:
            if r_n is None:
                r_n, r_b = scorer.initial_state()
                psi_prev64 = torch.zeros(1, dtype=torch.float64, device=device)
            psi, scored, total = _joint(search, scorer, lprobs, tokens, step, max_len, (r_n, r_b, psi_prev64, last),
                                        cum, forced)
            choice, score = _pick(total, scored, forced)
        if choice == eos:
            ended = True
            break
        if psi is not None:
            psi_prev64 = psi[:, choice]
            repeat = torch.tensor([step > 1 and tokens[-1] == choice], device=device)
            r_n, r_b = scorer.advance(r_n, r_b, torch.tensor([choice], device=device), repeat, step - 1)
        tokens.append(choice)
        frames.append(int(weights[0][0].argmax()))
        cum = score.view(1)
        generated = tokens[2 + len(prefix):]
        if generated and stop is not None and stop(generated, frames[1 + len(prefix):]):
            break
    return Continuation(tokens[2 + len(prefix):], frames[1:1 + len(prefix)], frames[1 + len(prefix):], ended,
                        int(enc.lengths[0]), ctc_lp)


def _rules(search: BeamSearch, lprobs: torch.Tensor, tokens: list[int], step: int, max_len: int) -> torch.Tensor:
    """fairseq's constraints on a step's scores (as `BeamSearch` applies them)."""
    opt, cfg = search.opt, search.model.cfg
    lprobs = torch.where(torch.isnan(lprobs), -math.inf, lprobs)
    lprobs[:, cfg.pad] = -math.inf
    lprobs[:, search.unk] -= opt.unk_penalty
    if max_len <= step:
        only_eos = torch.full_like(lprobs, -math.inf)
        only_eos[:, cfg.eos] = 0
        lprobs = lprobs + only_eos
    if step < opt.min_len:
        lprobs[:, cfg.eos] = -math.inf
    if opt.no_repeat_ngram_size > 0:
        lprobs = NoRepeatNgram(opt.no_repeat_ngram_size).apply(lprobs, torch.tensor([tokens], device=lprobs.device),
                                                               step)
    return lprobs


def _joint(search: BeamSearch, scorer: CtcPrefixScorer, lprobs: torch.Tensor, tokens: list[int], step: int,
           max_len: int, state: tuple, cum: torch.Tensor,
           forced: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(psi, scored, cumulative joint scores) of a step, `state` = (r_n, r_b, psi of the prefix, last token):
    exact CTC prefix scores for the best candidates by their bound, widened until no unscored bound reaches the
    second best exact score (the beam search's proof at beam 1: the choice is the full vocabulary's)."""
    r_n, r_b, psi_prev64, last = state
    V, w = lprobs.shape[1], search.opt.ctc_weight
    prefix_len = step - 1
    psi_prev = psi_prev64.float()[:, None]
    if forced is not None:  # only the forced token's score is needed
        psi = torch.full((1, V), -1e20, dtype=torch.float64, device=lprobs.device)
        cands = torch.tensor([[forced]], device=lprobs.device)
        psi[:, forced] = scorer.scores(r_n, r_b, last, prefix_len, cands)[:, 0]
        scored = torch.zeros_like(lprobs, dtype=torch.bool)
        scored[:, forced] = True
        return psi, scored, _rules(search, lprobs + w * (psi.float() - psi_prev), tokens, step, max_len) + cum
    n = min(search.ctc_candidates, V)
    while True:
        psi = scorer.bound(r_n, r_b, prefix_len, psi_prev64)
        bound = _rules(search, lprobs + w * (psi.float() - psi_prev), tokens, step, max_len)
        cands = torch.topk(bound, k=n, dim=1).indices
        psi.scatter_(1, cands, scorer.scores(r_n, r_b, last, prefix_len, cands))
        scored = torch.zeros_like(lprobs, dtype=torch.bool).scatter_(1, cands, True)
        scored[:, [search.eos, search.blank]] = True
        total = _rules(search, lprobs + w * (psi.float() - psi_prev), tokens, step, max_len) + cum
        exact = torch.topk(total.masked_fill(~scored, -math.inf), k=min(2, V - 1), dim=1).values
        unscored = total.masked_fill(scored, -math.inf).amax(1)
        if n >= V or not bool((unscored >= exact[:, -1]) & (unscored > -math.inf)):
            return psi, scored, total
        n = min(4 * n, V)


def _pick(total: torch.Tensor, scored: torch.Tensor, forced: int | None) -> tuple[int, torch.Tensor]:
    """The token chosen (the forced one, or the best exactly scored, ties broken as `torch.topk` breaks them
    in the beam search) and its cumulative score."""
    if forced is not None:
        return forced, total[:, forced]
    scores, index = torch.topk(total.masked_fill(~scored, -math.inf), k=min(2, total.shape[1] - 1), dim=1)
    return int(index[0, 0]), scores[:, 0]


def word_starts(tokenizer: Tokenizer) -> list[bool]:
    """Per token id: whether it begins a word (SentencePiece's `▁`)."""
    return [i < tokenizer.blank and tokenizer.id_to_piece(i).startswith("\u2581")
            for i in range(tokenizer.vocab_size)]


def complete_words(tokens: list[int], n: int, eos: bool, starts: list[bool]) -> int:
    """The longest prefix of `tokens[:n]` made of whole words: a word ends where the next token starts one,
    or at `</s>`."""
    if n == len(tokens) and eos:
        return n
    for j in range(min(n, len(tokens) - 1), 0, -1):
        if starts[tokens[j]]:
            return j
    return 0


def waitk_words(read: float, latency: float, word_seconds: float) -> int:
    """Words wait-k allows after `read` seconds of audio."""
    return 0 if read < latency else int((read - latency) // word_seconds) + 1


class LiveDecoder:
    """Incremental simultaneous decoding of one stream (see the module's docstring)."""

    def __init__(self, model: FamaModel, tokenizer: Tokenizer, options: LiveOptions | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.options = opt = options or LiveOptions()
        for lang in (opt.language, opt.target):
            if lang is not None:
                tokenizer.lang_tag_id(lang)  # ValueError naming the known languages
        layers = model.cfg.decoder_layers
        self.layer = layers // 2 if opt.attention_layer is None else opt.attention_layer
        if not -layers <= self.layer < layers:
            raise ValueError(f"attention_layer {self.layer} does not exist (the decoder has {layers} layers)")
        self.decode_options = DecodeOptions(beam_size=1, ctc_weight=opt.ctc_weight, max_len_b=opt.max_len_b)
        self.starts = word_starts(tokenizer)
        self.sentence_end = [i < tokenizer.blank and STRONG_PUNCTUATION.search(tokenizer.id_to_piece(i)) is not None
                             for i in range(tokenizer.vocab_size)]
        self.language = opt.language
        self.window = np.zeros(0, dtype=np.float32)  # the audio kept
        self.offset = 0  # samples of the stream dropped before the window
        self.received = 0  # samples of the stream received
        self.stepped = 0  # `received` at the last step
        self.history: list[int] = []  # committed tokens forced as the prefix (StreamAtt: the last words only)
        self.history_starts: list[int] = []  # the window frame where the CTC alignment starts each of them
        self.words = 0  # words committed
        self.last_end = 0.0  # where the last committed word ends on the stream
        self.compute = 0.0  # seconds spent deciding
        self.tentative = ""  # the text after the committed words at the last step (not decided yet)
        self.steps = 0
        self.finished = False

    @property
    def lang_id(self) -> int:
        return self.tokenizer.lang_tag_id(self.options.target or self.language)

    @property
    def read(self) -> float:
        return self.received / SAMPLE_RATE

    def feed(self, samples: np.ndarray) -> list[Commit]:
        """Append 16 kHz mono float32 samples; decode when `step_seconds` of new audio have arrived since the
        last step (once, over everything received: a decoder that falls behind catches up in one step)."""
        if self.finished:
            raise RuntimeError("feed() after finish()")
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        self.window = np.concatenate([self.window, samples])
        self.received += len(samples)
        if self.received - self.stepped < self.options.step_seconds * SAMPLE_RATE:
            return []
        started = time.perf_counter()
        if self.language is None and self.options.target is None:
            if self.received < self.options.detect_seconds * SAMPLE_RATE:
                return []
            self._detect()
        self.stepped = self.received
        self._cap_window()
        commit = self._step(final=False, started=started)
        return [commit] if commit is not None else []

    def finish(self) -> list[Commit]:
        """The end of the stream: everything left is decoded and committed."""
        if self.finished:
            return []
        self.finished = True
        started = time.perf_counter()
        if num_frames(len(self.window)) == 0:  # too short for one feature frame
            self.tentative = ""
            return []
        if self.language is None and self.options.target is None:
            self._detect()
        commit = self._step(final=True, started=started)
        return [commit] if commit is not None else []

    def _detect(self) -> None:
        head = self.window[: int(self.options.detect_seconds * SAMPLE_RATE)]
        languages = self.tokenizer.languages
        scores = language_scores(self.model, self.tokenizer, [torch.from_numpy(head.copy())], languages)
        self.language = languages[int(scores[0].argmax())]

    def _cap_window(self) -> None:
        cap = int(self.options.max_window_seconds * SAMPLE_RATE)
        if len(self.window) > cap:
            self._drop((len(self.window) - cap + FRAME_SAMPLES - 1) // FRAME_SAMPLES)

    def _drop(self, frames: int, keep: int | None = None) -> None:
        """Drop the window's first `frames` encoder frames of audio, and the history tokens before `keep`
        (default: those aligned there)."""
        frames = max(0, min(frames, len(self.window) // FRAME_SAMPLES))
        if keep is None:
            keep = next((i for i, f in enumerate(self.history_starts) if f >= frames), len(self.history))
        self.window = self.window[frames * FRAME_SAMPLES:].copy()
        self.offset += frames * FRAME_SAMPLES
        self.history = self.history[keep:]
        self.history_starts = [f - frames for f in self.history_starts[keep:]]

    @torch.no_grad()
    def _encode(self) -> tuple[EncoderOutput, int]:
        feats, lengths = compute_features([torch.from_numpy(self.window)], device=self.model.device)
        return self.model.encode(feats.to(self.model.dtype), lengths), int(lengths[0])

    def _step(self, final: bool, started: float) -> Commit | None:
        opt = self.options
        if opt.policy == "waitk" and not final:
            allowed = waitk_words(self.read, opt.latency, opt.word_seconds) - self.words
            if allowed <= 0:  # nothing may be committed: no need to decode
                self.compute += time.perf_counter() - started
                return None
            stop = _waitk_stop(allowed, self.starts)
        else:
            stop = None
        enc, source_length = self._encode()
        if opt.policy != "waitk" and not final:
            stop = _alignatt_stop(int(enc.lengths[0]) - opt.frame_threshold)
        cont = continue_greedy(self.model, enc, self.lang_id, self.history, self.decode_options, source_length,
                               self.layer, stop)
        gen = cont.tokens
        if final:
            n = len(gen)
        elif opt.policy == "waitk":
            n = _waitk_length(gen, allowed, cont.eos, self.starts)
        else:
            limit = cont.n_frames - opt.frame_threshold
            n = next((i for i, f in enumerate(cont.frames) if f >= limit), len(gen))
            n = complete_words(gen, n, cont.eos, self.starts)
        new = gen[:n]
        history = self.history[: len(cont.prefix_frames)] + new
        spans = self._align(cont, history)
        words = self._words(new, spans[len(history) - len(new):])
        self.tentative = self.tokenizer.decode(gen[n:]) if not final else ""
        self.history = history
        self.history_starts = [a for a, _ in spans]
        if opt.policy != "alignatt" and not final:
            self._select_history(spans)
        self.words += len(words)
        self.steps += 1
        self.compute += time.perf_counter() - started
        if not words and not final:
            return None
        return Commit(words, self.read, self.compute, final)

    def _align(self, cont: Continuation, tokens: list[int]) -> list[tuple[int, int]]:
        """The CTC alignment of the window's text: (first, last) frame of each token."""
        if not tokens:
            return []
        lengths = torch.tensor([cont.n_frames], device=cont.ctc_log_probs.device)
        return forced_align(cont.ctc_log_probs, lengths, [tokens], self.model.cfg.blank)[0]

    def _words(self, tokens: list[int], spans: list[tuple[int, int]]) -> list[Word]:
        """The words of `tokens`, timed on the stream."""
        if not tokens:
            return []
        start = self.offset / SAMPLE_RATE
        end = start + len(self.window) / SAMPLE_RATE
        segments = make_segments(self.tokenizer, [(start, end)], [(tokens, spans)])
        words = []
        for w in (w for s in segments for w in s.words):
            # each window aligns on its own: a later word never starts before an earlier one ended
            w.start = min(max(w.start, self.last_end), end)
            w.end = max(w.end, w.start)
            self.last_end = w.end
            words.append(w)
        return words

    def _select_history(self, spans: list[tuple[int, int]]) -> None:
        """StreamAtt's history selection: the text history is what follows the last strong punctuation (FBK's
        punctuation selection: a finished sentence is no longer context), and at most `history_words` words;
        the audio before it is dropped.

        Where the kept text starts in the audio is read from the CTC alignment (the one that times the words),
        not from the argmax of the kept tokens' cross-attention as in StreamAtt: a window's first tokens often
        attend most to its first frame (an attention sink; the demo model does it on every multi-sentence
        window), which would never let any audio go."""
        words, keep = 0, len(self.history)
        while keep > 0 and words < self.options.history_words:
            keep -= 1
            words += self.starts[self.history[keep]]
        ended = [i + 1 for i, t in enumerate(self.history) if self.sentence_end[t]]
        keep = max([keep] + ended)
        if keep == 0:
            return
        cut = spans[keep][0] - HISTORY_MARGIN if keep < len(spans) else spans[-1][1] + 1
        self._drop(cut, keep)

    @property
    def kept_seconds(self) -> float:
        """Seconds of audio held (the window)."""
        return len(self.window) / SAMPLE_RATE


def _alignatt_stop(limit: int) -> Callable[[list[int], list[int]], bool]:
    """Generation stops at the first token AlignAtt would not commit (nothing after it can be): the one that
    looks at frame `limit` or later."""
    def stop(tokens: list[int], frames: list[int]) -> bool:
        return frames[-1] >= limit
    return stop


def _waitk_stop(allowed: int, starts: list[bool]) -> Callable[[list[int], list[int]], bool]:
    """Generation stops once the token that starts word `allowed + 1` is out (it closes word `allowed`)."""
    def stop(tokens: list[int], frames: list[int]) -> bool:
        return sum(starts[t] for t in tokens) > allowed
    return stop


def _waitk_length(tokens: list[int], allowed: int, eos: bool, starts: list[bool]) -> int:
    seen = 0
    for i, t in enumerate(tokens):
        if starts[t]:
            seen += 1
            if seen > allowed:
                return i
    return complete_words(tokens, len(tokens), eos, starts)


class Captions:
    """Committed words grouped into caption segments (a sentence end, a pause or `SEGMENT_WORDS` close one)."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.current: list[Word] = []

    def add(self, words: list[Word]) -> list[Segment]:
        """Add committed words; returns the segments they closed."""
        closed = []
        for w in words:
            if self.current and (w.start - self.current[-1].end > SEGMENT_PAUSE or len(self.current) >= SEGMENT_WORDS):
                closed.append(self._close())
            self.current.append(w)
            if SENTENCE_END.search(w.text):
                closed.append(self._close())
        return closed

    def flush(self) -> list[Segment]:
        return [self._close()] if self.current else []

    def _close(self) -> Segment:
        words, self.current = self.current, []
        segment = Segment(words[0].start, words[-1].end, " ".join(w.text for w in words), words)
        self.segments.append(segment)
        return segment

    def transcript(self, language: str, task: str, duration: float, source: str = "", model: str = "",
                   options: dict | None = None) -> Transcript:
        """Everything committed so far (the open segment included)."""
        segments = list(self.segments)
        if self.current:
            w = self.current
            segments.append(Segment(w[0].start, w[-1].end, " ".join(x.text for x in w), list(w)))
        return Transcript(segments, language, task, duration=duration, source=source, model=model,
                          options=dict(options or {}))



# ----------------------------------------------------------------------------------------------- latency


def lagging(delays: list[float], source_seconds: float, reference_words: int, length_adaptive: bool = True) -> float:
    """Average Lagging (Ma et al. 2019, with the reference length as SimulEval computes it) or, with
    `length_adaptive`, LAAL (Papi et al. 2022: the rate uses max(hypothesis, reference) words, so
    over-generation is not rewarded), in the unit of `delays`: each output word's delay (the audio read when
    it was emitted, plus the computation time for the computation-aware variants). Words count up to the
    first one emitted once the whole source was read. NaN without output words."""
    if not delays:
        return math.nan
    words = max(len(delays), reference_words) if length_adaptive else max(reference_words, 1)
    rate = source_seconds / words
    tau = next((i + 1 for i, d in enumerate(delays) if d >= source_seconds), len(delays))
    return sum(delays[i] - i * rate for i in range(tau)) / tau

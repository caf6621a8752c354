"""Decoding: batched beam search with joint CTC/attention scoring, greedy CTC, and CTC forced alignment.

The beam search reproduces fairseq's `SequenceGenerator` as FAMA runs it (language tag forced as the first
token, length-normalised scores, no-repeat-ngram, unk penalty, fairseq's rules for finalising hypotheses)
and FBK's joint CTC decoding (`SequenceGeneratorJointCTCDecoding`): at every step after the tag,
`log p_att + w * (psi(g+c) - psi(g))` with psi the CTC prefix probability from the top, language-conditioned
CTC head, over the whole vocabulary.

The CTC prefix probability of every candidate c is sum_t phi(t-1) * p_ctc(c, t): one matrix product per step
(float64, shifted exponentials), instead of FBK's loop over frames for every candidate. The forward variables
are then advanced only for the hypotheses that survive, with cumulative log-sum-exps. Both are exact
reformulations of the same recursion; utterances of any length share a batch and each is scored on its own
frames, so the result never depends on the batch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .hotwords import ContextGraph, Hotword, SpelledHotwords, context_graph
from .model import DecoderCache, EncoderOutput, FamaModel
from .tokenizer import UNK, Tokenizer

CTC_MINUS_INF = -1e20  # FBK's scorer uses this finite value; it decides when </s> is forced


@dataclass
class DecodeOptions:
    beam_size: int = 5
    ctc_weight: float = 0.2  # 0 = attention-only beam search
    max_len_a: float = 0.0  # max output tokens = a * input frames + b (fairseq's semantics)
    max_len_b: int = 200
    min_len: int = 1
    no_repeat_ngram_size: int = 5
    unk_penalty: float = 10000.0
    len_penalty: float = 1.0
    nbest: int = 1
    greedy: bool = False  # greedy CTC from the top CTC head: fastest, no attention decoder
    max_target_positions: int | None = None  # default: the model's
    hotwords: tuple[Hotword, ...] = ()  # terms to favour (hotwords.Hotword, or plain strings: default weight)
    # what the search reads: the terms spelled for the model's tokenizer (`with_hotword_spellings`; Pipeline does it)
    hotword_spellings: SpelledHotwords | None = None
    hotword_ctc_weight: float = 1.0  # CTC weight of a token that earns a hotword bonus (>= ctc_weight)


@dataclass
class Hypothesis:
    tokens: list[int]  # output tokens, without the language tag and </s>
    score: float  # fairseq's score: sum of token_scores / len(token_scores) ** len_penalty
    token_scores: list[float] = field(default_factory=list)  # language tag, each token, </s>
    # the attention decoder's own log-probability of each of them (no CTC, no rule, no bonus): word confidence
    token_logprobs: list[float] = field(default_factory=list)


def with_hotword_spellings(options: DecodeOptions, tokenizer: Tokenizer) -> DecodeOptions:
    """`options` with its hotwords (Hotword or plain terms) spelled for `tokenizer` (ValueError for a bad term)."""
    if not options.hotwords:
        return dataclasses.replace(options, hotwords=(), hotword_spellings=None)
    terms = tuple(h if isinstance(h, Hotword) else Hotword(str(h)) for h in options.hotwords)
    return dataclasses.replace(options, hotwords=terms, hotword_spellings=SpelledHotwords.of(terms, tokenizer))


def as_lang_tensor(lang_ids: Sequence[int] | Tensor | int, batch: int, device: torch.device) -> Tensor:
    if isinstance(lang_ids, int):
        return torch.full((batch,), lang_ids, dtype=torch.long, device=device)
    t = torch.as_tensor(lang_ids, dtype=torch.long, device=device).view(-1)
    if t.numel() == 1 and batch > 1:
        t = t.expand(batch)
    if t.numel() != batch:
        raise ValueError(f"{t.numel()} language ids for a batch of {batch}")
    return t


@torch.no_grad()
def decode(model: FamaModel, features: Tensor, lengths: Tensor, lang_ids: Sequence[int] | Tensor | int,
           options: DecodeOptions | None = None) -> list[list[Hypothesis]]:
    """n-best hypotheses for each utterance of a padded feature batch, decoded with the given language tags."""
    options = options or DecodeOptions()
    features = features.to(model.device, model.dtype)
    lengths = lengths.to(model.device)
    enc = model.encode(features, lengths)
    return decode_encoded(model, enc, lang_ids, options, source_lengths=lengths)


@torch.no_grad()
def decode_encoded(model: FamaModel, enc: EncoderOutput, lang_ids: Sequence[int] | Tensor | int,
                   options: DecodeOptions | None = None,
                   source_lengths: Tensor | None = None) -> list[list[Hypothesis]]:
    options = options or DecodeOptions()
    langs = as_lang_tensor(lang_ids, enc.out.shape[0], enc.out.device)
    if options.greedy:
        logits = model.ctc_logits(enc, langs)
        return [[Hypothesis(toks, 0.0)] for toks in ctc_greedy(logits, enc.lengths, model.cfg.blank)]
    return BeamSearch(model, options).search(enc, langs, source_lengths)


def ctc_greedy(logits: Tensor, lengths: Tensor, blank: int) -> list[list[int]]:
    """Best path: argmax per frame, repeats merged, blanks removed."""
    best = logits.argmax(-1).cpu()
    out = []
    for row, n in zip(best, lengths.tolist()):
        row = row[:n]
        keep = torch.ones_like(row, dtype=torch.bool)
        keep[1:] = row[1:] != row[:-1]
        out.append([t for t in row[keep & (row != blank)].tolist()])
    return out


# ------------------------------------------------------------------------------------------- CTC prefix score


class CtcPrefixScorer:
    """CTC prefix probabilities psi(g + c) for a batch of beams (Watanabe et al., Algorithm 2).

    Rows are hypotheses, `rows_per_utt` consecutive rows per utterance. State per row: log forward variables
    r_n (prefix ends with a non-blank at t) and r_b (ends with blank), over the utterance's frames.
    psi(g + c) = log sum_t exp(phi(t-1) + x(c, t)) is computed exactly, in float64 log space, for the
    candidates asked only; `bound` gives every token an upper bound without a pass over the frames.
    """

    def __init__(self, log_probs: Tensor, lengths: Tensor, blank: int, eos: int, rows_per_utt: int = 1):
        """log_probs [B, T, V] CTC log-posteriors; it is modified in place (padded frames become -inf)."""
        self.blank, self.eos = blank, eos
        B, T, _ = log_probs.shape
        device = log_probs.device
        self.frames = torch.arange(T, device=device)[None, :]
        x = log_probs.masked_fill_(self.frames[:, :, None] >= lengths[:, None, None], -math.inf)
        self.x_max = x.amax(1)  # B x V: frame 0 is always real
        self.xt = x.float().transpose(1, 2).contiguous()  # B x V x T: each token's frames are contiguous
        self.utt_of_row = torch.arange(B, device=device).repeat_interleave(rows_per_utt)
        self.lengths = lengths.repeat_interleave(rows_per_utt)
        self.end = (self.lengths - 1).clamp_min(0)[:, None]
        # Slack of the bound psi(g+c) <= psi(g): frame posteriors sum to 1 only within float32 rounding.
        self.prefix_slack = 1e-5 * self.lengths.double() + 1e-6

    def select(self, rows: Tensor) -> None:
        """Only these rows go on (their utterances' frames stay where they are)."""
        self.utt_of_row, self.lengths = self.utt_of_row[rows], self.lengths[rows]
        self.end, self.prefix_slack = self.end[rows], self.prefix_slack[rows]

    def initial_state(self) -> tuple[Tensor, Tensor]:
        r_b = torch.cumsum(self.xt[self.utt_of_row, self.blank].double(), 1)  # N x T
        return torch.full_like(r_b, -math.inf), r_b

    def _in_range(self, prefix_len: int) -> Tensor:
        return (self.frames >= max(1, prefix_len)) & (self.frames < self.lengths[:, None])

    @staticmethod
    def _shifted(v: Tensor, in_range: Tensor) -> Tensor:
        """v(t-1) at frame t, -inf outside `in_range`."""
        out = torch.full_like(v, -math.inf)
        out[:, 1:] = v[:, :-1]
        return out.masked_fill_(~in_range, -math.inf)

    def scores(self, r_n: Tensor, r_b: Tensor, last: Tensor | None, prefix_len: int,
               cands: Tensor | None = None) -> Tensor:
        """psi(g + c) (float64, >= CTC_MINUS_INF) for prefixes g of length `prefix_len`, for candidate tokens
        `cands` [N, K] of each row (default: the whole vocabulary, [N, V]). `last` [N]: g's last token."""
        in_range = self._in_range(prefix_len)
        r_sum = torch.logaddexp(r_n, r_b)
        phi = self._shifted(r_sum, in_range)
        if cands is None:
            cands = torch.arange(self.xt.shape[1], device=r_n.device).expand(r_n.shape[0], -1)
        x_c = self.xt[self.utt_of_row[:, None], cands].double()  # N x K x T
        phi_c = phi[:, None, :]
        if last is not None:  # repeating the last token needs a blank in between: phi = r_b only
            phi_last = self._shifted(r_b, in_range)
            phi_c = torch.where((cands == last[:, None])[:, :, None], phi_last[:, None, :], phi_c)
        psi = torch.logsumexp(phi_c + x_c, -1)
        if prefix_len == 0:
            psi = torch.logaddexp(psi, x_c[:, :, 0])  # a first token may start at frame 0
        psi = torch.where(cands == self.eos, r_sum.gather(1, self.end), psi)
        psi = psi.masked_fill(cands == self.blank, CTC_MINUS_INF)
        return psi.clamp_min(CTC_MINUS_INF)

    def bound(self, r_n: Tensor, r_b: Tensor, prefix_len: int, psi_prev: Tensor) -> Tensor:
        """[N, V] float64, >= `scores` of every token: min(log sum_t exp(phi) + max_t x(c, t), psi(g)), with
        psi(g) = `psi_prev` [N]; exact for </s> and blank."""
        in_range = self._in_range(prefix_len)
        r_sum = torch.logaddexp(r_n, r_b)
        spread = torch.logsumexp(self._shifted(r_sum, in_range), 1)
        if prefix_len == 0:
            spread = torch.logaddexp(spread, torch.zeros_like(spread))
        ub = (spread[:, None] + self.x_max[self.utt_of_row].double()).clamp_min(CTC_MINUS_INF)
        ub = ub + 1e-9 * (1.0 + ub.abs())
        ub = torch.minimum(ub, (psi_prev + self.prefix_slack)[:, None])
        ub[:, self.eos] = r_sum.gather(1, self.end).squeeze(1)
        ub[:, self.blank] = CTC_MINUS_INF
        return ub.clamp_min(CTC_MINUS_INF)

    def advance(self, r_n: Tensor, r_b: Tensor, tokens: Tensor, repeat: Tensor,
                prefix_len: int) -> tuple[Tensor, Tensor]:
        """Forward variables of g + c for the chosen (row, token c); `repeat` marks c == last token of g."""
        N = r_n.shape[0]
        start = max(1, prefix_len)
        t = self.frames
        x_c = self.xt[self.utt_of_row, tokens].double()  # N x T
        x_b = self.xt[self.utt_of_row, self.blank].double()
        r_sum = torch.logaddexp(r_n, r_b)
        phi_src = torch.where(repeat[:, None], r_b, r_sum)
        active = self._in_range(prefix_len)
        phi = torch.full_like(r_sum, -math.inf)
        phi[:, 1:] = phi_src[:, :-1]
        # r_n(t) = logaddexp(r_n(t-1), phi(t-1)) + x_c(t) for t >= start, seeded at start-1.
        seed = x_c[:, 0] if prefix_len == 0 else torch.full((N,), -math.inf, dtype=r_n.dtype, device=r_n.device)
        xc_act = x_c.masked_fill(~active, 0.0)
        cum_c = torch.cumsum(xc_act, 1)  # sum of x_c over [start, t]
        terms = (phi + x_c - cum_c).masked_fill(~active, -math.inf)
        seed_col = torch.zeros_like(r_n).masked_fill(t != start - 1, -math.inf) + seed[:, None]
        new_n = torch.logcumsumexp(torch.logaddexp(terms, seed_col), 1) + cum_c
        new_n = new_n.masked_fill(t < start - 1, -math.inf)
        # r_b(t) = logaddexp(r_n(t-1), r_b(t-1)) + x_b(t) for t >= start, r_b(start-1) impossible.
        xb_act = x_b.masked_fill(~active, 0.0)
        cum_b = torch.cumsum(xb_act, 1)
        prev_n = torch.full_like(new_n, -math.inf)
        prev_n[:, 1:] = new_n[:, :-1]
        terms_b = (prev_n - cum_b + xb_act).masked_fill(~active, -math.inf)
        new_b = (torch.logcumsumexp(terms_b, 1) + cum_b).masked_fill(t < start, -math.inf)
        return new_n, new_b


# ------------------------------------------------------------------------------------------- step processors


class LogitProcessor:
    """A rule the beam search applies to each step's log-probabilities (whisper's LogitFilter, ESPnet's
    scorers): `apply` gets every row's log-probabilities over the vocabulary and the row's tokens so far, and
    returns the scores the search ranks. A processor that keeps state per row follows the rows: `start`
    (a new search of `rows` rows), `advance` (the rows that survive a step, in their new order, and the token
    each took) and `select` (the rows that go on when finished utterances leave the batch). Everything stays
    on the device: no processor reads a value back."""

    def start(self, rows: int, device: torch.device) -> None:
        pass

    def apply(self, lprobs: Tensor, tokens: Tensor, step: int, ctc: Tensor | None = None) -> Tensor:
        """`ctc`: each token's CTC prefix-score change psi(g+c) - psi(g) (<= 0; an upper bound where the search
        has not scored the token exactly), None without joint CTC decoding. A processor may only add
        amounts that do not decrease as `ctc` grows, so that the search's bounds stay bounds."""
        raise NotImplementedError

    def advance(self, rows: Tensor, tokens: Tensor) -> None:
        pass

    def select(self, rows: Tensor) -> None:
        pass


class UnkPenalty(LogitProcessor):
    """fairseq's --unkpen: subtract `penalty` from `<unk>`."""

    def __init__(self, unk: int, penalty: float):
        self.unk, self.penalty = unk, penalty

    def apply(self, lprobs: Tensor, tokens: Tensor, step: int, ctc: Tensor | None = None) -> Tensor:
        lprobs[:, self.unk] -= self.penalty
        return lprobs


class NoRepeatNgram(LogitProcessor):
    """fairseq's no_repeat_ngram: ban c if (last n-1 tokens, c) already occurs in the hypothesis."""

    def __init__(self, n: int):
        self.n = n

    def apply(self, lprobs: Tensor, tokens: Tensor, step: int, ctc: Tensor | None = None) -> Tensor:
        n = self.n
        N, L = tokens.shape
        if L < n:
            return lprobs
        context = tokens[:, L - n + 1:]
        windows = tokens.unfold(1, n, 1)  # N x (L-n+1) x n: every complete n-gram so far
        match = (windows[:, :, :-1] == context[:, None, :]).all(-1)
        banned = torch.zeros(lprobs.shape, dtype=torch.uint8, device=lprobs.device)
        banned.scatter_reduce_(1, windows[:, :, -1], match.to(torch.uint8), "amax")
        return lprobs.masked_fill(banned.bool(), -math.inf)


class HotwordBoost(LogitProcessor):
    """Adds each token's context-graph bonus (`hotwords.ContextGraph`) for the row's place in the graph; the
    joint CTC score is added to the result, so a term the audio does not support still falls."""

    def __init__(self, graph: ContextGraph, ctc_weight: float = 0.0, term_ctc_weight: float = 1.0):
        self.graph = graph
        # a token that follows a term counts its CTC change at `term_ctc_weight` instead of the search's weight:
        # the bonus is paid for with the audio's own evidence for the token
        self.extra_ctc = max(0.0, term_ctc_weight - ctc_weight)
        self.state: Tensor | None = None  # N: each row's graph node

    def start(self, rows: int, device: torch.device) -> None:
        self.next_state, self.delta, self.column = self.graph.tables(device)
        self.state = torch.zeros(rows, dtype=torch.long, device=device)

    def apply(self, lprobs: Tensor, tokens: Tensor, step: int, ctc: Tensor | None = None) -> Tensor:
        bonus = self.delta[self.state].index_select(1, self.column)
        if ctc is not None and self.extra_ctc:
            bonus = torch.where(bonus > 0, bonus + self.extra_ctc * ctc, bonus)
        return lprobs + bonus

    def advance(self, rows: Tensor, tokens: Tensor) -> None:
        self.state = self.next_state[self.state[rows], self.column[tokens]]

    def select(self, rows: Tensor) -> None:
        self.state = self.state[rows]


def step_processors(options: DecodeOptions, vocab_size: int) -> list[LogitProcessor]:
    """The processors `options` asks for, in the order they apply."""
    out: list[LogitProcessor] = []
    if options.hotwords and options.hotword_spellings is None:
        raise ValueError("hotwords must be spelled for the model's tokenizer first (hotwords.SpelledHotwords.of)")
    if options.hotword_spellings is not None and options.hotword_spellings.terms:
        out.append(HotwordBoost(context_graph(options.hotword_spellings, vocab_size), options.ctc_weight,
                                options.hotword_ctc_weight))
    if options.unk_penalty:
        out.append(UnkPenalty(UNK, options.unk_penalty))
    if options.no_repeat_ngram_size > 0:
        out.append(NoRepeatNgram(options.no_repeat_ngram_size))
    return out


# ------------------------------------------------------------------------------------------- beam search


@dataclass
class _State:
    """Everything a search step reads and writes, in fixed-size tensors on the model's device."""

    tokens: Tensor  # N x (L+2): </s>, language tag, tokens; column `step` is the last token at step `step`
    cum: Tensor  # N x (L+1) cumulative scores
    att: Tensor  # N x (L+1) the decoder's log-probability of each token
    done: Tensor  # B: utterance complete; its rows keep running, masked
    failed: Tensor  # B: CTC pruning could not prove a step's candidates exact (the utterance is redone)
    fin_tokens: Tensor  # B x (k+1) x (L+2); slot k takes the writes that are masked out
    fin_cum: Tensor  # B x (k+1) x (L+1)
    fin_att: Tensor  # B x (k+1) x (L+1)
    fin_eos: Tensor  # B x (k+1): score of the </s> candidate
    fin_norm: Tensor  # B x (k+1): length-normalised score
    fin_step: Tensor  # B x (k+1)
    fin_count: Tensor  # B
    r_n: Tensor | None = None  # CTC forward variables of each row's prefix
    r_b: Tensor | None = None
    psi_prev: Tensor | None = None  # N x 1 float32: psi of each row's prefix
    psi_prev64: Tensor | None = None  # N float64, for the pruning bound

    def select(self, utts: Tensor, rows: Tensor) -> None:
        """Only these utterances (and their hypothesis rows) go on."""
        for name, value in vars(self).items():
            if value is not None:
                per_row = name in ("tokens", "cum", "att", "r_n", "r_b", "psi_prev", "psi_prev64")
                setattr(self, name, value[rows if per_row else utts])


class BeamSearch:
    """fairseq's beam search over a batch. On a GPU: fixed-size state, finished utterances masked rather than
    removed, no device-to-host synchronisation inside a step. On the CPU, where reading the state back costs
    nothing, a finished utterance leaves the batch at once (its rows would otherwise be computed to the end).

    Joint CTC scoring is pruned exactly: every token gets an upper bound of its joint score (`bound`), the
    `ctc_candidates` best bounds of each row are scored exactly, and the step's candidates are provably those
    of full-vocabulary scoring when no unscored bound reaches the 2k-th best exact score. An utterance for
    which that proof fails at some step gets four times the candidates (the vocabulary at most, where nothing
    is left unscored): at once on the CPU, where reading the proof back costs nothing; elsewhere, to keep the
    step free of host reads, by searching the batch again after the pass.
    """

    def __init__(self, model: FamaModel, options: DecodeOptions, ctc_candidates: int = 16, sync_every: int = 1,
                 host_reads: bool | None = None):
        if model.auxiliary_decoder is None and options.ctc_weight > 0:  # no top CTC head: attention only
            options = dataclasses.replace(options, ctc_weight=0.0)
        self.model, self.opt = model, options
        cfg = model.cfg
        self.eos, self.pad, self.unk, self.blank, self.vocab = cfg.eos, cfg.pad, UNK, cfg.blank, cfg.vocab_size
        self.max_positions = options.max_target_positions or cfg.max_target_positions
        self.ctc_candidates = ctc_candidates
        self.sync_every = sync_every  # steps between checks that every utterance is done
        # Read the state back at every step (None: on the CPU, where it costs nothing) to widen the pruning within
        # the step and drop finished utterances from the batch; else the step reads nothing back.
        self.host_reads = host_reads
        self.searches = 0  # passes run (diagnostics: > 1 when the pruning proof failed somewhere)

    @torch.no_grad()
    def search(self, enc: EncoderOutput, langs: Tensor, source_lengths: Tensor | None = None) -> list[list[Hypothesis]]:
        src = source_lengths if source_lengths is not None else enc.lengths * 4
        cands = self.ctc_candidates
        out, failed = self._search(enc, langs, src, cands)
        while any(failed) and cands < self.vocab:
            # The same batch again (a sub-batch could round the decoder's products differently).
            cands *= 4
            again, still = self._search(enc, langs, src, cands)
            out = [a if bad else o for o, a, bad in zip(out, again, failed)]
            failed = [bad and s for bad, s in zip(failed, still)]
        return out

    def _search(self, enc: EncoderOutput, langs: Tensor, src: Tensor,
                cands: int) -> tuple[list[list[Hypothesis]], list[bool]]:
        self.searches += 1
        opt, k = self.opt, self.opt.beam_size
        B, device = enc.out.shape[0], enc.out.device
        max_len = torch.clamp((opt.max_len_a * src.float()).long() + opt.max_len_b, max=self.max_positions - 1)
        max_len = max_len.to(device)
        L = int(max_len.max())
        if opt.min_len > int(max_len.min()):
            raise ValueError("min_len cannot be larger than max_len")
        scorer = None
        if opt.ctc_weight > 0:
            ctc_lp = F.log_softmax(self.model.ctc_logits(enc, langs).float(), -1)
            scorer = CtcPrefixScorer(ctc_lp, enc.lengths, self.blank, self.eos, k)
            del ctc_lp
        cache = self.model.decoder.init_cache(enc, beams=k, capacity=L + 1)
        st = self._initial_state(B, L, device)
        only_eos = torch.full((self.vocab,), -math.inf, device=device)
        only_eos[self.eos] = 0
        host_reads = device.type == "cpu" if self.host_reads is None else self.host_reads
        processors = step_processors(opt, self.vocab)
        for p in processors:
            p.start(B * k, device)
        ctx = _Context(langs, max_len, scorer, cache, min(cands, self.vocab), only_eos, host_reads, processors)
        hyps: list[list[Hypothesis]] = [[] for _ in range(B)]
        failed = [False] * B
        live = list(range(B))  # the utterance of each remaining row group
        for step in range(L + 1):
            logits = self.model.decoder.step(st.tokens[:, step], ctx.cache)
            self._step(st, ctx, step, logits)
            if host_reads:
                # Where reading the state back costs nothing, a finished utterance leaves the batch at once:
                # its rows would otherwise go through every later step, masked.
                done = st.done.tolist()
                if any(done):
                    ended = [i for i, d in enumerate(done) if d]
                    for i, h, f in zip(ended, self._collect(st, ended), st.failed[ended].tolist()):
                        hyps[live[i]], failed[live[i]] = h, f
                    live = [u for u, d in zip(live, done) if not d]
                    if not live:
                        break
                    self._keep(st, ctx, [i for i, d in enumerate(done) if not d])
            elif (step + 1) % self.sync_every == 0 and bool(st.done.all()):
                break
        if live:
            for u, h, f in zip(live, self._collect(st), st.failed.tolist()):
                hyps[u], failed[u] = h, f
        return hyps, failed

    def _keep(self, st: _State, ctx: _Context, utts: list[int]) -> None:
        """Only these utterances of the batch go on searching."""
        k = self.opt.beam_size
        index = torch.tensor(utts, device=st.done.device)
        rows = (index[:, None] * k + torch.arange(k, device=index.device)).view(-1)
        st.select(index, rows)
        ctx.langs, ctx.max_len = ctx.langs[index], ctx.max_len[index]
        if ctx.scorer is not None:
            ctx.scorer.select(rows)
        for p in ctx.processors:
            p.select(rows)
        ctx.cache.select(index, rows)

    def _initial_state(self, B: int, L: int, device: torch.device) -> _State:
        k = self.opt.beam_size
        return _State(
            tokens=torch.full((B * k, L + 2), self.eos, dtype=torch.long, device=device),
            cum=torch.zeros(B * k, L + 1, device=device),
            att=torch.zeros(B * k, L + 1, device=device),
            done=torch.zeros(B, dtype=torch.bool, device=device),
            failed=torch.zeros(B, dtype=torch.bool, device=device),
            fin_tokens=torch.zeros(B, k + 1, L + 2, dtype=torch.long, device=device),
            fin_cum=torch.zeros(B, k + 1, L + 1, device=device),
            fin_att=torch.zeros(B, k + 1, L + 1, device=device),
            fin_eos=torch.zeros(B, k + 1, device=device),
            fin_norm=torch.zeros(B, k + 1, device=device),
            fin_step=torch.zeros(B, k + 1, dtype=torch.long, device=device),
            fin_count=torch.zeros(B, dtype=torch.long, device=device),
        )

    def _step(self, st: _State, ctx: _Context, step: int, logits: Tensor) -> None:
        """The search's part of a step, for every row, given the decoder's `logits`; reads no value back from
        the device."""
        k, V = self.opt.beam_size, self.vocab
        lprobs = raw = F.log_softmax(logits.float(), -1)
        B = lprobs.shape[0] // k
        psi = None
        if step == 0:
            lang_rows = ctx.langs.repeat_interleave(k)
            forced = lprobs.gather(1, lang_rows[:, None])
            lprobs = torch.full_like(lprobs, -math.inf).scatter_(1, lang_rows[:, None], forced)
            lprobs.view(B, k, V)[:, 1:] = -math.inf  # fairseq expands only the first beam at step 0
            cand_scores, cand_flat, _ = self._top(lprobs, st, step, None)
        elif ctx.scorer is not None:
            cands = ctx.cands
            while True:
                joint, psi, scored = self._joint(lprobs, st, ctx, step, cands)
                cand_scores, cand_flat, failed = self._top(joint, st, step, scored)
                # On the CPU a host read costs nothing: widen at once rather than search again.
                if not ctx.host_reads or cands >= V or not bool(failed.any()):
                    break
                cands = min(4 * cands, V)
            st.failed |= failed
        else:
            cand_scores, cand_flat, _ = self._top(self._rules(lprobs, st, ctx, step), st, step, None)
        cand_beams = torch.div(cand_flat, V, rounding_mode="floor")
        cand_tokens = cand_flat % V
        cand_rows = cand_beams + torch.arange(B, device=lprobs.device)[:, None] * k
        eos_mask = cand_tokens.eq(self.eos) & cand_scores.ne(-math.inf)
        self._finalize(st, ctx, step, eos_mask[:, :k], cand_rows[:, :k], cand_scores[:, :k],
                       raw[cand_rows[:, :k], self.eos])
        # Survivors: the first k candidates that are not </s>, in rank order.
        order = eos_mask.long() * (2 * k) + torch.arange(cand_scores.shape[1], device=lprobs.device)[None, :]
        active = torch.topk(order, k=k, dim=1, largest=False).indices
        sel_rows = cand_rows.gather(1, active).view(-1)
        sel_tokens = cand_tokens.gather(1, active).view(-1)
        sel_scores = cand_scores.gather(1, active).view(-1)
        if psi is not None:
            prefix_len = step - 1
            repeat = st.tokens[sel_rows, step] == sel_tokens if prefix_len > 0 else torch.zeros_like(
                sel_tokens, dtype=torch.bool)
            st.psi_prev64 = psi[sel_rows, sel_tokens]
            st.psi_prev = st.psi_prev64.float()[:, None]
            st.r_n, st.r_b = ctx.scorer.advance(st.r_n[sel_rows], st.r_b[sel_rows], sel_tokens, repeat, prefix_len)
        st.tokens[:, : step + 1] = st.tokens[sel_rows, : step + 1]
        st.tokens[:, step + 1] = sel_tokens
        if step > 0:
            st.cum[:, :step] = st.cum[sel_rows, :step]
        st.cum[:, step] = sel_scores
        if step > 0:
            st.att[:, :step] = st.att[sel_rows, :step]
        st.att[:, step] = raw[sel_rows, sel_tokens]
        for p in ctx.processors:
            p.advance(sel_rows, sel_tokens)
        ctx.cache.reorder(sel_rows)

    def _top(self, lprobs: Tensor, st: _State, step: int, scored: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """The 2k best (score, beam * V + token) of each utterance, and whether an unscored token's bound
        reaches the 2k-th (the candidates are then not proven exact)."""
        k, V = self.opt.beam_size, self.vocab
        B = lprobs.shape[0] // k
        total = lprobs.view(B, k, V) + (st.cum[:, step - 1].view(B, k, 1) if step > 0 else 0.0)
        total = total.view(B, k * V)
        exact = total if scored is None else total.masked_fill(~scored.view(B, k * V), -math.inf)
        cand_scores, cand_flat = torch.topk(exact, k=min(2 * k, k * V - 1), dim=1)
        if scored is None:
            return cand_scores, cand_flat, torch.zeros_like(st.done)
        unscored = total.masked_fill(scored.view(B, k * V), -math.inf).amax(1)
        failed = (unscored >= cand_scores[:, -1]) & (unscored > -math.inf) & ~st.done
        return cand_scores, cand_flat, failed

    def _joint(self, lprobs: Tensor, st: _State, ctx: _Context, step: int,
               cands: int) -> tuple[Tensor, Tensor, Tensor]:
        """Joint scores att + w (psi(g+c) - psi(g)) with the rules applied: exact for the `scored` tokens, an
        upper bound elsewhere; and psi (float64) with the same convention."""
        scorer, prefix_len, w = ctx.scorer, step - 1, self.opt.ctc_weight
        if st.r_n is None:
            st.r_n, st.r_b = scorer.initial_state()
            st.psi_prev = torch.zeros(lprobs.shape[0], 1, device=lprobs.device)
            st.psi_prev64 = torch.zeros(lprobs.shape[0], dtype=torch.float64, device=lprobs.device)
        psi = scorer.bound(st.r_n, st.r_b, prefix_len, st.psi_prev64)
        gain = psi.float() - st.psi_prev
        bound = self._rules(lprobs + w * gain, st, ctx, step, gain)
        cands = torch.topk(bound, k=cands, dim=1).indices
        last = st.tokens[:, step] if prefix_len > 0 else None
        psi.scatter_(1, cands, scorer.scores(st.r_n, st.r_b, last, prefix_len, cands))
        scored = torch.zeros_like(lprobs, dtype=torch.bool).scatter_(1, cands, True)
        scored[:, [self.eos, self.blank]] = True
        gain = psi.float() - st.psi_prev
        joint = self._rules(lprobs + w * gain, st, ctx, step, gain)
        return joint, psi, scored

    def _rules(self, lprobs: Tensor, st: _State, ctx: _Context, step: int, ctc: Tensor | None = None) -> Tensor:
        """fairseq's constraints: no NaN, no pad, the step processors (hotword bonus, unk penalty, no repeated
        n-gram), </s> only at the length limit and not before min_len."""
        opt, k = self.opt, self.opt.beam_size
        lprobs = torch.where(torch.isnan(lprobs), -math.inf, lprobs)
        lprobs[:, self.pad] = -math.inf
        for processor in ctx.processors:
            lprobs = processor.apply(lprobs, st.tokens[:, : step + 1], step, ctc)
        at_max = (ctx.max_len <= step).repeat_interleave(k)
        lprobs = torch.where(at_max[:, None], lprobs + ctx.only_eos, lprobs)
        if step < opt.min_len:
            lprobs[:, self.eos] = -math.inf
        return lprobs

    def _finalize(self, st: _State, ctx: _Context, step: int, eos_first: Tensor, rows: Tensor,
                  scores: Tensor, eos_att: Tensor) -> None:
        """Store the hypotheses that end with </s> among the first k candidates (at most k per utterance, in
        rank order), and mark the utterances now complete."""
        k = self.opt.beam_size
        B = eos_first.shape[0]
        take = eos_first & ~st.done[:, None]
        slot = st.fin_count[:, None] + torch.cumsum(take.long(), 1) - 1
        take &= slot < k
        slot = torch.where(take, slot, k)
        utt = torch.arange(B, device=slot.device)[:, None].expand(B, k)
        st.fin_tokens[utt, slot] = st.tokens[rows]
        st.fin_cum[utt, slot] = st.cum[rows]
        st.fin_att[utt, slot] = st.att[rows]
        st.fin_att[utt, slot, step] = eos_att
        st.fin_eos[utt, slot] = scores
        st.fin_norm[utt, slot] = scores / (step + 1) ** self.opt.len_penalty
        st.fin_step[utt, slot] = step
        st.fin_count += take.sum(1)
        st.done |= (st.fin_count >= k) | (ctx.max_len <= step)

    def _collect(self, st: _State, utts: list[int] | None = None) -> list[list[Hypothesis]]:
        """The finalized hypotheses of these utterances (default: all), best first (ties in the order they
        were found)."""
        pick = slice(None) if utts is None else utts
        fin_cum, fin_step, fin_eos = st.fin_cum[pick], st.fin_step[pick], st.fin_eos[pick]
        B, slots, width = fin_cum.shape
        pos = torch.cat([fin_cum, torch.zeros_like(fin_cum[:, :, :1])], 2)
        pos.scatter_(2, fin_step[:, :, None], fin_eos[:, :, None])
        pos[:, :, 1:] = pos[:, :, 1:] - pos[:, :, :-1].clone()
        counts, steps = st.fin_count[pick].tolist(), fin_step.tolist()
        tokens, pos_l, norm = st.fin_tokens[pick].tolist(), pos.tolist(), st.fin_norm[pick].tolist()
        att = st.fin_att[pick].tolist()
        out = []
        for b in range(B):
            hyps = [Hypothesis(tokens[b][j][2:steps[b][j] + 1], norm[b][j], pos_l[b][j][:steps[b][j] + 1],
                               att[b][j][:steps[b][j] + 1])
                    for j in range(min(counts[b], slots - 1))]
            hyps.sort(key=lambda h: -h.score)
            out.append(hyps[: max(1, self.opt.nbest)])
        return out


@dataclass
class _Context:
    """What a search's steps share (per utterance: only the utterances still searching)."""

    langs: Tensor
    max_len: Tensor
    scorer: CtcPrefixScorer | None
    cache: DecoderCache
    cands: int
    only_eos: Tensor  # [V]: 0 for </s>, -inf elsewhere
    host_reads: bool  # see BeamSearch.host_reads
    processors: list[LogitProcessor] = field(default_factory=list)


# ------------------------------------------------------------------------------------------- alignment


def forced_align(log_probs: Tensor, lengths: Tensor, targets: list[list[int]],
                 blank: int) -> list[list[tuple[int, int]]]:
    """CTC Viterbi alignment of each target sequence; per token its (first, last) frame, inclusive.

    log_probs: [B, T, V] log-posteriors; frames beyond `lengths` are ignored. A target that cannot fit
    (more tokens, counting needed blanks between repeats, than frames) gets evenly spread spans.
    """
    B, T, _ = log_probs.shape
    device = log_probs.device
    U = max((len(t) for t in targets), default=0)
    if U == 0:
        return [[] for _ in targets]
    S = 2 * U + 1
    labels = torch.full((B, S), blank, dtype=torch.long, device=device)
    n_labels = torch.zeros(B, dtype=torch.long, device=device)
    for b, tgt in enumerate(targets):
        if tgt:
            labels[b, 1:2 * len(tgt):2] = torch.tensor(tgt, device=device)
        n_labels[b] = 2 * len(tgt) + 1
    lp = log_probs.float().gather(2, labels[:, None, :].expand(B, T, S))  # B x T x S
    s_idx = torch.arange(S, device=device)[None, :]
    can_skip = torch.zeros(B, S, dtype=torch.bool, device=device)
    can_skip[:, 2:] = (labels[:, 2:] != blank) & (labels[:, 2:] != labels[:, :-2])
    valid_s = s_idx < n_labels[:, None]
    neg = torch.tensor(-math.inf, device=device)
    score = torch.full((B, S), -math.inf, device=device)
    score[:, 0] = lp[:, 0, 0]
    score[:, 1] = torch.where(n_labels > 1, lp[:, 0, 1], neg)
    back = torch.zeros(B, T, S, dtype=torch.uint8, device=device)
    for t in range(1, T):
        stay = score
        step1 = torch.cat([torch.full((B, 1), -math.inf, device=device), score[:, :-1]], 1)
        step2 = torch.cat([torch.full((B, 2), -math.inf, device=device), score[:, :-2]], 1)
        step2 = torch.where(can_skip, step2, neg)
        cand = torch.stack([stay, step1, step2], -1)
        best, arg = cand.max(-1)
        new = torch.where(valid_s, best + lp[:, t], neg)
        live = (t < lengths)[:, None]
        score = torch.where(live, new, score)
        back[:, t] = torch.where(live, arg, torch.zeros_like(arg)).to(torch.uint8)
    back = back.cpu()
    score = score.cpu()
    out = []
    for b, tgt in enumerate(targets):
        n, L = len(tgt), int(lengths[b])
        if n == 0:
            out.append([])
            continue
        last = 2 * n
        end_s = last if score[b, last] >= score[b, last - 1] else last - 1
        if not math.isfinite(float(score[b, end_s])):
            edges = torch.linspace(0, L, n + 1).tolist()
            out.append([(int(edges[i]), max(int(edges[i]), int(edges[i + 1]) - 1)) for i in range(n)])
            continue
        path = [0] * L
        s = end_s
        for t in range(L - 1, -1, -1):
            path[t] = s
            if t > 0:
                s -= int(back[b, t, s])
        spans: list[list[int]] = [[-1, -1] for _ in range(n)]
        for t, s in enumerate(path):
            if s % 2 == 1:
                u = s // 2
                if spans[u][0] < 0:
                    spans[u][0] = t
                spans[u][1] = t
        out.append([(a, c) for a, c in spans])
    return out

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

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .model import EncoderOutput, FamaModel

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


@dataclass
class Hypothesis:
    tokens: list[int]  # output tokens, without the language tag and </s>
    score: float  # fairseq's score: sum of token_scores / len(token_scores) ** len_penalty
    token_scores: list[float] = field(default_factory=list)  # language tag, each token, </s>


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
    """CTC prefix probabilities psi(g + c) for all c, for a batch of beams (Watanabe et al., Algorithm 2).

    Rows are hypotheses; `utt` maps each row to its utterance. State per row: log forward variables
    r_n (prefix ends with a non-blank at t) and r_b (ends with blank), over the utterance's frames.
    """

    def __init__(self, log_probs: Tensor, lengths: Tensor, blank: int, eos: int):
        """log_probs [B, T, V] float32 CTC log-posteriors; it is modified in place (padded frames become -inf)."""
        self.blank, self.eos = blank, eos
        T = log_probs.shape[1]
        pad = (torch.arange(T, device=log_probs.device)[None, :] >= lengths[:, None])[:, :, None]
        self.x = log_probs.float().masked_fill_(pad, -math.inf)  # B x T x V
        self.x_max = self.x.amax(1, keepdim=True)  # B x 1 x V (frame 0 is always real)
        self.x_exp = torch.exp(self.x - self.x_max)  # column-shifted posteriors; 0 on padded frames
        self.lengths = lengths
        self.frames = torch.arange(T, device=log_probs.device)
        self.exact_fallbacks = 0  # entries recomputed in float64 (diagnostics)

    def select(self, utt_index: Tensor) -> None:
        """Keep utterances `utt_index` (finished ones leave the batch)."""
        self.x, self.x_max, self.x_exp = self.x[utt_index], self.x_max[utt_index], self.x_exp[utt_index]
        self.lengths = self.lengths[utt_index]

    def initial_state(self, rows_per_utt: int) -> tuple[Tensor, Tensor]:
        r_b = torch.cumsum(self.x[:, :, self.blank].double(), 1).repeat_interleave(rows_per_utt, 0)  # N x T
        return torch.full_like(r_b, -math.inf), r_b

    def scores(self, r_n: Tensor, r_b: Tensor, last: Tensor | None, prefix_len: int, rows_per_utt: int) -> Tensor:
        """psi(g + c) [N, V] (float64, CTC_MINUS_INF where impossible) for prefixes g of length `prefix_len`."""
        N, T = r_n.shape
        lengths = self.lengths.repeat_interleave(rows_per_utt)
        start = max(1, prefix_len)
        r_sum = torch.logaddexp(r_n, r_b)
        t = self.frames[None, :]
        in_range = (t >= start) & (t < lengths[:, None])
        phi = torch.full_like(r_sum, -math.inf)
        phi[:, 1:] = r_sum[:, :-1]  # phi[t] holds the value used at frame t (phi(t-1) in the paper)
        phi = phi.masked_fill(~in_range, -math.inf)
        phi_max = phi.amax(1, keepdim=True).clamp_min(-1e300)
        a = torch.exp(phi - phi_max).float().view(-1, rows_per_utt, T)
        with torch.autocast(self.x.device.type, enabled=False):
            total = torch.bmm(a, self.x_exp).view(N, -1)
        utt_rows = torch.arange(self.x.shape[0], device=self.x.device).repeat_interleave(rows_per_utt)
        psi = torch.log(total.double()) + phi_max + self.x_max[utt_rows, 0].double()
        # A float32 sum below 2^-80 of its shifts may have lost terms to underflow: redo those exactly.
        tiny = total < 2.0**-80
        if bool(tiny.any()):
            psi[tiny] = self._exact(phi, utt_rows, tiny)
        if prefix_len == 0:
            psi = torch.logaddexp(psi, self.x[utt_rows, 0, :].double())  # a first token may start at frame 0
        if last is not None:  # repeating the last token needs a blank in between: phi = r_b only
            phi_last = torch.full_like(r_b, -math.inf)
            phi_last[:, 1:] = r_b[:, :-1]
            phi_last = phi_last.masked_fill(~in_range, -math.inf)
            x_last = self.x[utt_rows, :, last].double()  # N x T
            psi.scatter_(1, last.view(N, 1), torch.logsumexp(phi_last + x_last, 1, keepdim=True))
        end_index = (lengths - 1).clamp_min(0).view(N, 1)
        psi[:, self.eos] = r_sum.gather(1, end_index).squeeze(1)
        psi[:, self.blank] = CTC_MINUS_INF
        return psi.clamp_min(CTC_MINUS_INF)

    def _exact(self, phi: Tensor, utt_rows: Tensor, which: Tensor) -> Tensor:
        """log sum_t exp(phi[n, t] + x[n, t, c]) in float64 log space for the (n, c) entries in `which`."""
        n_idx, c_idx = which.nonzero(as_tuple=True)
        self.exact_fallbacks += n_idx.numel()
        out = []
        for i in range(0, n_idx.numel(), 8192):
            n, c = n_idx[i:i + 8192], c_idx[i:i + 8192]
            x_nc = self.x[utt_rows[n][:, None], self.frames[None, :], c[:, None]].double()  # M x T
            out.append(torch.logsumexp(phi[n] + x_nc, 1))
        return torch.cat(out)

    def advance(self, r_n: Tensor, r_b: Tensor, tokens: Tensor, repeat: Tensor, prefix_len: int,
                rows_per_utt: int) -> tuple[Tensor, Tensor]:
        """Forward variables of g + c for the chosen (row, token c); `repeat` marks c == last token of g."""
        N, T = r_n.shape
        lengths = self.lengths.repeat_interleave(rows_per_utt)
        start = max(1, prefix_len)
        utt_rows = torch.arange(self.x.shape[0], device=self.x.device).repeat_interleave(rows_per_utt)
        x_c = self.x[utt_rows, :, tokens].double()  # N x T
        x_b = self.x[utt_rows, :, self.blank].double()
        r_sum = torch.logaddexp(r_n, r_b)
        phi_src = torch.where(repeat[:, None], r_b, r_sum)
        t = self.frames[None, :]
        active = (t >= start) & (t < lengths[:, None])
        phi = torch.full_like(r_sum, -math.inf)
        phi[:, 1:] = phi_src[:, :-1]
        # r_n(t) = logaddexp(r_n(t-1), phi(t-1)) + x_c(t) for t >= start, seeded at start-1.
        seed = torch.full((N,), -math.inf, dtype=r_n.dtype, device=r_n.device)
        if prefix_len == 0:
            seed = x_c[:, 0]
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


# ------------------------------------------------------------------------------------------- beam search


class BeamSearch:
    """fairseq's beam search over a batch; finished utterances leave the batch."""

    def __init__(self, model: FamaModel, options: DecodeOptions):
        self.model, self.opt = model, options
        cfg = model.cfg
        self.eos, self.pad, self.unk, self.blank, self.vocab = cfg.eos, cfg.pad, 3, cfg.blank, cfg.vocab_size
        self.max_positions = options.max_target_positions or cfg.max_target_positions

    def search(self, enc: EncoderOutput, langs: Tensor, source_lengths: Tensor | None = None) -> list[list[Hypothesis]]:
        opt, k, V = self.opt, self.opt.beam_size, self.vocab
        B, device = enc.out.shape[0], enc.out.device
        src = source_lengths if source_lengths is not None else enc.lengths * 4
        max_len = torch.clamp((opt.max_len_a * src.float()).long() + opt.max_len_b, max=self.max_positions - 1)
        if opt.min_len > int(max_len.min()):
            raise ValueError("min_len cannot be larger than max_len")
        scorer = None
        if opt.ctc_weight > 0:
            ctc_lp = F.log_softmax(self.model.ctc_logits(enc, langs).float(), -1)
            scorer = CtcPrefixScorer(ctc_lp, enc.lengths, self.blank, self.eos)

        cache = self.model.decoder.init_cache(enc).with_beams(k)
        utt = torch.arange(B, device=device)  # original index of each active utterance
        max_len = max_len.to(device)
        tokens = torch.full((B * k, 1), self.eos, dtype=torch.long, device=device)
        cum = torch.zeros(B * k, 0, device=device)  # cumulative scores per position
        r_n = r_b = psi_prev = None
        finalized: list[list[Hypothesis]] = [[] for _ in range(B)]
        neg_inf = torch.tensor(-math.inf, device=device)

        for step in range(int(max_len.max()) + 1):
            n_act = utt.numel()
            lprobs = F.log_softmax(self.model.decoder.step(tokens[:, -1], cache).float(), -1)
            if step == 0:
                lang_rows = langs[utt].repeat_interleave(k)
                forced = lprobs.gather(1, lang_rows[:, None])
                lprobs = torch.full_like(lprobs, -math.inf).scatter_(1, lang_rows[:, None], forced)
                lprobs.view(n_act, k, V)[:, 1:] = -math.inf  # fairseq expands only the first beam at step 0
            else:
                if scorer is not None:
                    prefix_len = step - 1
                    if r_n is None:
                        r_n, r_b = scorer.initial_state(k)
                        psi_prev = torch.zeros(n_act * k, 1, device=device)
                    last = tokens[:, -1] if prefix_len > 0 else None
                    psi = scorer.scores(r_n, r_b, last, prefix_len, k).float()
                    lprobs = lprobs + opt.ctc_weight * (psi - psi_prev)
                lprobs = torch.where(torch.isnan(lprobs), neg_inf, lprobs)
                lprobs[:, self.pad] = -math.inf
                lprobs[:, self.unk] -= opt.unk_penalty
                at_max = (max_len[utt] <= step).repeat_interleave(k)
                if bool(at_max.any()):
                    only_eos = torch.full_like(lprobs[0], -math.inf)
                    only_eos[self.eos] = 0
                    lprobs[at_max] = lprobs[at_max] + only_eos
                if step < opt.min_len:
                    lprobs[:, self.eos] = -math.inf
                if opt.no_repeat_ngram_size > 0:
                    lprobs = self.block_repeated_ngrams(tokens, lprobs)

            total = lprobs.view(n_act, k, V) + (cum[:, -1].view(n_act, k, 1) if step > 0 else 0.0)
            cand_scores, cand_flat = torch.topk(total.view(n_act, k * V), k=min(2 * k, k * V - 1), dim=1)
            cand_beams = torch.div(cand_flat, V, rounding_mode="floor")
            cand_tokens = cand_flat % V
            cand_rows = cand_beams + torch.arange(n_act, device=device)[:, None] * k

            eos_mask = cand_tokens.eq(self.eos) & cand_scores.ne(-math.inf)
            finished = torch.zeros(n_act, dtype=torch.bool, device=device)
            eos_first = eos_mask[:, :k]
            if bool(eos_first.any()):
                finished = self.finalize(step, eos_first, cand_rows[:, :k], cand_scores[:, :k], tokens, cum,
                                         utt, max_len, finalized)
            if bool(finished.all()):
                break
            # Survivors: the first k candidates that are not </s>, in rank order.
            order = eos_mask.long() * (2 * k) + torch.arange(cand_scores.shape[1], device=device)[None, :]
            active = torch.topk(order, k=k, dim=1, largest=False).indices
            keep = (~finished).nonzero().squeeze(1)
            active = active[keep]
            sel_rows = cand_rows[keep].gather(1, active).view(-1)
            sel_tokens = cand_tokens[keep].gather(1, active).view(-1)
            sel_scores = cand_scores[keep].gather(1, active).view(-1)

            if scorer is not None and step > 0:
                if bool(finished.any()):
                    scorer.select(keep)
                prefix_len = step - 1
                repeat = (tokens[sel_rows, -1] == sel_tokens) if prefix_len > 0 else torch.zeros_like(sel_tokens,
                                                                                                        dtype=torch.bool)
                psi_prev = psi[sel_rows, sel_tokens].view(-1, 1)
                r_n, r_b = scorer.advance(r_n[sel_rows], r_b[sel_rows], sel_tokens, repeat, prefix_len, k)
            elif scorer is not None and bool(finished.any()):
                scorer.select(keep)
            tokens = torch.cat([tokens[sel_rows], sel_tokens[:, None]], 1)
            cum = torch.cat([cum[sel_rows], sel_scores[:, None]], 1)
            cache.reorder(sel_rows)
            if bool(finished.any()):
                cache.keep_utterances(keep)
            utt = utt[keep]

        for hyps in finalized:
            hyps.sort(key=lambda h: -h.score)
        return [hyps[: max(1, self.opt.nbest)] for hyps in finalized]

    def finalize(self, step: int, eos_first: Tensor, rows: Tensor, scores: Tensor, tokens: Tensor, cum: Tensor,
                 utt: Tensor, max_len: Tensor, finalized: list[list[Hypothesis]]) -> Tensor:
        """Store hypotheses ending with </s>; returns which active utterances are now complete."""
        k = self.opt.beam_size
        sent_idx, cand_idx = eos_first.nonzero(as_tuple=True)
        sel_rows = rows[sent_idx, cand_idx]
        eos_scores = scores[sent_idx, cand_idx]
        pos = torch.cat([cum[sel_rows], eos_scores[:, None]], 1)
        pos[:, 1:] = pos[:, 1:] - pos[:, :-1].clone()
        norm = eos_scores / (step + 1) ** self.opt.len_penalty
        toks = tokens[sel_rows, 2:].tolist()
        utt_list, sent_list = utt.tolist(), sent_idx.tolist()
        for i, s in enumerate(sent_list):
            bucket = finalized[utt_list[s]]
            if len(bucket) < k:
                bucket.append(Hypothesis(toks[i], float(norm[i]), pos[i].tolist()))
        done = torch.zeros(utt.numel(), dtype=torch.bool, device=utt.device)
        for s in set(sent_list):
            if len(finalized[utt_list[s]]) == k or step == int(max_len[utt_list[s]]):
                done[s] = True
        at_max = max_len[utt] <= step
        return done | at_max

    def block_repeated_ngrams(self, tokens: Tensor, lprobs: Tensor) -> Tensor:
        """fairseq's no_repeat_ngram: ban c if (last n-1 tokens, c) already occurs in the hypothesis."""
        n = self.opt.no_repeat_ngram_size
        N, L = tokens.shape
        if L < n:
            return lprobs
        context = tokens[:, L - n + 1:]
        windows = tokens.unfold(1, n, 1)  # N x (L-n+1) x n: every complete n-gram so far
        match = (windows[:, :, :-1] == context[:, None, :]).all(-1)
        if not bool(match.any()):
            return lprobs
        r, w = match.nonzero(as_tuple=True)
        lprobs[r, windows[r, w, -1]] = -math.inf
        return lprobs


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

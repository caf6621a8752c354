"""Is a loaded model sane? Decode the demo clips that ship with fama and look at what comes out.

A wrong name mapping that still fits every shape (two layers swapped, a permuted embedding table) loads
without complaint and writes nonsense. No name check can see it; the outputs do. The check decodes the bundled
English and Italian clips (`checkpoints.demo_clips`, synthetic voices) and flags a model
- whose language detection is near chance (fewer than `MIN_DETECTED` of the clips right), or
- whose CTC transcript (greedy, from the top CTC head, else the intermediate one) and attention transcript
  disagree (character error rate of one against the other above `MAX_DISAGREEMENT` over the clips: characters,
  since a CTC head's greedy output often misspells a word the decoder gets right).
A model with neither CTC head leaves both checks out; its transcripts' word error rate against the clips' texts
is judged instead, loosely (at most `MAX_WER_NO_CTC`: a real FAMA model was not trained on these voices). With a
CTC head that rate is shown, not judged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .checkpoints import BUNDLED, demo_clips
from .decoding import DecodeOptions, ctc_greedy
from .model import FamaModel
from .pipeline import chunk_features, decode_chunks, detection_method, language_scores
from .scoring import wer
from .tokenizer import Tokenizer

MIN_DETECTED = 0.8  # share of clips whose language must be detected right (chance: 0.5)
MAX_DISAGREEMENT = 35.0  # CER %, CTC transcript against attention transcript, over all clips
MAX_WER_NO_CTC = 80.0  # WER %, attention transcripts against the clips' texts, for a model without CTC heads


@dataclass
class ClipCheck:
    clip: str
    language: str  # spoken (known)
    text: str  # what is said
    transcript: str  # attention decoder (beam search), in the spoken language
    detected: str | None = None
    scores: dict[str, float] = field(default_factory=dict)
    ctc_transcript: str | None = None


@dataclass
class SanityReport:
    clips: list[ClipCheck]
    detection: str | None  # the method (`pipeline.detection_method`), None: the model cannot detect
    detected_right: float | None  # share of clips
    ctc_head: str | None  # which head gave the CTC transcripts
    disagreement: float | None  # CER %, CTC against attention transcripts
    wer: float  # WER %, attention transcripts against the clips' texts (shown, not judged)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _ctc_transcripts(model: FamaModel, tokenizer: Tokenizer, audios: list[torch.Tensor],
                     lang_ids: list[int]) -> tuple[str | None, list[str]]:
    if model.auxiliary_decoder is None and model.encoder.ctc_fc is None:
        return None, []
    feats, lengths = chunk_features(audios, model)
    enc = model.encode(feats, lengths, inter_ctc=model.auxiliary_decoder is None)
    if model.auxiliary_decoder is not None:
        logits, blank, head = model.ctc_logits(enc, torch.tensor(lang_ids, device=model.device)), model.cfg.blank, "top"
    else:
        logits, blank, head = enc.ctc_inter_logits, model.cfg.src_blank, "intermediate"
    return head, [tokenizer.decode(t) for t in ctc_greedy(logits, enc.lengths, blank)]


@torch.no_grad()
def check_model(model: FamaModel, tokenizer: Tokenizer, options: DecodeOptions | None = None) -> SanityReport:
    """Decode the demo clips and judge the outputs (see the module's doc), in eval mode (no dropout) whatever
    mode the model is in; the mode is restored."""
    training = model.training
    model.eval()
    try:
        return _check(model, tokenizer, options)
    finally:
        model.train(training)


def _check(model: FamaModel, tokenizer: Tokenizer, options: DecodeOptions | None) -> SanityReport:
    from .audio import load_audio

    meta = {c["id"]: c for c in json.loads((BUNDLED["fama-demo"] / "clips" / "clips.json").read_text())}
    clips = [c for c in demo_clips() if meta.get(c.stem, {}).get("lang") in tokenizer.languages]
    if not clips:
        raise ValueError(f"the model's languages ({', '.join(tokenizer.languages)}) include neither en nor it")
    audios = [torch.from_numpy(load_audio(c)) for c in clips]
    langs = [meta[c.stem]["lang"] for c in clips]
    lang_ids = [tokenizer.lang_tag_id(lang) for lang in langs]
    results = decode_chunks(model, audios, lang_ids, options or DecodeOptions())
    checks = [ClipCheck(c.stem, lang, meta[c.stem]["text"], tokenizer.decode(toks))
              for c, lang, (toks, *_) in zip(clips, langs, results)]
    method = detection_method(model)
    problems, right = [], None
    if method is not None:
        scores = language_scores(model, tokenizer, audios, tokenizer.languages)
        for check, row in zip(checks, scores.tolist()):
            check.scores = {lang: round(s, 3) for lang, s in zip(tokenizer.languages, row)}
            check.detected = max(check.scores, key=check.scores.get)
        right = sum(c.detected == c.language for c in checks) / len(checks)
        if right < MIN_DETECTED:
            problems.append(f"language detection is near chance: {round(right * len(checks))} of {len(checks)} demo "
                            "clips right")
    head, ctc = _ctc_transcripts(model, tokenizer, audios, lang_ids)
    disagreement = None
    if head is not None:
        for check, text in zip(checks, ctc):
            check.ctc_transcript = text
        disagreement = wer([c.transcript for c in checks], ctc).cer if any(ctc) else 100.0
        if disagreement > MAX_DISAGREEMENT:
            problems.append(f"the {head} CTC and attention transcripts disagree (CER {disagreement:.1f} % of one "
                            "against the other)")
    score = wer([c.transcript for c in checks], [c.text for c in checks]).wer
    if head is None and score > MAX_WER_NO_CTC:
        problems.append(f"the transcripts are mostly wrong (WER {score:.1f} % against the demo clips' texts; "
                        "this model has no CTC head to compare with)")
    return SanityReport(checks, method, right, head, disagreement, score, problems)

"""Training data: fairseq speech-to-text manifests, lazy audio, on-the-fly features, length-bucketed batches.

A batch plan for an epoch is a pure function of (manifests, options, seed, epoch), so a run can resume at
any batch and several workers can take their share of the same plan. Features come from the inference
extractor (`fama_core.features`), plus SpecAugment in training.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import wave
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fama_core.features import compute_features, spec_augment, utterance_cmvn
from fama_core.inputs import MEDIA_EXTENSIONS
from fama_core.manifest import ManifestRow, n_frames_for_samples, read_manifest, write_manifest
from fama_core.outputs import InputGuard, check_output
from fama_core.tokenizer import PAD, Tokenizer

SKIP_REASONS = {"empty": "without audio frames", "too_long_source": "longer than max_source_positions",
                "too_long_target": "with more tokens than max_target_positions",
                "over_max_tokens": "longer than max_tokens", "missing_audio": "whose audio file is missing"}


@dataclass
class DataOptions:
    max_tokens: int = 10000  # input frames (10 ms) per batch, padding included
    max_sentences: int | None = None
    max_source_positions: int = 6000  # input frames; longer utterances are skipped
    max_target_positions: int = 1024  # target tokens (lang tag and </s> included)
    spec_augment: bool = True
    p_sampling_asr: float = 0.5  # stage 2 only
    num_workers: int = 0


@dataclass
class Batch:
    ids: list[str]
    features: torch.Tensor  # B x T x 80, CMVN-normalised (and augmented in training)
    lengths: torch.Tensor  # B input frames
    target: torch.Tensor  # B x L: <lang:xx> tokens </s>, right-padded
    prev_tokens: torch.Tensor  # B x L: </s> <lang:xx> tokens
    transcript: torch.Tensor  # B x S: transcript tokens </s> (intermediate CTC)
    langs: list[str]  # target language of each row
    task: str = "asr"  # "asr" or "st"
    failed: list[str] = field(default_factory=list)  # ids whose audio could not be read

    @property
    def sample_size(self) -> int:
        """fairseq's gradient denominator: transcript tokens with one </s> each."""
        return int(self.transcript.ne(PAD).sum())

    @property
    def frames(self) -> int:
        return int(self.lengths.sum())

    def __len__(self) -> int:
        return len(self.ids)

    def to(self, device: torch.device | str) -> Batch:
        t = {k: getattr(self, k).to(device) for k in ("features", "lengths", "target", "prev_tokens", "transcript")}
        return Batch(self.ids, langs=self.langs, task=self.task, failed=self.failed, **t)


# --------------------------------------------------------------------------------------------- audio


def _read_wav(f, offset: int | None, length: int | None) -> np.ndarray | None:
    """16 kHz 16-bit PCM wav through the stdlib (fast path); None for any other wav flavour."""
    try:
        w = wave.open(f)
    except (wave.Error, EOFError):
        return None
    with w:
        if w.getframerate() != 16000 or w.getsampwidth() != 2:
            return None
        if offset:
            w.setpos(offset)
        n = w.getnframes() - (offset or 0) if length is None else length
        data = np.frombuffer(w.readframes(n), dtype="<i2").astype(np.float32) / 32768.0
        channels = w.getnchannels()
    return data.reshape(-1, channels).mean(axis=1) if channels > 1 else data


def load_item(row: ManifestRow, root: Path) -> tuple[str, np.ndarray]:
    """Read one manifest row's audio: ("wave", samples at 16 kHz) or ("fbank", [T, 80] features).

    `path:offset:length` is a clip in samples of an audio file, or (fairseq's packed layout) a byte range of
    a zip holding .npy fbank or wav bytes. Relative paths are resolved against `root` (the manifest's folder).
    """
    p, offset, length = row.audio_path(root), row.offset, row.length
    if p.suffix == ".zip" and offset is not None:
        with open(p, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if data[:6] == b"\x93NUMPY":
            return "fbank", np.load(io.BytesIO(data))
        wav = _read_wav(io.BytesIO(data), None, None)
        if wav is None:
            raise ValueError(f"{row.audio}: the zip entry is neither .npy features nor 16 kHz 16-bit wav")
        return "wave", wav
    if p.suffix == ".npy":
        return "fbank", np.load(p)
    if p.suffix == ".wav":
        wav = _read_wav(str(p), offset, length)
        if wav is not None:
            return "wave", wav
    from fama_core.audio import load_audio

    wav = np.asarray(load_audio(str(p)), dtype=np.float32)
    if offset is not None:
        wav = wav[offset: offset + length]
    return "wave", wav


def item_features(items: Sequence[tuple[str, np.ndarray]]) -> list[torch.Tensor]:
    """CMVN-normalised features per item: waveforms through the inference extractor, fbank as stored."""
    out: list[torch.Tensor | None] = [None] * len(items)
    waves = [i for i, (kind, _) in enumerate(items) if kind == "wave"]
    if waves:
        feats, lengths = compute_features([torch.from_numpy(items[i][1]) for i in waves])
        for j, i in enumerate(waves):
            out[i] = feats[j, : int(lengths[j])]
    for i, (kind, x) in enumerate(items):
        if kind == "fbank":
            x = torch.as_tensor(np.asarray(x, dtype=np.float32))
            out[i] = utterance_cmvn(x.unsqueeze(0), torch.tensor([x.shape[0]]))[0]
    return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------- dataset


def _pack(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.zeros(len(seqs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in seqs])
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


class SpeechDataset:
    """Rows of one or more manifests, tokenised once, with the filters of fairseq applied (and counted).

    Stage 1 trains on `tgt_text` with `<lang:tgt_lang>`; stage 2 picks, per batch, the transcript with the
    source-language tag (ASR) with probability `p_sampling_asr`, else the translation (ST). The intermediate
    CTC always reads the transcript (`src_text`, or `tgt_text` for ASR rows that leave it empty).
    """

    def __init__(self, manifests: Sequence[str | Path], tokenizer: Tokenizer, options: DataOptions,
                 stage: int = 1, seed: int = 1):
        self.tokenizer, self.options, self.stage, self.seed = tokenizer, options, stage, seed
        self.rows: list[ManifestRow] = []
        self.roots: list[Path] = []
        root_of: list[int] = []
        for m in manifests:
            rows = read_manifest(m)
            self.roots.append(Path(m).resolve().parent)
            root_of += [len(self.roots) - 1] * len(rows)
            self.rows += rows
        self.skipped = {"empty": 0, "too_long_source": 0, "too_long_target": 0, "over_max_tokens": 0,
                        "missing_audio": 0}
        self.missing: list[str] = []  # audio files that do not exist (first few)
        exists: dict[Path, bool] = {}
        src, tgt, keep = [], [], []
        for i, r in enumerate(self.rows):
            src_lang, tgt_lang = _langs(r)
            transcript = r.src_text if r.src_text else r.tgt_text
            s = tokenizer.encode(transcript)
            t = tokenizer.encode(r.tgt_text) if stage == 1 or tgt_lang != src_lang else s
            for lang in {src_lang, tgt_lang}:
                tokenizer.lang_tag_id(lang)  # fails early, naming the tag, if the vocabulary lacks it
            longest = max(len(s), len(t)) + 2 if stage == 2 else len(t) + 2
            if r.n_frames <= 0:
                self.skipped["empty"] += 1
            elif r.n_frames > options.max_source_positions:
                self.skipped["too_long_source"] += 1
            elif longest > options.max_target_positions:
                self.skipped["too_long_target"] += 1
            elif r.n_frames > options.max_tokens:
                self.skipped["over_max_tokens"] += 1
            elif not exists.setdefault(path := r.audio_path(self.roots[root_of[i]]), path.exists()):
                self.skipped["missing_audio"] += 1
                if len(self.missing) < 3:
                    self.missing.append(str(path))
            else:
                keep.append(i)
            src.append(s)
            tgt.append(t)
        self.index = np.asarray(keep, dtype=np.int64)  # dataset position -> manifest row
        self.src, self.src_off = _pack([src[i] for i in keep])
        self.tgt, self.tgt_off = _pack([tgt[i] for i in keep])
        self.root_of = np.asarray(root_of, dtype=np.int64)[self.index] if keep else np.zeros(0, dtype=np.int64)
        self.n_frames = np.asarray([self.rows[i].n_frames for i in keep], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def skipped_summary(self) -> str:
        """The skipped rows in words, e.g. "3 skipped: 2 longer than max_source_positions, 1 audio file missing"."""
        parts = [f"{n:,} {SKIP_REASONS[k]}" for k, n in self.skipped.items() if n]
        text = f"{self.n_skipped:,} skipped" + (": " + ", ".join(parts) if parts else "")
        return text + (f" (e.g. {self.missing[0]})" if self.missing else "")

    def row(self, k: int) -> ManifestRow:
        return self.rows[int(self.index[k])]

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches: sorted by length (random tie-breaks), filled up to max_tokens, then shuffled."""
        rng = np.random.RandomState((self.seed * 1000003 + epoch) % 2**32)
        order = np.lexsort((rng.permutation(len(self)), -self.n_frames))
        out, cur, longest = [], [], 0
        cap = self.options.max_sentences or len(self) + 1
        for k in order:
            n = int(self.n_frames[k])
            if cur and (max(longest, n) * (len(cur) + 1) > self.options.max_tokens or len(cur) >= cap):
                out.append(np.asarray(cur, dtype=np.int64))
                cur, longest = [], 0
            cur.append(int(k))
            longest = max(longest, n)
        if cur:
            out.append(np.asarray(cur, dtype=np.int64))
        return [out[i] for i in rng.permutation(len(out))]

    def task_of(self, epoch: int, batch_index: int) -> str:
        """Stage 2's per-batch draw (ASR with probability p_sampling_asr), reproducible from the position."""
        if self.stage == 1:
            return "asr"
        r = random.Random(f"{self.seed}:{epoch}:{batch_index}:task").random()
        return "asr" if r < self.options.p_sampling_asr else "st"

    def tokens(self, k: int, task: str) -> tuple[str, list[int], list[int]]:
        """(target language, target tokens, transcript tokens) of dataset item k, without tags and </s>."""
        src = self.src[self.src_off[k]: self.src_off[k + 1]].tolist()
        tgt = self.tgt[self.tgt_off[k]: self.tgt_off[k + 1]].tolist()
        src_lang, tgt_lang = _langs(self.row(k))
        if self.stage == 2 and task == "asr":
            return src_lang, src, src
        return tgt_lang, tgt, src

    def collate(self, items: np.ndarray, task: str = "asr", augment_seed: int | None = None) -> Batch:
        """Read, featurise and pad the items of one batch; SpecAugment when `augment_seed` is given."""
        tok = self.tokenizer
        loaded, keep, failed = [], [], []
        for k in items:
            try:
                kind, x = load_item(self.row(int(k)), self.roots[int(self.root_of[k])])
                if len(x) == 0:
                    raise ValueError("no audio")
                loaded.append((kind, x))
                keep.append(int(k))
            except Exception as e:  # a broken file must not stop a long run: drop it and report it
                failed.append(f"{self.row(int(k)).id}: {e}")
        feats = item_features(loaded)
        lengths = torch.tensor([f.shape[0] for f in feats], dtype=torch.long)
        x = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True) if feats else torch.zeros(0, 0, 80)
        if augment_seed is not None and self.options.spec_augment and feats:
            x = spec_augment(x, lengths, generator=torch.Generator().manual_seed(augment_seed))
        targets, prevs, transcripts, langs = [], [], [], []
        for k in keep:
            lang, tgt, src = self.tokens(k, task)
            seq = [tok.lang_tag_id(lang)] + tgt + [tok.eos]
            targets.append(torch.tensor(seq))
            prevs.append(torch.tensor([tok.eos] + seq[:-1]))
            transcripts.append(torch.tensor(src + [tok.eos]))
            langs.append(lang)

        def pad(seqs: list[torch.Tensor]) -> torch.Tensor:
            if not seqs:
                return torch.zeros(0, 0, dtype=torch.long)
            return torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=tok.pad)

        ids = [self.row(k).id for k in keep]
        return Batch(ids, x, lengths, pad(targets), pad(prevs), pad(transcripts), langs, task, failed)


def _langs(r: ManifestRow) -> tuple[str, str]:
    tgt = r.tgt_lang or r.src_lang
    src = r.src_lang or tgt
    if not src:
        raise ValueError(f"manifest row {r.id!r}: no src_lang/tgt_lang column; the language tag is required")
    return src, tgt


class _PlanDataset(torch.utils.data.Dataset):
    def __init__(self, dataset: SpeechDataset, plan: list[tuple[int, int, np.ndarray]], augment: bool, seed: int):
        self.dataset, self.plan, self.augment, self.seed = dataset, plan, augment, seed

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> tuple[int, int, Batch]:
        epoch, b, items = self.plan[i]
        aug = batch_seed(self.seed, epoch, b, "specaugment") if self.augment else None
        return epoch, b, self.dataset.collate(items, self.dataset.task_of(epoch, b), aug)


def _identity(x):
    return x


def iterate(dataset: SpeechDataset, plan: list[tuple[int, int, np.ndarray]], augment: bool, seed: int,
            num_workers: int = 0) -> Iterable[tuple[int, int, Batch]]:
    """Collated batches of `plan` ((epoch, batch index, items) triples) in order, optionally in worker processes."""
    ds = _PlanDataset(dataset, plan, augment, seed)
    if num_workers <= 0:
        return (ds[i] for i in range(len(ds)))
    return iter(torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers,
                                            collate_fn=_identity, prefetch_factor=4, persistent_workers=False))


def batch_seed(seed: int, epoch: int, batch_index: int, what: str) -> int:
    """A seed owned by one batch, so augmentation and dropout do not depend on workers or on resuming."""
    return random.Random(f"{seed}:{epoch}:{batch_index}:{what}").getrandbits(63)


# --------------------------------------------------------------------------------------------- preparation


def audio_samples(path: Path) -> int:
    """Number of 16 kHz samples of an audio file (header only for a complete 16 kHz PCM wav).

    A wav shorter than its header declares is decoded, which reports it as truncated (AudioError).
    """
    if path.suffix == ".wav":
        try:
            with open(path, "rb") as f, wave.open(f) as w:
                # wave stops reading at the data chunk's first byte
                end = f.tell() + w.getnframes() * w.getnchannels() * w.getsampwidth()
                if w.getframerate() == 16000 and end <= os.fstat(f.fileno()).st_size:
                    return w.getnframes()
        except (wave.Error, EOFError, OSError):
            pass
    from fama_core.audio import load_audio

    return len(load_audio(str(path)))


def _rows_from_table(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t" if path.suffix == ".tsv" else ","))


def build_manifest(source: str | Path, output: str | Path, src_lang: str, tgt_lang: str | None = None,
                   text_suffix: str = ".txt", translation_suffix: str | None = None,
                   relative: bool = True, *, overwrite: bool = False) -> tuple[int, list[str]]:
    """Write a fairseq TSV manifest from a folder (`x.wav` + `x.txt`) or a CSV/JSONL table.

    Table columns: `audio` (required), `text` or `src_text`, optional `id`, `translation`/`tgt_text`,
    `speaker`, `src_lang`, `tgt_lang`. ASR rows get tgt_text = transcript and tgt_lang = src_lang.
    Audio paths are written relative to the manifest's folder when `relative`. Returns (rows written,
    problems: entries skipped with the reason). An `output` that is one of the inputs (the table, an audio
    file, a transcript), or that exists without `overwrite`, is a PlanError before any audio is read.
    """
    source, output = Path(source), Path(output)
    guard = InputGuard([source])
    entries: list[dict] = []
    problems: list[str] = []
    if source.is_dir():
        for a in sorted(p for p in source.rglob("*") if p.suffix.lower() in MEDIA_EXTENSIONS):
            guard.add(a)
            t = a.with_suffix(text_suffix)
            guard.add(t)
            if not t.exists():
                problems.append(f"{a}: no transcript {t.name}")
                continue
            e = {"audio": str(a), "text": t.read_text(encoding="utf-8").strip(), "id": str(a.relative_to(source)
                                                                                             .with_suffix(""))}
            if translation_suffix:
                tr = a.with_suffix(translation_suffix)
                guard.add(tr)
                if not tr.exists():
                    problems.append(f"{a}: no translation {tr.name}")
                    continue
                e["translation"] = tr.read_text(encoding="utf-8").strip()
            entries.append(e)
    else:
        for e in _rows_from_table(source):
            p = Path(e["audio"])
            e["audio"] = str(p if p.is_absolute() else source.parent / p)
            guard.add(e["audio"])
            entries.append(e)
    check_output(output, inputs=guard, overwrite=overwrite, what="manifest")  # listed, none decoded yet
    out_dir = output.resolve().parent
    rows = []
    for n, e in enumerate(entries):
        audio = Path(e["audio"])
        try:
            samples = audio_samples(audio)
        except Exception as ex:  # unreadable audio is reported, not fatal
            problems.append(str(ex) if str(ex).startswith(f"{audio}: ") else f"{audio}: {ex}")  # named once
            continue
        text = (e.get("text") or e.get("src_text") or "").strip()
        translation = (e.get("translation") or e.get("tgt_text") or "").strip()
        sl = e.get("src_lang") or src_lang
        tl = e.get("tgt_lang") or (tgt_lang if translation else sl)
        path = audio.resolve()
        if relative:
            try:
                path = path.relative_to(out_dir)
            except ValueError:
                pass
        rows.append(ManifestRow(id=str(e.get("id") or audio.stem or n), audio=str(path),
                                n_frames=n_frames_for_samples(samples), tgt_text=translation or text,
                                speaker=str(e.get("speaker") or ""), src_text=text, src_lang=sl, tgt_lang=tl))
    write_manifest(output, rows, overwrite=overwrite)
    return len(rows), problems


def manifest_texts(manifests: Iterable[str | Path]) -> tuple[list[str], list[str]]:
    """(every transcript and translation, languages seen) of the manifests, for SentencePiece training."""
    texts, langs = [], []
    for m in manifests:
        for r in read_manifest(m, require_frames=False):
            texts += [t for t in dict.fromkeys((r.src_text, r.tgt_text)) if t]  # in order, once each
            for lang in (r.src_lang, r.tgt_lang):
                if lang and lang not in langs:
                    langs.append(lang)
    return texts, langs

"""`fama serve`: OpenAI's audio API (transcriptions, translations) over one model and one batch pool.

Each request's upload is written to a temporary file under a neutral name (the upload's bytes, not its name,
decide how ffmpeg reads it, within `audio.INPUT_FORMATS`), read with an idle timeout and the request's
deadline; a reader thread decodes it (`audio.stream_audio`) and cuts it at pauses (`vad.iter_speech_chunks`).
The chunks of every request join one pool. One decoder thread waits a short collection window when it was
idle, then decodes what the pool holds in batches sorted by length (`pipeline._batches`,
`pipeline.decode_chunks`): chunks of concurrent requests share batches, so throughput grows with concurrency.
A request without a language has it detected on its first speech as `fama transcribe --lang auto` does
(`pipeline.language_scores`); so does a translation, whose transcript then warns when the speech is already in
the target language (`Transcript.warnings`). Segments come from `pipeline.make_segments` and are written by
`subtitles.format_transcript`, so a response holds what `fama transcribe` writes.

The HTTP side (`create_app`) needs the `serve` extra (FastAPI, uvicorn, python-multipart); the pool does not.
"""

import asyncio
import hmac
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .audio import AudioError, stream_audio
from .features import SAMPLE_RATE
from .model import FamaModel
from .pipeline import (
    BLOCK_SECONDS,
    TranscribeOptions,
    _batches,
    compute_thread,
    decode_chunks,
    detection_method,
    language_scores,
    make_segments,
    reading_thread,
)
from .subtitles import SubtitleOptions, Transcript, format_transcript
from .tokenizer import LANGUAGE_NAMES, Tokenizer, language_code
from .vad import iter_speech_chunks

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("segment", "word")
# Fields OpenAI clients may send that fama accepts and ignores (docs/serve.md lists them).
IGNORED_FIELDS = ("model", "prompt", "temperature", "chunking_strategy", "include[]", "keywords[]", "languages[]",
                  "known_speaker_names[]", "known_speaker_references[]", "hotwords")
MAX_FIELD_BYTES = 1 << 16  # all non-file form fields together
DISCONNECT_POLL_S = 0.2
log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    transcribe: TranscribeOptions = field(default_factory=TranscribeOptions)  # decoding, VAD, batches, readers
    subtitles: SubtitleOptions = field(default_factory=SubtitleOptions)
    batch_wait: float = 0.5  # most seconds an idle decoder waits for requests still being read
    max_upload_bytes: int = 200 * 1024 * 1024
    max_requests: int = 64  # requests admitted at once (uploading, reading, decoding); more get 503
    timeout: float = 600.0  # seconds from admission to the response's last byte
    idle_timeout: float = 30.0  # most seconds an upload may send nothing (408): a stalled client frees its slot
    api_key: str | None = None


class ServeError(Exception):
    """An HTTP error with OpenAI's JSON body: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(eq=False)
class Job:
    """One request's audio on its way through the pool. Fields change only under the pool's lock."""

    seq: int
    name: str  # the uploaded file's name, used in messages
    path: Path
    task: str  # transcribe or translate
    language: str  # transcribe: the spoken language or "auto"; translate: the target language
    lang_id: int | None
    stream: bool
    notify: Callable[[tuple], None]  # ("started",) / ("segments", [Segment]) / ("done", Transcript) / ("error", e)
    chunks: list[tuple[float, float]] = field(default_factory=list)
    audio: dict[int, torch.Tensor] = field(default_factory=dict)  # read, not yet taken by a batch
    results: dict[int, tuple[list[int], list[tuple[int, int]]]] = field(default_factory=dict)
    samples: int = 0
    read_seconds: float = 0.0  # speech read so far (the language detection budget counts it)
    pending_seconds: float = 0.0  # speech read and not yet decoded (bounds a long upload's memory)
    read_done: bool = False
    detect_pending: bool = False  # the spoken language is still to be detected (auto, or a translation's source)
    detect_audio: list[torch.Tensor] = field(default_factory=list)  # its first `detect_seconds` of speech
    detected: str | None = None
    streamed: int = 0  # chunks whose segments were sent
    finished: bool = False


class BatchPool:
    """One model and one pool of speech chunks, fed by many requests' reader threads, drained by one decoder."""

    def __init__(self, model: FamaModel, tokenizer: Tokenizer, model_name: str, options: ServeOptions | None = None,
                 compute: ThreadPoolExecutor | None = None):
        """`compute`: the one-thread executor that loaded `model` (`compute_thread`), to decode on; default: a
        new thread."""
        self.model, self.tokenizer, self.model_name = model, tokenizer, model_name
        self.options = options or ServeOptions()
        # the language can be detected when both CTC heads share a dictionary (`fama transcribe` asks the same)
        self.can_detect = detection_method(model) is not None
        self.cond = threading.Condition()
        self.jobs: list[Job] = []  # with work left
        self.closed = False
        self.admitted = 0
        self.stats = {"requests": 0, "rejected": 0, "cancelled": 0, "batches": 0, "rows": 0, "max_rows": 0,
                      "detect_batches": 0}
        self.latencies: list[float] = []
        self.tmp_dir: Path | None = None
        self._seq = 0
        self._readers: ThreadPoolExecutor | None = None
        self._compute = compute
        self._worker: Future | None = None
        self.started = time.time()

    # ------------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self.tmp_dir = Path(tempfile.mkdtemp(prefix="fama-serve-"))
        self._readers = ThreadPoolExecutor(max(1, self.options.transcribe.readers), thread_name_prefix="fama-read",
                                           initializer=reading_thread)
        self._compute = self._compute or compute_thread()
        self._worker = self._compute.submit(self._loop)

    def close(self) -> None:
        with self.cond:
            self.closed = True
            for job in list(self.jobs):
                self._cancel_locked(job)
            self.cond.notify_all()
        if self._worker is not None:
            wait([self._worker], timeout=30)
            self._compute.shutdown(wait=False)
        if self._readers is not None:
            self._readers.shutdown(wait=True, cancel_futures=True)
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)

    # ------------------------------------------------------------------------------------------- admission

    def admit(self) -> bool:
        """Reserve a request slot; False when `max_requests` are already in."""
        with self.cond:
            if self.admitted >= self.options.max_requests or self.closed:
                self.stats["rejected"] += 1
                return False
            self.admitted += 1
            self.stats["requests"] += 1
            return True

    def release(self, seconds: float | None = None) -> None:
        with self.cond:
            self.admitted -= 1
            if seconds is not None:
                self.latencies = (self.latencies + [seconds])[-32:]

    def retry_after(self) -> int:
        """Seconds a rejected client should wait: the recent mean request time, at least 1."""
        with self.cond:
            mean = sum(self.latencies) / len(self.latencies) if self.latencies else 1.0
        return max(1, math.ceil(mean))

    def submit(self, path: Path, name: str, task: str, language: str, stream: bool,
               notify: Callable[[tuple], None]) -> Job:
        """Queue an uploaded file; `language` is validated by the caller."""
        lang_id = None if language == "auto" else self.tokenizer.lang_tag_id(language)
        # a translation's source is detected too, as `fama translate` does, to say so when it is the target
        detect = language == "auto" or (task == "translate" and self.can_detect)
        with self.cond:
            self._seq += 1
            job = Job(self._seq, name, path, task, language, lang_id, stream, notify, detect_pending=detect)
            self.jobs.append(job)
        assert self._readers is not None, "start() the pool first"
        self._readers.submit(self._read, job)
        return job

    def cancel(self, job: Job) -> None:
        """Drop a request's remaining work (its client left or timed out)."""
        with self.cond:
            if not job.finished:
                self._cancel_locked(job)
                self.stats["cancelled"] += 1

    def _cancel_locked(self, job: Job) -> None:
        job.finished = True
        job.audio.clear()
        if job in self.jobs:
            self.jobs.remove(job)
        self.cond.notify_all()

    def health(self) -> dict[str, Any]:
        with self.cond:
            return {"status": "ok", "model": self.model_name, "device": str(self.model.device),
                    "requests_active": self.admitted, "requests_limit": self.options.max_requests,
                    "jobs_in_pool": len(self.jobs),
                    "chunks_waiting": sum(len(j.audio) for j in self.jobs), **self.stats}

    # ------------------------------------------------------------------------------------------- reading

    def _read(self, job: Job) -> None:
        """Reader thread: the upload's speech chunks into the pool, at most `pool_seconds` ahead of decoding."""
        o = self.options.transcribe
        blocks = None
        if job.finished:  # cancelled while it waited for a reader
            return
        try:
            blocks = stream_audio(job.path, BLOCK_SECONDS)

            def counted(source: Any) -> Any:
                for block in source:
                    if job.finished:  # cancelled: stop reading even where no speech is found
                        return
                    job.samples += len(block)
                    yield block

            for chunk in iter_speech_chunks(counted(blocks), o.vad):
                audio = torch.as_tensor(np.asarray(chunk.audio, dtype=np.float32)).reshape(-1)
                seconds = len(audio) / SAMPLE_RATE
                with self.cond:
                    while not job.finished and job.pending_seconds >= o.pool_seconds:
                        self.cond.wait()
                    if job.finished:
                        return
                    job.audio[len(job.chunks)] = audio
                    job.chunks.append((float(chunk.start), float(chunk.end)))
                    self._keep_for_detection(job, audio)
                    job.read_seconds += seconds
                    job.pending_seconds += seconds
                    self.cond.notify_all()
                    if len(job.chunks) == 1:
                        job.notify(("started",))
        except AudioError as e:
            reason = str(e).removeprefix(f"{job.path}: ")
            self._fail(job, ServeError(400, f"{job.name}: {reason}", "file", "invalid_audio"))
            return
        except Exception as e:  # a reader must never die silently: the request would wait for ever
            self._fail(job, ServeError(500, f"{job.name}: cannot read the audio: {type(e).__name__}: {e}"))
            return
        finally:
            if blocks is not None:
                blocks.close()  # stops ffmpeg when the loop was left early
        with self.cond:
            job.read_done = True
            job.detect_pending &= bool(job.detect_audio)  # no speech: nothing to detect
            self.cond.notify_all()
            self._progress_locked(job)

    def _keep_for_detection(self, job: Job, audio: torch.Tensor) -> None:
        """Keep exactly the first `detect_seconds` of the speech, as `fama transcribe` scores it."""
        room = int(self.options.transcribe.detect_seconds * SAMPLE_RATE) - sum(len(a) for a in job.detect_audio)
        if job.detect_pending and room > 0:
            job.detect_audio.append(audio[:room])

    def _fail(self, job: Job, error: ServeError) -> None:
        with self.cond:
            if not job.finished:
                self._cancel_locked(job)
                job.notify(("error", error))

    # ------------------------------------------------------------------------------------------- decoding

    def _detect_ready(self, job: Job) -> bool:
        return job.detect_pending and bool(job.detect_audio) and (
            job.read_done or job.read_seconds >= self.options.transcribe.detect_seconds)

    def _has_work(self) -> bool:
        return any((j.audio and j.lang_id is not None) or self._detect_ready(j) for j in self.jobs)

    def _expecting(self) -> bool:
        """Requests are being read that have no chunk waiting yet, and the next batch is not full."""
        waiting = sum(len(j.audio) for j in self.jobs)
        return waiting < self.options.transcribe.batch_size and any(
            not j.read_done and not j.audio for j in self.jobs)

    def _loop(self) -> None:
        while True:
            with self.cond:
                idle = False
                while not self.closed and not self._has_work():
                    idle = True
                    self.cond.wait()
                # the collection window: an idle decoder gives requests still being read a moment to join
                end = time.monotonic() + self.options.batch_wait
                while idle and not self.closed and self._expecting() and (left := end - time.monotonic()) > 0:
                    self.cond.wait(left)
                if self.closed:
                    return
            try:
                self._detect_languages()
                self._decode_round()
            except Exception as e:  # keep serving: the requests of the failed work get the error
                with self.cond:
                    failed = [j for j in self.jobs if not j.finished]
                for j in failed:
                    self._fail(j, ServeError(500, f"{j.name}: decoding failed: {type(e).__name__}: {e}"))

    def _detect_languages(self) -> None:
        """Spoken language of each request whose first `detect_seconds` of speech are read: `language_scores`
        summed over those chunks in order, exactly as `fama transcribe --lang auto` picks it."""
        o = self.options.transcribe
        with self.cond:
            jobs = [j for j in self.jobs if self._detect_ready(j)]
            picks = [(job, audio) for job in jobs for audio in job.detect_audio]
        if not picks:
            return
        languages = self.tokenizer.languages
        lengths = [len(a) for _, a in picks]
        order = sorted(range(len(picks)), key=lambda j: -lengths[j])
        rows: dict[int, list[float]] = {}
        try:
            for batch in _batches(order, lengths, o, self.model.device):
                scores = language_scores(self.model, self.tokenizer, [picks[j][1] for j in batch], languages)
                self.stats["detect_batches"] += 1
                rows.update({j: scores[k].tolist() for k, j in enumerate(batch)})
        except Exception as e:
            for job in jobs:
                self._fail(job, ServeError(500, f"{job.name}: language detection failed: {type(e).__name__}: {e}"))
            return
        totals: dict[int, dict[str, float]] = {}
        for j in sorted(rows):  # summed in chunk order, as the CLI does
            scores = totals.setdefault(id(picks[j][0]), {})
            for lang, s in zip(languages, rows[j]):
                scores[lang] = scores.get(lang, 0.0) + s
        with self.cond:
            for job in jobs:
                if not job.finished:
                    scores = totals[id(job)]
                    job.detected = max(scores, key=scores.get)
                    job.detect_pending, job.detect_audio = False, []
                    if job.lang_id is None:
                        job.lang_id = self.tokenizer.lang_tag_id(job.detected)
                    self._progress_locked(job)  # a translation may be decoded already

    def _decode_round(self) -> None:
        """Decode the waiting chunks (oldest requests first, at most 4 batches' worth) in length-sorted batches."""
        o = self.options.transcribe
        with self.cond:
            rows = [(job, c, job.audio.pop(c)) for job in self.jobs if job.lang_id is not None
                    for c in sorted(job.audio)][: 4 * o.batch_size]
            for job, _, audio in rows:
                job.pending_seconds -= len(audio) / SAMPLE_RATE
            self.cond.notify_all()
        lengths = [len(r[2]) for r in rows]
        order = sorted(range(len(rows)), key=lambda j: -lengths[j])
        for batch in _batches(order, lengths, o, self.model.device):
            with self.cond:
                batch = [j for j in batch if not rows[j][0].finished]  # a cancelled request's chunks are dropped
            if not batch:
                continue
            try:
                results = decode_chunks(self.model, [rows[j][2] for j in batch], [rows[j][0].lang_id for j in batch],
                                        o.decode, transcripts=[rows[j][0].task == "transcribe" for j in batch])
            except Exception as e:
                for job in {rows[j][0] for j in batch}:
                    self._fail(job, ServeError(500, f"{job.name}: decoding failed: {type(e).__name__}: {e}"))
                continue
            with self.cond:
                self.stats["batches"] += 1
                self.stats["rows"] += len(batch)
                self.stats["max_rows"] = max(self.stats["max_rows"], len(batch))
                touched = []
                for j, result in zip(batch, results):
                    job, c, _ = rows[j]
                    if not job.finished:
                        job.results[c] = result
                        touched.append(job)
                for job in dict.fromkeys(touched):
                    self._progress_locked(job)

    def _progress_locked(self, job: Job) -> None:
        """Send a streaming request its newly finished segments; finish a request whose chunks are all decoded."""
        if job.finished:
            return
        if job.stream:
            k = job.streamed
            while k < len(job.chunks) and k in job.results:
                k += 1
            if k > job.streamed:
                segments = make_segments(self.tokenizer, job.chunks[job.streamed:k],
                                         [job.results[c] for c in range(job.streamed, k)])
                job.streamed = k
                if segments:
                    job.notify(("segments", segments))
        if job.read_done and len(job.results) == len(job.chunks) and not job.detect_pending:
            job.finished = True
            self.jobs.remove(job)
            transcript = self._transcript(job)
            for warning in transcript.warnings():
                log.warning(f"{job.name}: {warning}")
            job.notify(("done", transcript))

    def _transcript(self, job: Job) -> Transcript:
        order = sorted(range(len(job.chunks)), key=lambda c: job.chunks[c][0])
        segments = make_segments(self.tokenizer, [job.chunks[c] for c in order], [job.results[c] for c in order])
        if job.task == "translate":
            language = job.language
            source = job.detected or next((lang for lang in self.tokenizer.languages if lang != job.language), None)
        else:
            language = job.detected or (job.language if job.language != "auto" else "")
            source = language or None
        return Transcript(segments, language, job.task, source, job.samples / SAMPLE_RATE, job.name, self.model_name)


# ----------------------------------------------------------------------------------------------- requests


@dataclass
class Params:
    fmt: str
    granularities: list[str]
    stream: bool
    language: str  # transcribe: spoken language or "auto"; translate: target language


def parse_params(fields: dict[str, list[str]], task: str, languages: list[str], can_detect: bool) -> Params:
    """The request's options from its form fields; ServeError(400) naming the field for a bad value."""

    def one(name: str, default: str) -> str:
        values = fields.get(name) or [default]
        return values[-1].strip()

    fmt = one("response_format", "json").lower()
    if fmt not in RESPONSE_FORMATS:
        raise ServeError(400, f"response_format {fmt!r} is not supported; use {', '.join(RESPONSE_FORMATS)}",
                         "response_format", "invalid_value")
    granularities = [g.strip().lower() for g in fields.get("timestamp_granularities[]", [])
                     + fields.get("timestamp_granularities", []) if g.strip()] or ["segment"]
    for g in granularities:
        if g not in GRANULARITIES:
            raise ServeError(400, f"timestamp_granularities {g!r} is not supported; use segment or word",
                             "timestamp_granularities[]", "invalid_value")
    stream_text = one("stream", "false").lower()
    if stream_text not in ("true", "false", "1", "0"):
        raise ServeError(400, f"stream must be true or false, not {stream_text!r}", "stream", "invalid_value")
    def checked_code(name: str, value: str) -> str:
        code = language_code(value)
        if code not in languages:
            raise ServeError(400, f"{name} {value!r} is not supported by this model; use {' or '.join(languages)}",
                             name, "unsupported_language")
        return code

    if task == "translate":
        language = checked_code("to", one("to", "en"))
    else:
        spoken = one("language", "")
        language = checked_code("language", spoken) if spoken and spoken.lower() != "auto" else "auto"
        if language == "auto" and not can_detect:
            raise ServeError(400, "this model cannot detect the spoken language (its two CTC heads do not share a "
                             "dictionary): give language", "language", "language_required")
    return Params(fmt, granularities, stream_text in ("true", "1"), language)


def render(transcript: Transcript, params: Params, subtitles: SubtitleOptions) -> tuple[str, str]:
    """(body, media type) of a finished request: text/srt/vtt exactly as `fama transcribe -f txt/srt/vtt`."""
    if params.fmt in ("text", "srt", "vtt"):
        return format_transcript(transcript, "txt" if params.fmt == "text" else params.fmt, subtitles), "text/plain"
    if params.fmt == "json":
        return json.dumps({"text": transcript.text, **_warnings(transcript)}, ensure_ascii=False), "application/json"
    d = transcript.to_dict()
    body: dict[str, Any] = {"task": transcript.task, "language": LANGUAGE_NAMES.get(transcript.language,
                                                                                    transcript.language),
                            "duration": round(transcript.duration, 3), "text": d["text"]}
    if "segment" in params.granularities:
        body["segments"] = [{"id": i, "start": s["start"], "end": s["end"], "text": s["text"]}
                            for i, s in enumerate(d["segments"])]
    if "word" in params.granularities:
        body["words"] = [{"word": w["text"], "start": w["start"], "end": w["end"]}
                         for s in d["segments"] for w in s["words"]]
    return json.dumps({**body, **_warnings(transcript)}, ensure_ascii=False), "application/json"


def _warnings(transcript: Transcript) -> dict[str, list[str]]:
    """The `warnings` field of a JSON answer: `Transcript.warnings()`; absent when there is none, so that an
    ordinary answer has exactly OpenAI's fields."""
    warnings = transcript.warnings()
    return {"warnings": warnings} if warnings else {}


def upload_name(filename: str | None) -> str:
    """The client's file name without folders or control characters (it only appears in messages)."""
    name = Path((filename or "").replace("\\", "/")).name
    name = re.sub(r"[\x00-\x1f\x7f]", "", name).strip()
    return name or "upload"


def malformed(reason: Any) -> ServeError:
    """The 400 of a body that is not well-formed multipart/form-data (the rest of it is not read: the
    connection is closed after the answer)."""
    return ServeError(400, f"malformed multipart/form-data body: {reason}", None, "invalid_multipart",
                      {"Connection": "close"})


class FormReader:
    """Streams a multipart/form-data body: the `file` part straight to a temporary file under `folder`
    (ServeError 413 past `limit` bytes), the other fields into `fields`."""

    def __init__(self, content_type: str, folder: Path, limit: int):
        from python_multipart.exceptions import FormParserError
        from python_multipart.multipart import MultipartParser, MultipartState, parse_options_header

        kind, params = parse_options_header(content_type)
        if kind != b"multipart/form-data" or not params.get(b"boundary"):
            raise ServeError(400, "send the request as multipart/form-data with the audio in the field 'file'",
                             "file", "invalid_content_type")
        self._parse_header, self._malformed_error, self._end_state = parse_options_header, FormParserError, \
            MultipartState.END
        self.folder, self.limit = folder, limit
        self.fields: dict[str, list[str]] = {}
        self.filename: str | None = None
        self.path: Path | None = None
        self.size = 0
        self._file: Any = None
        self._part: str | None = None
        self._value = bytearray()
        self._field_bytes = 0
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        callbacks = {
            "on_part_begin": self._begin, "on_part_data": self._data, "on_part_end": self._end,
            "on_header_field": lambda d, s, e: self._header_name.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end, "on_headers_finished": self._headers_done,
        }
        try:
            self._parser = MultipartParser(params[b"boundary"], callbacks)
        except FormParserError as e:
            raise malformed(e) from None

    def _begin(self) -> None:
        self._headers, self._part, self._value = {}, None, bytearray()

    def _header_end(self) -> None:
        self._headers[bytes(self._header_name).lower()] = bytes(self._header_value)
        self._header_name, self._header_value = bytearray(), bytearray()

    def _headers_done(self) -> None:
        _, options = self._parse_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in options:
            if name != "file" or self.path is not None:
                return  # another file field: not read
            self.filename = upload_name(options[b"filename"].decode("utf-8", "replace"))
            # no suffix from the client: ffmpeg would let a name such as x.m3u8 pick its demuxer
            fd, tmp = tempfile.mkstemp(prefix="upload-", dir=self.folder)
            self.path, self._file = Path(tmp), os.fdopen(fd, "wb")
            self._part = "\0file"
        else:
            self._part = name

    def _data(self, data: bytes, start: int, end: int) -> None:
        n = end - start
        if self._part == "\0file":
            self.size += n
            if self.size > self.limit:
                raise ServeError(413, f"the upload is larger than the server's limit of {self.limit / 2**20:g} MB",
                                 "file", "file_too_large")
            self._file.write(data[start:end])
        elif self._part is not None:
            self._field_bytes += n
            if self._field_bytes > MAX_FIELD_BYTES:
                raise ServeError(413, f"the form fields are larger than {MAX_FIELD_BYTES} bytes", None,
                                 "fields_too_large")
            self._value.extend(data[start:end])

    def _end(self) -> None:
        if self._part == "\0file":
            self._file.close()
            self._file = None
        elif self._part is not None:
            self.fields.setdefault(self._part, []).append(self._value.decode("utf-8", "replace"))
        self._part = None

    def write(self, data: bytes) -> None:
        try:
            self._parser.write(data)
        except self._malformed_error as e:
            raise malformed(e) from None

    def finish(self) -> None:
        self._parser.finalize()  # checks nothing: a body cut short is found from the parser's state
        if self._parser.state != self._end_state:
            raise malformed("the body ends before its closing boundary")
        if self.path is None:
            raise ServeError(400, "no audio: send the file in the multipart field 'file'", "file", "missing_file")

    def discard(self) -> None:
        """Remove the temporary file (always called, whatever happened)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------- the app


def _authorized(api_key: str | None, header: str | None) -> bool:
    if not api_key:
        return True
    scheme, _, token = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


class _Gone(Exception):
    """The client closed the connection."""


async def _next_message(queue: asyncio.Queue, request: Any, deadline: float) -> tuple:
    """The next message of a job, watching for the client leaving and for the request's deadline."""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServeError(504, "the request took longer than the server's timeout", None, "timeout")
        try:
            return await asyncio.wait_for(queue.get(), timeout=min(DISCONNECT_POLL_S, left))
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise _Gone() from None


def _sse(event: dict[str, Any]) -> str:
    return f"data: {json.dumps(event, ensure_ascii=False)}\n\n"


class _Api:
    """The request handlers of `create_app` (FastAPI's classes are imported there, with the extra)."""

    def __init__(self, pool: BatchPool):
        from fastapi.responses import JSONResponse, Response, StreamingResponse
        from starlette.requests import ClientDisconnect

        self.pool = pool
        self.JSONResponse, self.Response, self.StreamingResponse = JSONResponse, Response, StreamingResponse
        self.ClientDisconnect = ClientDisconnect

    def error(self, e: ServeError) -> Any:
        return self.JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def check_key(self, request: Any) -> None:
        if not _authorized(self.pool.options.api_key, request.headers.get("authorization")):
            raise ServeError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                             None, "invalid_api_key")

    def models(self, request: Any, model_id: str | None = None) -> dict[str, Any]:
        """The model list, or one model (404 for another id)."""
        self.check_key(request)
        pool = self.pool
        card = {"id": pool.model_name, "object": "model", "created": int(pool.started), "owned_by": "fama"}
        if model_id is None:
            return {"object": "list", "data": [card]}
        if model_id != pool.model_name:
            raise ServeError(404, f"model {model_id!r} is not served here; this server has {pool.model_name!r}",
                             "model", "model_not_found")
        return card

    def admit(self, request: Any) -> None:
        """401, 413 (by Content-Length) and 503 before any of the body is read."""
        self.check_key(request)
        limit = self.pool.options.max_upload_bytes
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > limit + MAX_FIELD_BYTES:
            raise ServeError(413, f"the upload is larger than the server's limit of {limit / 2**20:g} MB", "file",
                             "file_too_large")
        if not self.pool.admit():
            raise ServeError(503, "the server is busy: too many requests in progress; retry later", None,
                             "server_busy", {"Retry-After": str(self.pool.retry_after())})

    async def upload(self, request: Any, deadline: float) -> FormReader:
        """The body, read piece by piece: each wait for the next piece is bounded by `idle_timeout` (408) and
        by the request's deadline (504), so that a client that stops sending frees its slot."""
        options = self.pool.options
        form = FormReader(request.headers.get("content-type", ""), self.pool.tmp_dir, options.max_upload_bytes)
        pieces = request.stream()
        try:
            while True:
                left = deadline - time.monotonic()
                try:
                    piece = await asyncio.wait_for(anext(pieces), max(0.0, min(options.idle_timeout, left)))
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    if left <= options.idle_timeout:
                        raise ServeError(504, "the upload took longer than the server's timeout", None, "timeout",
                                         {"Connection": "close"}) from None
                    raise ServeError(408, f"the upload sent nothing for {options.idle_timeout:g} s",
                                     None, "upload_timeout", {"Connection": "close"}) from None
                form.write(piece)
            form.finish()
        except BaseException:
            form.discard()
            raise
        finally:
            await pieces.aclose()
        return form

    async def handle(self, request: Any, task: str) -> Any:
        pool = self.pool
        self.admit(request)
        started = time.monotonic()
        deadline = started + pool.options.timeout
        form, job, handed_over, served = None, None, False, False
        try:
            form = await self.upload(request, deadline)
            params = parse_params(form.fields, task, pool.tokenizer.languages, pool.can_detect)
            loop = asyncio.get_running_loop()
            queue: asyncio.Queue = asyncio.Queue()

            def notify(message: tuple) -> None:
                try:
                    loop.call_soon_threadsafe(queue.put_nowait, message)
                except RuntimeError:  # the event loop is gone (shutting down)
                    pass

            job = pool.submit(form.path, form.filename or "upload", task, params.language, params.stream, notify)
            while True:  # a stream starts once the audio is known to decode, so bad media still gets a 400
                message = await _next_message(queue, request, deadline)
                if message[0] == "error":
                    raise message[1]
                if message[0] == "done" or params.stream:
                    break
            if params.stream:
                handed_over = True
                events = self.stream(request, queue, message, job, form, started, deadline)
                return self.StreamingResponse(events, media_type="text/event-stream",
                                              headers={"Cache-Control": "no-cache"})
            body, media_type = render(message[1], params, pool.options.subtitles)
            served = True
            return self.Response(body, media_type=media_type)
        except (_Gone, self.ClientDisconnect):
            return self.Response(status_code=499)
        finally:
            if not handed_over:
                self.finish(job, form, started, served)

    def finish(self, job: Job | None, form: FormReader | None, started: float, served: bool) -> None:
        """Free the request's work, file and slot. Only a served request's time counts in Retry-After: a
        stalled, timed-out or failed one says nothing about how soon a slot frees."""
        if job is not None:
            self.pool.cancel(job)  # a no-op when it finished
        if form is not None:
            form.discard()
        self.pool.release(time.monotonic() - started if served else None)

    async def stream(self, request: Any, queue: asyncio.Queue, message: tuple, job: Job, form: FormReader,
                     started: float, deadline: float) -> AsyncIterator[str]:
        """One transcript.text.delta event per finished segment, then transcript.text.done."""
        count, served = 0, False
        try:
            while True:
                kind = message[0]
                if kind == "error":
                    yield _sse({"type": "error", **message[1].body()})
                    return
                for s in message[1] if kind == "segments" else []:
                    yield _sse({"type": "transcript.text.delta", "delta": s.text if count == 0 else " " + s.text,
                                "segment": {"id": count, "start": round(s.start, 3), "end": round(s.end, 3),
                                            "text": s.text}})
                    count += 1
                if kind == "done":
                    t = message[1]
                    yield _sse({"type": "transcript.text.done", "text": t.text, "language": t.language,
                                "duration": round(t.duration, 3), **_warnings(t)})
                    served = True
                    return
                try:
                    message = await _next_message(queue, request, deadline)
                except ServeError as e:
                    message = ("error", e)
        except _Gone:
            return
        finally:
            self.finish(job, form, started, served)


def create_app(pool: BatchPool) -> Any:
    """The FastAPI application serving `pool` (started on the app's startup, closed on its shutdown)."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from starlette.exceptions import HTTPException

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        pool.start()
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(title="fama", summary="OpenAI-compatible speech recognition and EN<->IT translation",
                  lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool = pool
    api = _Api(pool)

    @app.exception_handler(ServeError)
    async def on_error(request: Request, e: ServeError) -> Any:
        return api.error(e)

    @app.exception_handler(HTTPException)
    async def on_routing_error(request: Request, e: HTTPException) -> Any:
        """Starlette's 404 (no route) and 405 (with its Allow header) in OpenAI's shape, as OpenAI words them."""
        where = f"{request.method} {request.url.path}"
        message = f"Invalid URL ({where})" if e.status_code == 404 else f"{where}: {e.detail}"
        if e.status_code == 405:
            message += f"; this path allows {e.headers.get('Allow', '')}"
        return api.error(ServeError(e.status_code, message, headers=dict(e.headers or {})))

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> Any:
        return pool.health()

    @app.api_route("/v1/models", methods=["GET", "HEAD"])
    async def models(request: Request) -> Any:
        return api.models(request)

    @app.api_route("/v1/models/{model_id:path}", methods=["GET", "HEAD"])
    async def model(request: Request, model_id: str) -> Any:
        return api.models(request, model_id)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Any:
        return await api.handle(request, "transcribe")

    @app.post("/v1/audio/translations")
    async def translations(request: Request) -> Any:
        return await api.handle(request, "translate")

    routes = list(app.routes)

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    async def elsewhere(request: Request, path: str) -> Any:
        """What no route above takes: OPTIONS gets 204 with the methods the path answers to (no API key: it
        tells no more than a 405 would), another method 405 with them, an unknown path 404."""
        methods = {m for r in routes if getattr(r, "path_regex", None) and r.path_regex.match(request.url.path)
                   for m in r.methods or ()}
        if not methods:
            raise HTTPException(404)
        allow = ", ".join(sorted(methods | {"OPTIONS"}))
        if request.method == "OPTIONS":
            return api.Response(status_code=204, headers={"Allow": allow})
        raise HTTPException(405, headers={"Allow": allow})

    return app

"""Transcription on a Ray cluster with Ray Data: the `--ray` executor and the `FamaTranscriber` class.

`RayExecutor(pipeline).run(items)` is a drop-in for `Pipeline.run(items)`: the same `FileResult`s, built by the
same code, so the caller's skip/overwrite rules, atomic writing, error lines and exit codes are shared. Inside:

    files ──flat_map (CPU tasks: ffmpeg + VAD, `pipeline._reader`)──▶ speech chunks
          ──map_batches (actor pool, one model replica per GPU or per `threads` CPUs: `decode_chunks`)──▶ tokens
          ──driver: regrouped per file, `Pipeline._finish` (make_segments)──▶ FileResult

Chunks of many files are decoded together. With `language="auto"` a first, short pass reads each file's first
`detect_seconds` of speech and scores it with `language_scores` in the same kind of actor pool; the decoding
pass then uses each file's language.

Fault tolerance is Ray Data's own: a dead replica is restarted and its batches retried, a reading task whose
worker died is retried (Ray Data's defaults: max_restarts, max_task_retries and max_retries of -1, i.e. for
system failures, until the job is done; an exception in our code is not retried, and there is none: a bad input
is a row with an error). A retried batch gives the same rows, and the driver keys rows by (file, chunk), so a
file is never yielded twice nor with a missing chunk.

`FamaTranscriber` is the same model for user-built Ray Data pipelines, one row per file (see its docstring).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import io
import json
import os
import pickle
import queue
import re
import socket
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .features import SAMPLE_RATE
from .inputs import STDIN, InputFile
from .pipeline import (
    FileResult,
    Pipeline,
    TranscribeOptions,
    _batches,
    _File,
    _reader,
    compute_thread,
    language_scores,
)
from .precision import keep_freed_memory

INSTALL = 'pip install "fama-speech[ray]"'  # the distribution is fama-speech; `fama` on PyPI is another project
RAY_MISSING = f'Ray is not installed: {INSTALL} (or pip install "ray[data]")'
ADDRESS_FORMS = "auto or HOST:PORT"
# Ray Data runs its executor in the driver, which Ray Client (ray://) cannot host (ray-project/ray#42739: "Ray
# client does not work with Ray Data"); its jobs fail after the model is shipped with "'Worker' object has no
# attribute 'core_worker'". The driver has to run on the cluster: `ray job submit`.
CLIENT_REFUSED = ("Ray Client (ray://) cannot run Ray Data jobs: run fama on the cluster instead, with "
                  "`ray job submit --address http://HEAD:8265 -- fama transcribe ... --ray` (docs/scale.md)")
# Ray itself retries an unreachable cluster for minutes (and ignores Ctrl-C meanwhile): its port is tried first,
# and a cluster that does not answer within this many seconds is an error
CONNECT_TIMEOUT = 5.0
_ADDRESS = re.compile(r"(?P<client>ray://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
                      r":(?P<port>\d{1,5})")
DETECT = -1  # lang_id of a chunk row whose language is to be scored, not decoded
END = -1  # chunk number of a file's last row: how many chunks it had, samples read, error
_COLUMNS = ("index", "chunk", "start", "end", "lang_id", "chunks", "samples", "error")
# Ray starts a plain driver's workers at niceness 15 (those of `ray job submit` at 0): the replicas and reading
# tasks are the job itself, not background work, so they run at the priority of a plain `fama transcribe`. A
# local Ray started here gets it as a setting of its own, so that the workers Ray starts with it serve the job;
# a runtime environment (for clusters that are joined) makes Ray start new workers for it, ~1 s per process.
RUNTIME_ENV = {"env_vars": {"RAY_worker_niceness": "0"}}
LOCAL_SYSTEM_CONFIG = {"worker_niceness": 0}


class RayUnavailable(RuntimeError):
    """Ray (with Ray Data) is not installed."""


def require_ray() -> Any:
    """The `ray` module with Ray Data, or RayUnavailable with the one line saying what to install."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailable(RAY_MISSING) from None
    return ray


def resolve_address(address: str | None = None) -> str | None:
    """The address `connect` joins: `address`, else $RAY_ADDRESS, else None (a `ray start` instance of this
    machine, or a new local Ray). ValueError, naming where it came from, unless it is auto or HOST:PORT (a
    cluster's GCS), so that a typo, or a Ray Client address (CLIENT_REFUSED), fails before anything is loaded."""
    where = "--ray-address" if address is not None else "$RAY_ADDRESS"
    address = address if address is not None else os.environ.get("RAY_ADDRESS") or None
    if address in (None, "auto", "local"):  # local: a new local Ray, as Ray reads it
        return None if address == "local" else address
    m = _ADDRESS.fullmatch(address.strip())
    if m is not None and m["client"]:
        raise ValueError(f"{where} {address!r}: {CLIENT_REFUSED}")
    if m is None or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"{where} {address!r} is not a Ray address: use {ADDRESS_FORMS}")
    return address.strip()


def reach(address: str | None, timeout: float = CONNECT_TIMEOUT) -> None:
    """ConnectionError, in one line, unless something accepts a connection at a HOST:PORT `address` within
    `timeout` seconds."""
    m = _ADDRESS.fullmatch(address or "")
    if m is None:
        return
    host = m["host"].strip("[]")
    try:
        socket.create_connection((host, int(m["port"])), timeout=timeout).close()
    except TimeoutError:
        raise ConnectionError(f"no Ray cluster answers at {address} (no answer within {timeout:g} s)") from None
    except OSError as e:
        raise ConnectionError(f"no Ray cluster answers at {address} ({e.strerror or e})") from None


def connect(address: str | None = None) -> Any:
    """Join Ray: the running instance of this process, else `address` ("auto": the cluster this machine belongs
    to, "HOST:PORT": a cluster's GCS), else $RAY_ADDRESS (set by `ray job submit`), else a new local Ray.
    ValueError for an address of another form, ConnectionError when nothing answers there within
    CONNECT_TIMEOUT seconds."""
    ray = require_ray()
    if not ray.is_initialized():
        address = resolve_address(address)
        reach(address)
        import logging

        # Ray's own notes (token set-up, progress bars off) are not the user's business; its errors still show
        quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.ERROR}
        started = False
        if not address:
            with contextlib.suppress(ValueError):  # raised when it finds a `ray start` instance to join instead
                ray.init(_system_config=LOCAL_SYSTEM_CONFIG, **quiet)
                started = True
        if not started:
            ray.init(address=address or None, runtime_env=RUNTIME_ENV, **quiet)
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the caller shows files and audio; Ray's per-operator bars are noise
    context.print_on_execution_start = False
    return ray


@contextlib.contextmanager
def local_copy(path: str, data: bytes | None = None) -> Iterator[str]:
    """A local path holding `path`'s media: the path itself, or a temporary copy of `data` or of an object-store
    URL (s3://, gs://, ... as pyarrow's file systems read them), removed on exit."""
    if data is None and "://" not in path:
        yield path
        return
    fd, tmp = tempfile.mkstemp(prefix="fama-", suffix=Path(path.split("?")[0]).suffix[:16])
    try:
        with os.fdopen(fd, "wb") as out:
            if data is not None:
                out.write(data)
            else:
                from pyarrow import fs

                filesystem, key = fs.FileSystem.from_uri(path)
                with filesystem.open_input_stream(key) as src:
                    while piece := src.read(1 << 20):
                        out.write(piece)
        yield tmp
    finally:
        os.unlink(tmp)


# ----------------------------------------------------------------------------------------------- CPU stage


def _chunk_rows(row: dict[str, Any], options: TranscribeOptions, limit_seconds: float | None) -> Iterator[dict]:
    """A file row {index, path, lang_id} -> a row per speech chunk (audio as float32 bytes), then an END row.

    The reading is `Pipeline`'s own reader thread; with `limit_seconds` the reading stops once that much
    speech was read (language detection reads no further). Its torch work (VAD) runs on one thread
    (`pipeline.reading_thread`).
    """
    i, path, lang_id = int(row["index"]), str(row["path"]), int(row["lang_id"])
    base = {"index": i, "lang_id": lang_id, "chunks": 0, "samples": 0, "error": ""}
    try:
        with local_copy(path) as local:
            f = _File(InputFile(path), local, None, None)
            chunks: queue.Queue = queue.Queue(maxsize=8)
            stop = threading.Event()
            reader = threading.Thread(target=_reader, args=([f], iter([0]), options, chunks, stop, set()), daemon=True)
            reader.start()
            n, speech = 0, 0.0
            try:
                while (msg := chunks.get()) is not None:
                    chunk = msg[1]
                    if chunk is None:
                        continue
                    audio = np.ascontiguousarray(chunk.audio, dtype=np.float32).reshape(-1)
                    yield {**base, "chunk": n, "start": float(chunk.start), "end": float(chunk.end),
                           "audio": audio.tobytes()}
                    n += 1
                    speech += len(audio) / SAMPLE_RATE
                    if limit_seconds is not None and speech >= limit_seconds:
                        break  # the reader stops at `stop`, without its end message
            finally:
                stop.set()
                while reader.is_alive():  # unblock it so that it can see `stop`
                    with contextlib.suppress(queue.Empty):
                        chunks.get(timeout=0.1)
            error = f.error.replace(local, path) if f.error else ""
            yield {**base, "chunk": END, "start": 0.0, "end": 0.0, "audio": b"", "chunks": n,
                   "samples": f.samples, "error": error}
    except Exception as e:  # an object that cannot be fetched: that file's error, not the job's
        yield {**base, "chunk": END, "start": 0.0, "end": 0.0, "audio": b"", "error": f"{type(e).__name__}: {e}"}


# ----------------------------------------------------------------------------------------------- actor stage


@dataclasses.dataclass
class SharedModel:
    """A model and its tokenizer in the form Ray's object store ships fast: `ray.put(SharedModel.of(model,
    tokenizer))`, then `.get(device)` in each replica.

    The tensors travel as numpy arrays (a GPU model's copied to the CPU one tensor at a time), which Ray stores
    out of band and every process of a node maps from the one stored copy; the rest (modules, config, int8
    packed weights) is pickled. `get` copies each tensor once onto `device`. A pickled torch model is copied
    twice on `put` and again, slowly, by each replica: with FAMA-small's shape (1.7 GB), 5 s to put and 13 s
    to get for one replica, 21 s for two at once on 2 cores, against ~2 s to put and ~1.5 s to get for one
    replica this way. Replicas do not compute on the store's mapping itself: its 4 KiB pages made
    decoder-sized products 25 % slower than on torch's own memory here.
    """

    skeleton: bytes
    arrays: list[np.ndarray]

    @classmethod
    def of(cls, model: torch.nn.Module, tokenizer: Any) -> SharedModel:
        buffer = io.BytesIO()
        pickler = _TensorsApart(buffer)
        pickler.dump((model, tokenizer))
        return cls(buffer.getvalue(), pickler.arrays)

    def get(self, device: str | torch.device = "cpu") -> tuple[Any, Any]:
        """(model, tokenizer), the model's tensors copied onto `device`."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "TypedStorage is deprecated")  # torch's own unpickling of int8 weights
            return _TensorsBack(io.BytesIO(self.skeleton), self.arrays, torch.device(device)).load()


_NUMPY_VIEW = {torch.bfloat16: torch.int16}  # dtypes numpy lacks, shipped as same-size integers


class _TensorsApart(pickle.Pickler):
    def __init__(self, file: io.BytesIO):
        super().__init__(file, protocol=5)
        self.arrays: list[np.ndarray] = []
        self.index: dict[int, int] = {}

    def persistent_id(self, obj: Any) -> Any:
        if not isinstance(obj, torch.Tensor) or obj.is_meta or obj.is_quantized or obj.numel() == 0:
            return None
        if id(obj) not in self.index:  # the same tensor twice (tied weights) stays one tensor
            self.index[id(obj)] = len(self.arrays)
            self.arrays.append(obj.detach().cpu().view(_NUMPY_VIEW.get(obj.dtype, obj.dtype)).numpy())
        return ("tensor", self.index[id(obj)], str(obj.dtype), isinstance(obj, torch.nn.Parameter),
                obj.requires_grad)


class _TensorsBack(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, arrays: list[np.ndarray], device: torch.device):
        super().__init__(file)
        self.arrays, self.device = arrays, device
        self.made: dict[int, torch.Tensor] = {}

    def persistent_load(self, pid: Any) -> torch.Tensor:
        _, k, dtype, parameter, requires_grad = pid
        if k not in self.made:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a read-only array: the tensor is a copy of it
                t = torch.from_numpy(self.arrays[k]).view(getattr(torch, dtype.removeprefix("torch.")))
            t = t.to(self.device, copy=True)
            self.made[k] = torch.nn.Parameter(t, requires_grad=requires_grad) if parameter else t
        return self.made[k]


def _resolve(model: Any, tokenizer: Any = None, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """(model, tokenizer) on `device` from a pair, a SharedModel or a Ray object ref of either."""
    if isinstance(model, require_ray().ObjectRef):
        model = require_ray().get(model)
    if isinstance(model, SharedModel):
        return model.get(device)
    model, tokenizer = model if isinstance(model, tuple) else (model, tokenizer)
    return model.to(device), tokenizer


def _load_replica(model: Any, tokenizer: Any, device: str | None, threads: int | None) -> tuple[Any, Any]:
    """(model, tokenizer) of a replica: copied (and, on a CPU, its weights packed) on one torch thread, then
    `threads` (default: as many as before) for decoding. A replica starts beside other new processes (reading
    tasks, other replicas, Ray's own) that import torch: on 2 cores, a 2-thread team copying FAMA-small's
    weights then waited for a preempted thread at every parallel region, 2.7 s against 1.0 s on one thread."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.device(device).type == "cpu":
        keep_freed_memory()  # as `load_model` does in the driver: a replica without it decoded ~15 % slower
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(1)
    loaded = _resolve(model, tokenizer, device)
    torch.set_num_threads(threads)
    return loaded


class ChunkDecoder:
    """Ray Data callable class of the `--ray` executor: decodes (or, for lang_id DETECT, scores the language
    of) batches of speech-chunk rows of any files; END rows pass through. Output: the row columns without the
    audio, plus `result` (JSON: [tokens, spans] or language scores)."""

    def __init__(self, model: Any, tokenizer: Any = None, options: TranscribeOptions | None = None,
                 device: str | None = None, threads: int | None = None):
        model, tokenizer = _load_replica(model, tokenizer, device, threads)
        self.pipeline = Pipeline(model, tokenizer, options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        started = time.perf_counter()
        o, model = self.pipeline.options, self.pipeline.model
        n = len(batch["index"])
        results, errors = [""] * n, [str(e) for e in batch["error"]]
        audios = {j: torch.from_numpy(np.frombuffer(batch["audio"][j], dtype=np.float32).copy())
                  for j in range(n) if batch["chunk"][j] != END}
        for detect in (True, False):
            todo = [j for j in audios if (batch["lang_id"][j] == DETECT) == detect]
            lengths = [len(audios[j]) for j in todo]
            order = sorted(range(len(todo)), key=lambda k: -lengths[k])
            for group in _batches(order, lengths, o, model.device):
                rows = [todo[k] for k in group]
                try:
                    out = self._run(model, [audios[j] for j in rows], [int(batch["lang_id"][j]) for j in rows],
                                    detect)
                except Exception as e:
                    what = "language detection" if detect else "decoding"
                    for j in rows:
                        errors[j] = f"{what} failed: {type(e).__name__}: {e}"
                    continue
                for j, r in zip(rows, out):
                    results[j] = json.dumps(r)
        out_batch = {k: batch[k] for k in _COLUMNS}
        out_batch["error"] = np.array(errors, dtype=object)
        out_batch["result"] = np.array(results, dtype=object)
        out_batch["busy"] = np.full(n, (time.perf_counter() - started) / n)  # summed by the driver
        return out_batch

    def _run(self, model: Any, audios: list[torch.Tensor], lang_ids: list[int], detect: bool) -> list:
        if detect:
            tok = self.pipeline.tokenizer
            return language_scores(model, tok, audios, tok.languages).tolist()
        return self.pipeline._decode_batch(model, audios, lang_ids)


# ----------------------------------------------------------------------------------------------- driver


@dataclasses.dataclass
class RayResources:
    """Where the replicas run: `actors` replicas, each on `gpus` GPUs (0: the CPU) with `threads` CPU threads."""

    actors: int
    threads: int
    gpus: float

    @classmethod
    def plan(cls, cluster: dict[str, float], device: str | None = None, actors: int | None = None,
             threads: int | None = None) -> RayResources:
        """One replica per GPU of the cluster (device None or "cuda"); with device "cpu", or no GPU, one per
        `threads` CPUs (default 2 threads), leaving a CPU for the reading tasks when the cluster has more than
        one replica's worth. Raises ValueError for a device the cluster lacks."""
        gpus = int(cluster.get("GPU", 0))
        cpus = int(cluster.get("CPU", 1))
        if device is not None and device.startswith("cuda") and gpus == 0:
            raise ValueError(f"--device {device}: the Ray cluster has no GPU")
        if device not in (None, "cpu") and not device.startswith("cuda"):
            raise ValueError(f"--device {device}: under Ray use cpu or cuda")
        if gpus and device != "cpu":
            return cls(actors or gpus, threads or 1, 1.0)
        threads = threads or max(1, min(2, cpus))
        return cls(actors or max(1, (cpus - (1 if cpus > threads else 0)) // threads), threads, 0.0)


def _main_thread_calls(ray: Any) -> dict[str, bool]:
    """ActorPoolStrategy's argument that runs calls on the actor's main thread, where this Ray version has it."""
    params = inspect.signature(ray.data.ActorPoolStrategy).parameters
    return {"enable_true_multi_threading": True} if "enable_true_multi_threading" in params else {}


class RayExecutor:
    """`Pipeline.run` on Ray: decoding in an actor pool, reading in CPU tasks, results regrouped here."""

    def __init__(self, pipeline: Pipeline, address: str | None = None, device: str | None = None,
                 actors: int | None = None, threads: int | None = None, rows_per_call: int | None = None):
        """`pipeline`: the model, tokenizer and options (its model is shipped to the replicas through Ray's
        object store, so workers need neither the model files nor a download). `address`: see `connect`;
        `device`, `actors`, `threads`: see `RayResources.plan`; `rows_per_call`: chunks handed to one replica
        call, sorted by length there and decoded in batches of at most `options.batch_size`. Default: two
        batches on a GPU; a quarter batch on a CPU, where a call of 4 chunks of FAMA-small is already tens of
        seconds at one thread, and smaller calls spread the work evenly over the replicas."""
        self.pipeline = pipeline
        self.ray = connect(address)
        self.resources = RayResources.plan(self.ray.cluster_resources(), device, actors, threads)
        batch = pipeline.options.batch_size
        self.rows_per_call = rows_per_call or (2 * batch if self.resources.gpus else max(1, batch // 4))
        # of the last run: "busy" (replica-seconds), "first_result" (seconds after "started", a perf_counter)
        self.timings: dict[str, float] = {}

    def run(self, items: list[InputFile], sources: list[Any] | None = None,
            progress: Callable[[float], None] | None = None) -> Iterator[FileResult]:
        """FileResults as `Pipeline.run` gives them, each as soon as its file is done."""
        if sources is not None:
            raise ValueError("RayExecutor reads paths or URLs; in-memory waveforms go to Pipeline.run")
        p, o = self.pipeline, self.pipeline.options
        self.timings = {"started": time.perf_counter(), "busy": 0.0}
        fixed = None if o.language == "auto" else p.tokenizer.lang_tag_id(o.language)
        files = [_File(it, it.path if "://" in it.path else os.path.abspath(it.path), fixed,
                       None if fixed is None else o.language) for it in items]
        for f in files:
            if f.item.path == STDIN:
                f.error = "standard input cannot be read by Ray workers: save it to a file first"
        if all(f.error for f in files):
            yield from (p._finish(f) for f in files)
            return
        replica = self.ray.put(SharedModel.of(p.model, p.tokenizer))  # referenced here while replicas may restart
        try:
            if fixed is None:
                self._detect(files, [i for i, f in enumerate(files) if f.error is None], replica)
            todo = [i for i, f in enumerate(files) if f.error is None]
            for f in files:
                if f.error is not None and not f.finished:
                    f.read_done = True
                    yield p._finish(f)
            yield from self._decode(files, todo, replica, progress)
        finally:
            del replica

    def _dataset(self, files: list[_File], todo: list[int], replica: Any, limit_seconds: float | None) -> Any:
        ray, r = self.ray, self.resources
        rows = [{"index": i, "path": files[i].source, "lang_id": DETECT if files[i].lang_id is None
                 else files[i].lang_id} for i in todo]
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 1024)))
        # Reading (ffmpeg + VAD) costs ~1/50 of a one-thread CPU replica's time per audio second, and a new
        # worker process ~5 s of CPU (importing torch): CPU-only, one reading task per 4 replicas, without a
        # CPU of its own (the replicas hold the CPUs); with GPUs, two per replica, each with a CPU.
        read_cpus, readers = (1.0, 2 * r.actors) if r.gpus else (0.0, max(1, r.actors // 4))
        ds = ds.flat_map(_chunk_rows, fn_kwargs={"options": self.pipeline.options, "limit_seconds": limit_seconds},
                         num_cpus=read_cpus,
                         compute=ray.data.TaskPoolStrategy(size=readers))
        return ds.map_batches(
            ChunkDecoder, batch_size=self.rows_per_call, batch_format="numpy",
            # calls on the actor's main thread, which loaded the model (Ray Data otherwise makes another thread run
            # them): a second thread with torch threads of its own slows both (`pipeline.reading_thread`), and
            # glibc gives another thread an arena of 64 MB heaps, mapping every larger tensor afresh at each use
            # (~15 % of the decoding time at FAMA-small's size on a CPU)
            compute=ray.data.ActorPoolStrategy(size=r.actors, max_tasks_in_flight_per_actor=2 if r.gpus else 1,
                                               **_main_thread_calls(ray)),
            fn_constructor_kwargs={"model": replica, "options": self.pipeline.options, "threads": r.threads,
                                   "device": "cuda" if r.gpus else "cpu"},
            num_cpus=r.threads if not r.gpus else 1, num_gpus=r.gpus or None)

    def _rows(self, ds: Any) -> Iterator[dict[str, Any]]:
        """The rows of `ds`, adding up the replicas' busy seconds and noting when the first result came."""
        t = self.timings
        for row in ds.iter_rows():
            t["busy"] += float(row["busy"])
            t.setdefault("first_result", time.perf_counter() - t["started"])
            yield row

    def _detect(self, files: list[_File], todo: list[int], replica: Any) -> None:
        """The language of each file, from `language_scores` of its first speech, summed in chunk order."""
        p = self.pipeline
        scores: dict[int, dict[int, list[float]]] = {}
        for row in self._rows(self._dataset(files, todo, replica, p.options.detect_seconds)):
            i, c, f = int(row["index"]), int(row["chunk"]), files[int(row["index"])]
            if row["error"]:
                f.error = f.error or str(row["error"])
            if c == END:
                f.samples = int(row["samples"])
            elif not row["error"]:
                scores.setdefault(i, {})[c] = json.loads(row["result"])
        for i, by_chunk in scores.items():
            f = files[i]
            if f.error is None:
                for c in sorted(by_chunk):
                    for lang, s in zip(p.tokenizer.languages, by_chunk[c]):
                        f.detect_scores[lang] = f.detect_scores.get(lang, 0.0) + s
                f.language = max(f.detect_scores, key=f.detect_scores.get)
                f.lang_id = p.tokenizer.lang_tag_id(f.language)
        for f in files:
            if f.lang_id is None:  # no speech: decoded with any language, there is nothing to decode
                f.lang_id = p.tokenizer.lang_tag_id(p.tokenizer.languages[0])

    def _decode(self, files: list[_File], todo: list[int], replica: Any,
                progress: Callable[[float], None] | None) -> Iterator[FileResult]:
        if not todo:
            return
        expected: dict[int, int] = {}
        for row in self._rows(self._dataset(files, todo, replica, None)):
            i, c, f = int(row["index"]), int(row["chunk"]), files[int(row["index"])]
            if f.finished:
                continue
            if row["error"]:
                f.error = f.error or str(row["error"])
            if c == END:
                expected[i], f.samples, f.read_done = int(row["chunks"]), int(row["samples"]), True
            elif not row["error"] and c not in f.results:
                f.results[c] = tuple(json.loads(row["result"]))
                f.chunks += [(0.0, 0.0)] * (c + 1 - len(f.chunks))
                f.chunks[c] = (float(row["start"]), float(row["end"]))
                if progress:
                    progress(float(row["end"]) - float(row["start"]))
            if f.read_done and (f.error or len(f.results) == expected[i]):
                yield self.pipeline._finish(f)


# ----------------------------------------------------------------------------------------------- library class


class FamaTranscriber:
    """A FAMA model as a Ray Data callable class, one row per media file:

        ds = ray.data.read_binary_files("s3://bucket/audio/", include_paths=True)
        ds = ds.map_batches(FamaTranscriber, fn_constructor_kwargs={"model": "fama-small", "language": "it"},
                            compute=ray.data.ActorPoolStrategy(size=4), num_gpus=1, batch_size=16)
        ds.write_parquet("s3://bucket/transcripts/")

    Input columns: `path` (a local path or object-store URL the worker can read) or `bytes` (the file's
    content, e.g. from `read_binary_files`; `path` then only names it; a null `bytes` reads `path`);
    optional `language` ("en", "it", "auto"; for translation the target) and `task` ("transcribe" or
    "translate") per row, else the constructor's.
    Output: the input columns except `bytes`, plus `text` (the segments' text joined by spaces), `segments`
    (JSON: a list of {start, end, text, words: [{start, end, text}]}, seconds), `language` (of the text;
    detected for "auto"), `duration` (seconds of audio) and `error` ("" when the file was transcribed; else
    the reason, one line, and empty text and segments "[]").

    The files of one call are decoded together by `Pipeline` (chunks of many files in one batch), so
    `batch_size` of `map_batches` is the number of files pooled per call.
    """

    def __init__(self, model: Any = "fama-small", task: str = "transcribe", language: str = "auto",
                 device: str | None = None, dtype: str = "float32", threads: int | None = None,
                 local_files_only: bool | None = None, options: TranscribeOptions | None = None,
                 **decode_kwargs: Any):
        """`model`: a name or path for `load_model`, a (model, tokenizer) pair, or a Ray object ref of the pair
        or, better (no copy per replica), of `SharedModel.of(model, tokenizer)`;
        `device`: as `--device` (default: the actor's GPU, else the CPU); `threads`: torch CPU threads;
        extra keyword arguments set `DecodeOptions` fields (beam_size=1, greedy=True, ...)."""
        from .pipeline import _options, resolve_devices

        self.devices = resolve_devices(device)
        self.name = str(model) if isinstance(model, (str, Path)) else ""
        self.defaults = _options(task, language, options, decode_kwargs)
        self.pipelines: dict[tuple[str, str], Pipeline] = {}
        # Ray Data calls a class from another thread than the one it was built in: the model is loaded and run on
        # one thread of its own
        self.compute = compute_thread()
        self.model, self.tokenizer = self.compute.submit(self._load, model, dtype, threads, local_files_only).result()

    def _load(self, model: Any, dtype: str, threads: int | None, local_files_only: bool | None) -> tuple[Any, Any]:
        from .checkpoints import load_model

        if not isinstance(model, (str, Path)):
            return _load_replica(model, None, self.devices[0], threads)
        if threads:
            torch.set_num_threads(threads)
        return load_model(model, device=self.devices[0], dtype=dtype, local_files_only=local_files_only)

    def _pipeline(self, task: str, language: str) -> Pipeline:
        key = (task or self.defaults.task, language or self.defaults.language)
        if key not in self.pipelines:
            options = dataclasses.replace(self.defaults, task=key[0], language=key[1])
            self.pipelines[key] = Pipeline(self.model, self.tokenizer, options, self.name, self.devices)
        return self.pipelines[key]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.compute.submit(self._call, batch).result()

    def _call(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(next(iter(batch.values())))
        paths = [str(x) for x in batch["path"]] if "path" in batch else [f"<bytes {k}>" for k in range(n)]
        data = batch.get("bytes")
        groups: dict[tuple[str, str], list[int]] = {}
        for k in range(n):
            task, language = (str(batch[c][k] or "") if c in batch else "" for c in ("task", "language"))
            groups.setdefault((task, language), []).append(k)
        results: dict[int, FileResult] = {}
        for (task, language), rows in groups.items():
            try:
                pipeline = self._pipeline(task, language)
            except ValueError as e:
                results.update({k: FileResult(InputFile(paths[k]), error=str(e)) for k in rows})
                continue
            with contextlib.ExitStack() as stack:
                items = {k: InputFile(paths[k]) for k in rows}
                row_of = {id(it): k for k, it in items.items()}
                sources = [stack.enter_context(local_copy(paths[k], None if data is None or data[k] is None
                                                          else bytes(data[k]))) for k in rows]
                for res in pipeline.run(list(items.values()), sources):
                    results[row_of[id(res.item)]] = res
        out = {c: v for c, v in batch.items() if c != "bytes"}
        ts = [results[k].transcript for k in range(n)]
        out["text"] = np.array([t.text if t else "" for t in ts], dtype=object)
        out["segments"] = np.array([json.dumps(t.to_dict()["segments"] if t else [], ensure_ascii=False)
                                    for t in ts], dtype=object)
        out["language"] = np.array([t.language if t else "" for t in ts], dtype=object)
        out["duration"] = np.array([results[k].seconds for k in range(n)], dtype=np.float64)
        out["error"] = np.array([results[k].error or "" for k in range(n)], dtype=object)
        return out

"""`fama serve` with the trained fixture model, driven by the official `openai` client.

Servers run in this process (uvicorn in a thread, 127.0.0.1, a free port) so that their pool's counters and
temporary folder can be checked; one test starts `python -m fama_cli serve` itself. The reference for every
response is what `fama transcribe` / `fama translate` write for the same clips (the CLI's own code, run through
Typer's runner): text, srt and vtt byte for byte, json and verbose_json against its .json.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch


def need(module: str):
    """The serve extra and the openai client: skipped when missing, but a failure under CI=true."""
    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module, reason=f'{module} is missing: pip install -e ".[serve,test]"')


openai = need("openai")
uvicorn = need("uvicorn")
need("fastapi")
need("python_multipart")

from typer.testing import CliRunner  # noqa: E402

from fama_cli.main import app  # noqa: E402
from fama_core import load_model  # noqa: E402
from fama_core.pipeline import compute_thread  # noqa: E402
from fama_core.server import BatchPool, ServeOptions, create_app  # noqa: E402

from conftest import ROOT  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # openai marks translations so

MODEL = ROOT / "tests" / "fixtures" / "tiny_trained"
CLIPS_DIR = MODEL / "clips"
CLIPS = {c["id"]: c for c in json.loads((CLIPS_DIR / "clips.json").read_text(encoding="utf-8"))}
MODEL_NAME = str(MODEL)
TEXT_FORMATS = {"text": "txt", "srt": "srt", "vtt": "vtt"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def loaded():
    # the precision `fama serve` and the CLI run by default
    return load_model(MODEL, device="cpu", dtype="auto")


@contextmanager
def serving(loaded, compute=None, **options) -> Iterator[tuple[str, BatchPool]]:
    """A server on 127.0.0.1 for the duration of the block: (base URL, its pool)."""
    model, tokenizer = loaded
    pool = BatchPool(model, tokenizer, MODEL_NAME, ServeOptions(**options), compute)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(pool), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", pool
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    assert not pool.tmp_dir.exists(), "the pool's temporary folder outlived the server"


def client(base: str, key: str = "unused", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=60, **kw)


def health(base: str) -> dict:
    return httpx.get(f"{base}/health").json()


def settle(base: str, pool: BatchPool) -> dict:
    """/health once no request is in progress; the temporary folder must then be empty."""
    deadline = time.monotonic() + 10
    while (h := health(base))["requests_active"] or h["jobs_in_pool"]:
        assert time.monotonic() < deadline, h
        time.sleep(0.05)
    assert list(pool.tmp_dir.iterdir()) == []
    return h


def clip(cid: str) -> Path:
    return CLIPS_DIR / f"{cid}.wav"


def two_chunks(path: Path) -> Path:
    """en_bag, 4 s of silence, en_cats: two speech chunks (VAD never merges across 3 s), two segments."""
    parts = []
    for cid in ("en_bag", "en_cats"):
        with wave.open(str(clip(cid))) as w:
            parts.append(np.frombuffer(w.readframes(w.getnframes()), dtype="<i2"))
    audio = np.concatenate([parts[0], np.zeros(4 * 16000, dtype="<i2"), parts[1]])
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(audio.tobytes())
    return path


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    files = {cid: clip(cid) for cid in CLIPS}
    files["two"] = two_chunks(tmp_path_factory.mktemp("media") / "two.wav")
    return files


@pytest.fixture(scope="module")
def cli(media, tmp_path_factory) -> dict[tuple[str, str], Path]:
    """(task, id) -> the CLI's output stem: transcripts (--lang auto) and translations (it->en, en->it)."""
    out = {}
    runs = [("transcribe", [], list(media)),
            ("translate", ["--to", "en"], [c for c in CLIPS if CLIPS[c]["lang"] == "it"]),
            ("translate", ["--to", "it"], [c for c in media if c == "two" or CLIPS[c]["lang"] == "en"])]
    for task, extra, ids in runs:
        folder = tmp_path_factory.mktemp(task)
        args = [task, *[str(media[i]) for i in ids], *extra, "--model", str(MODEL), "--device", "cpu", "-o",
                str(folder), "-f", "all", "--quiet"]
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, result.stderr
        out.update({(task, i): folder / media[i].stem for i in ids})
    return out


@pytest.fixture(scope="module")
def server(loaded):
    with serving(loaded) as (base, pool):
        yield base, pool


def expected(cli, task: str, cid: str, ext: str) -> str:
    return Path(f"{cli[task, cid]}.{ext}").read_text(encoding="utf-8")


def check_every_format(api: openai.OpenAI, cli, task: str, cid: str, path: Path, extra: dict) -> None:
    endpoint = api.audio.transcriptions if task == "transcribe" else api.audio.translations
    for fmt, ext in TEXT_FORMATS.items():
        with path.open("rb") as f:
            body = endpoint.create(file=f, model="whisper-1", response_format=fmt, extra_body=extra)
        assert body == expected(cli, task, cid, ext), (task, cid, fmt)
    reference = json.loads(expected(cli, task, cid, "json"))
    with path.open("rb") as f:
        assert endpoint.create(file=f, model="whisper-1", extra_body=extra).text == reference["text"]
    kwargs = {"timestamp_granularities": ["word", "segment"]} if task == "transcribe" else {}
    extra = extra if task == "transcribe" else {**extra, "timestamp_granularities": ["word", "segment"]}
    with path.open("rb") as f:
        verbose = endpoint.create(file=f, model="whisper-1", response_format="verbose_json", extra_body=extra,
                                  **kwargs)
    verbose = verbose.to_dict()  # TranslationVerbose does not declare `words`
    words = [{"word": w["text"], "start": w["start"], "end": w["end"]} for s in reference["segments"]
             for w in s["words"]]
    assert len(words) >= 4 and verbose == {
        "task": task, "language": {"en": "english", "it": "italian"}[reference["language"]],
        "duration": round(reference["duration"], 3), "text": reference["text"], "words": words,
        "segments": [{"id": i, "start": s["start"], "end": s["end"], "text": s["text"]}
                     for i, s in enumerate(reference["segments"])]}


def test_transcriptions_equal_the_cli_in_every_format(server, cli, media) -> None:
    base, pool = server
    api = client(base)
    for cid in ("en_cats", "it_bread", "two"):  # every clip is checked in srt by the concurrency test
        check_every_format(api, cli, "transcribe", cid, media[cid], {})
    # the language spelled as a name, as some clients send it: the same transcript
    with media["it_boy"].open("rb") as f:
        text = api.audio.transcriptions.create(file=f, model="x", language="italian", response_format="text")
    assert text == expected(cli, "transcribe", "it_boy", "txt") == "Il ragazzo è al cinema.\n"
    settle(base, pool)


def test_translations_both_ways_equal_the_cli(server, cli, media) -> None:
    base, pool = server
    api = client(base)
    check_every_format(api, cli, "translate", "it_boy", media["it_boy"], {})  # OpenAI's: into English by default
    check_every_format(api, cli, "translate", "en_bag", media["en_bag"], {"to": "it"})
    assert expected(cli, "translate", "it_boy", "txt") == "The boy is at the cinema.\n"
    settle(base, pool)


def test_verbose_json_segment_or_word_granularity_only(server, cli, media) -> None:
    base, _ = server
    api = client(base)
    with media["two"].open("rb") as f:
        words_only = api.audio.transcriptions.create(file=f, model="x", response_format="verbose_json",
                                                     timestamp_granularities=["word"])
    with media["two"].open("rb") as f:
        default = api.audio.transcriptions.create(file=f, model="x", response_format="verbose_json")
    reference = json.loads(expected(cli, "transcribe", "two", "json"))
    assert len(reference["segments"]) == 2
    assert getattr(words_only, "segments", None) is None and len(words_only.words) == sum(
        len(s["words"]) for s in reference["segments"])
    assert getattr(default, "words", None) is None and len(default.segments) == 2


def test_streaming_sends_one_event_per_segment(server, cli, media) -> None:
    base, pool = server
    with media["two"].open("rb") as f:
        events = list(client(base).audio.transcriptions.create(file=f, model="x", stream=True))
    reference = json.loads(expected(cli, "transcribe", "two", "json"))
    deltas = [e for e in events if e.type == "transcript.text.delta"]
    assert [e.type for e in events] == ["transcript.text.delta"] * 2 + ["transcript.text.done"]
    assert [(d.segment["start"], d.segment["end"], d.segment["text"]) for d in deltas] == [
        (s["start"], s["end"], s["text"]) for s in reference["segments"]]
    assert "".join(d.delta for d in deltas) == events[-1].text == reference["text"]
    r = httpx.post(f"{base}/v1/audio/translations", data={"stream": "true", "to": "it"},  # translations stream too
                   files={"file": ("two.wav", media["two"].read_bytes())})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in r.text.split("\n\n") if line]
    reference = json.loads(expected(cli, "translate", "two", "json"))
    assert [e["type"] for e in events] == ["transcript.text.delta"] * 2 + ["transcript.text.done"]
    assert events[-1] == {"type": "transcript.text.done", "text": reference["text"], "language": "it",
                          "duration": round(reference["duration"], 3)}
    settle(base, pool)


def test_concurrent_requests_are_batched_together(loaded, cli, media) -> None:
    jobs = [("transcribe", cid, {}) for cid in CLIPS] + [("transcribe", cid, {"language": CLIPS[cid]["lang"]})
                                                        for cid in CLIPS]
    jobs += [("translate", cid, {} if CLIPS[cid]["lang"] == "it" else {"to": "it"}) for cid in CLIPS]
    jobs.append(("transcribe", "two", {}))
    assert len(jobs) == 16
    with serving(loaded, batch_wait=1.0) as (base, pool):
        api = client(base)
        barrier = threading.Barrier(len(jobs))

        def call(job: tuple) -> str:
            task, cid, extra = job
            endpoint = api.audio.transcriptions if task == "transcribe" else api.audio.translations
            data = media[cid].read_bytes()
            barrier.wait()
            return endpoint.create(file=(media[cid].name, data), model="x", response_format="srt", extra_body=extra)

        with ThreadPoolExecutor(len(jobs)) as ex:
            results = list(ex.map(call, jobs))
        for (task, cid, _), body in zip(jobs, results):
            assert body == expected(cli, task, cid, "srt"), (task, cid)
        stats = settle(base, pool)
    assert stats["requests"] == 16 and stats["rows"] == 17  # "two" holds two chunks
    assert stats["batches"] < 8 and stats["max_rows"] >= 4, stats  # 17 chunks of 16 requests in shared batches


def test_decoding_on_the_loading_thread_and_reading_on_one_torch_thread(loaded, cli, media, monkeypatch) -> None:
    """As `fama serve` runs it: the model loaded on `compute_thread()` is decoded there, and uploads are read
    with one torch thread (a second thread with torch threads of its own slowed decoding 40-70 % on 2 cores)."""
    import fama_core.server as srv

    decoders, readers = set(), set()
    decode, vad = srv.decode_chunks, srv.iter_speech_chunks
    monkeypatch.setattr(srv, "decode_chunks", lambda *a, **k: decoders.add(threading.get_ident()) or decode(*a, **k))

    def counted_vad(*a, **k):
        readers.add(torch.get_num_threads())
        yield from vad(*a, **k)

    monkeypatch.setattr(srv, "iter_speech_chunks", counted_vad)
    compute = compute_thread()
    loader = compute.submit(threading.get_ident).result()
    with serving(loaded, compute) as (base, pool):
        body = client(base).audio.transcriptions.create(file=(media["en_cats"].name, media["en_cats"].read_bytes()),
                                                        model="x", response_format="srt")
        settle(base, pool)
    assert body == expected(cli, "transcribe", "en_cats", "srt")
    assert decoders == {loader} and readers == {1}


def test_models_and_api_key(loaded, media) -> None:
    with serving(loaded, api_key="s3cret") as (base, pool):
        with pytest.raises(openai.AuthenticationError) as e, media["en_bag"].open("rb") as f:
            client(base, "wrong").audio.transcriptions.create(file=f, model="x")
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        r = httpx.post(f"{base}/v1/audio/translations", files={"file": ("a.wav", b"RIFF")})
        assert r.status_code == 401 and r.json()["error"]["type"] == "invalid_request_error"
        with pytest.raises(openai.AuthenticationError):
            client(base, "wrong").models.list()
        api = client(base, "s3cret")
        assert [m.id for m in api.models.list()] == [MODEL_NAME]
        assert api.models.retrieve(MODEL_NAME).id == MODEL_NAME
        with pytest.raises(openai.NotFoundError) as e:
            api.models.retrieve("whisper-1")
        assert e.value.body["code"] == "model_not_found"
        with media["en_bag"].open("rb") as f:
            assert api.audio.transcriptions.create(file=f, model="x").text == "Your bag is yellow."
        assert health(base)["status"] == "ok"  # /health needs no key
        settle(base, pool)


def multipart(fields: dict[str, str], name: str, data: bytes, boundary: str = "fama-test-boundary") -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
             for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def test_upload_limit_gives_413(loaded, media) -> None:
    with serving(loaded, max_upload_bytes=150_000) as (base, pool):
        api = client(base)
        big = media["pause_en"]
        assert big.stat().st_size > 150_000 > media["en_cats"].stat().st_size
        with pytest.raises(openai.APIStatusError) as e, big.open("rb") as f:
            api.audio.transcriptions.create(file=f, model="x")
        assert e.value.status_code == 413 and e.value.body["code"] == "file_too_large"
        assert "150000" not in e.value.body["message"] and "MB" in e.value.body["message"]

        def chunked() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while the body streams
            body = multipart({"model": "x"}, "pause_en.wav", big.read_bytes())
            for i in range(0, len(body), 16384):
                yield body[i:i + 16384]

        r = httpx.post(f"{base}/v1/audio/transcriptions", content=chunked(),
                       headers={"Content-Type": "multipart/form-data; boundary=fama-test-boundary"})
        assert r.status_code == 413 and r.json()["error"]["param"] == "file"
        with media["en_cats"].open("rb") as f:
            assert api.audio.transcriptions.create(file=f, model="x").text == "There are twelve cats on the table."
        settle(base, pool)


def test_bad_requests_give_400_naming_the_problem(server, tmp_path, media) -> None:
    base, pool = server
    api = client(base)
    notes = tmp_path / "notes.mp3"
    notes.write_text("not audio at all\n" * 100)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    cases = [
        (notes, {}, "file", "notes.mp3: not a media file ffmpeg can decode"),
        (empty, {}, "file", "empty.wav: empty file (0 bytes)"),
        (media["en_bag"], {"response_format": "docx"}, "response_format", "response_format 'docx' is not supported"),
        (media["en_bag"], {"language": "fr"}, "language", "language 'fr' is not supported by this model; use en or it"),
        (media["en_bag"], {"timestamp_granularities[]": "char"}, "timestamp_granularities[]", "'char'"),
    ]
    for path, fields, param, message in cases:
        r = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())},
                       data={"model": "x", **fields})
        assert r.status_code == 400, (path, fields, r.text)
        error = r.json()["error"]
        assert error["param"] == param and error["type"] == "invalid_request_error"
        assert error["message"].startswith(message) or message in error["message"], error
    with pytest.raises(openai.BadRequestError) as e, notes.open("rb") as f:  # and through the client
        api.audio.translations.create(file=f, model="x")
    assert e.value.body["message"] == "notes.mp3: not a media file ffmpeg can decode"
    r = httpx.post(f"{base}/v1/audio/translations", data={"model": "x", "to": "de"}, files={"x": ("a", b"")})
    assert r.status_code == 400 and r.json()["error"]["param"] == "file"
    r = httpx.post(f"{base}/v1/audio/translations", data={"to": "de"},
                   files={"file": ("a.wav", media["en_bag"].read_bytes())})
    assert r.status_code == 400 and r.json()["error"]["param"] == "to"
    with media["en_bag"].open("rb") as f:  # unsupported OpenAI fields are accepted and ignored
        text = api.audio.transcriptions.create(file=f, model="gpt-4o-transcribe", prompt="cats", temperature=0.7,
                                               include=["logprobs"], response_format="text")
    assert text == "Your bag is yellow.\n"
    settle(base, pool)


class SlowUpload:
    """A multipart body that stops half-way until `go` is set (the request holds its slot meanwhile)."""

    def __init__(self, path: Path):
        self.body = multipart({"model": "x", "response_format": "text"}, path.name, path.read_bytes())
        self.go = threading.Event()
        self.sent_half = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        half = len(self.body) // 2
        yield self.body[:half]
        self.sent_half.set()
        self.go.wait(20)
        yield self.body[half:]


def test_full_queue_gives_503_with_retry_after(loaded, media) -> None:
    with serving(loaded, max_requests=1) as (base, pool):
        slow = SlowUpload(media["en_bag"])
        held: dict = {}
        holder = threading.Thread(target=lambda: held.update(r=httpx.post(
            f"{base}/v1/audio/transcriptions", content=iter(slow), timeout=30,
            headers={"Content-Type": "multipart/form-data; boundary=fama-test-boundary"})))
        holder.start()
        assert slow.sent_half.wait(10)
        deadline = time.monotonic() + 10
        while health(base)["requests_active"] != 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with pytest.raises(openai.APIStatusError) as e, media["en_cats"].open("rb") as f:
            client(base).audio.transcriptions.create(file=f, model="x")
        assert e.value.status_code == 503 and int(e.value.response.headers["retry-after"]) >= 1
        assert e.value.body["code"] == "server_busy"
        slow.go.set()
        holder.join(30)
        assert held["r"].status_code == 200 and held["r"].text == "Your bag is yellow.\n"
        assert settle(base, pool)["rejected"] == 1


def gated(loaded) -> tuple:
    """A copy of the model whose encoder waits for `gate`: its first batch holds the decoder, so that the
    chunks of later requests stay queued in the pool. Returns ((model, tokenizer), entered, gate)."""
    model, tokenizer = loaded
    copy_ = copy.deepcopy(model)
    entered, gate = threading.Event(), threading.Event()
    encode = copy_.encode

    def held(*args, **kwargs):
        entered.set()
        assert gate.wait(60)
        return encode(*args, **kwargs)

    copy_.encode = held
    return (copy_, tokenizer), entered, gate


def post_en(base: str, path: Path, **kw) -> httpx.Response:
    return httpx.post(f"{base}/v1/audio/transcriptions", files={"file": (path.name, path.read_bytes())},
                      data={"language": "en", "response_format": "text"}, **kw)


def wait_for(base: str, key: str, value: int) -> dict:
    deadline = time.monotonic() + 20
    while (h := health(base))[key] != value:
        assert time.monotonic() < deadline, h
        time.sleep(0.05)
    return h


def test_timeout_frees_the_work_of_a_request(loaded, media) -> None:
    model, entered, gate = gated(loaded)
    with serving(model, timeout=4.0) as (base, pool), ThreadPoolExecutor(2) as ex:
        first = ex.submit(post_en, base, media["en_bag"])
        assert entered.wait(20)  # the first request's chunk is being decoded (held)
        second = ex.submit(post_en, base, media["en_cats"])
        assert wait_for(base, "chunks_waiting", 1)["batches"] == 0  # the second one's chunk waits in the pool
        for r in (first.result(), second.result()):
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert settle(base, pool)["cancelled"] == 2
        gate.set()
        stats = wait_for(base, "batches", 1)
        time.sleep(0.5)
        stats = health(base)  # the held batch finished; the second request's chunk was never decoded
        assert (stats["batches"], stats["rows"], stats["chunks_waiting"], stats["jobs_in_pool"]) == (1, 1, 0, 0)


def test_client_disconnect_frees_its_work(loaded, media) -> None:
    model, entered, gate = gated(loaded)
    with serving(model) as (base, pool), ThreadPoolExecutor(2) as ex:
        gives_up = {"timeout": httpx.Timeout(20, read=3.0)}  # the client closes the connection after 3 s
        first = ex.submit(post_en, base, media["en_bag"], **gives_up)
        assert entered.wait(20)
        second = ex.submit(post_en, base, media["en_cats"], **gives_up)
        wait_for(base, "chunks_waiting", 1)
        for f in (first, second):
            with pytest.raises(httpx.ReadTimeout):
                f.result()
        slow = SlowUpload(media["it_boy"])  # and one that leaves half-way through its upload

        def leave_half_way() -> Iterator[bytes]:
            yield next(iter(slow))
            raise OSError("client gone")

        with pytest.raises((OSError, httpx.HTTPError)):
            httpx.post(f"{base}/v1/audio/transcriptions", content=leave_half_way(),
                       headers={"Content-Type": "multipart/form-data; boundary=fama-test-boundary"})
        assert settle(base, pool)["cancelled"] == 2
        gate.set()
        wait_for(base, "batches", 1)
        time.sleep(0.5)
        stats = health(base)
        assert (stats["batches"], stats["rows"], stats["chunks_waiting"], stats["jobs_in_pool"]) == (1, 1, 0, 0)


def test_fama_serve_command(media) -> None:
    port = free_port()
    env = {**os.environ, "FAMA_API_KEY": "k1"}
    proc = subprocess.Popen([sys.executable, "-m", "fama_cli", "serve", "--model", str(MODEL), "--device", "cpu",
                             "--port", str(port), "--threads", "1"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"{base}/health").status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        with pytest.raises(openai.AuthenticationError), media["it_bread"].open("rb") as f:
            client(base, "nope").audio.transcriptions.create(file=f, model="x")
        with media["it_bread"].open("rb") as f:
            text = client(base, "k1").audio.transcriptions.create(file=f, model="x", response_format="text")
        assert text == f"{CLIPS['it_bread']['text']}\n"
    finally:
        proc.terminate()
        proc.wait(20)
    assert f"at http://127.0.0.1:{port}/v1 (API key required)" in proc.stderr.read()


def test_serve_without_the_extra_says_what_to_install() -> None:
    code = ("import sys; sys.modules['fastapi'] = None; from fama_cli.main import app; "
            "app(['serve', '--model', 'x'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    dist = re.search(r'^name = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.strip() == f'error: fama serve needs the serve extra: pip install "{dist}[serve]"'


# --- hardening (issue 24): stalled uploads, uploaded playlists, malformed bodies, routes, options


BOUNDARY = "fama-test-boundary"


def raw_request(base: str, path: str = "/v1/audio/transcriptions", length: int = 100_000,
                body: bytes | None = None) -> socket.socket:
    """A POST over a bare socket: the headers, then `body` (default: a file part's header and ~80 bytes of
    audio), and nothing more; `length` is the Content-Length announced."""
    if body is None:
        body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="talk.wav"\r\n'
                "Content-Type: audio/wav\r\n\r\n").encode() + clip("en_bag").read_bytes()[:80]
    sock = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {length}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n")
    sock.sendall(head.encode() + body)
    return sock


def answer(sock: socket.socket, within: float) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of the server's answer on `sock`, which the server must close within `within`
    seconds (socket.timeout otherwise)."""
    sock.settimeout(within)
    data = b""
    with sock:
        while piece := sock.recv(65536):
            data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def openai_error(body: bytes, code: str | None) -> dict:
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return error


def test_stalled_uploads_time_out_and_free_their_slots(loaded, media) -> None:
    """8 clients that send a part header and 80 bytes, then nothing, hold all 8 slots only until the idle
    timeout: each gets a 408 and its connection closed, and the next client is served."""
    with serving(loaded, max_requests=8, idle_timeout=1.5, timeout=60) as (base, pool):
        started = time.monotonic()
        stalled = [raw_request(base) for _ in range(8)]
        wait_for(base, "requests_active", 8)
        r = post_en(base, media["en_cats"])
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
        for sock in stalled:
            status, headers, body = answer(sock, within=20)
            assert status == 408 and headers["connection"] == "close", (status, headers, body)
            error = openai_error(body, "upload_timeout")
            assert error["message"] == "the upload sent nothing for 1.5 s" and error["type"] == "invalid_request_error"
        assert 1.5 <= time.monotonic() - started < 15
        settle(base, pool)  # every slot free, every upload removed
        before = time.monotonic()
        r = post_en(base, media["en_cats"])
        served_in = time.monotonic() - before
        assert r.status_code == 200 and r.text == "There are twelve cats on the table.\n"
        # Retry-After counts served requests only: 8 more stalls (1.5 s each) must not lengthen it
        stalled = [raw_request(base) for _ in range(8)]
        wait_for(base, "requests_active", 8)
        r = post_en(base, media["en_cats"])
        assert r.status_code == 503 and 1 <= int(r.headers["retry-after"]) <= max(1, math.ceil(served_in)), (
            r.headers["retry-after"], served_in)
        for sock in stalled:
            assert answer(sock, within=20)[0] == 408
        assert settle(base, pool)["requests"] == 17


def test_a_stalled_upload_gets_504_at_the_request_deadline(loaded) -> None:
    """With --timeout shorter than the idle timeout, the total deadline ends a silent upload (504)."""
    with serving(loaded, timeout=1.0, idle_timeout=30) as (base, pool):
        started = time.monotonic()
        status, headers, body = answer(raw_request(base), within=20)
        assert status == 504 and openai_error(body, "timeout")["type"] == "server_error"
        assert 1.0 <= time.monotonic() - started < 10
        assert settle(base, pool)["requests"] == 1  # its slot and its upload are freed


def hls_playlist(target: Path) -> bytes:
    return (f"#EXTM3U\n#EXT-X-VERSION:3\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{target}\n"
            "#EXT-X-ENDLIST\n").encode()


@pytest.fixture(scope="module")
def secret(tmp_path_factory) -> Path:
    """A file on the server's disk (en_cats as MPEG-TS) that a playlist names."""
    from fama_core.audio import ffmpeg_exe

    path = tmp_path_factory.mktemp("private") / "secret.ts"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(clip("en_cats")), "-f", "mpegts",
                    str(path)], check=True)
    return path


def test_an_uploaded_playlist_is_refused_and_what_it_names_never_read(server, secret) -> None:
    base, pool = server
    cats = "twelve cats"
    assert cats in post_en(base, secret).text  # the target itself is readable media
    concat = f"ffconcat version 1.0\nfile '{secret.name}'\n".encode()
    for name, data, demuxer in (("list.m3u8", hls_playlist(secret), "hls"),
                                ("list.m3u", hls_playlist(secret), "hls"),
                                ("list.ffconcat", concat, "concat")):
        for fmt in ("text", "json"):
            r = httpx.post(f"{base}/v1/audio/transcriptions", files={"file": (name, data)},
                           data={"response_format": fmt, "language": "en"})
            assert r.status_code == 400 and cats not in r.text, (name, r.text)
            error = openai_error(r.content, "invalid_audio")
            assert error["param"] == "file" and error["message"].startswith(f"{name}: "), error
            # recent ffmpeg takes no HLS playlist without an HLS extension: the neutral name alone stops it there
            assert f"refused: ffmpeg reads it as '{demuxer}'" in error["message"] or (
                demuxer == "hls" and error["message"].endswith(": not a media file ffmpeg can decode")), error
    settle(base, pool)


def test_uploads_are_stored_under_a_neutral_name(loaded, media, monkeypatch) -> None:
    import fama_core.server as srv

    seen = []
    stream = srv.stream_audio
    monkeypatch.setattr(srv, "stream_audio", lambda path, *a, **k: seen.append(Path(path)) or stream(path, *a, **k))
    with serving(loaded) as (base, pool):
        r = httpx.post(f"{base}/v1/audio/transcriptions", data={"response_format": "text"},
                       files={"file": ("talk.m3u8.wav", media["en_bag"].read_bytes())})
        assert r.status_code == 200 and r.text == "Your bag is yellow.\n"
        settle(base, pool)
    assert len(seen) == 1 and seen[0].parent == pool.tmp_dir and re.fullmatch(r"upload-[^.]+", seen[0].name)


class LogRecords(list):
    """Records of the server's loggers (uvicorn's do not propagate to the root, where caplog listens)."""

    def __enter__(self) -> LogRecords:
        import logging

        self.handler = logging.Handler()
        self.handler.emit = self.append
        self.loggers = [logging.getLogger(n) for n in ("uvicorn.error", "fama_core")]
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.addHandler(self.handler)
            logger.setLevel(logging.WARNING)  # `--quiet` runs of the CLI in this process raise fama_core's
        return self

    def __exit__(self, *exc) -> None:
        for logger, level in zip(self.loggers, self.levels):
            logger.removeHandler(self.handler)
            logger.setLevel(level)


@pytest.mark.parametrize("body", [
    b"garbage before the boundary\r\n--" + BOUNDARY.encode() + b'\r\nContent-Disposition: form-data; name="file"; '
    b'filename="a.wav"\r\n\r\nRIFF\r\n--' + BOUNDARY.encode() + b"--\r\n",
    f"--{BOUNDARY}\r\nContent-Disposition form-data\r\n\r\nx\r\n--{BOUNDARY}--\r\n".encode(),
    b'--another-boundary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF\r\n'
    b"--another-boundary--\r\n",
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\nX-Pad: {"a" * 8192}\r\n\r\n'
    f"RIFF\r\n--{BOUNDARY}--\r\n".encode(),
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\nRIFF'.encode(),
], ids=["garbage-first", "header-without-colon", "other-boundary", "8kb-part-header", "cut-short"])
def test_malformed_multipart_gives_400_json_and_no_traceback(server, body) -> None:
    base, pool = server
    with LogRecords() as records:
        r = httpx.post(f"{base}/v1/audio/transcriptions", content=body,
                       headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    assert r.status_code == 400, r.text
    error = openai_error(r.content, "invalid_multipart")
    assert error["message"].startswith("malformed multipart/form-data body: ") and error["param"] is None
    assert [rec for rec in records if rec.exc_info] == []
    settle(base, pool)


def test_routes_answer_in_openai_shape_with_head_and_options(loaded) -> None:
    with serving(loaded, api_key="k") as (base, pool):
        r = httpx.get(f"{base}/v1/audio/speech")
        assert r.status_code == 404 and r.json() == {"error": {
            "message": "Invalid URL (GET /v1/audio/speech)", "type": "invalid_request_error", "param": None,
            "code": None}}
        r = httpx.get(f"{base}/v1/audio/transcriptions")
        assert r.status_code == 405 and r.headers["allow"] == "OPTIONS, POST"
        assert r.json()["error"]["message"] == ("GET /v1/audio/transcriptions: Method Not Allowed; this path "
                                                "allows OPTIONS, POST")
        r = httpx.head(f"{base}/health")
        assert r.status_code == 200 and r.content == b"" and r.headers["content-type"] == "application/json"
        assert httpx.head(f"{base}/v1/models").status_code == 401  # HEAD as GET: the key is needed
        assert httpx.head(f"{base}/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200
        for path, allow in (("/v1/audio/translations", "OPTIONS, POST"), ("/health", "GET, HEAD, OPTIONS"),
                            (f"/v1/models/{MODEL_NAME}", "GET, HEAD, OPTIONS")):
            r = httpx.options(f"{base}{path}")
            assert (r.status_code, r.headers["allow"], r.content) == (204, allow, b""), path
        r = httpx.options(f"{base}/nowhere")
        assert r.status_code == 404 and r.json()["error"]["message"] == "Invalid URL (OPTIONS /nowhere)"
        settle(base, pool)


def test_translation_into_the_spoken_language_says_so(server, media) -> None:
    """As `fama translate` warns, with the same words (`Transcript.warnings`): in JSON answers, in the stream's
    last event, and in the server's log."""
    base, pool = server
    warning = "the speech is already in en (detected); the output is a transcript, not a translation"
    with LogRecords() as records:
        r = httpx.post(f"{base}/v1/audio/translations", data={"to": "en"},
                       files={"file": ("cats.wav", media["en_cats"].read_bytes())})
        assert r.json() == {"text": "There are twelve cats on the table.", "warnings": [warning]}
        r = httpx.post(f"{base}/v1/audio/translations", data={"to": "en", "response_format": "verbose_json"},
                       files={"file": ("cats.wav", media["en_cats"].read_bytes())})
        assert r.json()["warnings"] == [warning] and r.json()["language"] == "english"
        r = httpx.post(f"{base}/v1/audio/translations", data={"to": "en", "stream": "true"},
                       files={"file": ("cats.wav", media["en_cats"].read_bytes())})
        assert json.loads(r.text.split("\n\n")[-2][len("data: "):])["warnings"] == [warning]
    assert [rec.getMessage() for rec in records] == [f"cats.wav: {warning}"] * 3
    r = httpx.post(f"{base}/v1/audio/translations", data={"to": "it"},  # a real translation: no warnings
                   files={"file": ("cats.wav", media["en_cats"].read_bytes())})
    assert set(r.json()) == {"text"}
    out = CliRunner().invoke(app, ["translate", str(media["en_cats"]), "--to", "en", "--model", str(MODEL),
                                   "--device", "cpu", "-o", "-", "-f", "txt", "--quiet"])
    assert out.exit_code == 0 and out.stderr == f"warning: {media['en_cats']}: {warning}\n"
    settle(base, pool)


@pytest.mark.parametrize("args, message", [
    (["--port", "70000"], "--port must be from 0 to 65535, not 70000"),
    (["--port", "-1"], "--port must be from 0 to 65535, not -1"),
    (["--max-upload-mb", "nan"], "--max-upload-mb must be a finite number of at least 0.001, not nan"),
    (["--max-upload-mb", "inf"], "--max-upload-mb must be a finite number of at least 0.001, not inf"),
    (["--max-upload-mb", "1e-9"], "--max-upload-mb must be a finite number of at least 0.001, not 1e-09"),
    (["--timeout", "nan"], "--timeout must be a finite number of at least 0.001, not nan"),
    (["--idle-timeout", "0"], "--idle-timeout must be a finite number of at least 0.001, not 0"),
    (["--batch-wait-ms", "nan"], "--batch-wait-ms must be a finite number of at least 0, not nan"),
    (["--batch-wait-ms", "-1"], "--batch-wait-ms must be a finite number of at least 0, not -1"),
    (["--max-requests", "0"], "--max-requests must be at least 1, not 0"),
    (["--readers", "0"], "--readers must be at least 1, not 0"),
    (["--api-key", "clé"], "--api-key (or FAMA_API_KEY) must be printable ASCII without spaces: an HTTP header "
                           "cannot carry other characters, so no client could send it"),
    (["--max-cps", "0"], "--max-cps must be greater than 0, not 0.0"),
    (["--beam-size", "0"], "beam size must be at least 1, not 0"),
])
def test_bad_serve_options_exit_2_before_the_model_loads(args, message, monkeypatch) -> None:
    import fama_cli.serve_cmd as serve_cmd

    monkeypatch.setattr(serve_cmd, "load_for_cli", lambda *a, **k: pytest.fail("the model was loaded"))
    r = CliRunner().invoke(app, ["serve", "--model", str(MODEL), *args], env={"FAMA_API_KEY": ""})
    assert (r.exit_code, r.stderr, r.stdout) == (2, f"error: {message}\n", ""), r.stderr


def test_non_ascii_api_key_from_the_environment_is_refused(monkeypatch) -> None:
    import fama_cli.serve_cmd as serve_cmd

    monkeypatch.setattr(serve_cmd, "load_for_cli", lambda *a, **k: pytest.fail("the model was loaded"))
    r = CliRunner().invoke(app, ["serve", "--model", str(MODEL)], env={"FAMA_API_KEY": "sécret"})
    assert r.exit_code == 2 and r.stderr.startswith("error: --api-key (or FAMA_API_KEY) must be printable ASCII")


def test_a_port_in_use_fails_before_the_model_loads(monkeypatch) -> None:
    import fama_cli.serve_cmd as serve_cmd

    monkeypatch.setattr(serve_cmd, "load_for_cli", lambda *a, **k: pytest.fail("the model was loaded"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = CliRunner().invoke(app, ["serve", "--model", str(MODEL), "--port", str(port)])
    assert (r.exit_code, r.stderr) == (1, f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n")

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

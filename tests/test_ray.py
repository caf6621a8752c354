"""`--ray` (fama_core.cluster) on a local Ray with 2 CPUs, against the plain single-process run.

One Ray instance for the module (start-up costs seconds). The model is tests/fixtures/tiny_trained, the media
../shared/data/media plus broken files made here. Outputs must be byte-identical to the plain run: the same
chunks are decoded by the same `decode_chunks`, only on other processes and in other batches.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core.cluster import RAY_MISSING, RUNTIME_ENV, RayResources

from conftest import ROOT, require_shared

MODEL = ROOT / "tests" / "fixtures" / "tiny_trained"
CLIPS = ROOT / "tests" / "fixtures" / "tiny_trained" / "clips"
# float32 on both sides: `--dtype auto` may pick another precision in a Ray worker (its own thread count), and the
# JSON's word probabilities show the precision even where the words are the same
COMMON = ["--model", str(MODEL), "--device", "cpu", "--dtype", "float32", "--quiet"]


def run(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.stderr


def failures(stderr: str) -> list[str]:
    return sorted(line for line in stderr.splitlines() if line.startswith("failed:"))


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ray():
    if os.environ.get("CI", "").lower() != "true":
        pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=RUNTIME_ENV)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """The shared media, a 0-byte .wav, a text file named .wav and a path that does not exist."""
    media = require_shared("data", "media")
    bad = tmp_path_factory.mktemp("bad")
    (bad / "empty.wav").write_bytes(b"")
    (bad / "notes.wav").write_text("this is not audio\n")
    found = sorted(p for p in media.iterdir() if p.suffix in (".wav", ".flac", ".mp3"))
    return found + [bad / "empty.wav", bad / "notes.wav", bad / "missing.wav"]


@pytest.fixture(scope="module")
def plain(inputs, tmp_path_factory) -> tuple[Path, int, list[str]]:
    out = tmp_path_factory.mktemp("plain")
    code, err = run("transcribe", *inputs, "--lang", "en", "-o", out, "-f", "all", *COMMON)
    return out, code, failures(err)


def test_ray_run_matches_plain_run(ray, inputs, plain, tmp_path):
    plain_out, plain_code, plain_failed = plain
    code, err = run("transcribe", *inputs, "--lang", "en", "-o", tmp_path, "-f", "all", *COMMON, "--ray")
    assert (code, plain_code) == (1, 1)
    assert failures(err) == plain_failed and len(plain_failed) == 3, err
    assert [line.split(": ", 2)[2] for line in plain_failed] == [
        "empty file (0 bytes)", "no such file", "not a media file ffmpeg can decode"]
    got, want = tree(tmp_path), tree(plain_out)
    assert len(want) == 5 * (len(inputs) - 3)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name] == want[name], name


def test_skip_existing_under_ray(ray, inputs, plain, tmp_path):
    plain_out = plain[0]
    good = [p for p in inputs if (plain_out / f"{p.stem}.json").exists()][:3]
    for ext in ("txt", "srt"):  # the first input is complete, the second half done, the third not started
        (tmp_path / f"{good[0].stem}.{ext}").write_bytes((plain_out / f"{good[0].stem}.{ext}").read_bytes())
    (tmp_path / f"{good[1].stem}.txt").write_bytes((plain_out / f"{good[1].stem}.txt").read_bytes())
    before = (tmp_path / f"{good[0].stem}.txt").stat().st_mtime_ns
    args = ["transcribe", *good, "--lang", "en", "-o", tmp_path, "--txt", "--srt", "--model", str(MODEL),
            "--device", "cpu", "--ray"]
    code, err = run(*args, "--skip-existing")
    assert code == 0 and "2 done, 1 skipped, 0 failed" in err, err
    assert (tmp_path / f"{good[0].stem}.txt").stat().st_mtime_ns == before
    assert tree(tmp_path) == {n: b for n, b in tree(plain_out).items()
                              if n in {f"{p.stem}.{e}" for p in good for e in ("txt", "srt")}}
    code, err = run(*args)  # without --skip-existing or --overwrite: every input refused, nothing replaced
    assert code == 1 and len(failures(err)) == 3 and "output exists" in err


def _decoder_pids() -> set[int]:
    """Processes of the decoding actors (Ray names them after the map_batches class)."""
    pids = set()
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and b"ChunkDecoder" in (proc / "cmdline").read_bytes():
                pids.add(int(proc.name))
        except OSError:
            pass
    return pids


def test_killed_actor_is_restarted_and_outputs_are_identical(ray, inputs):
    """SIGKILL the decoding actor as soon as its first chunks are back: Ray restarts it, retries its batches,
    and every file still comes back once, identical to the plain run (one file per input, none twice)."""
    from fama_core.checkpoints import load_model
    from fama_core.cluster import RayExecutor
    from fama_core.inputs import InputFile
    from fama_core.pipeline import Pipeline, TranscribeOptions
    from fama_core.subtitles import format_transcript

    model, tokenizer = load_model(str(MODEL), device="cpu")
    pipeline = Pipeline(model, tokenizer, TranscribeOptions(language="en"), "tiny")
    items = [InputFile(str(p)) for p in inputs]
    want = {r.item.path: (r.error, r.transcript and format_transcript(r.transcript, "json"))
            for r in pipeline.run(items)}
    killed: list[int] = []

    def kill_once(seconds: float) -> None:
        if not killed:
            for pid in _decoder_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    executor = RayExecutor(pipeline, actors=1, threads=1, rows_per_call=2)
    got = [(r.item.path, r.error, r.transcript and format_transcript(r.transcript, "json"))
           for r in executor.run(items, progress=kill_once)]
    assert killed, "no decoding actor process was found to kill"
    time.sleep(0.5)
    assert not any(Path(f"/proc/{pid}").exists() and b"ChunkDecoder" in Path(f"/proc/{pid}/cmdline").read_bytes()
                   for pid in killed)
    assert sorted(p for p, _, _ in got) == sorted(want)  # every file exactly once
    assert {p: (e, t) for p, e, t in got} == want
    wall = time.perf_counter() - executor.timings["started"]
    assert 0 < executor.timings["busy"] < wall and 0 < executor.timings["first_result"] < wall


def test_ray_data_class_in_a_three_line_pipeline(ray):
    """FamaTranscriber as users compose it: rows of paths or bytes in, text/segments/language/error out."""
    from fama_core import transcribe
    from fama_core.cluster import FamaTranscriber

    clips = json.loads((CLIPS / "clips.json").read_text(encoding="utf-8"))
    rows = [{"path": str(CLIPS / f"{c['id']}.wav"), "bytes": (CLIPS / f"{c['id']}.wav").read_bytes(),
             "language": c["lang"]} for c in clips]
    rows.append({"path": "notes.wav", "bytes": b"this is not audio\n", "language": "en"})
    url = (CLIPS / "it_bread.wav").as_uri()  # file:// is read like s3:// or gs://, through pyarrow's file systems
    rows.append({"path": url, "bytes": None, "language": "it"})

    ds = ray.data.from_items(rows)
    ds = ds.map_batches(FamaTranscriber, fn_constructor_kwargs={"model": str(MODEL), "device": "cpu"},
                        compute=ray.data.ActorPoolStrategy(size=1), batch_size=8)
    out = {r["path"]: r for r in ds.take_all()}

    assert set(out) == {r["path"] for r in rows}
    assert "bytes" not in out["notes.wav"]
    assert out["notes.wav"]["error"] == "not a media file ffmpeg can decode"
    assert (out["notes.wav"]["text"], out["notes.wav"]["segments"]) == ("", "[]")
    for c in clips:
        r = out[str(CLIPS / f"{c['id']}.wav")]
        t = transcribe(CLIPS / f"{c['id']}.wav", model=str(MODEL), language=c["lang"], device="cpu", dtype="float32")
        assert r["error"] == "" and r["language"] == c["lang"]
        assert r["text"] == t.text and json.loads(r["segments"]) == t.to_dict()["segments"]
        assert r["duration"] == pytest.approx(t.duration)
    assert out[str(CLIPS / "en_cats.wav")]["text"] == "There are twelve cats on the table."
    assert {k: v for k, v in out[url].items() if k != "path"} == {
        k: v for k, v in out[str(CLIPS / "it_bread.wav")].items() if k not in ("path", "bytes")}


def test_executor_calls_run_on_the_actors_main_thread(ray):
    """The `--ray` executor's actor pool asks Ray Data for calls on the actor's main thread, the one that loaded
    the model (another thread decoded ~20 % slower: a second torch thread team and glibc arena)."""
    from fama_core.cluster import _main_thread_calls

    class _OnMainThread:  # defined here: Ray ships it by value (workers cannot import this test module)
        def __call__(self, batch):
            import threading

            batch["main"] = [threading.current_thread() is threading.main_thread()] * len(batch["id"])
            return batch

    assert _main_thread_calls(ray) == {"enable_true_multi_threading": True}  # this Ray has it
    ds = ray.data.range(4).map_batches(_OnMainThread, batch_size=2, compute=ray.data.ActorPoolStrategy(
        size=1, **_main_thread_calls(ray)))
    assert [bool(r["main"]) for r in ds.take_all()] == [True] * 4
    default = ray.data.range(2).map_batches(_OnMainThread, batch_size=2, compute=ray.data.ActorPoolStrategy(size=1))
    assert [bool(r["main"]) for r in default.take_all()] == [False] * 2  # what Ray Data does otherwise


def test_ray_data_class_loads_and_decodes_on_one_thread_of_its_own(monkeypatch):
    """Ray Data builds the class on one thread and calls it on another: the model is loaded and run on a thread of
    its own (a second thread with torch threads of its own slowed decoding 40-70 % on 2 cores)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    import fama_core.checkpoints as checkpoints
    import fama_core.pipeline as pipeline
    from fama_core.cluster import FamaTranscriber

    loads, decodes = set(), set()
    load, decode = checkpoints.load_model, pipeline.decode_chunks
    monkeypatch.setattr(checkpoints, "load_model", lambda *a, **k: loads.add(threading.get_ident()) or load(*a, **k))
    monkeypatch.setattr(pipeline, "decode_chunks",
                        lambda *a, **k: decodes.add(threading.get_ident()) or decode(*a, **k))
    transcriber = FamaTranscriber(str(MODEL), language="en", device="cpu")
    batch = {"path": np.array([str(CLIPS / "en_cats.wav")], dtype=object)}
    with ThreadPoolExecutor(1) as other:
        texts = [transcriber(batch)["text"][0], other.submit(transcriber, batch).result()["text"][0]]
    assert texts == ["There are twelve cats on the table."] * 2
    assert len(loads) == 1 and decodes == loads and threading.get_ident() not in loads


@pytest.mark.slow
def test_ray_lang_auto_and_translate_match_plain(ray, tmp_path):
    """--lang auto (a language-scoring pass, then decoding) and translation, against the plain run."""
    clips = sorted(CLIPS.glob("*.wav"))
    for task, lang in (("transcribe", ["--lang", "auto"]), ("translate", ["--to", "en"])):
        plain, on_ray = tmp_path / f"{task}-plain", tmp_path / f"{task}-ray"
        assert run(task, *clips, *lang, "-o", plain, "-f", "json", *COMMON)[0] == 0
        assert run(task, *clips, *lang, "-o", on_ray, "-f", "json", *COMMON, "--ray")[0] == 0
        assert tree(on_ray) == tree(plain)


def test_without_ray_one_line_and_exit_1(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    code, err = run("transcribe", CLIPS / "en_cats.wav", "-o", tmp_path, *COMMON, "--ray")
    assert code == 1 and err.strip().splitlines() == [f"error: {RAY_MISSING}"]
    assert list(tmp_path.iterdir()) == []


_LOCAL_RAY = """
import os, ray
from fama_core.cluster import connect

connect()
worker = ray.remote(num_cpus=1)(lambda: (os.getpid(), os.nice(0), ray.get_runtime_context().runtime_env))
print(*ray.get(worker.remote()))
"""


def test_a_local_ray_started_here_runs_the_job_at_normal_priority_on_its_own_workers(tmp_path):
    """`connect()` with no cluster to join starts a local Ray whose workers run at niceness 0 with no runtime
    environment (so the workers Ray starts with it serve the job, no new ones are started for a runtime env),
    and Ray's own notes stay off the user's stderr."""
    pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    short = tempfile.mkdtemp(prefix="fama-ray-", dir="/tmp")  # Ray's socket paths must stay short
    env = {**os.environ, "RAY_TMPDIR": short}
    env.pop("RAY_ADDRESS", None)
    try:
        done = subprocess.run([sys.executable, "-c", _LOCAL_RAY], env=env, capture_output=True, text=True,
                              timeout=120)
    finally:
        shutil.rmtree(short, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    _, nice, runtime_env = done.stdout.split(maxsplit=2)
    assert (nice, runtime_env.strip()) == ("0", "{}")
    assert not [line for line in done.stderr.splitlines() if "WARNING" in line], done.stderr


@pytest.mark.parametrize("cluster, device, expected", [
    ({"CPU": 16.0, "GPU": 4.0}, None, (4, 1, 1.0)),  # one replica per GPU
    ({"CPU": 16.0, "GPU": 4.0}, "cpu", (7, 2, 0.0)),  # CPU replicas of 2 threads, a CPU left for reading
    ({"CPU": 2.0}, None, (1, 2, 0.0)),
    ({"CPU": 1.0}, None, (1, 1, 0.0)),
])
def test_replicas_planned_from_the_cluster(cluster, device, expected):
    r = RayResources.plan(cluster, device)
    assert (r.actors, r.threads, r.gpus) == expected


def test_replica_plan_refuses_a_gpu_the_cluster_lacks():
    with pytest.raises(ValueError, match="no GPU"):
        RayResources.plan({"CPU": 8.0}, "cuda")


def test_a_replica_copies_its_model_on_one_thread_then_decodes_on_its_threads(monkeypatch):
    import torch

    from fama_core import cluster

    seen = []
    monkeypatch.setattr(cluster, "_resolve", lambda *args: seen.append(torch.get_num_threads()) or ("m", "t"))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        assert cluster._load_replica("model", None, "cpu", None) == ("m", "t")
        assert (seen, torch.get_num_threads()) == ([1], 3)  # no `threads`: as many as before
        assert cluster._load_replica("model", None, "cpu", 2) == ("m", "t")
        assert (seen, torch.get_num_threads()) == ([1, 1], 2)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_shared_model_gives_the_same_model_with_each_tensor_copied_once(dtype):
    """The replicas' model: equal weights and outputs, one shipped array per tensor (tied tensors stay one),
    each copied once into the replica's own memory."""
    import torch

    from fama_core import load_model
    from fama_core.cluster import SharedModel
    from fama_core.inputs import InputFile
    from fama_core.pipeline import Pipeline, TranscribeOptions
    from fama_core.precision import Int8Linear, PackedLinear

    model, tok = load_model(str(MODEL), device="cpu", dtype=dtype)
    shared = SharedModel.of(model, tok)
    got, got_tok = SharedModel.get(shared)
    assert got_tok.vocab_size == tok.vocab_size and got.precision == model.precision == dtype
    want_state, got_state = model.state_dict(), got.state_dict()
    assert list(got_state) == list(want_state)
    assert all(torch.equal(got_state[k], want_state[k]) for k in want_state)
    pointers = {a.__array_interface__["data"][0] for a in shared.arrays}
    tensors = [t for t in list(got.parameters()) + list(got.buffers()) if t.numel()]
    assert tensors and not any(t.data_ptr() in pointers for t in tensors)
    tensor_ids = {id(t) for t in list(model.parameters()) + list(model.buffers()) if t.numel()}
    # An int8 layer's weight sums and pin are rebuilt with it; a packed layer travels as its plain weight.
    extra = sum(2 * isinstance(m, Int8Linear) + isinstance(m, PackedLinear) for m in model.modules())
    assert len(shared.arrays) == len(tensor_ids) + extra
    clips = [InputFile(str(p)) for p in sorted(CLIPS.glob("en_*.wav"))]
    texts = [[r.transcript.text for r in Pipeline(m, t, TranscribeOptions(language="en")).run(clips)]
             for m, t in ((model, tok), (got, got_tok))]
    assert texts[0] == texts[1] and len(texts[0]) == len(clips) > 1


def test_shared_model_travels_through_the_object_store_as_mapped_arrays(ray):
    import torch

    from fama_core import load_model
    from fama_core.cluster import SharedModel

    model, tok = load_model(str(MODEL), device="cpu")
    shared = ray.get(ray.put(SharedModel.of(model, tok)))
    got, _ = shared.get()
    assert all(not a.flags.writeable for a in shared.arrays)  # Ray's store, mapped read-only
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), model.state_dict().values()))

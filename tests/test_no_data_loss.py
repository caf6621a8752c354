"""Every command that writes a file refuses, before any long work, to replace an input (ever) or an existing file
(without --overwrite): one line naming the file, a non-zero exit, every file as it was. Also: no fake score when
nothing could be scored, and option values refused before the work."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core.manifest import ManifestRow, write_manifest

from conftest import ROOT

TRAINED_TINY = ROOT / "tests" / "fixtures" / "tiny_trained"
CLIPS = TRAINED_TINY / "clips"
CLIP_TEXT = {"en_cats": "There are twelve cats on the table.", "en_bag": "Your bag is yellow."}


def fama(*args) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)
    return r.exit_code, r.stdout, r.stderr


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path) -> Path:
    """corpus/en_cats.wav + en_cats.txt, en_bag.wav + en_bag.txt (the trained tiny model's own clips)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in CLIP_TEXT.items():
        shutil.copy(CLIPS / f"{name}.wav", folder / f"{name}.wav")
        (folder / f"{name}.txt").write_text(text + "\n", encoding="utf-8")
    return folder


@pytest.fixture
def manifest(tmp_path, corpus) -> Path:
    path = tmp_path / "m.tsv"
    assert fama("data", "manifest", corpus, path, "--lang", "en")[0] == 0
    return path


# ----------------------------------------------------------------------------------------------- fama eval


def test_eval_report_never_replaces_the_manifest_or_an_audio_file(tmp_path, corpus, manifest):
    before = snapshot(tmp_path)
    for target in (manifest, corpus / "en_cats.wav"):
        for extra in ([], ["--overwrite"]):
            code, _, err = fama("eval", manifest, "--model", TRAINED_TINY, "--device", "cpu", "--report", target,
                                "--quiet", *extra)
            assert code == 2 and error_lines(err) == [
                f"error: --report {target} would replace an input; choose another name"], err
    assert snapshot(tmp_path) == before


def test_eval_report_replaces_an_existing_file_only_with_overwrite(tmp_path, manifest):
    report = tmp_path / "old.json"
    report.write_text("keep me")
    code, _, err = fama("eval", manifest, "--model", TRAINED_TINY, "--device", "cpu", "--report", report, "--quiet")
    assert code == 2 and error_lines(err) == [f"error: --report {report} exists; pass --overwrite to replace it"]
    assert report.read_text() == "keep me"
    code, _, err = fama("eval", manifest, "--model", TRAINED_TINY, "--device", "cpu", "--report", report, "--quiet",
                        "--overwrite")
    assert code == 0, err
    assert json.loads(report.read_text())["overall"]["utterances"] == 2


def test_score_report_never_replaces_hyp_or_ref(tmp_path):
    hyp, ref = tmp_path / "hyp.tsv", tmp_path / "ref.tsv"
    hyp.write_text("id\ttext\nu1\thello\n")
    ref.write_text("id\ttext\nu1\thello\n")
    for target in (hyp, ref):
        code, _, err = fama("eval", "--hyp", hyp, "--ref", ref, "--lang", "en", "--report", target, "--overwrite")
        assert code == 2 and f"--report {target} would replace an input" in err
    assert hyp.read_text() == ref.read_text() == "id\ttext\nu1\thello\n"


def test_eval_hand_made_tsv_without_n_frames(tmp_path):
    """A TSV of id, audio and reference (what docs/evaluation.md shows) is decoded and scored."""
    tsv = tmp_path / "hand.tsv"
    tsv.write_text("id\taudio\ttgt_text\tsrc_lang\n"
                   + "".join(f"{n}\t{CLIPS / n}.wav\t{t}\ten\n" for n, t in CLIP_TEXT.items()), encoding="utf-8")
    report = tmp_path / "r.json"
    code, out, err = fama("eval", tsv, "--model", TRAINED_TINY, "--device", "cpu", "--report", report)
    assert code == 0, err
    d = json.loads(report.read_text())
    assert d["overall"]["utterances"] == 2 and d["overall"]["ref_words"] == 11 and not d["failed"]


def test_eval_with_every_row_failing_prints_and_writes_no_score(tmp_path):
    bad = tmp_path / "bad.tsv"
    write_manifest(bad, [ManifestRow("gone", "nope.wav", 1, "x", src_lang="en", tgt_lang="en"),
                         ManifestRow("gone2", "nope2.wav", 1, "y", src_lang="en", tgt_lang="en")])
    report = tmp_path / "r.json"
    code, out, err = fama("eval", bad, "--model", TRAINED_TINY, "--device", "cpu", "--report", report)
    assert code == 1 and "WER" not in out and not report.exists(), out
    assert error_lines(err)[-1] == "error: no row could be decoded (2 failed); no report written"
    assert [line.split(":")[0] for line in error_lines(err)[:-1]] == ["failed", "failed"]
    code, out, _ = fama("eval", bad, "--model", TRAINED_TINY, "--device", "cpu", "--json")
    assert code == 1 and out == ""


# ------------------------------------------------------------------------------------------ fama data ...


def test_data_manifest_never_replaces_an_input_or_an_existing_file(tmp_path, corpus):
    before = snapshot(tmp_path)
    audio = corpus / "en_bag.wav"
    code, _, err = fama("data", "manifest", corpus, audio, "--lang", "en")
    assert code == 2 and error_lines(err) == [f"error: manifest {audio} would replace an input; choose another name"]
    for target in (audio, corpus / "en_bag.txt", corpus):  # an audio file, a transcript, the source folder
        code, _, err = fama("data", "manifest", corpus, target, "--lang", "en", "--overwrite")
        assert code == 2 and len(error_lines(err)) == 1, err
        assert "would replace an input" in err or "is a folder" in err
    other = tmp_path / "other.txt"
    other.write_text("mine")
    code, _, err = fama("data", "manifest", corpus, other, "--lang", "en")
    assert code == 2 and error_lines(err) == [f"error: manifest {other} exists; pass --overwrite to replace it"]
    assert snapshot(tmp_path) == {**before, "other.txt": b"mine"}
    table = tmp_path / "table.tsv"
    table.write_text(f"audio\ttext\n{audio}\tYour bag is yellow.\n")
    code, _, err = fama("data", "manifest", table, table, "--lang", "en", "--overwrite")
    assert code == 2 and "would replace an input" in err and table.read_text().startswith("audio\ttext\n")
    code, _, err = fama("data", "manifest", table, audio, "--lang", "en", "--overwrite")  # an audio file it names
    assert code == 2 and "would replace an input" in err and audio.read_bytes() == before["corpus/en_bag.wav"]
    code, _, err = fama("data", "manifest", corpus, other, "--lang", "en", "--overwrite")
    assert code == 0 and other.read_text().startswith("id\taudio\tn_frames"), err


def test_data_spm_never_replaces_an_existing_file(tmp_path, corpus, manifest):
    before = snapshot(tmp_path)
    prefix = corpus / "en_cats"  # PREFIX.txt is the corpus transcript en_cats.txt
    code, _, err = fama("data", "spm", manifest, "-o", prefix, "--vocab-size", "28")
    assert code == 2 and error_lines(err) == [
        f"error: output {prefix}.txt exists; pass --overwrite to replace it"], err
    named_txt = tmp_path / "m.txt"  # a manifest that PREFIX.txt would replace
    shutil.copy(manifest, named_txt)
    before["m.txt"] = named_txt.read_bytes()
    code, _, err = fama("data", "spm", named_txt, "-o", tmp_path / "m", "--vocab-size", "28", "--overwrite")
    assert code == 2 and error_lines(err) == [f"error: output {named_txt} would replace an input; choose another "
                                              "name"], err
    assert snapshot(tmp_path) == before
    fresh = tmp_path / "spm" / "s"
    code, _, err = fama("data", "spm", manifest, "-o", fresh, "--vocab-size", "28")
    assert code == 0, err
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["s.model", "s.txt"]  # no s.vocab beside them
    model = (fresh.parent / "s.model").read_bytes()
    code, _, err = fama("data", "spm", manifest, "-o", fresh, "--vocab-size", "28")
    assert code == 2 and "exists; pass --overwrite" in err
    assert fama("data", "spm", manifest, "-o", fresh, "--vocab-size", "28", "--overwrite")[0] == 0
    assert (fresh.parent / "s.model").read_bytes() == model


# -------------------------------------------------------------------------------------------- fama average


def _checkpoints(tmp_path: Path, shapes: tuple[int, int]) -> list[Path]:
    """Two fairseq-style checkpoints whose one parameter has the given shapes."""
    paths = []
    for n, rows in enumerate(shapes, 1):
        path = tmp_path / f"checkpoint_{n}.pt"
        torch.save({"model": {"encoder.w": torch.zeros(rows, 4)}, "args": {"arch": "x"}}, path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("last", ["0", "-1"])
def test_average_last_must_be_at_least_one(tmp_path, last):
    _checkpoints(tmp_path, (2, 2))
    code, _, err = fama("average", "--dir", tmp_path, "--last", last, "-o", tmp_path / "avg")
    assert code == 2 and error_lines(err) == [f"error: --last must be at least 1, not {last}"]
    assert not (tmp_path / "avg").exists()


def test_average_of_different_shapes_names_both_files_and_the_parameter(tmp_path):
    a, b = _checkpoints(tmp_path, (2, 3))
    code, _, err = fama("average", a, b, "-o", tmp_path / "avg", "--spm", CLIPS / "x.model")
    assert code == 1 and error_lines(err) == [
        f"error: {b}: parameter encoder.w has shape (3, 4), but (2, 4) in {a}; average checkpoints of one model "
        "only"], err
    assert not (tmp_path / "avg").exists()


# ------------------------------------------------------------------------------------ fama transcribe


def test_outputs_beside_inputs_in_a_read_only_folder_fail_before_decoding(tmp_path, monkeypatch):
    """Each input whose output folder cannot be written fails at once, undecoded; the others are transcribed."""
    import fama_core.pipeline

    ro, rw = tmp_path / "ro", tmp_path / "rw"
    for folder in (ro, rw):
        folder.mkdir()
        shutil.copy(CLIPS / "en_cats.wav", folder / "en_cats.wav")
    access = os.access  # root may write anywhere: the folder is read-only as far as os.access says
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else access(p, mode, **kw))
    decoded = []
    stream = fama_core.pipeline.stream_audio
    monkeypatch.setattr(fama_core.pipeline, "stream_audio", lambda p, *a, **k: decoded.append(p) or stream(p, *a, **k))
    code, _, err = fama("transcribe", ro / "en_cats.wav", rw / "en_cats.wav", "--txt", "--model", TRAINED_TINY,
                        "--device", "cpu", "--quiet")
    assert code == 1 and error_lines(err) == [
        f"failed: {ro / 'en_cats.wav'}: cannot write {ro / 'en_cats.txt'}: {ro} is not writable; choose another -o"]
    assert decoded == [str(rw / "en_cats.wav")]
    assert sorted(p.name for p in ro.iterdir()) == ["en_cats.wav"]
    assert (rw / "en_cats.txt").read_text() == "There are twelve cats on the table.\n"


def test_skip_existing_uses_the_outputs_each_input_owns(tmp_path, monkeypatch):
    """Run 1 names s2/talk.wav's outputs talk.wav.* (s3/talk.wav collided, and failed); run 2's inputs s1, s2
    give talk.wav to s1: s1 must still be transcribed, and s2 skipped, not transcribed again as talk.wav-2."""
    monkeypatch.chdir(tmp_path)
    for folder, clip in (("s1", "en_bag"), ("s2", "en_cats")):
        Path(folder).mkdir()
        shutil.copy(CLIPS / f"{clip}.wav", Path(folder) / "talk.wav")
    Path("s3").mkdir()
    Path("s3/talk.wav").write_text("not audio\n")
    common = ["-o", "out", "--txt", "--json", "--model", TRAINED_TINY, "--device", "cpu", "--beam-size", "1"]
    code, _, err = fama("transcribe", "s2/talk.wav", "s3/talk.wav", *common)
    assert code == 1 and sorted(os.listdir("out")) == ["talk.wav.json", "talk.wav.txt"], err
    before = Path("out/talk.wav.json").stat().st_mtime_ns
    code, _, err = fama("transcribe", "s1/talk.wav", "s2/talk.wav", *common, "--skip-existing")
    assert code == 0 and "1 done, 1 skipped, 0 failed" in err, err
    assert sorted(os.listdir("out")) == ["talk.wav-2.json", "talk.wav-2.txt", "talk.wav.json", "talk.wav.txt"]
    assert Path("out/talk.wav.json").stat().st_mtime_ns == before
    assert json.loads(Path("out/talk.wav-2.json").read_text())["source"] == "s1/talk.wav"
    assert Path("out/talk.wav-2.txt").read_text() == "Your bag is yellow.\n"
    assert Path("out/talk.wav.txt").read_text() == "There are twelve cats on the table.\n"
    for order in (["s1/talk.wav", "s2/talk.wav"], ["s2/talk.wav", "s1/talk.wav"]):  # done: both skipped
        code, _, err = fama("transcribe", *order, *common, "--skip-existing")
        assert code == 0 and "0 done, 2 skipped, 0 failed" in err, err
    assert len(os.listdir("out")) == 4


def test_skip_existing_from_another_folder_still_skips(tmp_path, monkeypatch):
    """A run from another working folder (the JSON's relative `source` no longer resolves) skips what is done."""
    (tmp_path / "rec").mkdir()
    shutil.copy(CLIPS / "en_bag.wav", tmp_path / "rec" / "talk.wav")
    common = ["--txt", "--json", "--model", TRAINED_TINY, "--device", "cpu", "--beam-size", "1"]
    monkeypatch.chdir(tmp_path)
    assert fama("transcribe", "rec", "-o", "out", *common)[0] == 0
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    code, _, err = fama("transcribe", tmp_path / "rec", "-o", tmp_path / "out", *common, "--skip-existing")
    assert code == 0 and "0 done, 1 skipped, 0 failed" in err, err
    assert sorted(os.listdir(tmp_path / "out")) == ["talk.json", "talk.txt"]


def test_library_evaluate_with_every_row_failing_raises_instead_of_a_perfect_score(tmp_path):
    from fama_core.evaluation import NothingScored, evaluate

    bad = tmp_path / "bad.tsv"
    write_manifest(bad, [ManifestRow("gone", "nope.wav", 1, "x", src_lang="en", tgt_lang="en")])
    with pytest.raises(NothingScored, match=r"^no row could be decoded \(1 failed\)$") as caught:
        evaluate(bad, TRAINED_TINY, device="cpu")
    assert [(f["id"], f["audio"]) for f in caught.value.failed] == [("gone", "nope.wav")]

"""Inputs are opened with ffmpeg under an allow-list of media demuxers (`audio.INPUT_FORMATS`): a playlist or a
concat list, which would make ffmpeg open the files it names, is refused with one line, by the CLI and the
library alike (`fama serve` has its own test in test_serve.py); every media container fama looks for in
folders still decodes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core.audio import INPUT_FORMATS, AudioError, ffmpeg_exe, load_audio
from fama_core.inputs import MEDIA_EXTENSIONS

from conftest import ROOT

MODEL = ROOT / "tests" / "fixtures" / "tiny_trained"
CLIPS = MODEL / "clips"
CATS = "There are twelve cats on the table."


def encode(source: Path, target: Path, *args: str) -> Path:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(source), *args, str(target)],
                   check=True)
    return target


@pytest.fixture
def secret(tmp_path) -> Path:
    """A media file that playlists name; fama reads it when given it, never through a playlist."""
    (tmp_path / "private").mkdir()
    return encode(CLIPS / "en_cats.wav", tmp_path / "private" / "secret.ts", "-f", "mpegts")


def lists(folder: Path, secret: Path) -> dict[str, tuple[Path, str]]:
    """name -> (a list naming `secret`, the demuxer ffmpeg would pick for it)."""
    hls = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{secret}\n#EXT-X-ENDLIST\n"
    concat = f"ffconcat version 1.0\nfile {secret.name}\n"
    (folder / "talk.m3u8").write_text(hls)
    (folder / "private" / "list.ffconcat").write_text(concat)  # beside the file: ffconcat opens it as "safe"
    return {"talk.m3u8": (folder / "talk.m3u8", "hls"),
            "list.ffconcat": (folder / "private" / "list.ffconcat", "concat")}


def test_playlists_are_refused_by_the_cli_with_one_line(tmp_path, secret) -> None:
    out = tmp_path / "out"
    playlists = lists(tmp_path, secret)
    r = CliRunner().invoke(app, ["transcribe", *[str(p) for p, _ in playlists.values()], str(CLIPS / "en_bag.wav"),
                                 "--model", str(MODEL), "--device", "cpu", "--lang", "en", "-o", str(out), "--txt",
                                 "--quiet"])
    failed = [line for line in r.stderr.splitlines() if line.startswith("failed: ")]
    assert r.exit_code == 1 and len(failed) == 2 == len(r.stderr.splitlines()), r.stderr
    assert sorted(failed) == sorted(
        f"failed: {path}: refused: ffmpeg reads it as {demuxer!r}, not one of the media formats fama opens "
        "(playlists, concat lists, image sequences and other inputs that name further files or URLs are never "
        "opened); give the media file itself" for path, demuxer in playlists.values())
    assert sorted(p.name for p in out.iterdir()) == ["en_bag.txt"]  # the batch went on; nothing of the secret
    assert CATS not in r.stdout + r.stderr
    r = CliRunner().invoke(app, ["transcribe", str(secret), "--model", str(MODEL), "--device", "cpu", "--lang",
                                 "en", "-o", "-", "-f", "txt", "--quiet"])
    assert r.exit_code == 0 and r.stdout == CATS + "\n"  # the file itself is fine


def test_the_library_refuses_playlists_too(tmp_path, secret) -> None:
    for path, demuxer in lists(tmp_path, secret).values():
        with pytest.raises(AudioError, match=rf"^{path}: refused: ffmpeg reads it as '{demuxer}'"):
            load_audio(path)


def test_no_demuxer_that_opens_other_inputs_is_allowed() -> None:
    # the demuxers of ffmpeg that read further files or URLs named inside their input
    assert INPUT_FORMATS.isdisjoint({"hls", "dash", "concat", "ffconcat", "imf", "dvdvideo", "sdp", "rtsp", "rtp",
                                     "image2", "image2pipe", "avisynth", "webm_dash_manifest", "ffmetadata",
                                     "tee", "data", "subfile", "lavfi", "tty", "bin"})


# container -> ffmpeg output arguments (audio only; the codec ffmpeg picks unless it has no default encoder)
CONTAINERS = {".flac": [], ".mp3": [], ".ogg": [], ".oga": ["-f", "ogg"], ".opus": [], ".m4a": [], ".aac": [],
              ".wma": [], ".aif": [], ".aiff": [], ".ac3": [], ".webm": [], ".mp4": [], ".m4v": ["-f", "mp4"],
              ".mkv": [], ".mov": [], ".avi": [], ".mpg": [], ".mpeg": [], ".ts": [], ".mts": ["-f", "mpegts"],
              ".3gp": ["-c:a", "aac"], ".wmv": [], ".flv": ["-ar", "22050"], ".wav": [],
              ".amr": ["-ar", "8000", "-c:a", "libopencore_amrnb"]}


def test_every_media_extension_fama_looks_for_still_decodes(tmp_path) -> None:
    assert set(CONTAINERS) == MEDIA_EXTENSIONS, "a new media extension needs a case here"
    missing_encoder = []
    for ext, args in CONTAINERS.items():
        target = tmp_path / f"clip{ext}"
        try:
            encode(CLIPS / "en_bag.wav", target, *args)
        except subprocess.CalledProcessError:
            missing_encoder.append(ext)  # this ffmpeg cannot write it; decoding it is ffmpeg's business
            continue
        assert abs(len(load_audio(target)) / 16000 - 2.79) < 0.2, ext
    assert missing_encoder in ([], [".amr"])


def test_a_list_on_stdin_is_refused(tmp_path, secret) -> None:
    """Piped, the input may open nothing but the pipe: a concat list naming a file fails as any list does."""
    concat = f"ffconcat version 1.0\nfile {secret}\n".encode()
    r = CliRunner().invoke(app, ["transcribe", "-", "--model", str(MODEL), "--device", "cpu", "--lang", "en", "-o",
                                 "-", "-f", "txt", "--quiet"], input=concat)
    assert r.exit_code == 1 and r.stdout == "" and CATS not in r.stderr
    assert r.stderr.splitlines() == ["failed: <stdin>: refused: not one of the media formats fama opens (playlists, "
                                     "concat lists, image sequences and other inputs that name further files or "
                                     "URLs are never opened); give the media file itself"]

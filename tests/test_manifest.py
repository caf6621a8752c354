from pathlib import Path

import pytest

from fama_core.manifest import COLUMNS, ManifestRow, n_frames_for_samples, read_manifest, write_manifest


def _rows() -> list[ManifestRow]:
    return [
        ManifestRow("u1", "wav/u1.wav", 298, "Il gatto è nero.", "espeak:it", "The cat is black.", "en", "it"),
        ManifestRow("u2", "/abs/long.wav:16000:32000", 198, 'Say "hi"', "fest:kal", "", "en", "en",
                    extra={"corpus": "tatoeba"}),
    ]


def test_round_trip_keeps_every_field_and_extra_columns(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.tsv"
    write_manifest(path, _rows())
    assert path.read_text(encoding="utf-8").splitlines()[0].split("\t") == [*COLUMNS, "corpus"]
    back = read_manifest(path)
    assert back[0] == ManifestRow(**{**_rows()[0].__dict__, "extra": {"corpus": ""}})
    assert back[1] == _rows()[1]
    assert [p.name for p in path.parent.iterdir()] == ["m.tsv"]  # no temporary file left behind


def test_offsets_and_relative_paths(tmp_path: Path) -> None:
    whole, clip = _rows()
    assert (whole.path, whole.offset, whole.length) == ("wav/u1.wav", None, None)
    assert (clip.path, clip.offset, clip.length) == ("/abs/long.wav", 16000, 32000)
    assert whole.audio_path(tmp_path) == tmp_path / "wav" / "u1.wav"
    assert clip.audio_path(tmp_path) == Path("/abs/long.wav")
    odd = ManifestRow("x", "C:/data/a:b.wav", 0, "")  # colons that are not an offset:length suffix
    assert (odd.path, odd.offset) == ("C:/data/a:b.wav", None)


def test_fairseq_asr_manifest_without_optional_columns(tmp_path: Path) -> None:
    path = tmp_path / "asr.tsv"
    path.write_text("id\taudio\tn_frames\ttgt_text\tspeaker\nA\ta.wav\t10\thello\tspk\n\n", encoding="utf-8")
    (row,) = read_manifest(path)
    assert (row.id, row.n_frames, row.speaker, row.src_lang) == ("A", 10, "spk", "")


def test_n_frames_for_samples() -> None:
    assert [n_frames_for_samples(n) for n in (0, 399, 400, 559, 560, 16000)] == [0, 0, 1, 1, 2, 98]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"m\.tsv:1: empty manifest"),
        ("id\taudio\ttgt_text\n", r"m\.tsv:1: missing column\(s\) n_frames"),
        ("id\taudio\tn_frames\ttgt_text\na\tb.wav\t1\n", r"m\.tsv:2: expected 4 tab-separated fields, got 3"),
        ("id\taudio\tn_frames\ttgt_text\na\tb.wav\t1\tx\nb\tc.wav\tten\ty\n", r"m\.tsv:3: n_frames 'ten'"),
        ("id\taudio\tn_frames\ttgt_text\na\tb.wav\t1\tx\na\tc.wav\t2\ty\n", r"m\.tsv:3: duplicate id 'a'"),
        ("id\taudio\tn_frames\ttgt_text\na\t\t1\tx\n", r"m\.tsv:2: empty audio field"),
    ],
)
def test_bad_input_names_file_and_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "m.tsv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_manifest(path)


def test_write_rejects_tabs_and_newlines_and_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "m.tsv"
    write_manifest(path, _rows())
    before = path.read_bytes()
    with pytest.raises(ValueError, match="'bad' has a tab or line break"):
        write_manifest(path, [ManifestRow("bad", "a.wav", 1, "two\nlines")])
    assert path.read_bytes() == before
    assert len(list(tmp_path.iterdir())) == 1


def test_byte_order_mark_is_not_part_of_the_header(tmp_path: Path) -> None:
    path = tmp_path / "m.tsv"
    path.write_bytes("id\taudio\tn_frames\ttgt_text\na\tb.wav\t1\tcaffè\n".encode("utf-8-sig"))
    assert read_manifest(path) == [ManifestRow("a", "b.wav", 1, "caffè")]


def test_latin1_manifest_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "m.tsv"
    path.write_bytes("id\taudio\tn_frames\ttgt_text\na\tb.wav\t1\tok\nb\tc.wav\t1\tcaffè\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"m\.tsv:3: not UTF-8 text \(byte 0xe8\); save the manifest as UTF-8"):
        read_manifest(path)

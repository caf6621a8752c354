"""`fama eval` and `fama_core.evaluate`: hand-computed scores of --hyp/--ref, gate exit codes, usage errors,
and end-to-end runs of the tiny random-weight FBK model on real media (its output is gibberish, so those tests
check the report, not the scores)."""

import json
import math

import pytest
from typer.testing import CliRunner

from fama_cli.main import app
from fama_core.evaluation import EvalError, EvalOptions, EvalReport, evaluate, evaluate_files, plan
from fama_core.manifest import ManifestRow, write_manifest
from fama_core.scoring import WerResult

from conftest import ROOT, require_shared

runner = CliRunner()
TINY = ("fixtures", "fbk_reference", "tiny", "checkpoint.pt")
TRAINED_TINY = ROOT / "tests" / "fixtures" / "tiny_trained"  # trained on espeak voices (its README)
TRAINED_CLIPS = TRAINED_TINY / "clips"
# Real recordings are outside the trained tiny model's synthetic training voices: it writes words of the right
# language that are mostly wrong (WER about 100 %), but its characters are far from random; a decoding fault
# (a wrong language tag, a garbled or empty hypothesis, misaligned references) pushes CER to 100 % or above.
REAL_SPEECH_MAX_CER = 90.0
# On clips of its own synthetic voices the model is good: a fault that the real-speech bound cannot see (rows
# swapped between hypotheses and references, a clip decoded with the other language) shows as WER >> 25 %.
OWN_VOICES_MAX_WER = 25.0


def fama(*args: str):
    return runner.invoke(app, ["eval", *map(str, args)])


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------- --hyp/--ref: ASR

IT_REF = "id\ttext\nu1\tPerché l'acqua costa 1.000 euro?\nu2\tC'è un po' di sole.\n"
IT_HYP = "id\ttext\nu2\tc'è un po di sole\nu1\tperche l’acqua costa mille euro\n"  # ids in another order


def test_hyp_ref_tsv_italian(tmp_path):
    # it: "perché l acqua costa 1000 euro" vs "perche l acqua costa mille euro": 2 S of 6 words;
    #     "c è un po di sole" == "c è un po di sole": 0 of 6  -> WER 2/12
    # CER: perché/perche 1 + 1000/mille 5 (4 S + 1 I) over 30 + 17 reference characters -> 6/47
    # raw: Perché/perche, l'acqua/l’acqua, 1.000/mille, euro?/euro (4 of 5) + C'è/c'è, po'/po, sole./sole
    #      (3 of 5) -> 7/10
    ref, hyp = write(tmp_path / "ref.tsv", IT_REF), write(tmp_path / "hyp.tsv", IT_HYP)
    r = fama("--hyp", hyp, "--ref", ref, "--lang", "it", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["overall"]["wer"] == pytest.approx(100 * 2 / 12)
    assert d["overall"]["cer"] == pytest.approx(100 * 6 / 47)
    assert d["overall"]["raw_wer"] == pytest.approx(100 * 7 / 10)
    assert (d["overall"]["substitutions"], d["overall"]["deletions"], d["overall"]["insertions"]) == (2, 0, 0)
    assert [u["id"] for u in d["utterances"]] == ["u1", "u2"]  # worst first
    assert d["groups"]["it"]["wer"] == d["overall"]["wer"]
    # English rules keep "l'acqua", "c'è" whole and 1.000 as a decimal: 2 errors of 5 + 5 words
    r = fama("--hyp", hyp, "--ref", ref, "--lang", "en", "--json")
    assert json.loads(r.stdout)["overall"]["wer"] == pytest.approx(100 * 2 / 10)


EN_REF = "It costs 1,000 dollars, not 2,500.\nDon't stop the students' books.\n"
EN_HYP = "it costs 1000 dollars not 2500\ndont stop the students books\n"


def test_hyp_ref_plain_lines_english_and_summary(tmp_path):
    # en: line 1 normalises to the same 6 words; "don't" vs "dont" is 1 S of 5 -> WER 1/11
    # raw: It/it, 1,000/1000, dollars,/dollars, 2,500./2500 + Don't/dont, students'/students, books./books -> 7/11
    ref, hyp = write(tmp_path / "ref.txt", EN_REF), write(tmp_path / "hyp.txt", EN_HYP)
    r = fama("--hyp", hyp, "--ref", ref, "--lang", "en")
    assert r.exit_code == 0, r.output
    assert "all: WER 9.09 (S 1 D 0 I 0 N 11)" in r.stdout
    assert "raw WER 63.64" in r.stdout
    rep = evaluate_files(hyp, ref, lang="en")
    assert rep.overall.wer == pytest.approx(100 / 11) and rep.overall.raw_wer == pytest.approx(700 / 11)
    assert rep.utterances[0]["id"] == "2"  # plain lines: the id is the line number


@pytest.mark.parametrize("max_wer, code", [(9.0, 1), (9.09, 1), (9.1, 0), (100, 0)])
def test_gate_max_wer_exit_codes(tmp_path, max_wer, code):
    ref, hyp = write(tmp_path / "ref.txt", EN_REF), write(tmp_path / "hyp.txt", EN_HYP)  # WER 9.0909...
    r = fama("--hyp", hyp, "--ref", ref, "--lang", "en", "--max-wer", max_wer, "--quiet")
    assert r.exit_code == code, r.output
    assert r.stdout == ""
    assert ("gate failed: WER 9.09 > --max-wer" in r.stderr) == (code == 1)


# ----------------------------------------------------------------------------------------- --hyp/--ref: ST

ST_REF = ("id\ttgt_text\tsrc_lang\ttgt_lang\n"
          "s1\tPerché l'acqua è fredda?\ten\tit\n"
          "s2\tIl mio numero preferito è 26.\ten\tit\n"
          "s3\tUn po' di sole, per favore.\ten\tit\n"
          "s4\tThe water is cold.\tit\ten\n")
ST_HYP = [{"id": "s1", "text": "Perché l'acqua è calda?"}, {"id": "s2", "text": "Il mio numero preferito è 26."},
          {"id": "s3", "text": "Un po' di sole."}, {"id": "s4", "text": "The water is cold."}]


def _bleu(matches, totals, hyp_len, ref_len):
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(sum(math.log(m / t) for m, t in zip(matches, totals)) / 4)


# 13a tokens: "calda ?", "26 .", "sole , per favore .", "cold ."; the apostrophe and accents stay in the word.
# s1 (5 tokens): n-gram matches 4/5 2/4 1/3 0/2;  s2 (7): all match 7/7 6/6 5/5 4/4;
# s3 hyp "Un po' di sole ." (5) vs ref (8): 5/5 3/4 2/3 1/2;  s4 (5): 5/5 4/4 3/3 2/2
EN_IT_BLEU = _bleu([16, 11, 8, 5], [17, 14, 11, 8], 17, 20)  # 63.82
ALL_BLEU = _bleu([21, 15, 11, 7], [22, 18, 14, 10], 22, 25)  # 70.96


def test_hyp_ref_json_st_bleu_by_hand(tmp_path):
    ref = write(tmp_path / "ref.tsv", ST_REF)
    hyp = write(tmp_path / "hyp.json", json.dumps(ST_HYP, ensure_ascii=False))
    r = fama("--hyp", hyp, "--ref", ref, "--task", "st", "--report", tmp_path / "out" / "report.json")
    assert r.exit_code == 0, r.output
    assert f"all: BLEU {ALL_BLEU:.2f}" in r.stdout and f"en-it: BLEU {EN_IT_BLEU:.2f}" in r.stdout
    assert "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" in r.stdout
    d = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert d["overall"]["bleu"] == pytest.approx(ALL_BLEU)
    assert d["overall"]["brevity_penalty"] == pytest.approx(math.exp(1 - 25 / 22))
    assert d["groups"]["en-it"]["bleu"] == pytest.approx(EN_IT_BLEU)
    assert d["groups"]["it-en"]["bleu"] == pytest.approx(100) and d["groups"]["it-en"]["chrf"] == pytest.approx(100)
    assert d["utterances"][-1]["chrf"] == pytest.approx(100) and d["utterances"][0]["id"] in ("s1", "s3")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["report.json"]  # no temporary file left
    # a {id: text} JSON object works the same; the gate at the hand-computed value
    hyp2 = write(tmp_path / "hyp2.json", json.dumps({h["id"]: h["text"] for h in ST_HYP}))
    assert fama("--hyp", hyp2, "--ref", ref, "--task", "st", "--min-bleu", 70.9, "-q").exit_code == 0
    r = fama("--hyp", hyp2, "--ref", ref, "--task", "st", "--min-bleu", 71, "-q")
    assert r.exit_code == 1 and f"gate failed: BLEU {ALL_BLEU:.2f} < --min-bleu 71" in r.stderr


# ----------------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize("args, message", [
    ([], "give a MANIFEST"),
    (["m.tsv", "--hyp", "hyp.txt", "--ref", "ref.txt"], "a MANIFEST only go"),
    (["--hyp", "hyp.txt"], "--hyp and --ref go together"),
    (["--hyp", "hyp.txt", "--ref", "ref.txt", "--model", "x", "--beam-size", "3"], "--model, --beam-size"),
    (["--hyp", "hyp.txt", "--ref", "nope.txt"], "nope.txt: no such file"),
    (["--hyp", "hyp.txt", "--ref", "short.txt"], "hypothesis ids of hyp.txt are not in short.txt: 2"),
    (["--hyp", "hyp.txt", "--ref", "ref.txt", "--task", "st", "--max-wer", "10"], "--max-wer gates WER"),
    (["--hyp", "hyp.txt", "--ref", "ref.txt", "--min-bleu", "10"], "--min-bleu gates BLEU"),
    (["--hyp", "hyp.txt", "--ref", "ref.txt", "--task", "mt"], "--task must be asr or st"),
    (["m.tsv", "--to", "it"], "--to is the target language"),
    (["m.tsv", "--task", "st", "--lang", "it"], "--lang is the spoken language"),
    (["missing.tsv"], "cannot read manifest"),
    (["m.tsv", "--report", "."], "error: --report . is a folder; give a file name"),
    (["m.tsv", "--dtype", "float8"], "unknown dtype"),
    (["m.tsv", "--beam-size", "0"], "at least 1"),
    (["bad.tsv"], "missing column(s)"),
    (["m.tsv", "--model", "no/such/model.pt"], "cannot load model"),
])
def test_usage_errors_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "hyp.txt", EN_HYP)
    write(tmp_path / "ref.txt", EN_REF)
    write(tmp_path / "short.txt", "one line\n")
    write(tmp_path / "bad.tsv", "id\taudio\nx\ty.wav\n")
    write_manifest(tmp_path / "m.tsv", [ManifestRow("a", "a.wav", 100, "hello", src_lang="en", tgt_lang="en")])
    r = fama(*args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_plan_references_languages_and_directions():
    rows = [ManifestRow("a", "a.wav", 1, "hello", src_lang="en", tgt_lang="en"),  # ASR row: tgt_text
            ManifestRow("b", "b.wav", 1, "ciao", src_text="hi", src_lang="en", tgt_lang="it"),  # ST row
            ManifestRow("c", "c.wav", 1, "hello", src_text="ciao", src_lang="it", tgt_lang="en")]
    items, skipped = plan(rows, EvalOptions("asr"))
    assert [(i.lang, i.label, i.ref) for i in items] == [("en", "en", "hello"), ("en", "en", "hi"),
                                                          ("it", "it", "ciao")]
    items, skipped = plan(rows, EvalOptions("st"))
    assert [(i.lang, i.label, i.ref) for i in items] == [("it", "en-it", "ciao"), ("en", "it-en", "hello")]
    assert skipped == 1  # the transcription row
    items, skipped = plan(rows, EvalOptions("st", to="it"))
    assert [i.row.id for i in items] == ["b"] and skipped == 2
    with pytest.raises(EvalError, match="no src_text, and tgt_text is in it"):
        plan([ManifestRow("x", "x.wav", 1, "ciao", src_lang="en", tgt_lang="it")], EvalOptions("asr"))
    with pytest.raises(EvalError, match="give the spoken language"):
        plan([ManifestRow("x", "x.wav", 1, "ciao")], EvalOptions("asr"))
    assert plan([ManifestRow("x", "x.wav", 1, "ciao")], EvalOptions("asr", language="it"))[0][0].lang == "it"
    with pytest.raises(EvalError, match="no rows to evaluate"):
        plan(rows[:1], EvalOptions("st"))


# ----------------------------------------------------------------------------------------- end to end, tiny model

CLIPS = {"leopard_en": "en", "cheetah_en": "en", "leopard_it": "it", "cheetah_it": "it"}


def _transcripts(media) -> dict[str, str]:
    lines = (media / "manifest.tsv").read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[1:]]
    return {r["file"].rsplit(".", 1)[0]: r["transcript"] for r in rows}


@pytest.fixture(scope="module")
def media():
    return require_shared("data", "media")


@pytest.fixture(scope="module")
def tiny_path():
    return require_shared(*TINY)


@pytest.fixture(scope="module")
def tiny(tiny_path):
    from fama_core.checkpoints import load_model

    return load_model(tiny_path, device="cpu", dtype="float32")


def _asr_manifest(path, media):
    text = _transcripts(media)
    rows = [ManifestRow(n, str(media / f"{n}.wav"), 0, text[n], src_lang=lang, tgt_lang=lang)
            for n, lang in CLIPS.items()]
    # a 2 s slice (offset 1 s) of a file already used whole, and a row whose transcript is in src_text
    rows.append(ManifestRow("leopard_en_slice", f"{media / 'leopard_en.wav'}:16000:32000", 198, "",
                            src_text="is the apostle of", src_lang="en", tgt_lang="en"))
    write_manifest(path, rows)
    return path


def test_eval_manifest_end_to_end(tmp_path, media, tiny_path):
    manifest = _asr_manifest(tmp_path / "test.tsv", media)
    report = tmp_path / "report.json"
    r = fama(manifest, "--model", tiny_path, "--task", "asr", "--greedy", "--device", "cpu", "--report", report,
             "--max-wer", 5)
    assert r.exit_code == 1, r.output  # gibberish (greedy CTC of random weights: nothing) is far above 5 %
    assert "gate failed: WER" in r.stderr and "all: WER" in r.stdout and "RTF" in r.stdout
    d = json.loads(report.read_text(encoding="utf-8"))
    assert list(d) == ["task", "overall", "groups", "model", "options", "audio_seconds", "decode_seconds", "rtf",
                       "skipped", "failed", "utterances"]
    assert d["task"] == "asr" and d["model"] == str(tiny_path)
    assert d["options"]["decode"]["greedy"] is True and d["options"]["device"] == "cpu"
    assert d["rtf"] > 0 and d["decode_seconds"] > 0
    utts = d["utterances"]
    assert sorted(u["id"] for u in utts) == sorted([*CLIPS, "leopard_en_slice"])
    seconds = {u["id"]: u["seconds"] for u in utts}
    assert seconds["leopard_en_slice"] == 2.0 and seconds["leopard_en"] > 5
    assert d["audio_seconds"] == pytest.approx(sum(seconds.values()), abs=1e-2)
    o = d["overall"]
    assert o["wer"] >= 0 and o["utterances"] == 5
    assert o["ref_words"] == sum(u["ref_words"] for u in utts) > 40
    assert o["wer"] == pytest.approx(100 * sum(u["errors"] for u in utts) / o["ref_words"])
    assert [u["wer"] for u in utts] == sorted((u["wer"] for u in utts), reverse=True)
    assert set(d["groups"]) == {"en", "it"}
    assert d["groups"]["it"]["ref_words"] == sum(u["ref_words"] for u in utts if u["lang"] == "it")
    assert next(u for u in utts if u["id"] == "leopard_en_slice")["ref"] == "is the apostle of"

    r = fama(manifest, "--model", tiny_path, "--greedy", "--device", "cpu", "--max-wer", 100000, "--quiet")
    assert r.exit_code == 0, r.output
    assert r.stdout == "" and r.stderr == ""


def test_evaluate_library_st_beam_and_slices(media, tiny):
    """Beam search (kept short), ST directions, relative paths and slices; each hypothesis is what decoding
    that clip alone gives (batching and slicing change nothing)."""
    import torch

    from fama_core.audio import load_audio
    from fama_core.decoding import DecodeOptions
    from fama_core.pipeline import decode_chunks

    model, tok = tiny
    rows = [ManifestRow("en1", "cheetah_en.wav", 0, "Oggi si usano solo i binari uno e tre.", src_lang="en",
                        tgt_lang="it"),
            ManifestRow("it1", "cheetah_it.wav:8000:40000", 0, "From the pass one climbs to the summit.",
                        src_lang="it", tgt_lang="en"),
            ManifestRow("en_asr", "leopard_en.wav", 0, "Mr. Quilter", src_lang="en", tgt_lang="en")]
    rep = evaluate(rows, (model, tok), task="st", base=media, model_name="tiny", beam_size=2, max_len_b=6,
                   batch_size=2)
    assert isinstance(rep, EvalReport) and rep.model == "tiny" and rep.skipped == 1
    assert set(rep.groups) == {"en-it", "it-en"} and rep.overall.utterances == 2
    assert rep.overall.signature.startswith("nrefs:1|case:mixed") and rep.overall.bleu >= 0
    assert rep.options["decode"]["beam_size"] == 2 and rep.options["batch_size"] == 2 and rep.rtf > 0
    by_id = {u["id"]: u for u in rep.utterances}
    assert by_id["it1"]["seconds"] == 2.5 and by_id["it1"]["audio"].endswith(":8000:40000")
    clip = torch.from_numpy(load_audio(media / "cheetah_it.wav")[8000:48000])
    tokens = decode_chunks(model, [clip], [tok.lang_tag_id("en")], DecodeOptions(beam_size=2, max_len_b=6))[0][0]
    assert by_id["it1"]["hyp"] == " ".join(tok.decode(tokens).split()) != ""
    assert json.loads(rep.to_json())["rtf"] == pytest.approx(rep.rtf, abs=1e-4)

    with pytest.raises(EvalError, match="no language tag"):
        evaluate([ManifestRow("x", "cheetah_it.wav", 0, "x", src_lang="de")], (model, tok), base=media)


# ----------------------------------------------------------------------------------------- trained tiny model


def test_trained_tiny_model_scores(tmp_path, media):
    """Real scores of a trained model through `evaluate`, within the bounds stated above; batching (1 or 16 rows
    per batch) changes no hypothesis."""
    from fama_core.checkpoints import load_model

    pair = load_model(TRAINED_TINY, device="cpu", dtype="float32")
    manifest = _asr_manifest(tmp_path / "test.tsv", media)
    rep = evaluate(manifest, pair, task="asr", batch_size=16)
    assert isinstance(rep.overall, WerResult) and rep.overall.utterances == 5 and not rep.failed
    assert rep.overall.cer <= REAL_SPEECH_MAX_CER and all(u["hyp"] for u in rep.utterances)
    one = evaluate(manifest, pair, task="asr", batch_size=1)
    assert {u["id"]: u["hyp"] for u in one.utterances} == {u["id"]: u["hyp"] for u in rep.utterances}

    rows = [ManifestRow(c["id"], f"{c['id']}.wav", 0, c["text"], src_lang=c["lang"], tgt_lang=c["lang"])
            for c in json.loads((TRAINED_CLIPS / "clips.json").read_text(encoding="utf-8"))]
    own = evaluate(rows, pair, task="asr", base=TRAINED_CLIPS)
    assert own.overall.utterances == len(rows) and own.overall.wer <= OWN_VOICES_MAX_WER


# ----------------------------------------------------------------------------------------- bad rows and files


def _clips_manifest(path, text_bytes=None):
    header = "id\taudio\tn_frames\ttgt_text\tspeaker\tsrc_text\tsrc_lang\ttgt_lang\n"
    body = (f"cats\t{TRAINED_CLIPS / 'en_cats.wav'}\t100\tThere are twelve cats on the table.\t\t\ten\ten\n"
            "gone\tnope.wav\t100\tAnything.\t\t\ten\ten\n"
            f"bag\t{TRAINED_CLIPS / 'en_bag.wav'}\t100\tYour bag is yellow.\t\t\ten\ten\n"
            f"past\t{TRAINED_CLIPS / 'en_bag.wav'}:0:9999999\t100\tYour bag.\t\t\ten\ten\n")
    path.write_bytes((header + body).encode("utf-8-sig"))  # with a byte-order mark
    return path


def test_failed_rows_are_reported_and_the_rest_scored(tmp_path):
    """A row with missing audio, or a slice past the end of its file, fails alone (a stderr line naming it, a
    `failed` entry in the report, exit 1 even though the gate passes); the other rows are decoded and scored."""
    manifest = _clips_manifest(tmp_path / "bom.tsv")
    report = tmp_path / "r.json"
    r = fama(manifest, "--model", TRAINED_TINY, "--device", "cpu", "--report", report, "--max-wer", 100)
    assert r.exit_code == 1, r.output
    assert "failed: row gone (nope.wav):" in r.stderr and "no such file" in r.stderr
    assert "failed: row past (" in r.stderr and "are past the end of" in r.stderr
    assert "error: 2 row(s) failed and were not scored" in r.stderr and "gate failed" not in r.stderr
    assert "2 rows failed (not scored)" in r.stdout
    d = json.loads(report.read_text(encoding="utf-8"))
    assert [(f["id"], f["audio"]) for f in d["failed"]] == [("gone", "nope.wav"),
                                                           ("past", f"{TRAINED_CLIPS / 'en_bag.wav'}:0:9999999")]
    assert sorted(u["id"] for u in d["utterances"]) == ["bag", "cats"] and d["overall"]["utterances"] == 2
    assert d["overall"]["ref_words"] == 11 and d["overall"]["wer"] <= OWN_VOICES_MAX_WER

    only_bad = tmp_path / "bad.tsv"
    write_manifest(only_bad, [ManifestRow("gone", "nope.wav", 1, "x", src_lang="en", tgt_lang="en")])
    r = fama(only_bad, "--model", TRAINED_TINY, "--device", "cpu", "--quiet")
    assert r.exit_code == 1 and "error: no row could be decoded (1 failed)" in r.stderr, r.output


def test_unreadable_manifest_or_model_names_the_file(tmp_path):
    latin = tmp_path / "latin.tsv"
    latin.write_bytes("id\taudio\tn_frames\ttgt_text\tsrc_lang\nu\ta.wav\t1\tcaffè\ten\n".encode("latin-1"))
    r = fama(latin, "--model", TRAINED_TINY, "--quiet")
    assert r.exit_code == 2 and f"{latin}:2: not UTF-8 text (byte 0xe8)" in r.stderr, r.output

    import shutil

    broken = tmp_path / "model"
    shutil.copytree(TRAINED_TINY, broken, ignore=shutil.ignore_patterns("clips"))
    (broken / "config.json").write_text('{"model": ', encoding="utf-8")
    r = fama(_clips_manifest(tmp_path / "m.tsv"), "--model", broken, "--device", "cpu", "--quiet")
    assert r.exit_code == 2 and "config.json" in r.stderr, r.output


def test_threads_option(tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        r = fama("--hyp", write(tmp_path / "h.txt", EN_HYP), "--ref", write(tmp_path / "r.txt", EN_REF),
                 "--threads", "1", "--quiet")
        assert r.exit_code == 0 and torch.get_num_threads() == 1, r.output
        r = fama("--hyp", tmp_path / "h.txt", "--ref", tmp_path / "r.txt", "--threads", "0")
        assert r.exit_code == 2 and "--threads" in r.stderr
    finally:
        torch.set_num_threads(before)


def test_several_devices_give_the_same_report():
    """`device="cpu,cpu"`: the pipeline decodes the batches on two model copies; hypotheses and scores are
    those of one device (batch_size 1 so that both copies get batches)."""
    rows = [ManifestRow(c["id"], f"{c['id']}.wav", 0, c["text"], src_lang=c["lang"], tgt_lang=c["lang"])
            for c in json.loads((TRAINED_CLIPS / "clips.json").read_text(encoding="utf-8"))]
    one = evaluate(rows, TRAINED_TINY, task="asr", base=TRAINED_CLIPS, device="cpu", batch_size=1, greedy=True)
    two = evaluate(rows, TRAINED_TINY, task="asr", base=TRAINED_CLIPS, device="cpu,cpu", batch_size=1, greedy=True)
    assert two.options["device"] == "cpu,cpu" and one.options["device"] == "cpu"
    assert two.utterances == one.utterances and two.overall == one.overall

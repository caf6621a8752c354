import json
import math

import pytest
import sacrebleu

from fama_core.scoring import (
    BleuResult,
    Report,
    WerResult,
    bleu,
    gate,
    normalize_text,
    read_texts,
    score,
    score_files,
    score_utterances,
    wer,
)


@pytest.mark.parametrize(
    "text, lang, expected",
    [
        # case, punctuation, accents kept (è != e)
        ("Perché l'acqua è fredda?", "it", "perché l acqua è fredda"),
        ("Hello,   World!\t", "en", "hello world"),
        ("«Ciao» — disse.", "it", "ciao disse"),
        # Italian elisions split at the apostrophe, whatever the apostrophe character
        ("C'è il sole dell'anno.", "it", "c è il sole dell anno"),
        ("C’è dell’ anno", "it", "c è dell anno"),
        ("un po' di più", "it", "un po di più"),
        ("L'8 marzo", "it", "l 8 marzo"),
        # English (and unknown languages) keep word-internal apostrophes, as ', and drop the others
        ("Don’t stop, the students' books", "en", "don't stop the students books"),
        ("rock 'n' roll in the ʼ90s", "en", "rock n roll in the 90s"),
        ("l'acqua", None, "l'acqua"),
        # numbers stay digits; thousands separators go, decimal marks become "."
        ("It costs 1,000 dollars, not 2,500,000.50!", "en", "it costs 1000 dollars not 2500000.50"),
        ("pi is 3.14 and 1.000 is one", "en", "pi is 3.14 and 1.000 is one"),
        ("Costa 1.000 euro e 3,5 centesimi; 1.000.000,50", "it", "costa 1000 euro e 3.5 centesimi 1000000.50"),
        ("1,000 and 1.000", None, "1000 and 1000"),
        ("ventisei 26", "it", "ventisei 26"),
        ("Ore 10:30 o 10.30", "it", "ore 10 30 o 10.30"),
        # symbols and hyphens are spaces; NFKC folds compatibility characters; format characters vanish
        ("e-mail: info@fbk.eu 50% €", "it", "e mail info fbk eu 50"),
        ("ﬁne Ⅻ ²", None, "fine xii 2"),
        ("soft\u00adhyphen zero\u200bwidth", "en", "softhyphen zerowidth"),
        ("", "en", ""),
        ("?!...", "it", ""),
    ],
)
def test_normalize_text(text, lang, expected):
    assert normalize_text(text, lang) == expected


def test_normalize_text_language_codes():
    assert normalize_text("l'acqua", "IT") == normalize_text("l'acqua", "it-IT") == "l acqua"
    assert normalize_text("1.000", "it_IT") == "1000"


HYPS_IT = ["perche l'acqua e fredda", "c’è il sole dell' anno"]
REFS_IT = ["Perché l'acqua è fredda?", "C'è il sole dell'anno."]


def test_wer_italian_accents_and_apostrophes():
    r = wer(HYPS_IT, REFS_IT, lang="it")
    # utt 1: ref "perché l acqua è fredda" (5 words), hyp "perche l acqua e fredda": 2 substitutions, 3 hits
    # utt 2: ref "c è il sole dell anno" (6 words) == hyp: 6 hits
    # WER = (2 + 0) / (5 + 6) = 2/11
    assert (r.substitutions, r.deletions, r.insertions, r.hits, r.ref_words, r.hyp_words) == (2, 0, 0, 9, 11, 11)
    assert r.wer == pytest.approx(100 * 2 / 11)
    # CER: "perché l acqua è fredda" has 6+1+1+1+5+1+1+1+6 = 23 characters, 2 substituted (é->e, è->e);
    #      "c è il sole dell anno" has 1+1+1+1+2+1+4+1+4+1+4 = 21 characters, none wrong: 2/44
    assert (r.char_errors, r.ref_chars) == (2, 44)
    assert r.cer == pytest.approx(100 * 2 / 44)
    # raw (case and punctuation kept): utt 1 "Perché|l'acqua|è|fredda?" vs "perche|l'acqua|e|fredda": 3 S;
    # utt 2 "C'è|il|sole|dell'anno." vs "c’è|il|sole|dell'|anno": C'è/c’è S, dell'anno./dell' S, anno I = 3
    # raw WER = (3 + 3) / (4 + 4) = 75%
    assert r.raw_wer == pytest.approx(75.0)
    assert r.errors == 2 and r.utterances == 2 and r.normalized


def test_wer_english_rule_keeps_elisions_as_one_word():
    r = wer(HYPS_IT, REFS_IT, lang="en")
    # utt 1: "perché l'acqua è fredda" (4) vs "perche l'acqua e fredda": 2 S
    # utt 2: "c'è il sole dell'anno" (4) vs "c'è il sole dell anno": dell'anno -> dell (S) + anno (I) = 2
    # WER = 4 / 8: the split elision costs two errors, which is why Italian splits at apostrophes
    assert (r.substitutions, r.insertions, r.ref_words) == (3, 1, 8)
    assert r.wer == pytest.approx(50.0)


def test_wer_numbers():
    # "1,000" and "1000" are the same number; digits and number words are not
    assert wer(["it costs 1000 dollars", "pi is 3,14"], ["It costs 1,000 dollars.", "Pi is 3.14"], lang="en").wer == 0
    r = wer(["it costs one thousand dollars"], ["It costs 1,000 dollars."], lang="en")
    # ref "it costs 1000 dollars" (4), hyp "it costs one thousand dollars": 1000->one (S), thousand (I): 2/4
    assert (r.substitutions, r.insertions, r.ref_words, r.wer) == (1, 1, 4, 50.0)
    r = wer(["costa mille euro e 3.5 centesimi"], ["Costa 1.000 euro e 3,5 centesimi"], lang="it")
    # ref "costa 1000 euro e 3.5 centesimi" (6 words): 1000->mille is the only error: 1/6
    assert (r.errors, r.ref_words) == (1, 6)
    assert r.wer == pytest.approx(100 / 6)


def test_wer_case_and_punctuation_raw_vs_normalised():
    r = wer(["hello world", "the end"], ["Hello, World!", "The end."])
    # normalised: identical, 0/4; raw: Hello,/hello World!/world The/the end./end: 4 S out of 4 words
    assert r.wer == 0 and r.raw_wer == 100.0
    raw = wer(["hello world", "the end"], ["Hello, World!", "The end."], normalize=False)
    assert raw.wer == raw.raw_wer == 100.0 and not raw.normalized
    # CER on the raw text: "Hello, World!" vs "hello world": H->h, ","->deleted, W->w, "!"->deleted = 4 errors
    # over 13 characters; "The end." vs "the end": T->t, "." deleted = 2 over 8: (4 + 2) / (13 + 8)
    assert raw.cer == pytest.approx(100 * 6 / 21)


def test_wer_is_corpus_level_not_mean_of_utterances():
    r = wer(["a", "a b c d e f g h i j"], ["b", "a b c d e f g h i j"])
    # 1 error over 1 + 10 words = 9.09%, not the mean of 100% and 0% (50%)
    assert r.wer == pytest.approx(100 / 11)


def test_wer_empty_sides():
    r = wer(["x y", "", ""], ["", "a b", ""])
    # empty reference: 2 insertions; empty hypothesis: 2 deletions; both empty: nothing. 4 errors / 2 words
    assert (r.insertions, r.deletions, r.ref_words) == (2, 2, 2)
    assert r.wer == 200.0
    assert wer([""], [""]).wer == 0.0 and wer(["x"], [""]).wer == 100.0
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        wer(["a", "b"], ["a"])


def test_bleu_by_hand():
    hyps = ["the cat sat on the mat", "a dog runs in the park"]
    refs = ["the cat is on the mat", "a dog runs in the park today"]
    # clipped n-gram matches / hypothesis n-grams, summed over both sentences:
    #   1-grams: the cat on the mat (5 of 6) + all 6 of 6                                 = 11/12
    #   2-grams: "the cat" "on the" "the mat" (3 of 5) + all 5 of 5                       = 8/10
    #   3-grams: "on the mat" (1 of 4) + all 4 of 4                                       = 5/8
    #   4-grams: none of "the cat sat on" "cat sat on the" "sat on the mat" (0 of 3) + 3/3 = 3/6
    # hypothesis length c = 12, reference length r = 13 -> BP = exp(1 - 13/12)
    expected = 100 * math.exp(1 - 13 / 12) * (11 / 12 * 8 / 10 * 5 / 8 * 3 / 6) ** (1 / 4)
    assert expected == pytest.approx(63.657, abs=1e-3)
    r = bleu(hyps, refs)
    assert isinstance(r, BleuResult)
    assert r.bleu == pytest.approx(expected, abs=1e-9)
    assert r.precisions == pytest.approx([100 * 11 / 12, 80.0, 62.5, 50.0])
    assert r.brevity_penalty == pytest.approx(math.exp(-1 / 12))
    assert (r.hyp_len, r.ref_len, r.utterances) == (12, 13, 2)
    assert r.bleu == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert r.chrf == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score) and 0 < r.chrf < 100
    assert r.signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert r.chrf_signature.startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:")
    perfect = bleu(refs, refs)
    assert perfect.bleu == pytest.approx(100.0) and perfect.chrf == pytest.approx(100.0)


def test_score_utterances_worst_first():
    rows = score_utterances(
        ["u1", "u2", "u3"], ["ciao mondo", "buongiorno", "a b c"], ["Ciao, mondo!", "buonasera", "a b c d"], "asr", "it"
    )
    # u2: 1/1 = 100%, u3: 1 deletion / 4 = 25%, u1: 0%
    assert [r["id"] for r in rows] == ["u2", "u3", "u1"]
    assert [r["wer"] for r in rows] == [100.0, 25.0, 0.0]
    assert rows[2]["norm_ref"] == "ciao mondo" and rows[2]["ref"] == "Ciao, mondo!"
    st = score_utterances(["a", "b"], ["totally different words", "the cat is here"], ["the cat is here"] * 2, "st")
    assert [r["id"] for r in st] == ["a", "b"] and st[1]["bleu"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="task"):
        score_utterances(["a"], ["x"], ["x"], "mt")


def test_score_report_groups_json_and_gate():
    rep = score(
        ["a", "b", "c"],
        ["hello world", "ciao mondo", "the end"],
        ["Hello, World!", "Ciao, mondo bello.", "The end."],
        lang=["en", "it", "en"],
    )
    # en: 0 errors / 4 words; it: "ciao mondo" vs "ciao mondo bello": 1 deletion / 3; all: 1/7
    assert isinstance(rep, Report) and isinstance(rep.overall, WerResult)
    assert rep.score == pytest.approx(100 / 7)
    assert rep.groups["en"].wer == 0 and rep.groups["it"].wer == pytest.approx(100 / 3)
    assert rep.utterances[0]["id"] == "b" and rep.utterances[0]["lang"] == "it"
    data = json.loads(rep.to_json())
    assert data["task"] == "asr" and data["overall"]["deletions"] == 1 and set(data["groups"]) == {"en", "it"}
    assert len(data["utterances"]) == 3 and "WER 14.29" in rep.summary()
    assert gate(rep) and gate(rep, max_wer=14.3) and not gate(rep, max_wer=14.2)
    with pytest.raises(ValueError, match="min_bleu"):
        gate(rep, min_bleu=10)
    st = score(
        ["1", "2"],
        ["the cat sat on the mat", "a dog runs in the park"],
        ["the cat is on the mat", "a dog runs in the park today"],
        task="st",
        lang="it-en",
    )
    assert isinstance(st.overall, BleuResult) and list(st.groups) == ["it-en"]
    assert st.score == pytest.approx(63.657, abs=1e-3)
    assert gate(st, min_bleu=63) and not gate(st, min_bleu=64)
    with pytest.raises(ValueError, match="max_wer"):
        gate(st, max_wer=10)
    assert json.loads(st.to_json())["overall"]["signature"].startswith("nrefs:1")


def test_read_texts_formats(tmp_path):
    tsv = tmp_path / "ref.tsv"
    tsv.write_text("id\taudio\tn_frames\ttgt_text\tspeaker\nu1\ta.wav\t10\tCiao mondo\tspk\nu2\tb.wav\t5\t\tspk\n")
    assert read_texts(tsv) == {"u1": "Ciao mondo", "u2": ""}
    hyp_tsv = tmp_path / "hyp.txt"
    hyp_tsv.write_text("id\thyp\nu1\tciao\n")
    assert read_texts(hyp_tsv) == {"u1": "ciao"}
    assert read_texts(tsv, column="audio") == {"u1": "a.wav", "u2": "b.wav"}
    with pytest.raises(ValueError, match="'id' column"):
        read_texts(tsv, column="nope")
    bad = tmp_path / "bad.tsv"
    bad.write_text("utt\ttext\nu1\thi\n")
    with pytest.raises(ValueError, match="'id' column"):
        read_texts(bad)
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("id\ttext\nu1\thi\tthere\n")
    with pytest.raises(ValueError, match="ragged.tsv:2: 3 fields"):
        read_texts(ragged)
    dup = tmp_path / "dup.tsv"
    dup.write_text("id\ttext\nu1\thi\nu1\tho\n")
    with pytest.raises(ValueError, match="duplicate id 'u1'"):
        read_texts(dup)

    one = tmp_path / "talk.json"
    one.write_text(json.dumps({"text": "Buongiorno a tutti.", "segments": [{"start": 0, "text": "x"}]}))
    assert read_texts(one) == {"talk": "Buongiorno a tutti."}
    many = tmp_path / "many.json"
    many.write_text(json.dumps([{"id": "u1", "text": "uno"}, {"id": 2, "text": "due"}]))
    assert read_texts(many) == {"u1": "uno", "2": "due"}
    mapping = tmp_path / "map.json"
    mapping.write_text(json.dumps({"u1": "uno", "u2": {"text": "due"}}))
    assert read_texts(mapping) == {"u1": "uno", "u2": "due"}
    jsonl = tmp_path / "out.jsonl"
    jsonl.write_text('{"id": "u1", "text": "uno"}\n\n{"id": "u2", "text": "due"}\n')
    assert read_texts(jsonl) == {"u1": "uno", "u2": "due"}

    folder = tmp_path / "outputs"
    folder.mkdir()
    (folder / "a.json").write_text(json.dumps({"text": "from json"}))
    (folder / "a.txt").write_text("from txt")
    (folder / "b.txt").write_text("line one\nline two\n")
    (folder / "b.srt").write_text("1\n00:00:00,000 --> 00:00:01,000\nignored\n")
    assert read_texts(folder) == {"a": "from json", "b": "line one line two"}

    plain = tmp_path / "plain.txt"
    plain.write_text("first line\n\nthird line\n")
    assert read_texts(plain) == {"1": "first line", "2": "", "3": "third line"}


def test_score_files(tmp_path):
    ref = tmp_path / "test.tsv"
    ref.write_text(
        "id\taudio\tsrc_text\ttgt_text\tsrc_lang\ttgt_lang\n"
        "u1\ta.wav\tCiao, mondo!\tHello, world!\tit\ten\n"
        "u2\tb.wav\tL'acqua è fredda.\tThe water is cold.\tit\ten\n"
        "u3\tc.wav\tGood morning.\tBuongiorno.\ten\tit\n"
    )
    hyp = tmp_path / "hyp.json"
    hyp.write_text(
        json.dumps(
            [
                {"id": i, "text": t}
                for i, t in [("u3", "good morning"), ("u1", "ciao mondo"), ("u2", "l acqua e fredda")]
            ]
        )
    )
    rep = score_files(hyp, ref, "asr", ref_column="src_text")
    # groups from src_lang: it: u1 0 errors / 2, u2 "l acqua è fredda" vs "l acqua e fredda" 1 S / 4; en: 0 / 2
    assert set(rep.groups) == {"en", "it"}
    assert rep.groups["it"].wer == pytest.approx(100 / 6) and rep.groups["en"].wer == 0
    assert rep.overall.wer == pytest.approx(100 / 8)
    assert rep.utterances[0]["id"] == "u2"
    fixed = score_files(hyp, ref, "asr", lang="en", ref_column="src_text")
    # with the English rule "l'acqua" stays one word: l'acqua -> l (S) + acqua (I), è -> e (S): 3 / (2 + 3 + 2)
    assert list(fixed.groups) == ["en"] and fixed.overall.wer == pytest.approx(300 / 7)

    st_hyp = tmp_path / "st.tsv"
    st_hyp.write_text("id\ttext\nu1\tHello, world!\nu2\tThe water is cold.\nu3\tBuongiorno.\n")
    st = score_files(st_hyp, ref, "st")
    assert set(st.groups) == {"it-en", "en-it"} and st.overall.bleu == pytest.approx(100.0)
    assert st.groups["it-en"].utterances == 2

    partial = tmp_path / "partial.tsv"
    partial.write_text("id\ttext\nu1\tHello\nu9\textra\n")
    with pytest.raises(ValueError) as err:
        score_files(partial, ref, "st")
    msg = str(err.value)
    assert "2 reference ids" in msg and "u2, u3" in msg and "1 hypothesis ids" in msg and "u9" in msg


def test_nothing_to_score_gives_zeros():
    """Every row of an evaluation failed: the report still forms, with zero counts (the CLI then exits 1)."""
    from fama_core.scoring import score

    asr, st = score([], [], [], "asr", []), score([], [], [], "st", [])
    assert (asr.overall.utterances, asr.overall.ref_words, asr.overall.wer) == (0, 0, 0.0)
    assert (st.overall.utterances, st.overall.bleu, st.overall.ref_len) == (0, 0.0, 0) and st.groups == {}
    assert st.overall.signature.startswith("nrefs:1|case:mixed")

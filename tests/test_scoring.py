import json
import subprocess

import pytest
from test_cli import ENV, SAGELM

from sagelm.prompts import instruction_prompt
from sagelm.scoring import ScoringError, evaluate, evaluate_official


def rec(id, aspect, verdict, label, swapped=False, probs=None, audios=("a.wav", "b.wav"), raw=None):
    return {"id": id, "aspect": aspect, "verdict": verdict, "label": label, "swapped": swapped,
            "probabilities": probs, "rationale": None, "raw": raw if raw is not None else f"{verdict}\nx",
            "error": None, "audio_1": audios[0], "audio_2": audios[1]}  # fmt: skip


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_default_scores_by_aspect_not_position(tmp_path):
    rows = [
        rec("p1", "honesty", "1", "1"),
        rec("p1", "helpfulness", "2", "1"),
        rec("p2", "helpfulness", "Tie", "1", audios=("c.wav", "d.wav")),
        rec("p2", "honesty", None, "Tie", audios=("c.wav", "d.wav")),
    ]
    r = evaluate([write_jsonl(tmp_path / "p.jsonl", rows)])
    assert (r["overall"]["n"], r["overall"]["accuracy"], r["overall"]["agreement"], r["overall"]["invalid"]) == (
        4, 0.25, 0.375, 1)  # fmt: skip
    assert r["groups"]["honesty"]["accuracy"] == 0.5 and r["groups"]["honesty"]["invalid"] == 1
    assert r["groups"]["helpfulness"]["agreement"] == 0.25
    assert r["overall"]["labels"] == {"1": 3, "2": 0, "Tie": 1, "invalid": 0}
    assert r["overall"]["prefer_1"] == pytest.approx(1 / 3)


def test_flip_rate_and_debiased_scores(tmp_path):
    p = {"1": 0.7, "2": 0.2, "Tie": 0.1}
    rows = [
        rec("a", "honesty", "1", "1", probs=p), rec("a", "honesty", "1", "1", swapped=True, probs=p),
        rec("b", "honesty", "1", "2", probs={"1": 0.55, "2": 0.4, "Tie": 0.05}, audios=("c", "d")),
        rec("b", "honesty", "2", "2", swapped=True, probs={"1": 0.1, "2": 0.8, "Tie": 0.1}, audios=("c", "d")),
    ]  # fmt: skip
    r = evaluate([write_jsonl(tmp_path / "p.jsonl", rows)])
    assert r["overall"]["n"] == 2 and r["overall"]["accuracy"] == 0.5  # plain order only
    assert r["order"]["flip_rate"] == 0.5
    assert r["order"]["original"]["accuracy"] == 0.5 and r["order"]["swapped"]["accuracy"] == 1.0
    assert r["order"]["debiased"]["accuracy"] == 0.5 and r["order"]["debiased"]["agreement"] == 0.75
    assert r["order"]["debiased_probabilities"]["accuracy"] == 1.0


def test_vllm_rows_with_reference_and_length_mismatch(tmp_path, release):
    ref = json.loads((release / "test_semantic.json").read_text())[:8]
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    preds = [{"prompt": "x", "predict": r["output"].split("\n")[0] + "\nok", "label": r["output"]} for r in ref]
    preds[0]["predict"] = "The first is better"  # no verdict: invalid, not a Tie
    write_jsonl(tmp_path / "p.jsonl", preds)
    r = evaluate([tmp_path / "p.jsonl"], tmp_path / "ref.json")
    assert r["overall"]["n"] == 8 and r["overall"]["invalid"] == 1 and r["overall"]["accuracy"] == 7 / 8
    assert set(r["groups"]) == {"helpfulness", "honesty", "instruction_following", "truthfulness"}
    write_jsonl(tmp_path / "short.jsonl", preds[:7])
    with pytest.raises(ScoringError, match="has 7 judgments but .* has 8 rows"):
        evaluate([tmp_path / "short.jsonl"], tmp_path / "ref.json")


def test_several_runs_mean_std_and_majority(tmp_path):
    labels = ["1", "2", "Tie", "1"]
    runs = [["1", "2", "Tie", "2"], ["1", "1", "Tie", "1"], ["2", "2", "1", "1"]]
    paths = [write_jsonl(tmp_path / f"r{i}.jsonl", [rec(f"p{j}", "honesty", v, lab, audios=(f"{j}a", f"{j}b"))
             for j, (v, lab) in enumerate(zip(run, labels, strict=True))]) for i, run in enumerate(runs)]  # fmt: skip
    r = evaluate(paths)
    assert [x["overall"]["accuracy"] for x in r["runs"]] == [0.75, 0.75, 0.5]
    assert r["overall"]["accuracy"] == pytest.approx(2 / 3)
    assert r["overall"]["accuracy_std"] == pytest.approx(0.144337567, abs=1e-6)
    assert r["majority"]["overall"]["accuracy"] == 1.0  # votes: 1, 2, Tie, 1


def _ref_row(aspect, question, label, audios):
    return {"instruction": instruction_prompt(aspect, question), "input": "", "output": f"{label}\nwhy",
            "audios": audios}  # fmt: skip


def test_official_semantic_uses_position_and_differs_from_default(tmp_path):
    # rows out of the helpfulness/honesty/instruction_following/truthfulness order
    aspects = ["honesty", "helpfulness", "instruction_following", "truthfulness"]
    ref = [_ref_row(a, "Q", "1", ["x.wav", "y.wav"]) for a in aspects]
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    preds = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "", "predict": v, "label": "1\nwhy"}
                                               for v in ["1\n", "2\n", "1\n", "Tie\n"]])  # fmt: skip
    off = evaluate_official([preds], tmp_path / "ref.json")
    assert off["groups"]["helpfulness"]["accuracy_pct"] == "100.00%"  # row 0 (honesty) counted as helpfulness
    assert off["groups"]["honesty"]["accuracy_pct"] == "0.00%"
    assert off["groups"]["truthfulness"]["agreement_pct"] == "50.00%"
    ours = evaluate([preds], tmp_path / "ref.json")
    assert ours["groups"]["honesty"]["accuracy"] == 1.0 and ours["groups"]["helpfulness"]["accuracy"] == 0.0


def test_official_several_runs_mean_and_std(tmp_path):
    ref = [_ref_row(a, "Q", "1", ["x.wav", "y.wav"]) for a in ("helpfulness", "honesty", "instruction_following",
                                                               "truthfulness")]  # fmt: skip
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    runs = [["1", "1", "1", "1"], ["2", "1", "1", "1"]]
    paths = [write_jsonl(tmp_path / f"r{i}.jsonl", [{"prompt": "", "predict": v, "label": ""} for v in run])
             for i, run in enumerate(runs)]  # fmt: skip
    off = evaluate_official(paths, tmp_path / "ref.json")
    assert [r["groups"]["helpfulness"]["accuracy_pct"] for r in off["runs"]] == ["100.00%", "0.00%"]
    assert off["groups"]["helpfulness"]["accuracy"] == 0.5
    assert off["groups"]["helpfulness"]["accuracy_std"] == pytest.approx(0.70710678)
    assert off["groups"]["honesty"]["accuracy_std"] == 0.0
    assert off["overall"]["accuracy"] == pytest.approx(0.875)


def test_official_first_character_quirk_and_crash_as_error(tmp_path):
    rest = ("honesty", "instruction_following", "truthfulness")
    ref = [_ref_row("helpfulness", "Q", "Tie", ["a", "b"])] + [_ref_row(a, "Q", "1", ["a", "b"]) for a in rest]
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    preds = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "", "predict": v, "label": ""}
                                               for v in ["The answer is...", "1", "1", "1"]])  # fmt: skip
    off = evaluate_official([preds], tmp_path / "ref.json")
    assert off["groups"]["helpfulness"]["accuracy_pct"] == "100.00%"  # "The..." starts with T: a Tie to them
    assert evaluate([preds], tmp_path / "ref.json")["overall"]["invalid"] == 1  # to us: no verdict
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "", "predict": v, "label": ""}
                                               for v in ["Response 1", "1", "1", "1"]])  # fmt: skip
    with pytest.raises(ScoringError, match=r"row 0: output starts with 'R'.*Wrong format of R"):
        evaluate_official([bad], tmp_path / "ref.json")


def _acoustic_ref():
    rows = []
    for aspect in ["emotion instruction following", "gender instruction following",
                   "character instruction following",
                   "gender instruction following and emotion instruction following"]:  # fmt: skip
        rows.append(_ref_row(aspect, "Read this.", "1", ["src-1-5-audio1.wav", "src-1-5-audio2.wav"]))  # TTS
        rows.append(_ref_row(aspect, "Answer this.", "2", ["src-2-5-audio1.wav", "src-2-6-audio2.wav"]))  # QA
    rows.append(_ref_row("emotion instruction following", "Q", "Tie",
                         ["Implicit-Emotion/x-3-1-audio1.wav", "Implicit-Emotion/x-3-2-audio2.wav"]))  # fmt: skip
    # a question holding ** : the greedy regex misreads its aspect and the authors' script drops the row
    rows.append(_ref_row("gender instruction following", "Say **this** with a male voice.", "1",
                         ["src-4-1-audio1.wav", "src-4-1-audio2.wav"]))  # fmt: skip
    return rows


def test_official_acoustic_drops_bold_rows_and_splits_tts_qa(tmp_path):
    ref = _acoustic_ref()
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    verdicts = ["1", "2", "1", "1", "2", "2", "1", "2", "Tie", "2"]  # the last (dropped) row is wrong
    preds = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "", "predict": v + "\n", "label": ""} for v in verdicts])
    off = evaluate_official([preds], tmp_path / "ref.json")
    assert off["dropped"] == 1
    assert off["groups"]["gender"] == {"n": 2, "accuracy": 0.5, "agreement": 0.5, "accuracy_pct": "50.00%",
                                       "agreement_pct": "50.00%"}  # fmt: skip
    assert off["splits"]["gender_tts"]["accuracy"] == 1.0 and off["splits"]["gender_qa"]["accuracy"] == 0.0
    assert off["groups"]["implicit_emotion"]["n"] == 1 and off["groups"]["emotion"]["n"] == 2
    ours = evaluate([preds], tmp_path / "ref.json")
    assert ours["groups"]["gender"]["n"] == 3 and ours["groups"]["gender"]["accuracy"] == pytest.approx(1 / 3)


def test_official_reproduces_the_authors_figures_on_the_released_labels(tmp_path, release):
    """Predictions equal to the labels but for every 7th row: the official figures, computed by hand here
    the way the authors' semantic script does (count * 400 / len, two decimals)."""
    ref = json.loads((release / "test_semantic.json").read_text())
    flip = {"1": "2", "2": "1", "T": "1"}
    preds = [r["output"] if i % 7 else flip[r["output"][0]] + "\nno" for i, r in enumerate(ref)]
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "", "predict": p, "label": ""} for p in preds])
    off = evaluate_official([path], release / "test_semantic.json")
    n = len(ref)
    for k, name in enumerate(["helpfulness", "honesty", "instruction_following", "truthfulness"]):
        hits = sum(1 for i in range(k, n, 4) if i % 7)
        agree = sum(1.0 if i % 7 else (0.5 if ref[i]["output"][0] == "T" else 0.0) for i in range(k, n, 4))
        assert off["groups"][name]["accuracy_pct"] == f"{hits * 400 / n:.2f}%"
        assert off["groups"][name]["agreement_pct"] == f"{agree * 400 / n:.2f}%"


def test_eval_cli_json_markdown_and_errors(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [rec("p1", "honesty", "1", "1"), rec("p2", "honesty", "2", "1")])
    p = subprocess.run([SAGELM, "eval", str(path), "--json"], capture_output=True, text=True, env=ENV)
    out = json.loads(p.stdout)
    assert p.returncode == 0 and out["overall"]["accuracy"] == 0.5 and out["groups"]["honesty"]["n"] == 2
    p = subprocess.run([SAGELM, "eval", str(path), "--markdown"], capture_output=True, text=True, env=ENV)
    assert p.stdout.startswith("| group | n | accuracy | agreement | invalid |")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
    p = subprocess.run([SAGELM, "eval", str(tmp_path / "bad.jsonl")], capture_output=True, text=True, env=ENV)
    assert p.returncode == 1 and p.stderr.strip() == f"sagelm: error: {tmp_path / 'bad.jsonl'} line 1: neither a " \
        "sagelm judgment nor a vllm_infer row"


def test_eval_imports_no_model_code(tmp_path):
    import sys

    path = write_jsonl(tmp_path / "p.jsonl", [rec("p1", "honesty", "1", "1")])
    code = (
        "import sys; from sagelm.cli import main\n"
        f"sys.argv = ['sagelm', 'eval', {str(path)!r}, '--json']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'transformers', 'sagelm.model', 'sagelm.judge')\n"
        "print([m for m in heavy if m in sys.modules], file=sys.stderr)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert p.stderr.strip().endswith("[]")


def test_reading_beside_the_reference_in_a_second_process_gives_the_same_report(tmp_path, release, monkeypatch):
    from sagelm import scoring

    refs = json.loads((release / "test_semantic.json").read_text())
    lines = [{"prompt": r["instruction"], "predict": ("1" if i % 3 else "Tie") + "\nok", "label": r["output"]}
             for i, r in enumerate(refs)]  # fmt: skip
    pred = write_jsonl(tmp_path / "p.jsonl", lines)
    ref = release / "test_semantic.json"
    alone = scoring.evaluate([pred], ref), scoring.evaluate_official([pred], ref)
    monkeypatch.setattr(scoring, "PARALLEL_BYTES", 0)
    assert (scoring.evaluate([pred], ref), scoring.evaluate_official([pred], ref)) == alone
    with pytest.raises(scoring.ScoringError, match="no such predictions file"):
        scoring.evaluate([tmp_path / "missing.jsonl"], ref)


def test_the_reference_is_read_row_by_row_never_held_whole(tmp_path, monkeypatch):
    # issue 9 item 11: a 400,000-row reference parsed whole took 1.25x the authors' memory; reading it row by
    # row, only its labels, groups and pairs stay, so the peak is a small part of the file however long it is
    import tracemalloc

    from sagelm import jsonlist, scoring

    aspects = ["helpfulness", "honesty", "instruction_following", "truthfulness"]
    n = 3000
    ref = [_ref_row(aspects[i % 4], f"question {i} " + "words " * 400, "12T"[i % 3].replace("T", "Tie"),
                    [f"a{i}.wav", f"b{i}.wav"]) for i in range(n)]  # fmt: skip
    (tmp_path / "ref.json").write_text(json.dumps(ref))
    size = (tmp_path / "ref.json").stat().st_size
    preds = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "", "predict": "1\nok", "label": ""}] * n)
    monkeypatch.setattr(jsonlist, "CHUNK_BYTES", 2**18)
    tracemalloc.start()
    try:
        got = scoring.evaluate([preds], tmp_path / "ref.json")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert size > 7e6 and peak < size / 4, (size, peak)
    assert got["overall"]["n"] == n and got["overall"]["accuracy"] == pytest.approx(1 / 3, abs=1e-3)
    assert sorted(got["groups"]) == sorted(aspects)
    official = scoring.evaluate_official([preds], tmp_path / "ref.json")  # the authors' view keeps the text
    assert official["overall"]["accuracy"] == pytest.approx(1 / 3, abs=1e-3)


def test_a_broken_reference_is_named_with_the_row(tmp_path):
    ok = [_ref_row("honesty", "Q", "1", ["a", "b"])] * 3
    preds = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "", "predict": "1", "label": ""}] * 3)
    cases = {
        "cut.json": (json.dumps(ok)[:-40], r"cut\.json: not valid JSON \(item 2: "),
        "obj.json": (json.dumps({"rows": ok}), r"obj\.json: expected a JSON list of rows, not a JSON object$"),
        "empty.json": ("", r"empty\.json: expected a JSON list of rows, not an empty file$"),
        "tail.json": (json.dumps(ok) + " {}", r"tail\.json: not valid JSON \(after the list's 3 items: more data\)"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ScoringError, match=message):
            evaluate([preds], tmp_path / name)
    bare = [{"instruction": _ref_row("honesty", "Q", "1", [])["instruction"], "output": "1\nwhy"},
            _ref_row("honesty", "Q2", "2", [])]  # no audio paths: each row its own pair
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    two = write_jsonl(tmp_path / "two.jsonl", [{"prompt": "", "predict": v, "label": ""} for v in ("1", "2")])
    assert evaluate([two], tmp_path / "bare.json")["overall"]["accuracy"] == 1.0
    (tmp_path / "latin.json").write_bytes(json.dumps(ok).replace("Q", "caf\u00e9").encode("latin-1"))
    with pytest.raises(ScoringError, match=r"latin\.json: not UTF-8 text$"):
        evaluate([preds], tmp_path / "latin.json")


# -- bad records, duplicates, several judges (issue 9: items 12, 13, 14, 15, 21) ----------------------------------
def test_duplicate_ids_are_refused_by_name_never_blended(tmp_path):
    # one (id, aspect, order) with two different records: the label of one must not meet the verdict of the other
    rows = [rec("p1", "honesty", "1", "1"), rec("p2", "honesty", "2", "2", audios=("c", "d")),
            rec("p1", "honesty", "2", "2")]  # fmt: skip
    with pytest.raises(ScoringError, match=r"p\.jsonl: records that disagree on the verdict: id 'p1' aspect "
                                           r"'honesty' \(lines 1 and 3\); each judgment must appear once"):
        evaluate([write_jsonl(tmp_path / "p.jsonl", rows)])
    # the original and the swapped record of one id from two different pairs
    rows = [rec("p1", "honesty", "1", "1"), rec("p1", "honesty", "1", "2", swapped=True, audios=("c", "d"))]
    with pytest.raises(ScoringError, match=r"original and swapped records disagree on the label: id 'p1'"):
        evaluate([write_jsonl(tmp_path / "s.jsonl", rows)])


def test_repeated_records_count_once_and_a_rejudged_error_row_counts_its_judgment(tmp_path):
    failed = rec("p2", "honesty", None, "2", audios=("c", "d")) | {"error": "c: cannot decode"}
    rows = [rec("p1", "honesty", "1", "1"), rec("p2", "honesty", "2", "2", audios=("c", "d")),
            rec("p1", "honesty", "1", "1"),  # written twice (two processes on one file)
            failed]  # a later run that could not read the audio
    r = evaluate([write_jsonl(tmp_path / "p.jsonl", rows)])
    assert (r["overall"]["n"], r["overall"]["accuracy"], r["overall"]["invalid"]) == (2, 1.0, 0)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("raw", 5, "raw must be a string or null, not 5"),
    ("label", 1, 'label must be the string "1", "2" or "Tie" (or null), not 1'),
    ("label", "tie", 'label must be the string "1", "2" or "Tie" (or null), not "tie"'),
    ("probabilities", "0.5", 'probabilities must be null or an object {"1": p, "2": p, "Tie": p} of numbers, '
                             'not "0.5"'),
    ("probabilities", [0.5, 0.3, 0.2], "probabilities must be null or an object"),
    ("probabilities", {"1": 0.5, "2": 0.5}, "not {\"1\": 0.5, \"2\": 0.5} ('Tie': field required)"),
    ("probabilities", {"1": "0.5", "2": 0.3, "Tie": 0.2}, "('1': input should be a valid number)"),
    ("aspect", {"name": "honesty"}, 'aspect must be a string or null, not {"name": "honesty"}'),
    ("swapped", "false", 'swapped must be true or false, not "false"'),
    ("verdict", 1, 'verdict must be "1", "2", "Tie" or null, not 1'),
    ("id", None, "id must be a string or an integer, not null"),
])  # fmt: skip
def test_mistyped_fields_are_named_with_their_line(tmp_path, field, value, message):
    rows = [rec("p1", "honesty", "1", "1"), rec("p2", "honesty", "2", "2") | {field: value}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(ScoringError) as e:
        evaluate([path])
    assert str(e.value).startswith(f"{path} line 2: {field} must be ") and message in str(e.value)


def test_mistyped_vllm_rows_and_reference_rows_are_named(tmp_path):
    path = write_jsonl(tmp_path / "v.jsonl", [{"prompt": "x", "predict": 2, "label": "2\nwhy"}])
    with pytest.raises(ScoringError, match=r"v\.jsonl line 1: predict must be a string or null, not 2$"):
        evaluate([path])
    path = write_jsonl(tmp_path / "w.jsonl", [{"prompt": "x", "predict": "2\nok", "label": 2}])
    with pytest.raises(ScoringError, match=r"w\.jsonl line 1: label must be a string or null, not 2$"):
        evaluate([path])
    (tmp_path / "ref.json").write_text(json.dumps([_ref_row("honesty", "Q", "1", ["a", "b"]) | {"output": 1}]))
    ok = write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "x", "predict": "2\nok", "label": "2\nwhy"}])
    with pytest.raises(ScoringError, match=r"ref\.json row 0: 'output' must be a string, not 1"):
        evaluate([ok], tmp_path / "ref.json")
    (tmp_path / "bad.jsonl").write_bytes(b'{"prompt": "x", "predict": "\xff"}\n')
    with pytest.raises(ScoringError, match=r"bad\.jsonl line 1: not UTF-8 text"):
        evaluate([tmp_path / "bad.jsonl"])


def test_gzip_and_bom_predictions_read_like_plain_ones(tmp_path, release):
    import gzip

    rows = [rec("p1", "honesty", "1", "1"), rec("p2", "honesty", "2", "1", audios=("c", "d"))]
    plain = evaluate([write_jsonl(tmp_path / "p.jsonl", rows)])
    (tmp_path / "p.jsonl.gz").write_bytes(gzip.compress((tmp_path / "p.jsonl").read_bytes()))
    assert evaluate([tmp_path / "p.jsonl.gz"]) == plain
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "p.jsonl").read_bytes())
    assert evaluate([tmp_path / "bom.jsonl"]) == plain
    ref = json.loads((release / "test_semantic.json").read_text())[:4]
    (tmp_path / "ref.json.gz").write_bytes(gzip.compress(json.dumps(ref).encode()))
    preds = write_jsonl(tmp_path / "v.jsonl", [{"prompt": "", "predict": r["output"], "label": ""} for r in ref])
    assert evaluate([preds], tmp_path / "ref.json.gz")["overall"]["accuracy"] == 1.0
    (tmp_path / "torn.jsonl.gz").write_bytes(gzip.compress(b"x" * 1000)[:20])
    with pytest.raises(ScoringError, match=r"torn\.jsonl\.gz: cannot read it as gzip"):
        evaluate([tmp_path / "torn.jsonl.gz"])


def _strict_json(text):
    def refuse(name):
        raise ValueError(f"not strict JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_eval_json_writes_null_for_undefined_values(tmp_path):
    # no valid verdict at all: P(prefer Response 1) among valid verdicts is undefined
    path = write_jsonl(tmp_path / "p.jsonl", [rec("p1", "honesty", None, "1"), rec("p2", "honesty", None, "2")])
    p = subprocess.run([SAGELM, "eval", str(path), "--json"], capture_output=True, text=True, env=ENV)
    assert p.returncode == 0, p.stderr
    out = _strict_json(p.stdout)
    assert out["overall"]["prefer_1"] is None and out["overall"]["invalid"] == 2
    assert out["groups"]["honesty"]["prefer_1"] is None


def test_two_judges_in_one_file_are_refused_unless_one_is_picked(tmp_path):
    rows = [rec("p1", "honesty", "1", "1") | {"model": "LGB666/SageLM", "backend": "hf"},
            rec("p2", "honesty", "1", "2", audios=("c", "d")) | {"model": "LGB666/SageLM", "backend": "hf"},
            rec("p1", "honesty", "2", "1") | {"model": "runs/judge", "backend": "hf"}]  # fmt: skip
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with pytest.raises(ScoringError, match=r"p\.jsonl holds the records of 2 judges \(model 'LGB666/SageLM' on hf: "
                                           r"2 records; model 'runs/judge' on hf: 1 record\); scoring them "
                                           r"together would blend them: pick one with --model"):
        evaluate([path])
    assert evaluate([path], model="runs/judge")["overall"]["n"] == 1
    assert evaluate([path], model="LGB666/SageLM")["overall"]["accuracy"] == 0.5
    with pytest.raises(ScoringError, match=r"no records of model 'other' \(its records name 'LGB666/SageLM', "
                                           r"'runs/judge'\)"):
        evaluate([path], model="other")
    p = subprocess.run([SAGELM, "eval", str(path), "--model", "runs/judge", "--json"], capture_output=True,
                       text=True, env=ENV)  # fmt: skip
    assert p.returncode == 0 and json.loads(p.stdout)["overall"]["accuracy"] == 0.0
    # one model name, two decoding settings (records that carry them): different judges all the same
    rows = [rec("p1", "honesty", "1", "1") | {"model": "m", "decoding": {"temperature": 0.0}},
            rec("p2", "honesty", "1", "1", audios=("c", "d")) | {"model": "m", "decoding": {"temperature": 0.95}}]
    with pytest.raises(ScoringError, match="2 judges .*with decoding.*they are different judges"):
        evaluate([write_jsonl(tmp_path / "d.jsonl", rows)], model="m")


def test_an_empty_predictions_file_says_so(tmp_path, release):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("\n\n")
    for name in ("empty.jsonl", "blank.jsonl"):
        with pytest.raises(ScoringError, match=rf"{name}: empty predictions file \(no records in it\)$"):
            evaluate([tmp_path / name])
        with pytest.raises(ScoringError, match=rf"{name}: empty predictions file"):
            evaluate([tmp_path / name], release / "test_semantic.json")
    p = subprocess.run([SAGELM, "eval", str(tmp_path)], capture_output=True, text=True, env=ENV)
    assert p.returncode == 1 and p.stderr.strip() == f"sagelm: error: {tmp_path}: a folder, not a predictions file"

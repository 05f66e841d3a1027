import json

from sagelm.data import BadRow, Pair, read_pairs


def test_reads_released_json_with_aspect_label_and_paths(release, tmp_path):
    rows = json.loads((release / "test_semantic.json").read_text())[:5]
    (tmp_path / "test.json").write_text(json.dumps(rows))
    pairs = list(read_pairs(tmp_path / "test.json"))
    assert all(isinstance(p, Pair) for p in pairs)
    assert [p.aspect for p in pairs] == ["helpfulness", "honesty", "instruction_following", "truthfulness",
                                         "helpfulness"]  # fmt: skip
    assert pairs[0].label == rows[0]["output"].split("\n")[0]
    assert pairs[0].audio_1 == str(tmp_path / rows[0]["audios"][0])  # relative to the data file's folder
    assert pairs[0].question.startswith("Definition: You are given two sentences.")


def test_reads_jsonl_rows_and_reports_bad_ones(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"x")
    lines = [
        {"id": "p1", "instruction": "Q?", "audio_1": "a.wav", "audio_2": "/abs/b.wav", "aspect": "honesty",
         "label": "Tie"},
        {"id": "p2", "instruction": "Q?", "audio_1": "a.wav"},
        "not json",
        {"id": "p4", "instruction": "Q?", "audio_1": "a.wav", "audio_2": "a.wav", "aspect": "kindness"},
        {"id": "p5", "instruction": "Q?", "audio_1": "a.wav", "audio_2": "a.wav", "label": "maybe"},
        {"id": 6, "instruction": "Q?", "audio_1": "a.wav", "audio_2": "a.wav"},
    ]  # fmt: skip
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    out = list(read_pairs(path))
    assert out[0] == Pair("p1", "Q?", str(tmp_path / "a.wav"), "/abs/b.wav", "honesty", "Tie")
    assert isinstance(out[1], BadRow) and out[1].id == "p2"
    assert out[1].error == f"{path} line 2: audio_2: Field required"
    assert isinstance(out[2], BadRow) and out[2].error.startswith(f"{path} line 3: not valid JSON")
    assert isinstance(out[3], BadRow) and "unknown aspect 'kindness'" in out[3].error
    assert isinstance(out[4], BadRow) and "label 'maybe' is not 1, 2 or Tie" in out[4].error
    assert isinstance(out[5], Pair) and out[5].id == "6" and out[5].aspect is None


def test_missing_relative_audio_resolves_against_the_data_folder(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"id": "x", "instruction": "Q", "audio_1": "sub/a.wav", "audio_2": "b.wav"}) + "\n")
    (p,) = read_pairs(path)
    assert p.audio_1 == str(tmp_path / "sub" / "a.wav")

import json
import os

import pytest

from sagelm.data import BadRow, DataError, Pair, read_pairs
from sagelm.errors import SagelmError


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
    assert isinstance(out[4], BadRow)
    assert out[4].error.endswith("label must be the string \"1\", \"2\" or \"Tie\", not 'maybe'")
    assert isinstance(out[5], Pair) and out[5].id == "6" and out[5].aspect is None


def test_missing_relative_audio_resolves_against_the_data_folder(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"id": "x", "instruction": "Q", "audio_1": "sub/a.wav", "audio_2": "b.wav"}) + "\n")
    (p,) = read_pairs(path)
    assert p.audio_1 == str(tmp_path / "sub" / "a.wav")


# -- what a data file is: a JSON list, JSONL, or one user error naming the file (issue 9 items 6, 21) ----------
ROW = {"id": "p1", "instruction": "Q?", "audio_1": "a.wav", "audio_2": "b.wav"}


def test_a_byte_order_mark_is_accepted_in_json_and_jsonl(release, tmp_path):
    rows = json.loads((release / "test_semantic.json").read_text())[:2]
    (tmp_path / "bom.json").write_text(json.dumps(rows), encoding="utf-8-sig")
    (tmp_path / "bom.jsonl").write_text(json.dumps(ROW) + "\n", encoding="utf-8-sig")
    assert [type(p) for p in read_pairs(tmp_path / "bom.json")] == [Pair, Pair]
    (p,) = read_pairs(tmp_path / "bom.jsonl")
    assert isinstance(p, Pair) and p.id == "p1"


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "empty data file"),
        ("  \n\n", "empty data file"),
        ("[]", "an empty JSON list"),
        (json.dumps({"rows": [ROW]}, indent=2), "a JSON object, not a list of rows"),
        (json.dumps({"test_semantic": {"file_name": "x.json"}}), "a JSON object, not a list of rows"),
        ('"a.wav"', "a JSON string, not a list of rows"),
        ("42\n", "a JSON number, not a list of rows"),
        ('[{"instruction": "Q"},\n {"instruction": oops}]', "invalid JSON at line 2 column 18"),
        ("\ufeff[1, 2,]", "invalid JSON at line 1 column 7"),
        ("id,instruction,audio_1,audio_2\np1,Q?,a.wav,b.wav\n", "neither a JSON list nor JSONL"),
    ],
)
def test_a_file_that_is_no_list_of_rows_is_one_error_naming_it(tmp_path, content, problem):
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as e:
        list(read_pairs(path))
    assert isinstance(e.value, SagelmError)
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value) and "\n" not in str(e.value)


def test_jsonl_with_some_bad_lines_still_gives_a_row_each(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("not json\n" + json.dumps(ROW) + "\n[1]\n\"x\"\n{\"id\": \"p5\"\n" + json.dumps(ROW) + "\n")
    out = list(read_pairs(path))
    assert [type(x) for x in out] == [BadRow, Pair, BadRow, BadRow, BadRow, Pair]
    assert out[0].error.startswith(f"{path} line 1: not valid JSON")
    assert out[2].error == f"{path} line 3: not a JSON object (a row is an object of fields)"
    assert out[3].error == f"{path} line 4: not a JSON object (a row is an object of fields)"
    path.write_text('{"id": "p0",\n\n' + json.dumps(ROW) + "\n")  # a torn first row, then a good one
    out = list(read_pairs(path))
    assert [type(x) for x in out] == [BadRow, Pair] and out[0].error.startswith(f"{path} line 1: not valid JSON")


def test_rows_that_are_not_objects_in_a_json_list_name_no_internal_names(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([["a.wav", "b.wav"], 3]))
    out = list(read_pairs(path))
    assert [x.error for x in out] == [f"{path} row {i}: not a JSON object (a row is an object of fields)"
                                      for i in range(2)]  # fmt: skip


def test_mistyped_id_and_label_say_what_they_must_be(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps({**ROW, **bad}) for bad in ({"label": 1}, {"id": 1.5}, {"id": ["x"]})))
    out = list(read_pairs(path))
    assert out[0].error == f'{path} line 1: label must be the string "1", "2" or "Tie", not 1'
    assert out[1].error == f"{path} line 2: id must be a string or an integer, not 1.5"
    assert out[2].error == f"{path} line 3: id must be a string or an integer, not ['x']"
    for x in out:
        assert "_JsonlRow" not in x.error and "id.str" not in x.error


def test_a_data_file_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = json.dumps(ROW).encode()
    path.write_bytes(good + b"\n" + good.replace(b"a.wav", b"caf\xe9.wav") + b"\n")
    out = list(read_pairs(path))
    assert isinstance(out[0], Pair)
    assert out[1].error == f"{path} line 2: not UTF-8 text (byte 0xe9 at column 50); save the file as UTF-8"
    listing = tmp_path / "rows.json"
    listing.write_bytes(b"[" + good.replace(b"a.wav", b"caf\xe9.wav") + b"]")
    with pytest.raises(DataError, match=r"rows.json: not UTF-8 text \(byte 0xe9 at line 1 column 51\)"):
        list(read_pairs(listing))


def test_a_symlink_loop_and_a_folder_get_their_own_message(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match=r"loop.jsonl: a symbolic link loop \(too many levels of symbolic links\)"):
        list(read_pairs(loop))
    with pytest.raises(DataError, match=r": a folder, not a data file"):
        list(read_pairs(tmp_path))
    with pytest.raises(DataError, match=r"nothere.json: no such data file"):
        list(read_pairs(tmp_path / "nothere.json"))


def test_a_non_utf8_file_name_and_a_lone_surrogate_escape_are_named_printably(tmp_path):
    path = tmp_path / os.fsdecode(b"caf\xe9.jsonl")
    path.write_text(json.dumps({**ROW, "audio_2": "caf\udce9.wav"}) + "\n" + json.dumps({**ROW, "label": 7}) + "\n")
    out = list(read_pairs(path))
    shown = f"{tmp_path}/caf\\xe9.jsonl"
    assert out[0].error == f"{shown} line 1: audio_2 holds 'caf\\\\xe9.wav', not valid Unicode"
    assert out[1].error.startswith(f"{shown} line 2: label must be")
    for x in out:
        x.error.encode("utf-8")  # printable, and writable to a UTF-8 record


def test_a_json_list_is_read_item_by_item_never_held_whole(tmp_path, monkeypatch):
    # json.loads held the file's bytes, its text and every parsed row at once (about 2x the file beyond the pairs
    # kept); read item by item, only the pairs and a read's worth of text are held
    import tracemalloc

    from sagelm import jsonlist
    from sagelm.prompts import instruction_prompt

    rows = [{"instruction": instruction_prompt("honesty", f"question {i} " + "w " * 300), "input": "",
             "output": "1\nbecause " + "r " * 300, "audios": [f"a{i}.wav", f"b{i}.wav"]}
            for i in range(3000)]  # fmt: skip
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    size = path.stat().st_size
    monkeypatch.setattr(jsonlist, "CHUNK_BYTES", 2**16)
    tracemalloc.start()
    try:
        pairs = list(read_pairs(path))
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert size > 4e6 and peak - kept < size / 4, (size, kept, peak)
    assert len(pairs) == 3000 and all(isinstance(p, Pair) for p in pairs)
    assert (pairs[7].id, pairs[7].question.split()[:2], pairs[7].label) == ("rows-7", ["question", "7"], "1")

"""jsonlist.items: the same values json.loads gives, one at a time, wherever the reads happen to cut the text."""

from __future__ import annotations

import io
import json

import pytest

from sagelm import jsonlist

DOCS = [
    "[]",
    " [ ] \n",
    "[1]",
    "[12345, -6.5e3, 0, true, false, null]",
    '[{"instruction": "Q\\n\\"quoted\\" \\u00e9 \\ud83d\\ude00", "output": "1\\nwhy", "audios": ["a.wav", "b.wav"]}]',
    '[\n  {"a": [1, [2, {"b": "]"}]]},\n  "x,y",\n  {"c": {}}\n]\n',
    '["caf\u00e9 \u4e2d\u6587 \U0001f600", "\u00e9\u00e9\u00e9"]',
]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 4 * 2**20])
@pytest.mark.parametrize("doc", DOCS)
def test_items_are_what_json_loads_gives_wherever_the_reads_cut(monkeypatch, doc, chunk):
    monkeypatch.setattr(jsonlist, "CHUNK_BYTES", chunk)
    assert list(jsonlist.items(io.BytesIO(doc.encode()))) == json.loads(doc)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32"])
def test_a_bom_and_the_other_json_encodings_are_read(monkeypatch, encoding):
    monkeypatch.setattr(jsonlist, "CHUNK_BYTES", 3)
    doc = DOCS[6]
    assert list(jsonlist.items(io.BytesIO(doc.encode(encoding)))) == json.loads(doc)


def test_a_number_cut_by_a_read_is_not_taken_short(monkeypatch):
    monkeypatch.setattr(jsonlist, "CHUNK_BYTES", 4)
    for doc in ("[1234567, 89]", "[1.5e+30, -0.25E-3]", "[-7]"):
        for head in range(1, len(doc)):  # the first read (4 bytes) and the later ones (chunk) cut everywhere
            monkeypatch.setattr(jsonlist, "CHUNK_BYTES", head)
            assert list(jsonlist.items(io.BytesIO(doc.encode()))) == json.loads(doc), (doc, head)


def test_a_huge_item_is_read_whole():
    big = {"instruction": "x" * (3 * jsonlist.CHUNK_BYTES)}
    assert list(jsonlist.items(io.BytesIO(json.dumps([1, big, 2]).encode()))) == [1, big, 2]


@pytest.mark.parametrize(("doc", "kind"), [
    ('{"a": 1}', "a JSON object"), ('"text"', "a JSON string"), ("3", "a JSON number"), ("", "an empty file"),
    ("  \n", "an empty file"), ("null", "JSON null"), ("true", "a JSON boolean"), ("hello", "text that is not JSON"),
    ("name\tscore", "text that is not JSON"), ("NaN", "text that is not JSON"),
])  # fmt: skip
def test_other_values_are_named(doc, kind):
    with pytest.raises(jsonlist.NotAList, match=f"^{kind}$"):
        list(jsonlist.items(io.BytesIO(doc.encode())))


@pytest.mark.parametrize(("doc", "message", "before"), [
    ('[{"a": 1}, {"a": 2', "item 1: ", [{"a": 1}]),
    ('[{"a": 1}, {"a": 2}', "after item 1: expected ',' or ']', found the end", [{"a": 1}, {"a": 2}]),
    ("[1, 2 3]", "after item 1: expected ',' or ']'", [1, 2]),
    ("[1, 2,]", "item 2: Expecting value", [1, 2]),
    ("[1, 2] [3]", "after the list's 2 items: more data", [1, 2]),
    ('[1, {"a" 1}]', "item 1: Expecting ':' delimiter", [1]),
])  # fmt: skip
@pytest.mark.parametrize("chunk", [2, 4 * 2**20])
def test_invalid_json_names_the_item_and_what_came_before_is_given(monkeypatch, doc, message, before, chunk):
    monkeypatch.setattr(jsonlist, "CHUNK_BYTES", chunk)
    got = []
    with pytest.raises(jsonlist.Invalid) as e:
        got.extend(jsonlist.items(io.BytesIO(doc.encode())))
    assert str(e.value).startswith(message)
    assert got == before


def test_text_that_is_not_utf8_raises_unicode_error():
    with pytest.raises(UnicodeDecodeError):
        list(jsonlist.items(io.BytesIO(b'["caf\xe9"]')))

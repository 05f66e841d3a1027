"""Reading pairs to judge: the SageLM / LLaMA-Factory JSON list and our JSONL rows.

JSON list (Alpaca columns): `instruction` holds the full judge prompt (the aspect and the question are read
back out of it), `output` starts with the label, `audios` lists the two responses.
JSONL: one `{"id", "instruction", "audio_1", "audio_2", "aspect"?, "label"?, "output"?}` object per line, where
`instruction` is the question asked of the speech systems.
Relative audio paths resolve against the data file's folder, then the working directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from sagelm import jsonlist
from sagelm.aspects import UnknownAspectError, get_aspect
from sagelm.errors import SagelmError
from sagelm.paths import UnusableFile, open_regular, shown
from sagelm.prompts import parse_instruction
from sagelm.verdicts import Verdict, label_of, parse_verdict

HEAD_BYTES = 4096  # read at a time while looking for the first character (is it a JSON list?)
UTF8_BOM = b"\xef\xbb\xbf"  # written first by some Windows editors; not part of the JSON
ROW_FIELDS = ("id", "instruction", "audio_1", "audio_2", "audios")  # a row of either format has some of these
NOT_AN_OBJECT = "not a JSON object (a row is an object of fields)"
LABEL_MUST_BE = 'label must be the string "1", "2" or "Tie"'
JSON_TYPES = {dict: "object", list: "list", str: "string", int: "number", float: "number", bool: "boolean",
              type(None): "null"}  # fmt: skip


class DataError(SagelmError, ValueError):
    """A data file that cannot be read at all (the message names it)."""


@dataclass(frozen=True)
class Pair:
    """Two spoken responses to one question; `aspect` is set when the data row names one."""

    id: str
    question: str
    audio_1: str
    audio_2: str
    aspect: str | None = None
    label: Verdict | None = None
    reference: str | None = None  # the reference answer ("2\nResponse 2 ..."), when the data has one


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be judged; `error` names the file, the row and the problem."""

    id: str
    error: str


class _JsonlRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | int
    instruction: str
    audio_1: str
    audio_2: str
    aspect: str | None = None
    label: str | None = None
    output: str | None = None  # a reference answer, "2\nResponse 2 ...", as training wants

    @field_validator("id", mode="before")
    @classmethod
    def _id(cls, v: object) -> object:
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise ValueError(f"id must be a string or an integer, not {v!r}")
        return v

    @field_validator("label", mode="before")
    @classmethod
    def _label(cls, v: object) -> object:
        if v is not None and (not isinstance(v, str) or parse_verdict(v) is None):
            raise ValueError(f"{LABEL_MUST_BE}, not {v!r}")
        return v


class _AlpacaRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    instruction: str
    input: str = ""
    output: str | None = None
    audios: list[str]

    @field_validator("audios")
    @classmethod
    def _two(cls, v: list[str]) -> list[str]:
        if len(v) != 2:
            raise ValueError(f"audios holds {len(v)} paths, not 2")
        return v


def resolve_audio(path: str, base: Path) -> str:
    """`path` as given if absolute; else against the data file's folder, then the working directory."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    for candidate in (base / p, Path.cwd() / p):
        if candidate.exists():
            return str(candidate)
    return str(base / p)


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    if err["type"] == "value_error":  # our own validators' messages name the field themselves
        return str(err["ctx"]["error"])
    where = ".".join(str(x) for x in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


def _not_unicode(value: object, field: str = "") -> str | None:
    """Where a row holds a string that is not valid Unicode (a lone surrogate, from a JSON "\\udce9" escape:
    such text cannot be written to a UTF-8 record), or None."""
    if isinstance(value, str):
        return None if shown(value) == value else f"{field or 'the row'} holds {shown(value)!r}, not valid Unicode"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for k, v in items:
        if problem := _not_unicode(v, f"{field}.{k}" if field else str(k)):
            return problem
    return None


def _check_aspect(aspect: str | None) -> str | None:
    return None if aspect is None else get_aspect(aspect).name


def _alpaca_pair(row: object, rid: str, base: Path) -> Pair:
    r = _AlpacaRow.model_validate(row)
    aspect, question = parse_instruction(r.instruction)
    return Pair(
        id=rid,
        question=question,
        audio_1=resolve_audio(r.audios[0], base),
        audio_2=resolve_audio(r.audios[1], base),
        aspect=_check_aspect(aspect),
        label=label_of(r.output),
        reference=r.output,
    )


def _jsonl_pair(row: object, rid: str, base: Path) -> Pair:
    r = _JsonlRow.model_validate(row)
    if r.label is not None and r.output is not None and parse_verdict(r.label) != label_of(r.output):
        raise ValueError(f"label {r.label!r} disagrees with the verdict that starts output {r.output[:20]!r}")
    return Pair(
        id=str(r.id),
        question=r.instruction,
        audio_1=resolve_audio(r.audio_1, base),
        audio_2=resolve_audio(r.audio_2, base),
        aspect=_check_aspect(r.aspect),
        label=parse_verdict(r.label) if r.label is not None else label_of(r.output),
        reference=r.output,
    )


def _row(parse, row: object, rid: str, where: str, base: Path) -> Pair | BadRow:
    if not isinstance(row, dict):
        return BadRow(rid, f"{where}: {NOT_AN_OBJECT}")
    if problem := _not_unicode(row):
        return BadRow(rid, f"{where}: {problem}")
    try:
        return parse(row, rid, base)
    except ValidationError as e:
        return BadRow(rid, f"{where}: {_first_error(e)}")
    except (ValueError, UnknownAspectError) as e:
        return BadRow(rid, f"{where}: {e}")


def read_pairs(path: str | Path) -> Iterator[Pair | BadRow]:
    """The pairs of a data file, in order; a malformed row comes back as a BadRow and reading goes on.

    A file that is neither a JSON list of rows nor JSONL (empty, a JSON object, invalid JSON, not UTF-8 text, a
    folder, a symlink loop, ...) is one DataError naming it. A UTF-8 byte order mark is skipped.
    """
    path = Path(path)
    name = shown(path)
    try:
        f = open_regular(path, "a data file")
    except UnusableFile as e:
        raise DataError(f"{name}: {'no such data file' if e.missing else e.problem}") from None
    with f:
        first = _first_byte(f)
        if not first:
            raise DataError(f"{name}: empty data file (no rows)")
        if first == b"[":
            yield from _json_list(f, path)
        else:
            yield from _jsonl(f, path)


def _first_byte(f: BinaryIO) -> bytes:
    """The first byte of `f` that is not whitespace (nor the byte order mark), b"" if none; `f` is rewound."""
    chunk = f.read(HEAD_BYTES).removeprefix(UTF8_BOM)
    while chunk and not chunk.strip():
        chunk = f.read(HEAD_BYTES)
    f.seek(0)
    return chunk.lstrip()[:1]


def _json_list(f: BinaryIO, path: Path) -> Iterator[Pair | BadRow]:
    """The rows of a file that opens with "[". Read item by item (jsonlist), so that neither the file's text nor
    its parsed objects are ever held whole, only the pairs; none is handed out before the whole file has parsed,
    so a file that is not JSON is one DataError before any work starts, naming the line and column (from a
    second, whole-file parse, made only then)."""
    name, base, stem = shown(path), path.parent, shown(path.stem)
    pairs: list[Pair | BadRow] = []
    try:
        for i, row in enumerate(jsonlist.items(f)):
            pairs.append(_row(_alpaca_pair, row, f"{stem}-{i}", f"{name} row {i}", base))
    except (jsonlist.Invalid, jsonlist.NotAList, UnicodeDecodeError) as e:
        f.seek(0)
        _parse_whole(f.read(), name)  # raises the DataError that names the line and column
        raise DataError(f"{name}: invalid JSON ({e})") from None  # what the stream refuses, json.loads refuses
    if not pairs:
        raise DataError(f"{name}: an empty JSON list (no rows)")
    yield from pairs


def _parse_whole(data: bytes, name: str) -> object:
    """The JSON value of a whole file's bytes; a DataError naming the line and column of what is not UTF-8 or
    not JSON."""
    data = data.removeprefix(UTF8_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{name}: not UTF-8 text (byte 0x{data[e.start]:02x} at line {line} column {column}); "
                        "save the file as UTF-8") from None  # fmt: skip
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{name}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg})") from None


@dataclass(frozen=True)
class _Unparsed:
    """A JSONL line that is not JSON (or not UTF-8), with why."""

    problem: str


def _jsonl_values(f: BinaryIO) -> Iterator[tuple[int, bytes, object]]:
    """(line number, stripped line, its JSON value or an _Unparsed) for each non-blank line."""
    for n, raw in enumerate(f, start=1):
        line = (raw.removeprefix(UTF8_BOM) if n == 1 else raw).strip()
        if not line:
            continue
        try:
            yield n, line, json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as e:
            yield n, line, _Unparsed(f"not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1}); "
                                     "save the file as UTF-8")  # fmt: skip
        except json.JSONDecodeError as e:
            yield n, line, _Unparsed(f"not valid JSON ({e.msg} at column {e.colno})")


def _jsonl(f: BinaryIO, path: Path) -> Iterator[Pair | BadRow]:
    """JSONL rows, each its own Pair or BadRow. Until the file shows itself to be JSONL (a line that is a row
    object, or a second line of JSON), lines are held back, so that a file of one other JSON value (a
    pretty-printed object, a string) or of no JSON at all is one DataError instead of a pile of bad rows."""
    name = shown(path)
    held: list[tuple[int, object]] = []
    parsed: list[object] = []  # the first two held values that are JSON
    values = _jsonl_values(f)
    for n, line, value in values:
        held.append((n, value))
        if isinstance(value, _Unparsed):
            if len(held) == 1 and line.startswith(b"{"):
                whole = _whole_file_value(f)  # perhaps one JSON value spread over lines: a pretty-printed object
                if not isinstance(whole, _Unparsed):
                    raise DataError(f"{name}: a JSON {_json_type(whole)}, not a list of rows")
            continue
        parsed.append(value)
        if (isinstance(value, dict) and any(k in value for k in ROW_FIELDS)) or len(parsed) >= 2:
            break
    else:  # the whole file is held: decide what it is
        if not parsed:
            n, first = held[0]
            raise DataError(f"{name}: neither a JSON list nor JSONL: line {n} is {first.problem}")
        if len(held) == 1:
            raise DataError(f"{name}: a JSON {_json_type(parsed[0])}, not a list of rows")
    base = path.parent
    for n, value in held:
        yield _jsonl_row(n, value, name, base)
    for n, _, value in values:
        yield _jsonl_row(n, value, name, base)


def _whole_file_value(f: BinaryIO) -> object:
    """The JSON value the whole file holds, or an _Unparsed; the reading position is left where it was."""
    pos = f.tell()
    f.seek(0)
    try:
        return json.loads(f.read().removeprefix(UTF8_BOM).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return _Unparsed(str(e))
    finally:
        f.seek(pos)


def _jsonl_row(n: int, value: object, name: str, base: Path) -> Pair | BadRow:
    where = f"{name} line {n}"
    if isinstance(value, _Unparsed):
        return BadRow(f"line-{n}", f"{where}: {value.problem}")
    rid = shown(str(value.get("id", f"line-{n}"))) if isinstance(value, dict) else f"line-{n}"
    if isinstance(value, dict) and "audios" in value and "audio_1" not in value:
        return _row(_alpaca_pair, value, rid, where, base)
    return _row(_jsonl_pair, value, rid, where, base)


def _json_type(value: object) -> str:
    return JSON_TYPES.get(type(value), type(value).__name__)

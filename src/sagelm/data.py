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

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from sagelm.aspects import UnknownAspectError, get_aspect
from sagelm.errors import SagelmError
from sagelm.prompts import parse_instruction
from sagelm.verdicts import Verdict, label_of, parse_verdict


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

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is not None and parse_verdict(v) is None:
            raise ValueError(f"label {v!r} is not 1, 2 or Tie")
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
    where = ".".join(str(x) for x in err["loc"])
    return f"{where}: {err['msg']}" if where else err["msg"]


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
    try:
        return parse(row, rid, base)
    except ValidationError as e:
        return BadRow(rid, f"{where}: {_first_error(e)}")
    except (ValueError, UnknownAspectError) as e:
        return BadRow(rid, f"{where}: {e}")


def read_pairs(path: str | Path) -> Iterator[Pair | BadRow]:
    """The pairs of a data file, in order; a malformed row comes back as a BadRow and reading goes on."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    base = path.parent
    with path.open(encoding="utf-8") as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None
        for i, row in enumerate(rows):
            yield _row(_alpaca_pair, row, f"{path.stem}-{i}", f"{path} row {i}", base)
        return
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {n}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield BadRow(f"line-{n}", f"{where}: not valid JSON ({e.msg})")
                continue
            rid = str(row.get("id", f"line-{n}")) if isinstance(row, dict) else f"line-{n}"
            if isinstance(row, dict) and "audios" in row and "audio_1" not in row:
                yield _row(_alpaca_pair, row, rid, where, base)
            else:
                yield _row(_jsonl_pair, row, rid, where, base)

"""Scoring judgments against reference labels (`sagelm eval`). No torch, no model code.

Inputs: `sagelm judge` records or the authors' `vllm_infer.py` rows (`prompt`, `predict`, `label`), streamed
line by line; optionally the SageLM test JSON as reference, paired with the predictions by order. Verdicts are
read with the same `parse_verdict` that `sagelm judge` uses.
"""

from __future__ import annotations

import gc
import gzip
import json
import logging
import multiprocessing
import os
import re
import stat
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from os.path import basename
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np
from pydantic import ConfigDict, StrictBool, StrictInt, StrictStr, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from sagelm import jsonlist
from sagelm import metrics as M
from sagelm.aspects import ASPECTS
from sagelm.errors import SagelmError
from sagelm.official import OfficialScriptError, RefRow
from sagelm.prompts import find_aspect
from sagelm.verdicts import label_of, parse_verdict

N_BOOT = 1000
logger = logging.getLogger(__name__)


class ScoringError(SagelmError, ValueError):
    """Files that cannot be scored; the message names the file/row and the problem."""


NO_LABEL = -2  # label code of a judgment with no reference label (such rows are not scored)


@dataclass
class Judgments:
    """The judgments of one predictions file, column by column (numpy), one entry per unit: a pair judged on
    one aspect, in the plain order and, when judged both ways, the swapped one. A few dozen bytes per unit,
    so memory does not grow with the text of the file."""

    verdict: np.ndarray  # int8 code of the plain-order verdict (metrics.CODE), INVALID when none
    probs: np.ndarray  # float32 [n, 3] over 1/2/Tie, NaN when absent
    head: np.ndarray  # uint32: code point of the first character of the judge's text (0: none); the official view
    has_plain: np.ndarray  # bool
    swapped_verdict: np.ndarray
    swapped_probs: np.ndarray
    has_swapped: np.ndarray
    label: np.ndarray  # int8 code, NO_LABEL when the row has none
    group: np.ndarray  # int16 index into `names`
    split: np.ndarray  # int16 index into `names` (the name "" for none)
    cluster: np.ndarray  # int64: rows of the same pair (same two audios) share it
    names: list[str]

    def __len__(self) -> int:
        return len(self.verdict)

    def first_verdict(self) -> np.ndarray:
        """The plain-order verdict, or the swapped one for units judged only swapped."""
        return np.where(self.has_plain, self.verdict, self.swapped_verdict).astype(np.int8)

    def select(self, mask: np.ndarray) -> Judgments:
        cols = {k: v[mask] for k, v in self.__dict__.items() if isinstance(v, np.ndarray)}
        return Judgments(**cols, names=self.names)


class _GroupCodes:
    """Group and split names as small integer codes (index into `names`, "" being code 0)."""

    def __init__(self, names: Sequence[str] = ("",)) -> None:
        self.names: dict[str, int] = {n: i for i, n in enumerate(names)}
        self._by_aspect: dict[str | None, tuple[int, int]] = {}  # (group, split) codes that need no audio path

    def name(self, text: str) -> int:
        return self.names.setdefault(text, len(self.names))

    def __call__(self, aspect: str | None, audios: Sequence[str]) -> tuple[int, int]:
        """(group, split) codes of a row; cached by aspect where the audio paths cannot change them."""
        hit = self._by_aspect.get(aspect)
        if hit is not None:
            return hit
        group = group_of(aspect, audios)
        codes = self.name(group), self.name(split_of(group, audios) or "")
        if not audios or group not in AUDIO_GROUPS:
            self._by_aspect[aspect] = codes
        return codes


class _Columns:
    """Per-record columns, appended while streaming a predictions file."""

    def __init__(self) -> None:
        self.key, self.cluster = array("q"), array("q")
        self.swapped, self.verdict, self.label, self.error = array("b"), array("b"), array("b"), array("b")
        self.probs = array("f")
        self.head, self.line = array("I"), array("I")
        self.group, self.split, self.judge = array("h"), array("h"), array("h")
        self.codes = _GroupCodes()
        self.judges: dict[tuple[str | None, ...], int] = {}  # (model, backend, decoding) -> code

    def add(self, line: int, key: int, swapped: bool, verdict: str | None, label: str | None, probs: dict | None,
            head: str, aspect: str | None, audios: tuple[str, ...], cluster: int, error: bool = False,
            judge: tuple[str | None, ...] = (None, None, None)) -> None:  # fmt: skip
        self.line.append(line)
        self.key.append(key)
        self.swapped.append(swapped)
        self.verdict.append(M.CODE[verdict])  # type: ignore[index]
        self.label.append(NO_LABEL if label is None else M.CODE[label])  # type: ignore[index]
        self.probs.extend(_probs(probs))
        self.head.append(ord(head) if head else 0)
        group, split = self.codes(aspect, audios)
        self.group.append(group)
        self.split.append(split)
        self.cluster.append(cluster)
        self.error.append(error)
        code = self.judges.get(judge)
        if code is None:
            code = self.judges[judge] = len(self.judges)
        self.judge.append(code)

    def units(self, path: Path, model: str | None = None) -> Judgments:
        """One entry per (id, aspect), in order of first appearance, holding its plain and swapped judgment.

        A file holding several judges' records is refused unless `model` picks one. A judgment written twice
        (two processes on one file, a rerun) counts once; a record with `error` set gives way to a judged
        record of the same row; records of one (id, aspect, order) that disagree are refused, ids named,
        and so are a plain and a swapped record that disagree on the label or the pair: one record's label is
        never paired with another's verdict."""
        cols = {k: np.frombuffer(getattr(self, k), dtype=t) for k, t in (
            ("key", np.int64), ("cluster", np.int64), ("swapped", np.int8), ("verdict", np.int8),
            ("label", np.int8), ("error", np.int8), ("head", np.uint32), ("line", np.uint32),
            ("group", np.int16), ("split", np.int16), ("judge", np.int16))}  # fmt: skip
        cols["probs"] = np.frombuffer(self.probs, dtype=np.float32).reshape(-1, 3)
        keep = _one_judge(path, self.judges, cols["judge"], model)
        if keep is not None:
            cols = {k: v[keep] for k, v in cols.items()}
        uniq, first, inverse = np.unique(cols["key"], return_index=True, return_inverse=True)
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(uniq))
        slot = 2 * rank[inverse.reshape(-1)] + cols["swapped"]
        n_slots = 2 * len(uniq)
        if len(slot) > len(uniq) and np.bincount(slot, minlength=n_slots).max() > 1:
            judged = np.zeros(n_slots, dtype=bool)
            judged[slot[cols["error"] == 0]] = True
            superseded = (cols["error"] != 0) & judged[slot]  # an error record of a row judged in another run
            if superseded.any():
                cols = {k: v[~superseded] for k, v in cols.items()}
                slot = slot[~superseded]
        chosen = np.full(n_slots, -1, dtype=np.int64)
        chosen[slot[::-1]] = np.arange(len(slot) - 1, -1, -1)  # the first record of each slot
        _check_consistent(path, cols, slot, chosen)
        plain, swap = chosen[0::2], chosen[1::2]
        has_plain, has_swapped = plain >= 0, swap >= 0
        one = np.where(has_plain, plain, swap)  # the record that gives the unit's label, group and pair
        verdict, probs, head = cols["verdict"], cols["probs"], cols["head"]
        return Judgments(
            verdict=np.where(has_plain, verdict[plain], M.INVALID).astype(np.int8),
            probs=np.where(has_plain[:, None], probs[plain], np.nan).astype(np.float32),
            head=np.where(has_plain, head[plain], 0).astype(np.uint32),
            has_plain=has_plain,
            swapped_verdict=np.where(has_swapped, verdict[swap], M.INVALID).astype(np.int8),
            swapped_probs=np.where(has_swapped[:, None], probs[swap], np.nan).astype(np.float32),
            has_swapped=has_swapped,
            label=cols["label"][one].copy(),
            group=cols["group"][one].copy(),
            split=cols["split"][one].copy(),
            cluster=cols["cluster"][one].copy(),
            names=list(self.codes.names),
        )


def _judge_name(judge: tuple[str | None, ...]) -> str:
    model, backend, decoding = judge
    text = f"model {model!r}" if model is not None else "no model named"
    if backend is not None:
        text += f" on {backend}"
    if decoding is not None:
        text += f" with decoding {decoding}"
    return text


def _records(n: int) -> str:
    return f"{n} record" if n == 1 else f"{n} records"


def _one_judge(path: Path, judges: dict[tuple[str | None, ...], int], codes: np.ndarray,
               model: str | None) -> np.ndarray | None:  # fmt: skip
    """The mask of the records to score (None: all of them); refuses a file that blends several judges."""
    keep = None
    names = list(judges)
    if model is not None:
        picked = [c for c, j in enumerate(names) if j[0] == model]
        if not picked:
            held = ", ".join(sorted({repr(j[0]) for j in names}))
            raise ScoringError(f"{path}: no records of model {model!r} (its records name {held})")
        keep = np.isin(codes, picked)
        names = [names[c] for c in picked]
    if len(names) > 1:
        counts = np.bincount(codes, minlength=len(judges))
        listed = "; ".join(f"{_judge_name(j)}: {_records(counts[judges[j]])}" for j in names)
        advice = ("pick one with --model" if len({j[0] for j in names}) > 1
                  else "they are different judges: write each to its own file")  # fmt: skip
        raise ScoringError(f"{path} holds the records of {len(names)} judges ({listed}); scoring them together "
                           f"would blend them: {advice}")  # fmt: skip
    return keep


def _check_consistent(path: Path, cols: dict[str, np.ndarray], slot: np.ndarray, chosen: np.ndarray) -> None:
    """Refuse records of one judgment that disagree, and plain/swapped records of one row that disagree on the
    label or the pair; identical repeats are counted once (logged)."""
    ref = chosen[slot]
    probs = cols["probs"]
    same_probs = ((probs == probs[ref]) | (np.isnan(probs) & np.isnan(probs[ref]))).all(axis=1)
    checks = {name: cols[col] != cols[col][ref] for name, col in (
        ("verdict", "verdict"), ("label", "label"), ("audio pair", "cluster"), ("judge's text", "head"))}  # fmt: skip
    checks["probabilities"] = ~same_probs
    differ = np.logical_or.reduce(list(checks.values()))
    if differ.any():
        i = np.flatnonzero(differ)
        reason = next(name for name, bad in checks.items() if bad[i[0]])
        _refuse(path, cols["line"], i, ref[i], f"that disagree on the {reason}",
                "each judgment must appear once (give rows distinct ids, or keep one record)")
    repeats = len(slot) - int(np.count_nonzero(chosen >= 0))
    if repeats:
        logger.warning("%s: %d judgments appear more than once (identical records); each counted once", path, repeats)
    plain, swap = chosen[0::2], chosen[1::2]
    both = (plain >= 0) & (swap >= 0)
    p, s = plain[both], swap[both]
    for name, col in (("label", cols["label"]), ("audio pair", cols["cluster"])):
        bad = col[p] != col[s]
        if bad.any():
            i = np.flatnonzero(bad)
            _refuse(path, cols["line"], p[i], s[i], f"whose original and swapped records disagree on the {name}",
                    "give rows distinct ids")


def _refuse(path: Path, lines: np.ndarray, a: np.ndarray, b: np.ndarray, problem: str, advice: str) -> None:
    pairs = sorted({(int(lines[x]), int(lines[y])) for x, y in zip(a.tolist(), b.tolist(), strict=True)})
    pairs = [(min(x, y), max(x, y)) for x, y in pairs]
    found = _records_at(path, {n for pair in pairs[:3] for n in pair})
    shown = [f"id {found.get(x, {}).get('id')!r} aspect {found.get(x, {}).get('aspect')!r} (lines {x} and {y})"
             for x, y in pairs[:3]]  # fmt: skip
    more = f" and {len(pairs) - 3} more" if len(pairs) > 3 else ""
    raise ScoringError(f"{path}: records {problem}: {', '.join(shown)}{more}; {advice}")


def _records_at(path: Path, wanted: set[int]) -> dict[int, dict]:
    """The records on the given line numbers (read again: only for naming them in an error)."""
    out: dict[int, dict] = {}
    with _open(path) as f:
        for n, line in enumerate(f, start=1):
            if n in wanted:
                try:
                    out[n] = json.loads(line.lstrip(_BOM))
                except ValueError:
                    out[n] = {}
                if len(out) == len(wanted):
                    break
    return out


_BOM = b"\xef\xbb\xbf"


# keys that are not identifiers: the functional form; NaN written by older sagelm versions reads as NaN
_Probabilities = TypedDict("_Probabilities", {"1": float | None, "2": float | None, "Tie": float | None})
_Probabilities.__pydantic_config__ = ConfigDict(extra="forbid", strict=True)  # type: ignore[attr-defined]


class _Record(TypedDict, total=False):
    """What eval reads of a predictions line: a `sagelm judge` record, or an authors' `vllm_infer.py` row
    (`predict`, `label`, `prompt`). Other keys are ignored; a present key of the wrong type is an error."""

    __pydantic_config__ = ConfigDict(extra="ignore", strict=True)  # type: ignore[misc]
    id: StrictStr | StrictInt
    aspect: StrictStr | None
    verdict: Literal["1", "2", "Tie"] | None
    label: StrictStr | None
    swapped: StrictBool
    probabilities: _Probabilities | None
    raw: StrictStr | None
    error: StrictStr | None
    audio_1: StrictStr | None
    audio_2: StrictStr | None
    model: StrictStr | None
    backend: StrictStr | None
    decoding: Any
    predict: StrictStr | None


class _RecordWithPrompt(_Record, total=False):
    prompt: StrictStr | None


_READERS = {False: TypeAdapter(_Record), True: TypeAdapter(_RecordWithPrompt)}

_EXPECTED = {
    "id": "a string or an integer",
    "verdict": '"1", "2", "Tie" or null',
    "swapped": "true or false",
    "probabilities": 'null or an object {"1": p, "2": p, "Tie": p} of numbers',
}
_LABEL = 'the string "1", "2" or "Tie" (or null)'


def _problem(path: Path, n: int, line: bytes, e: ValidationError) -> str:
    """One line naming the file, the line and what is wrong with it."""
    err = e.errors()[0]
    where = f"{path} line {n}"
    if err["type"] == "json_invalid":
        try:
            line.decode("utf-8")
        except UnicodeDecodeError:
            return f"{where}: not UTF-8 text"
        reason = re.sub(r" at line \d+ column \d+$", "", err["msg"].removeprefix("Invalid JSON: "))
        return f"{where}: not valid JSON ({reason})"
    if not err["loc"]:
        return f"{where}: not a JSON object"
    field = str(err["loc"][0])
    if field == "label":
        is_vllm = b'"predict"' in line
        expected = "a string or null" if is_vllm else _LABEL
    else:
        expected = _EXPECTED.get(field, "a string or null")
    value = err.get("input")
    detail = ""
    if len(err["loc"]) > 1 and field == "probabilities":
        detail = f" ({err['loc'][1]!r}: {err['msg'].lower()})"
        value = _value_at(line, field)
    shown = json.dumps(value, ensure_ascii=False, default=str)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return f"{where}: {field} must be {expected}, not {shown}{detail}"


def _value_at(line: bytes, field: str) -> Any:
    try:
        return json.loads(line.lstrip(_BOM)).get(field)
    except (ValueError, AttributeError):
        return None


def _open(path: Path) -> IO[bytes]:
    """The predictions file as binary lines, gunzipped when it is gzip data (by its magic bytes)."""
    with path.open("rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else path.open("rb")  # type: ignore[return-value]


def _check_file(path: Path, what: str) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ScoringError(f"{path}: no such {what} file") from None
    except OSError as e:
        raise ScoringError(f"{path}: cannot read the {what} file ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ScoringError(f"{path}: a folder, not a {what} file")
    if not stat.S_ISREG(st.st_mode):
        raise ScoringError(f"{path}: not a regular file (a {what} file is read whole)")


def _lines(path: Path, own_labels: bool) -> Iterator[tuple[int, dict]]:
    _check_file(path, "predictions")
    reader = _READERS[own_labels]
    try:
        with _open(path) as f:
            for n, line in enumerate(f, start=1):
                if n == 1 and line.startswith(_BOM):
                    line = line[len(_BOM):]
                if len(line) < 4 and not line.strip():  # a blank line (a record is never this short)
                    continue
                try:
                    obj = reader.validate_json(line)
                except ValidationError as e:
                    raise ScoringError(_problem(path, n, line, e)) from None
                yield n, obj
    except (OSError, EOFError, zlib.error) as e:
        raise ScoringError(f"{path}: cannot read it as gzip ({e})") from None


_NO_PROBS = (float("nan"),) * 3


def _probs(p: dict | None) -> tuple[float, float, float]:
    if not p:
        return _NO_PROBS
    return tuple(float("nan") if x is None else x for x in (p["1"], p["2"], p["Tie"]))  # type: ignore[return-value]


def read_predictions(path: str | Path, own_labels: bool = True, model: str | None = None) -> Judgments:
    """The judgments of a predictions file (streamed), one per (id, aspect) in order of first appearance.

    With `own_labels` False (a reference file will give labels and aspects) the authors' rows are not parsed
    for theirs. `model` picks one judge's records from a file holding several."""
    with _no_gc():
        return _read_predictions(Path(path), own_labels, model)


def _read_predictions(path: Path, own_labels: bool, model: str | None) -> Judgments:
    cols = _Columns()
    for n, obj in _lines(path, own_labels):
        if "predict" in obj:  # the authors' vllm_infer.py output: every line is its own judgment
            predict = obj["predict"] or ""
            key = hash(("\0line", n))
            label = label_of(obj.get("label")) if own_labels else None
            aspect = find_aspect(obj.get("prompt") or "") if own_labels else None
            cols.add(n, key, False, parse_verdict(predict), label, None, predict[:1], aspect, (), key)
            continue
        if "verdict" not in obj or "id" not in obj:
            raise ScoringError(f"{path} line {n}: neither a sagelm judgment nor a vllm_infer row")
        rid, aspect = str(obj["id"]), obj.get("aspect")
        audios = tuple(a for a in (obj.get("audio_1"), obj.get("audio_2")) if a)
        label = obj.get("label")
        if label not in M.CODE:
            raise ScoringError(f"{path} line {n}: label must be {_LABEL}, not {json.dumps(label)}")
        decoding = obj.get("decoding")
        judge = (obj.get("model"), obj.get("backend"),
                 None if decoding is None else json.dumps(decoding, sort_keys=True, default=str))  # fmt: skip
        cols.add(n, hash((rid, aspect)), obj.get("swapped", False), obj["verdict"], label,  # type: ignore[arg-type]
                 obj.get("probabilities"), (obj.get("raw") or "")[:1], aspect, audios,  # type: ignore[arg-type]
                 hash(audios) if audios else hash(("\0id", rid)), obj.get("error") is not None, judge)  # fmt: skip
    if not cols.key:
        raise ScoringError(f"{path}: empty predictions file (no records in it)")
    return cols.units(path, model)


@contextmanager
def _no_gc() -> Iterator[None]:
    """Build many small objects without the cyclic collector rescanning them again and again (none of them
    form cycles): loading 400,000 reference rows takes half the time."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_reference(path: str | Path) -> list[RefRow]:
    """The reference rows whole (the official scripts need their text)."""
    with _no_gc():
        return list(_reference_rows(Path(path)))


@dataclass
class Reference:
    """The reference rows reduced to what scoring needs, column by column: a few bytes per row, however long
    the questions (the text of a 400,000-row reference is never held)."""

    label: np.ndarray  # int8 code, NO_LABEL when the row has none
    group: np.ndarray  # int16 index into `names`
    split: np.ndarray  # int16 index into `names` ("" for none)
    cluster: np.ndarray  # int64: rows of the same pair share it; meaningful where `has_audios`
    has_audios: np.ndarray  # bool
    names: list[str]

    def __len__(self) -> int:
        return len(self.label)


def read_reference_columns(path: str | Path) -> Reference:
    label, group, split, cluster, has_audios = array("b"), array("h"), array("h"), array("q"), array("b")
    codes = _GroupCodes()
    with _no_gc():
        for instruction, output, audios in _reference_rows(Path(path)):
            code = label_of(output)
            label.append(NO_LABEL if code is None else M.CODE[code])
            g, s = codes(find_aspect(instruction), audios)
            group.append(g)
            split.append(s)
            cluster.append(hash(audios) if audios else 0)
            has_audios.append(bool(audios))
    return Reference(np.frombuffer(label, np.int8), np.frombuffer(group, np.int16), np.frombuffer(split, np.int16),
                     np.frombuffer(cluster, np.int64), np.frombuffer(has_audios, np.int8).astype(bool),
                     list(codes.names))  # fmt: skip


def _reference_rows(path: Path) -> Iterator[RefRow]:
    """The rows of a reference JSON list (gzip or plain), checked and read one at a time."""
    _check_file(path, "reference")
    try:
        with _open(path) as f:
            for i, r in enumerate(jsonlist.items(f)):
                if type(r) is not dict or type(r.get("instruction")) is not str:
                    raise ScoringError(f"{path} row {i}: needs an 'instruction' string")
                output, audios = r.get("output", ...), r.get("audios")
                audios = [] if audios is None else audios  # a row without audio paths: its own pair
                if output is ...:
                    raise ScoringError(f"{path} row {i}: needs 'output'")
                if output is not None and type(output) is not str:
                    raise ScoringError(f"{path} row {i}: 'output' must be a string, not {json.dumps(output)[:40]}")
                if type(audios) is not list or not all(type(a) is str for a in audios):
                    raise ScoringError(f"{path} row {i}: 'audios' must be a list of paths")
                yield RefRow(r["instruction"], output or "", tuple(audios))
    except jsonlist.NotAList as e:
        raise ScoringError(f"{path}: expected a JSON list of rows, not {e}") from None
    except jsonlist.Invalid as e:
        raise ScoringError(f"{path}: not valid JSON ({e})") from None
    except UnicodeDecodeError:
        raise ScoringError(f"{path}: not UTF-8 text") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise ScoringError(f"{path}: cannot read it as gzip ({e})") from None
    except OSError as e:
        raise ScoringError(f"{path}: cannot read the reference file ({e.strerror or e})") from None


def attach_reference(units: Judgments, ref: Reference, pred_path: Path, ref_path: Path) -> None:
    """Labels, groups and pairs from the reference rows, paired with the judgments by order."""
    if len(units) != len(ref):
        raise ScoringError(f"{pred_path} has {len(units)} judgments but {ref_path} has {len(ref)} rows")
    codes = _GroupCodes(units.names)
    names = np.array([codes.name(n) for n in ref.names], dtype=np.int16)  # the reference's codes -> the units'
    units.label = ref.label.copy()
    units.group, units.split = names[ref.group], names[ref.split]
    units.cluster = np.where(ref.has_audios, ref.cluster, units.cluster)
    units.names = list(codes.names)


AUDIO_GROUPS = ("emotion", "gender", "character", "implicit_emotion")  # groups/splits read from audio paths


def group_of(aspect: str | None, audios: Sequence[str]) -> str:
    a = ASPECTS.get(aspect or "")
    if a is None:
        return aspect or "unknown"
    if a.group == "emotion" and audios and "Implicit-Emotion" in audios[0]:
        return "implicit_emotion"
    return a.group


def split_of(group: str, audios: Sequence[str]) -> str | None:
    """`{group}_tts` (same responseId in both file names) or `{group}_qa`, for emotion/gender/character."""
    if group not in ("emotion", "gender", "character") or len(audios) != 2:
        return None
    parts = [basename(a).split("-") for a in audios]
    if any(len(p) < 4 for p in parts):
        return None
    return f"{group}_{'tts' if parts[0][2] == parts[1][2] else 'qa'}"


# -- reports ------------------------------------------------------------------------------------------------------
def _cell(pred: np.ndarray, label: np.ndarray, clusters: np.ndarray, seed: int, full: bool) -> dict:
    acc, agr = M.row_scores(pred, label)
    n = len(pred)
    out = {
        "n": n,
        "accuracy": float(acc.mean()) if n else float("nan"),
        "agreement": float(agr.mean()) if n else float("nan"),
        "invalid": int(np.sum(pred == M.INVALID)),
    }
    if full:
        valid = pred != M.INVALID
        acc_ci, agr_ci = M.bootstrap_cis([acc, agr], clusters, N_BOOT, seed)  # one resampling for both
        out |= {
            "accuracy_ci": acc_ci,
            "agreement_ci": agr_ci,
            "kappa": M.cohen_kappa(pred, label),
            "confusion": M.confusion(pred, label),
            "labels": M.distribution(label),
            "verdicts": M.distribution(pred),
            "prefer_1": float(np.mean(pred[valid] == 0)) if valid.any() else float("nan"),
            "label_prefer_1": float(np.mean(label == 0)) if n else float("nan"),
        }
    return out


def report(units: Judgments, seed: int = 0) -> dict:
    """Accuracy, agreement, invalid count per group and overall, with bootstrap CIs (resampling pairs), kappa,
    confusion, distributions and P(prefer Response 1); each order, order flips and debiased scores when both
    orders exist."""
    units = units.select(units.label != NO_LABEL)
    if not len(units):
        raise ScoringError("no row has a reference label (give --reference REF.json)")
    pred, label, clusters = units.first_verdict(), units.label, units.cluster
    out: dict = {"overall": _cell(pred, label, clusters, seed, True), "groups": {}, "splits": {}}
    order = [g for g in dict.fromkeys(a.group for a in ASPECTS.values())] + ["implicit_emotion"]
    present = sorted({units.names[g] for g in np.unique(units.group)},
                     key=lambda g: (order.index(g) if g in order else len(order), g))  # fmt: skip
    for g in present:
        m = units.group == units.names.index(g)
        out["groups"][g] = _cell(pred[m], label[m], clusters[m], seed, True)
    for code in np.unique(units.split):
        name = units.names[code]
        if name:
            m = units.split == code
            out["splits"][name] = _cell(pred[m], label[m], clusters[m], seed, False)
    out["splits"] = dict(sorted(out["splits"].items()))
    both = units.has_plain & units.has_swapped
    if both.any():
        plain, swapped = units.verdict[both], units.swapped_verdict[both]
        lab, cl = label[both], clusters[both]
        ok = (plain != M.INVALID) & (swapped != M.INVALID)
        order_report = {
            "n_pairs": int(both.sum()),
            "flip_rate": float(np.mean(plain[ok] != swapped[ok])) if ok.any() else float("nan"),
            "original": _cell(plain, lab, cl, seed, False),  # each order on its own
            "swapped": _cell(swapped, lab, cl, seed, False),
            "debiased": _cell(M.debias(plain, swapped), lab, cl, seed, False),
        }
        pp, ps = units.probs[both], units.swapped_probs[both]
        if not (np.isnan(pp).any() or np.isnan(ps).any()):
            order_report["debiased_probabilities"] = _cell(M.debias_probabilities(pp, ps), lab, cl, seed, False)
        out["order"] = order_report
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.array(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def _across_runs(reports: list[dict], keys: tuple[str, ...]) -> dict:
    """`overall` and `groups` cells as mean and std of `keys` across runs (groups present in every run)."""

    def merge(cells: list[dict]) -> dict:
        merged = {"n": cells[0]["n"]}
        for k in keys:
            merged[k], merged[f"{k}_std"] = _mean_std([c[k] for c in cells])
        return merged

    groups = {
        g: merge([r["groups"][g] for r in reports])
        for g in reports[0]["groups"]
        if all(g in r["groups"] for r in reports)
    }
    return {"overall": merge([r["overall"] for r in reports]), "groups": groups}


def combine_runs(reports: list[dict], runs: list[Judgments], seed: int = 0) -> dict:
    """Several runs of the same rows: each run's report, mean +- std across runs, and the majority vote."""
    out: dict = {"runs": reports, **_across_runs(reports, ("accuracy", "agreement", "invalid"))}
    n = {len(r) for r in runs}
    if len(n) != 1:
        raise ScoringError(f"the prediction files hold different numbers of judgments ({sorted(n)})")
    winner = M.majority(np.stack([r.verdict for r in runs]))
    first = runs[0]
    vote = Judgments(
        verdict=winner, probs=first.probs, head=first.head, has_plain=np.ones(len(first), dtype=bool),
        swapped_verdict=np.full(len(first), M.INVALID, dtype=np.int8), swapped_probs=first.swapped_probs,
        has_swapped=np.zeros(len(first), dtype=bool), label=first.label, group=first.group, split=first.split,
        cluster=first.cluster, names=first.names,
    )  # fmt: skip
    out["majority"] = report(vote, seed)
    return out


PARALLEL_BYTES = 32 * 2**20  # below this, reading predictions beside the reference is not worth a process


def _read_all(predictions: Sequence[str | Path], reference: str | Path | None, model: str | None = None,
              read: Callable[[str | Path], Any] = read_reference_columns) -> tuple[list[Judgments], Any]:  # fmt: skip
    """The predictions files and the reference, as `read` gives it (None without one). With a large reference
    on a machine that can fork, the predictions are streamed in a second process while this one parses the
    reference JSON (the two take about as long); only the compact columns come back."""
    own_labels = reference is None
    if reference is None:
        return [read_predictions(p, own_labels, model) for p in predictions], None
    big = Path(reference).is_file() and Path(reference).stat().st_size >= PARALLEL_BYTES
    if not big or "fork" not in multiprocessing.get_all_start_methods() or os.environ.get("SAGELM_NO_FORK"):
        refs = read(reference)
        return [read_predictions(p, own_labels, model) for p in predictions], refs
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        pending = [pool.submit(read_predictions, p, own_labels, model) for p in predictions]
        refs = read(reference)
        return [f.result() for f in pending], refs


def evaluate(predictions: Sequence[str | Path], reference: str | Path | None = None, seed: int = 0,
             model: str | None = None) -> dict:  # fmt: skip
    """The full report of one predictions file, or of several runs of the same rows; `model` picks one judge's
    records from files holding several."""
    all_units, refs = _read_all(predictions, reference, model)
    runs = []
    for p, units in zip(predictions, all_units, strict=True):
        if refs is not None:
            attach_reference(units, refs, Path(p), Path(reference))  # type: ignore[arg-type]
        runs.append(units)
    reports = [report(u, seed) for u in runs]
    if len(reports) == 1:
        return reports[0]
    return combine_runs(reports, runs, seed)


def evaluate_official(predictions: Sequence[str | Path], reference: str | Path | None,
                      model: str | None = None) -> dict:  # fmt: skip
    """`--compat official`: the authors' scripts, figure for figure (official.py)."""
    from sagelm import official

    if reference is None:
        raise ScoringError("--compat official needs --reference REF.json, as the authors' scripts do")
    all_units, refs = _read_all(predictions, reference, model, read_reference)
    assert refs is not None
    kinds = {ASPECTS[a].kind for r in refs if (a := find_aspect(r.instruction)) in ASPECTS}
    if len(kinds) != 1:
        raise ScoringError(f"{reference}: official scoring needs all-semantic or all-acoustic rows")
    script = official.semantic if kinds == {"semantic"} else official.acoustic
    results = []
    for p, units in zip(predictions, all_units, strict=True):
        if units.has_swapped.any():
            raise ScoringError(f"{p}: official scoring takes one judgment per row, not both orders")
        if len(units) != len(refs):
            raise ScoringError(f"{p} has {len(units)} judgments but {reference} has {len(refs)} rows")
        texts = [chr(h) if h else "" for h in units.head.tolist()]
        try:
            res = script(refs, texts)
        except OfficialScriptError as e:
            raise ScoringError(f"{p}: {e}") from None
        res["compat"] = "official"
        res["script"] = "semantic" if script is official.semantic else "acoustic"
        results.append(res)
    if len(results) == 1:
        return results[0]
    return {"runs": results, "compat": "official", **_across_runs(results, ("accuracy", "agreement"))}

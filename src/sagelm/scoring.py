"""Scoring judgments against reference labels (`sagelm eval`). No torch, no model code.

Inputs: `sagelm judge` records or the authors' `vllm_infer.py` rows (`prompt`, `predict`, `label`), streamed
line by line; optionally the SageLM test JSON as reference, paired with the predictions by order. Verdicts are
read with the same `parse_verdict` that `sagelm judge` uses.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
from array import array
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from os.path import basename
from pathlib import Path

import numpy as np

from sagelm import metrics as M
from sagelm.aspects import ASPECTS
from sagelm.official import OfficialScriptError, RefRow
from sagelm.prompts import find_aspect
from sagelm.verdicts import label_of, parse_verdict

N_BOOT = 1000


class ScoringError(ValueError):
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
        self.swapped, self.verdict, self.label = array("b"), array("b"), array("b")
        self.probs = array("f")
        self.head = array("I")
        self.group, self.split = array("h"), array("h")
        self.codes = _GroupCodes()

    def add(self, key: int, swapped: bool, verdict: str | None, label: str | None, probs: dict | None,
            head: str, aspect: str | None, audios: tuple[str, ...], cluster: int) -> None:  # fmt: skip
        self.key.append(key)
        self.swapped.append(swapped)
        self.verdict.append(M.CODE.get(verdict, M.INVALID))  # type: ignore[arg-type]
        self.label.append(NO_LABEL if label is None else M.CODE[label])  # type: ignore[index]
        self.probs.extend(_probs(probs))
        self.head.append(ord(head) if head else 0)
        group, split = self.codes(aspect, audios)
        self.group.append(group)
        self.split.append(split)
        self.cluster.append(cluster)

    def units(self) -> Judgments:
        """One entry per key, in order of first appearance; the last record of each order wins."""
        key = np.frombuffer(self.key, dtype=np.int64)
        n_rec = len(key)
        uniq, first, inverse = np.unique(key, return_index=True, return_inverse=True)
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[np.argsort(first)] = np.arange(len(uniq))
        unit = rank[inverse.reshape(-1)]
        order = np.sort(first)
        swapped = np.frombuffer(self.swapped, dtype=np.int8).astype(bool)
        verdict = np.frombuffer(self.verdict, dtype=np.int8)
        probs = np.frombuffer(self.probs, dtype=np.float32).reshape(n_rec, 3)
        head = np.frombuffer(self.head, dtype=np.uint32)

        def last_of(mask: np.ndarray) -> np.ndarray:
            last = np.full(len(uniq), -1, dtype=np.int64)
            idx = np.flatnonzero(mask)
            np.maximum.at(last, unit[idx], idx)
            return last

        plain, swap = last_of(~swapped), last_of(swapped)
        has_plain, has_swapped = plain >= 0, swap >= 0
        return Judgments(
            verdict=np.where(has_plain, verdict[plain], M.INVALID).astype(np.int8),
            probs=np.where(has_plain[:, None], probs[plain], np.nan).astype(np.float32),
            head=np.where(has_plain, head[plain], 0).astype(np.uint32),
            has_plain=has_plain,
            swapped_verdict=np.where(has_swapped, verdict[swap], M.INVALID).astype(np.int8),
            swapped_probs=np.where(has_swapped[:, None], probs[swap], np.nan).astype(np.float32),
            has_swapped=has_swapped,
            label=np.frombuffer(self.label, dtype=np.int8)[order].copy(),
            group=np.frombuffer(self.group, dtype=np.int16)[order].copy(),
            split=np.frombuffer(self.split, dtype=np.int16)[order].copy(),
            cluster=np.frombuffer(self.cluster, dtype=np.int64)[order].copy(),
            names=list(self.codes.names),
        )


def _lines(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise ScoringError(f"{path}: no such predictions file")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if len(line) < 4 and not line.strip():  # a blank line (a record is never this short)
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ScoringError(f"{path} line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ScoringError(f"{path} line {n}: not a JSON object")
            yield n, obj


_NO_PROBS = (float("nan"),) * 3


def _probs(p: dict | None) -> tuple[float, float, float]:
    return _NO_PROBS if not p else (float(p["1"]), float(p["2"]), float(p["Tie"]))


def read_predictions(path: str | Path, own_labels: bool = True) -> Judgments:
    """The judgments of a predictions file (streamed), one per (id, aspect) in order of first appearance.

    With `own_labels` False (a reference file will give labels and aspects) the authors' rows are not parsed
    for theirs."""
    with _no_gc():
        return _read_predictions(Path(path), own_labels)


def _read_predictions(path: Path, own_labels: bool) -> Judgments:
    cols = _Columns()
    for n, obj in _lines(path):
        if "predict" in obj:  # the authors' vllm_infer.py output: every line is its own judgment
            predict = obj.get("predict") or ""
            key = hash(("\0line", n))
            label = label_of(obj.get("label")) if own_labels else None
            aspect = find_aspect(obj.get("prompt", "")) if own_labels else None
            cols.add(key, False, parse_verdict(predict), label, None, predict[:1], aspect, (), key)
            continue
        if "verdict" not in obj or "id" not in obj:
            raise ScoringError(f"{path} line {n}: neither a sagelm judgment nor a vllm_infer row")
        rid, aspect = str(obj["id"]), obj.get("aspect")
        audios = tuple(a for a in (obj.get("audio_1"), obj.get("audio_2")) if a)
        label = obj.get("label")
        if label not in M.CODE:
            raise ScoringError(f"{path} line {n}: label {label!r} is not 1, 2 or Tie")
        verdict = obj.get("verdict")
        cols.add(hash((rid, aspect)), bool(obj.get("swapped")), verdict if verdict in M.CODE else None, label,
                 obj.get("probabilities"), (obj.get("raw") or "")[:1], aspect, audios,
                 hash(audios) if audios else hash(("\0id", rid)))  # fmt: skip
    return cols.units()


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
    with _no_gc():
        return _read_reference(Path(path))


def _read_reference(path: Path) -> list[RefRow]:
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ScoringError(f"{path}: no such reference file") from None
    except json.JSONDecodeError as e:
        raise ScoringError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(rows, list):
        raise ScoringError(f"{path}: expected a JSON list of rows")
    out = []
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or "instruction" not in r or "output" not in r:
            raise ScoringError(f"{path} row {i}: needs 'instruction' and 'output'")
        out.append(RefRow(r["instruction"], r["output"] or "", tuple(r.get("audios") or ())))
    return out


def attach_reference(units: Judgments, refs: list[RefRow], pred_path: Path, ref_path: Path) -> None:
    """Labels, groups and pairs from the reference rows, paired with the judgments by order."""
    if len(units) != len(refs):
        raise ScoringError(f"{pred_path} has {len(units)} judgments but {ref_path} has {len(refs)} rows")
    codes = _GroupCodes(units.names)
    for i, r in enumerate(refs):
        label = label_of(r.output)
        units.label[i] = NO_LABEL if label is None else M.CODE[label]
        units.group[i], units.split[i] = codes(find_aspect(r.instruction), r.audios)
        if r.audios:
            units.cluster[i] = hash(r.audios)
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
        out |= {
            "accuracy_ci": M.bootstrap_ci(acc, clusters, N_BOOT, seed),
            "agreement_ci": M.bootstrap_ci(agr, clusters, N_BOOT, seed),
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


def _read_all(predictions: Sequence[str | Path], reference: str | Path | None) -> tuple[list[Judgments], list | None]:
    """The predictions files and the reference. With a large reference on a machine that can fork, the
    predictions are streamed in a second process while this one parses the reference JSON (the two take about
    as long); only the compact columns come back."""
    own_labels = reference is None
    if reference is None:
        return [read_predictions(p, own_labels) for p in predictions], None
    big = Path(reference).is_file() and Path(reference).stat().st_size >= PARALLEL_BYTES
    if not big or "fork" not in multiprocessing.get_all_start_methods() or os.environ.get("SAGELM_NO_FORK"):
        refs = read_reference(reference)
        return [read_predictions(p, own_labels) for p in predictions], refs
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork")) as pool:
        pending = [pool.submit(read_predictions, p, own_labels) for p in predictions]
        refs = read_reference(reference)
        return [f.result() for f in pending], refs


def evaluate(predictions: Sequence[str | Path], reference: str | Path | None = None, seed: int = 0) -> dict:
    all_units, refs = _read_all(predictions, reference)
    runs = []
    for p, units in zip(predictions, all_units, strict=True):
        if refs is not None:
            attach_reference(units, refs, Path(p), Path(reference))  # type: ignore[arg-type]
        runs.append(units)
    reports = [report(u, seed) for u in runs]
    if len(reports) == 1:
        return reports[0]
    return combine_runs(reports, runs, seed)


def evaluate_official(predictions: Sequence[str | Path], reference: str | Path | None) -> dict:
    """`--compat official`: the authors' scripts, figure for figure (official.py)."""
    from sagelm import official

    if reference is None:
        raise ScoringError("--compat official needs --reference REF.json, as the authors' scripts do")
    all_units, refs = _read_all(predictions, reference)
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

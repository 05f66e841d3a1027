"""Scoring judgments against reference labels (`sagelm eval`). No torch, no model code.

Inputs: `sagelm judge` records or the authors' `vllm_infer.py` rows (`prompt`, `predict`, `label`), streamed
line by line; optionally the SageLM test JSON as reference, paired with the predictions by order. Verdicts are
read with the same `parse_verdict` that `sagelm judge` uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
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


@dataclass(slots=True)
class Unit:
    """One judgment of one pair on one aspect: the plain order and, when judged both ways, the swapped one."""

    id: str
    aspect: str | None
    label: str | None = None
    audios: tuple[str, ...] = ()
    verdict: str | None = None
    probs: list[float] | None = None
    head: str = ""  # the first character of the judge's text: all the authors' scripts read of it
    has_plain: bool = False
    swapped_verdict: str | None = None
    swapped_probs: list[float] | None = None
    has_swapped: bool = False


def _lines(path: Path) -> Iterator[tuple[int, dict]]:
    if not path.is_file():
        raise ScoringError(f"{path}: no such predictions file")
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ScoringError(f"{path} line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise ScoringError(f"{path} line {n}: not a JSON object")
            yield n, obj


def _probs(p: dict | None) -> list[float] | None:
    return None if not p else [float(p["1"]), float(p["2"]), float(p["Tie"])]


def read_predictions(path: str | Path) -> list[Unit]:
    """The judgment units of a predictions file, in order of first appearance."""
    path = Path(path)
    units: dict[tuple, Unit] = {}
    for n, obj in _lines(path):
        if "predict" in obj:  # the authors' vllm_infer.py output
            predict = obj.get("predict") or ""
            units[(n,)] = Unit(
                id=str(n), aspect=find_aspect(obj.get("prompt", "")), label=label_of(obj.get("label")),
                verdict=parse_verdict(predict), head=predict[:1], has_plain=True,
            )  # fmt: skip
            continue
        if "verdict" not in obj or "id" not in obj:
            raise ScoringError(f"{path} line {n}: neither a sagelm judgment nor a vllm_infer row")
        key = (str(obj["id"]), obj.get("aspect"))
        u = units.get(key)
        if u is None:
            audios = tuple(a for a in (obj.get("audio_1"), obj.get("audio_2")) if a)
            u = units[key] = Unit(id=key[0], aspect=key[1], label=obj.get("label"), audios=audios)
        if obj.get("swapped"):
            u.swapped_verdict, u.swapped_probs = obj.get("verdict"), _probs(obj.get("probabilities"))
            u.has_swapped = True
        else:
            u.verdict, u.probs, u.has_plain = obj.get("verdict"), _probs(obj.get("probabilities")), True
            u.head = (obj.get("raw") or "")[:1]
    return list(units.values())


def read_reference(path: str | Path) -> list[RefRow]:
    path = Path(path)
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


def attach_reference(units: list[Unit], refs: list[RefRow], pred_path: Path, ref_path: Path) -> None:
    if len(units) != len(refs):
        raise ScoringError(f"{pred_path} has {len(units)} judgments but {ref_path} has {len(refs)} rows")
    for u, r in zip(units, refs, strict=True):
        u.label, u.aspect, u.audios = label_of(r.output), find_aspect(r.instruction), r.audios


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


def report(units: list[Unit], seed: int = 0) -> dict:
    """Accuracy, agreement, invalid count per group and overall, with bootstrap CIs (resampling pairs), kappa,
    confusion, distributions and P(prefer Response 1); order flips and debiased scores when both orders exist."""
    units = [u for u in units if u.label is not None]
    if not units:
        raise ScoringError("no row has a reference label (give --reference REF.json)")
    first = [u.verdict if u.has_plain else u.swapped_verdict for u in units]
    pred, label = M.encode(first), M.encode([u.label for u in units])
    pair_index: dict[object, int] = {}  # a pair is its two audios (all its aspects), else its id
    clusters = np.array([pair_index.setdefault(u.audios or u.id, len(pair_index)) for u in units])
    groups = np.array([group_of(u.aspect, u.audios) for u in units])
    splits = np.array([split_of(g, u.audios) or "" for g, u in zip(groups, units, strict=True)])
    out: dict = {"overall": _cell(pred, label, clusters, seed, True), "groups": {}, "splits": {}}
    order = [g for g in dict.fromkeys(a.group for a in ASPECTS.values())] + ["implicit_emotion"]
    for g in sorted(set(groups), key=lambda g: (order.index(g) if g in order else len(order), g)):
        m = groups == g
        out["groups"][str(g)] = _cell(pred[m], label[m], clusters[m], seed, True)
    for s in sorted(set(splits) - {""}):
        m = splits == s
        out["splits"][str(s)] = _cell(pred[m], label[m], clusters[m], seed, False)
    both = [i for i, u in enumerate(units) if u.has_plain and u.has_swapped]
    if both:
        plain = pred[both]
        swapped = M.encode([units[i].swapped_verdict for i in both])
        lab, cl = label[both], clusters[both]
        ok = (plain != M.INVALID) & (swapped != M.INVALID)
        order_report = {
            "n_pairs": len(both),
            "flip_rate": float(np.mean(plain[ok] != swapped[ok])) if ok.any() else float("nan"),
            "debiased": _cell(M.debias(plain, swapped), lab, cl, seed, False),
        }
        if all(units[i].probs and units[i].swapped_probs for i in both):
            pp = np.array([units[i].probs for i in both])
            ps = np.array([units[i].swapped_probs for i in both])
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


def combine_runs(reports: list[dict], runs: list[list[Unit]], seed: int = 0) -> dict:
    """Several runs of the same rows: each run's report, mean +- std across runs, and the majority vote."""
    out: dict = {"runs": reports, **_across_runs(reports, ("accuracy", "agreement", "invalid"))}
    n = {len(r) for r in runs}
    if len(n) != 1:
        raise ScoringError(f"the prediction files hold different numbers of judgments ({sorted(n)})")
    votes = np.stack([M.encode([u.verdict for u in r]) for r in runs])
    winner = M.majority(votes)
    names = {M.CODE[v]: v for v in ("1", "2", "Tie", None)}
    vote_units = [Unit(id=u.id, aspect=u.aspect, label=u.label, audios=u.audios, verdict=names[int(w)],
                       has_plain=True) for u, w in zip(runs[0], winner, strict=True)]  # fmt: skip
    out["majority"] = report(vote_units, seed)
    return out


def evaluate(predictions: Sequence[str | Path], reference: str | Path | None = None, seed: int = 0) -> dict:
    refs = read_reference(reference) if reference else None
    runs = []
    for p in predictions:
        units = read_predictions(p)
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
    refs = read_reference(reference)
    kinds = {ASPECTS[a].kind for r in refs if (a := find_aspect(r.instruction)) in ASPECTS}
    if len(kinds) != 1:
        raise ScoringError(f"{reference}: official scoring needs all-semantic or all-acoustic rows")
    script = official.semantic if kinds == {"semantic"} else official.acoustic
    results = []
    for p in predictions:
        units = read_predictions(p)
        if any(u.has_swapped for u in units):
            raise ScoringError(f"{p}: official scoring takes one judgment per row, not both orders")
        if len(units) != len(refs):
            raise ScoringError(f"{p} has {len(units)} judgments but {reference} has {len(refs)} rows")
        texts = [u.head if u.has_plain else "" for u in units]
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

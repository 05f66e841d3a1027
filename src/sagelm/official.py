"""The authors' two scoring scripts, reproduced figure for figure (`sagelm eval --compat official`).

Their quirks, kept on purpose (metrics.md):
- the verdict is the first character of the output ("1", "2" or "T"); anything else prints "Wrong format"
  and then crashes on the arithmetic unless it equals the label's first character. Here that is a
  one-line ScoringError instead of a crash;
- semantic script: row idx belongs to aspect idx % 4 (helpfulness, honesty, instruction_following,
  truthfulness) whatever the row says, and each aspect is divided by N/4;
- acoustic script: the aspect is a greedy `Evaluate in terms of \\*\\*(.*)\\*\\*` match, so a question that
  itself holds `**` yields no known aspect and the row is silently dropped; emotion rows whose first audio
  path holds `Implicit-Emotion` are "Implicit_Emotion"; emotion/gender/character rows split into TTS (same
  responseId in both file names) and QA rows.
Both print percentages with two decimals: `pct` below is that exact text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from os.path import basename
from typing import NamedTuple

SEMANTIC_ORDER = ("helpfulness", "honesty", "instruction_following", "truthfulness")
_GREEDY_ASPECT = re.compile(r"Evaluate in terms of \*\*(.*)\*\*", re.DOTALL)
_ACOUSTIC = {
    "emotion instruction following": "emotion",
    "gender instruction following": "gender",
    "character instruction following": "character",
    "gender instruction following and emotion instruction following": "mixed",
}


class OfficialScriptError(ValueError):
    pass


class RefRow(NamedTuple):
    """A reference row (a tuple: 400,000 of them are made in a blink, unlike frozen dataclasses)."""

    instruction: str
    output: str
    audios: tuple[str, ...]


def _score(c: str) -> int | None:
    return {"1": 1, "2": -1, "T": 0}.get(c)


def _first(text: str, what: str, idx: int) -> str:
    if not text:
        raise OfficialScriptError(f"row {idx}: empty {what}; the authors' script crashes here (IndexError)")
    return text[0]


def _agreement(gt: str, pred: str, idx: int) -> float:
    r1, r2 = _score(gt), _score(pred)
    if r1 == r2:
        return 1.0
    if r1 is None or r2 is None:
        bad = pred if r2 is None else gt
        raise OfficialScriptError(
            f"row {idx}: output starts with {bad!r}, not 1, 2 or T; the authors' script prints "
            f"'Wrong format of {bad}' and crashes on the arithmetic here"
        )
    return 0.5 if r1 * r2 == 0 else 0.0


def pct(x: float) -> str:
    return f"{x:.2f}%"


def _cell(hits: float, agree: float, denom: float, n: int) -> dict:
    return {
        "n": n,
        "accuracy": hits / denom,
        "agreement": agree / denom,
        "accuracy_pct": pct(hits * 100 / denom),
        "agreement_pct": pct(agree * 100 / denom),
    }


def semantic(refs: Sequence[RefRow], predictions: Sequence[str]) -> dict:
    """The semantic script: aspect by idx % 4, denominators len/4 (printed as count * 400 / len)."""
    n = len(predictions)
    hits, agree, count = [0] * 4, [0.0] * 4, [0] * 4
    for idx, (gt, pred) in enumerate(zip(refs, predictions, strict=True)):
        g, p = _first(gt.output, "label", idx), _first(pred, "prediction", idx)
        k = idx % 4
        count[k] += 1
        hits[k] += int(g == p)
        agree[k] += _agreement(g, p, idx)
    groups = {}
    for k, name in enumerate(SEMANTIC_ORDER):
        cell = _cell(hits[k], agree[k], n / 4, count[k])
        cell["accuracy_pct"], cell["agreement_pct"] = pct(hits[k] * 400 / n), pct(agree[k] * 400 / n)
        groups[name] = cell
    overall = _cell(sum(hits), sum(agree), n, n)
    return {"overall": overall, "groups": groups}


def _tts(audios: Sequence[str], idx: int) -> bool:
    try:
        i1, r1 = basename(audios[0]).split("-")[1:3]
        i2, r2 = basename(audios[1]).split("-")[1:3]
    except (ValueError, IndexError):
        raise OfficialScriptError(f"row {idx}: audio names are not source-prompt-response-audioN") from None
    if i1 != i2:
        raise OfficialScriptError(f"row {idx}: the two audios answer different prompts ({i1} vs {i2})")
    return r1 == r2


def acoustic(refs: Sequence[RefRow], predictions: Sequence[str]) -> dict:
    """The acoustic script: greedy aspect regex (rows it cannot place are dropped), Implicit_Emotion by path,
    TTS/QA splits; each group divided by its own count."""
    acc: dict[str, list[float]] = {}  # group -> [hits, agreement, count]
    dropped = 0
    for idx, (gt, pred) in enumerate(zip(refs, predictions, strict=True)):
        g, p = _first(gt.output, "label", idx), _first(pred, "prediction", idx)
        m = _GREEDY_ASPECT.search(gt.instruction)
        if m is None:
            raise OfficialScriptError(f"row {idx}: no 'Evaluate in terms of **...**'; the authors' script crashes")
        group = _ACOUSTIC.get(m.group(1))
        if group is None:
            dropped += 1
            continue
        names = [group]
        if group == "emotion" and "Implicit-Emotion" in gt.audios[0]:
            names = ["implicit_emotion"]
        elif group in ("emotion", "gender", "character"):
            names.append(f"{group}_{'tts' if _tts(gt.audios, idx) else 'qa'}")
        hit, ag = int(g == p), _agreement(g, p, idx)
        for name in names:
            cell = acc.setdefault(name, [0, 0.0, 0])
            cell[0] += hit
            cell[1] += ag
            cell[2] += 1
    main = ("emotion", "gender", "character", "implicit_emotion", "mixed")
    for name in main:
        if name not in acc:
            raise OfficialScriptError(f"no {name} rows; the authors' acoustic script divides by zero here")
    groups = {name: _cell(*acc[name], int(acc[name][2])) for name in main}
    splits = {name: _cell(h, a, c, int(c)) for name, (h, a, c) in sorted(acc.items()) if name not in main}
    h, a, c = (sum(acc[n][i] for n in main) for i in range(3))
    return {"overall": _cell(h, a, c, int(c)), "groups": groups, "splits": splits, "dropped": dropped}

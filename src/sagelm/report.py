"""Rendering score reports: rich tables for the terminal, Markdown for papers and READMEs."""

from __future__ import annotations

import json
import math
from typing import Any

from sagelm.jsonout import finite

COLUMNS = ("group", "n", "accuracy", "agreement", "invalid")


def _pct(x: float | None) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _value(cell: dict, key: str) -> str:
    if f"{key}_pct" in cell:
        return cell[f"{key}_pct"]
    text = _pct(cell.get(key))
    if f"{key}_std" in cell:
        text += f" ± {100 * cell[f'{key}_std']:.2f}"
    if f"{key}_ci" in cell:
        lo, hi = cell[f"{key}_ci"]
        text += f" [{_pct(lo)}, {_pct(hi)}]"
    return text


def to_json(result: dict) -> str:
    """The report as strict JSON: an undefined value (a mean over no rows, a CI of nothing) is null, never NaN,
    which JavaScript's JSON.parse, Go and serde reject."""
    return json.dumps(finite(result), indent=2, allow_nan=False)


def rows(result: dict) -> list[list[str]]:
    out = []
    sections = [("overall", result["overall"]), *result.get("groups", {}).items(), *result.get("splits", {}).items()]
    for name, cell in sections:
        invalid = cell.get("invalid", "")
        out.append([name, str(cell["n"]), _value(cell, "accuracy"), _value(cell, "agreement"),
                    f"{invalid:.2f}" if isinstance(invalid, float) else str(invalid)])  # fmt: skip
    for name in ("original", "swapped", "debiased", "debiased_probabilities"):
        if name in result.get("order", {}):
            cell = result["order"][name]
            out.append([f"order-{name.replace('_', '-')}", str(cell["n"]), _value(cell, "accuracy"),
                        _value(cell, "agreement"), str(cell["invalid"])])  # fmt: skip
    if "majority" in result:
        cell = result["majority"]["overall"]
        out.append(["majority vote", str(cell["n"]), _value(cell, "accuracy"), _value(cell, "agreement"),
                    str(cell["invalid"])])  # fmt: skip
    return out


def notes(result: dict) -> list[str]:
    o = result["overall"]
    lines = []
    if "kappa" in o:
        lines.append(f"Cohen's kappa {o['kappa']:.3f}; P(prefer Response 1) {_pct(o['prefer_1'])}% "
                     f"(labels {_pct(o['label_prefer_1'])}%)")  # fmt: skip
        lines.append(f"labels {o['labels']}; verdicts {o['verdicts']}")
        lines.append("confusion (rows: label 1/2/Tie, columns: verdict 1/2/Tie): " + str(o["confusion"]))
    if "order" in result:
        lines.append(f"both orders: {result['order']['n_pairs']} judgments, flip rate "
                     f"{_pct(result['order']['flip_rate'])}%")  # fmt: skip
    if "dropped" in result:
        lines.append(f"rows the authors' acoustic script drops: {result['dropped']}")
    if "runs" in result:
        lines.append(f"{len(result['runs'])} runs: mean ± std across runs")
    return lines


def print_tables(result: dict, console: Any) -> None:
    from rich.table import Table

    title = "sagelm eval" + (" (--compat official)" if result.get("compat") else "") + " — percentages"
    table = Table(title=title)
    for c in COLUMNS:
        table.add_column(c, justify="left" if c == "group" else "right")
    for r in rows(result):
        table.add_row(*r)
    console.print(table)
    for line in notes(result):
        console.print(line, markup=False, highlight=False)


def markdown(result: dict) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(result)]
    lines += [""] + [f"- {n}" for n in notes(result)]
    return "\n".join(lines) + "\n"

"""The arena's outputs: leaderboard.json (interface.md's schema), leaderboard.md and report.html.

report.html is one self-contained page: styles, script and plots (matplotlib PNGs, base64) are inside it, so it
opens from disk with no network. The answers' audio is *referenced*, not embedded: each player's `src` is the
file's path relative to the run folder, so the page plays them as long as it stays beside the systems folder
(moving the run folder alone breaks the players, not the page).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from sagelm.ratings import Comparisons, Rated, debias, rate

TIES_RULE = ("a tie counts half a win to each side; every pair of systems that met also gets one virtual tie "
             "(Bayesian smoothing), so that a system that won every game still gets a finite rating")  # fmt: skip
DEBIAS_RULE = ("judged in both orders, a comparison's verdict is the verdict when both orders agree, else a Tie; "
               "a comparison without a verdict in each order is invalid (counted apart, never a loss)")  # fmt: skip
OVERALL = "overall"


def _f(x: float, digits: int = 4) -> float | None:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), digits)


def _rows(r: Rated, systems: list[str], durations: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    with np.errstate(invalid="ignore"):
        mean_dur = [float(np.nanmean(durations[:, i])) if np.isfinite(durations[:, i]).any() else math.nan
                    for i in range(len(systems))]  # fmt: skip
    for i, s in enumerate(systems):
        n = int(r.wins[i] + r.losses[i] + r.ties[i] + r.invalid[i])
        rows.append({
            "system": s, "rating": _f(r.rating[i], 1),
            "rating_ci": [_f(r.rating_ci[i, 0], 1), _f(r.rating_ci[i, 1], 1)],
            "win_rate": _f(r.win_rate[i]), "win_rate_ci": [_f(r.win_rate_ci[i, 0]), _f(r.win_rate_ci[i, 1])],
            "duration_controlled_win_rate": _f(r.controlled_win_rate[i]),
            "wins": int(r.wins[i]), "losses": int(r.losses[i]), "ties": int(r.ties[i]), "invalid": int(r.invalid[i]),
            "n": n, "mean_duration_s": _f(mean_dur[i], 3),
            "flip_rate": _f(r.flips[i] / r.flip_n[i]) if r.flip_n[i] else None,
        })  # fmt: skip
    rows.sort(key=lambda row: -row["rating"] if row["rating"] is not None else math.inf)
    return rows


def build(data: Any, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """leaderboard.json's content from a run folder read by `arena.read_run`."""
    systems, cols, settings = data.systems, data.columns, data.settings
    k, n_q, n_a = len(systems), len(data.questions), max(len(data.aspects), 1)
    c = debias(cols["question"], cols["aspect"], cols["a"], cols["b"], cols["swapped"], cols["verdict"], k, n_a,
               both_orders=settings.get("both_orders", True))  # fmt: skip
    base = settings.get("baseline")
    bi = systems.index(base) if base in systems else None
    groups: dict[str, tuple[Comparisons, Rated]] = {}
    for ai, aspect in enumerate(data.aspects):
        sub = c.subset(c.aspect == ai)
        groups[aspect] = (sub, rate(sub, k, n_q, bi, data.durations, n_boot, seed))
    groups[OVERALL] = (c, rate(c, k, n_q, bi, data.durations, n_boot, seed))
    return {
        "aspects": {a: _rows(groups[a][1], systems, data.durations) for a in data.aspects},
        "overall": _rows(groups[OVERALL][1], systems, data.durations),
        "details": {
            "pairs": settings.get("pairs"), "baseline": base, "both_orders": settings.get("both_orders", True),
            "model": settings.get("model"), "backend": settings.get("backend"),
            "systems": systems, "questions": n_q, "judgments": int(len(cols["verdict"])),
            "judgments_with_errors": int(cols["error"].sum()), "comparisons": len(c),
            "ties": TIES_RULE, "debiasing": DEBIAS_RULE,
            "rating_scale": "Bradley-Terry strength x 400/ln(10) (Elo), the baseline (or the mean) at 1000",
            "intervals": f"95% percentile bootstrap over questions, {n_boot} replicates, seed {seed}",
            "duration_coefficient_per_s": {g: _f(r.duration_coef) for g, (_, r) in groups.items()},
            "duration_model": "logit P(a beats b) = theta_a - theta_b + coefficient x (duration_a - duration_b) "
                              "[s]; duration_controlled_win_rate = its win rate at equal durations",
            "win_matrix": {g: [[_f(x) for x in row] for row in r.win_matrix] for g, (_, r) in groups.items()},
            "validation": settings.get("validation", {}),
        },
    }  # fmt: skip


# -- markdown --------------------------------------------------------------------------------------------------
def _ci(lo: float | None, hi: float | None, fmt: str) -> str:
    return "" if lo is None or hi is None else f"[{lo:{fmt}}, {hi:{fmt}}]"


def _num(x: float | None, fmt: str) -> str:
    return "" if x is None else f"{x:{fmt}}"


COLUMNS = ["#", "system", "rating", "95% CI", "win rate", "95% CI", "duration-controlled", "W", "L", "T",
           "invalid", "n", "flip rate", "mean duration (s)"]  # fmt: skip


def _cells(i: int, r: dict[str, Any]) -> list[str]:
    return [str(i), r["system"], _num(r["rating"], ".0f"), _ci(*r["rating_ci"], ".0f"), _num(r["win_rate"], ".3f"),
            _ci(*r["win_rate_ci"], ".3f"), _num(r["duration_controlled_win_rate"], ".3f"), str(r["wins"]),
            str(r["losses"]), str(r["ties"]), str(r["invalid"]), str(r["n"]), _num(r["flip_rate"], ".3f"),
            _num(r["mean_duration_s"], ".2f")]  # fmt: skip


def markdown(result: dict[str, Any]) -> str:
    d = result["details"]
    against = f"against {d['baseline']}" if d["baseline"] else "against all others"
    lines = ["# Arena leaderboard", "",
             f"{len(d['systems'])} systems, {d['questions']} questions, pairs: {d['pairs']}, "
             f"{d['judgments']} judgments ({d['judgments_with_errors']} with errors). Win rates {against}. "
             f"Ratings: {d['rating_scale']}. Intervals: {d['intervals']}. Ties: {d['ties']}. "
             f"Debiasing: {d['debiasing']}.", ""]  # fmt: skip
    for group, rows in [(OVERALL, result["overall"]), *result["aspects"].items()]:
        coef = d["duration_coefficient_per_s"].get(group)
        lines += [f"## {group}", "", f"Duration coefficient: {_num(coef, '+.3f')} log-odds per second longer.", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]  # fmt: skip
        lines += ["| " + " | ".join(_cells(i, r)) + " |" for i, r in enumerate(rows, start=1)]
        lines.append("")
    problems = [(s, v) for s, v in d["validation"].items() if v.get("problems")]
    if problems:
        lines += ["## Answers not judged", ""]
        for s, v in problems:
            shown = "; ".join(f"{q}: {p}" for q, p in list(v["problems"].items())[:20])
            lines.append(f"- {s}: {len(v['problems'])} of {v['questions']}: {shown}")
        lines.append("")
    return "\n".join(lines)


# -- plots -----------------------------------------------------------------------------------------------------
def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def ratings_plot(result: dict[str, Any]) -> str:
    """Ratings with their 95% intervals, one panel per group (overall first); a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [(OVERALL, result["overall"]), *result["aspects"].items()]
    n_sys = len(result["overall"])
    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups) + 1.5, 0.45 * n_sys + 1.4), squeeze=False,
                             sharey=True)  # fmt: skip
    order = [r["system"] for r in result["overall"]][::-1]
    for ax, (group, rows) in zip(axes[0], groups, strict=True):
        by = {r["system"]: r for r in rows}
        y = np.arange(len(order))
        x = np.array([by[s]["rating"] if by[s]["rating"] is not None else np.nan for s in order], float)
        lo = np.array([by[s]["rating_ci"][0] if by[s]["rating_ci"][0] is not None else np.nan for s in order], float)
        hi = np.array([by[s]["rating_ci"][1] if by[s]["rating_ci"][1] is not None else np.nan for s in order], float)
        ax.errorbar(x, y, xerr=[np.nan_to_num(x - lo), np.nan_to_num(hi - x)], fmt="o", color="#1f5fa8",
                    ecolor="#7aa6d8", capsize=3)  # fmt: skip
        ax.axvline(1000, color="#999", lw=0.8, ls="--")
        ax.set_title(group, fontsize=10)
        ax.set_xlabel("rating (Elo scale)")
        ax.set_yticks(y, order)
        ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _png(fig)


def matrix_plot(result: dict[str, Any], group: str = OVERALL) -> str:
    """The win-rate matrix (row system's win rate against the column system) as a heat map; a base64 PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = result["details"]["systems"]
    m = np.array([[np.nan if x is None else x for x in row] for row in result["details"]["win_matrix"][group]])
    order = [systems.index(r["system"]) for r in result["overall"]]
    m = m[np.ix_(order, order)]
    names = [systems[i] for i in order]
    size = 0.55 * len(names) + 2.2
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(m, cmap="RdBu", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            if np.isfinite(m[i, j]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(m[i, j] - 0.5) > 0.3 else "black")  # fmt: skip
    ax.set_xlabel("opponent")
    ax.set_ylabel("system")
    ax.set_title(f"win rate ({group}), ties half")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return _png(fig)


# -- report.html -----------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5em;color:#222;max-width:1400px}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:3px 7px;font-size:13px}
th{background:#f0f3f7}td.num{text-align:right}.note{color:#555;font-size:13px}
.verdict{font-weight:bold}audio{height:28px;width:220px}.rationale{max-width:420px;font-size:12px;color:#444}
img.plot{max-width:100%;border:1px solid #ddd}.filters{margin:.5em 0}
"""

_JS = """
function applyFilters(){
  var a=document.getElementById('filter-aspect').value, s=document.getElementById('filter-system').value, n=0;
  document.querySelectorAll('#questions tbody tr').forEach(function(tr){
    var ok=(a===''||tr.dataset.aspect===a)&&(s===''||tr.dataset.s1===s||tr.dataset.s2===s);
    tr.style.display=ok?'':'none'; if(ok){n++;}
  });
  document.getElementById('shown').textContent=n;
}
document.getElementById('filter-aspect').addEventListener('change',applyFilters);
document.getElementById('filter-system').addEventListener('change',applyFilters);
applyFilters();
"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x))


def _audio_src(path: str | None, out: Path) -> str:
    if not path:
        return ""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(out))
    return quote(rel.replace(os.sep, "/"))


def _table(rows: list[dict[str, Any]], group: str) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in COLUMNS)
    body = []
    for i, r in enumerate(rows, start=1):
        cells = _cells(i, r)
        tds = "".join(f"<td{'' if j == 1 else ' class=num'}>{_e(x)}</td>" for j, x in enumerate(cells))
        body.append(f'<tr class="system-row" data-system="{_e(r["system"])}">{tds}</tr>')
    return f'<table class="leaderboard" data-group="{_e(group)}"><thead><tr>{head}</tr></thead><tbody>' \
           + "".join(body) + "</tbody></table>"  # fmt: skip


def _question_rows(data: Any, out: Path) -> list[str]:
    systems, aspects = data.systems, data.aspects
    rows = []
    for (qi, ai, a, b), orders in sorted(data.records.items()):
        q = data.questions[qi]
        first = orders.get(False) or orders.get(True) or {}
        v_orig = orders.get(False, {}).get("verdict") if False in orders else None
        v_swap = orders.get(True, {}).get("verdict") if True in orders else None
        both = False in orders and True in orders
        if both:
            final = None if v_orig is None or v_swap is None else (v_orig if v_orig == v_swap else "Tie")
        else:
            final = v_orig if False in orders else v_swap
        names = {"1": systems[a], "2": systems[b], "Tie": "Tie", None: "invalid"}
        notes = []
        for sw in (False, True):
            if sw in orders:
                o = orders[sw]
                label = "order 2,1" if sw else "order 1,2"
                text = o.get("error") or o.get("rationale") or ""
                notes.append(f"<b>{label}: {_e(names.get(o.get('verdict'), 'invalid'))}</b> {_e(text)}")
        players = "".join(
            f'<td>{_e(systems[s])}<br><audio controls preload="none" src="{_audio_src(first.get(k), out)}">'
            "</audio></td>"
            for s, k in ((a, "audio_1"), (b, "audio_2"))
        )  # fmt: skip
        rows.append(
            f'<tr data-aspect="{_e(aspects[ai])}" data-s1="{_e(systems[a])}" data-s2="{_e(systems[b])}">'
            f"<td>{_e(q.id)}</td><td>{_e(q.question)}</td><td>{_e(aspects[ai])}</td>{players}"
            f'<td class="verdict">{_e(names.get(final, "invalid"))}</td>'
            f'<td class="rationale">{"<br>".join(notes)}</td></tr>'
        )
    return rows


def html_report(out: Path, data: Any, result: dict[str, Any]) -> str:
    d = result["details"]
    against = f"against the baseline {d['baseline']}" if d["baseline"] else "against all other systems"
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>sagelm arena</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Arena leaderboard</h1>",
        f'<p class=note>{len(d["systems"])} systems, {d["questions"]} questions, pairs: {_e(d["pairs"])}, '
        f'{d["judgments"]} judgments ({d["judgments_with_errors"]} with errors), judge {_e(d["model"])} '
        f'({_e(d["backend"])}). Win rates {against}, ties half. Ratings: {_e(d["rating_scale"])}. '
        f'Intervals: {_e(d["intervals"])}. Ties: {_e(d["ties"])}. Debiasing: {_e(d["debiasing"])}. '
        f"Duration control: {_e(d['duration_model'])}.</p>",
        "<p class=note>Audio is not embedded: each player refers to the answer file by its path relative to this "
        "run folder, so keep the run folder where it is relative to the systems folder.</p>",
        "<h2>Ratings</h2>",
        f'<img class=plot id="ratings-plot" alt="ratings with 95% intervals" src="data:image/png;base64,'
        f'{ratings_plot(result)}">',
    ]  # fmt: skip
    for group, rows in [(OVERALL, result["overall"]), *result["aspects"].items()]:
        coef = d["duration_coefficient_per_s"].get(group)
        parts += [f"<h2>{_e(group)}</h2>",
                  f"<p class=note>duration coefficient: {_e(_num(coef, '+.3f'))} log-odds per second longer</p>",
                  _table(rows, group)]  # fmt: skip
    parts += [
        "<h2>Win-rate matrix</h2>",
        f'<img class=plot id="matrix-plot" alt="win-rate matrix" src="data:image/png;base64,{matrix_plot(result)}">',
    ]
    problems = [(s, v) for s, v in d["validation"].items() if v.get("problems")]
    if problems:
        parts.append("<h2>Answers not judged</h2><ul>")
        parts += [f"<li>{_e(s)}: {len(v['problems'])} of {v['questions']}: "
                  + _e("; ".join(f"{q}: {p}" for q, p in list(v["problems"].items())[:50])) + "</li>"
                  for s, v in problems]  # fmt: skip
        parts.append("</ul>")
    qrows = _question_rows(data, out)
    shown = len({k[0] for k in data.records})
    opts_a = "".join(f"<option>{_e(a)}</option>" for a in data.aspects)
    opts_s = "".join(f"<option>{_e(s)}</option>" for s in data.systems)
    parts += [
        "<h2>Verdicts per question</h2>",
        f"<p class=note>{shown} of {d['questions']} questions listed (the first ones); "
        "each row is one comparison, its final (debiased) verdict, and what the judge said in each order.</p>",
        '<div class=filters>aspect <select id="filter-aspect"><option value="">all</option>' + opts_a + "</select> "
        'system <select id="filter-system"><option value="">all</option>' + opts_s + "</select> "
        '<span id="shown"></span> rows shown</div>',
        '<table id="questions"><thead><tr><th>question</th><th>text</th><th>aspect</th><th>response 1</th>'
        "<th>response 2</th><th>verdict</th><th>what the judge said</th></tr></thead><tbody>",
        *qrows,
        "</tbody></table>",
        f"<script>{_JS}</script></body></html>",
    ]  # fmt: skip
    return "\n".join(parts)


def write_all(out: Path, data: Any, result: dict[str, Any]) -> None:
    """leaderboard.json, leaderboard.md and report.html in `out`, each written whole then renamed into place."""
    for name, text in (("leaderboard.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n"),
                       ("leaderboard.md", markdown(result)),
                       ("report.html", html_report(out, data, result))):  # fmt: skip
        tmp = out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)

"""Judge metrics on verdict codes (pure numpy; no torch, no model code).

Codes: 0 = "1", 1 = "2", 2 = "Tie", -1 = no verdict (invalid: scored as wrong, counted apart).

- accuracy: verdict equals label.
- agreement (tie-aware, the paper's "agreement with human evaluators"): 1 when equal, 0.5 when exactly one of
  verdict and label is Tie, 0 when one says 1 and the other 2 (and 0 for an invalid verdict).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sagelm.verdicts import VERDICTS, Verdict

TIE = 2
INVALID = -1
CODE: dict[Verdict | None, int] = {"1": 0, "2": 1, "Tie": TIE, None: INVALID}


def encode(verdicts: Sequence[Verdict | None]) -> np.ndarray:
    return np.fromiter((CODE[v] for v in verdicts), dtype=np.int8, count=len(verdicts))


def row_scores(pred: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (accuracy, agreement) scores."""
    valid = pred != INVALID
    acc = (pred == label) & valid
    one_tie = valid & ((pred == TIE) ^ (label == TIE))
    return acc.astype(float), np.where(acc, 1.0, np.where(one_tie, 0.5, 0.0))


def confusion(pred: np.ndarray, label: np.ndarray) -> list[list[int]]:
    """3x3 counts: rows are labels 1/2/Tie, columns verdicts 1/2/Tie (invalid verdicts are not in it)."""
    m = np.zeros((3, 3), dtype=int)
    ok = pred != INVALID
    np.add.at(m, (label[ok], pred[ok]), 1)
    return m.tolist()


def cohen_kappa(pred: np.ndarray, label: np.ndarray) -> float:
    """Cohen's kappa between verdicts and labels, an invalid verdict being a category of its own."""
    cats = [0, 1, 2, INVALID]
    n = len(pred)
    if n == 0:
        return float("nan")
    po = float(np.mean(pred == label))
    pe = sum(float(np.mean(pred == c)) * float(np.mean(label == c)) for c in cats)
    return 1.0 if pe == 1.0 else (po - pe) / (1.0 - pe)


def distribution(codes: np.ndarray) -> dict[str, int]:
    out = {v: int(np.sum(codes == CODE[v])) for v in VERDICTS}
    out["invalid"] = int(np.sum(codes == INVALID))
    return out


def bootstrap_ci(
    scores: np.ndarray, clusters: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of the mean of `scores`, resampling whole clusters (pairs), not rows."""
    return bootstrap_cis([scores], clusters, n_boot, seed, level)[0]


_CHUNK = 1 << 20  # elements of random draws held at once


def bootstrap_cis(
    columns: Sequence[np.ndarray], clusters: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> list[tuple[float, float]]:
    """Percentile CIs of the means of several score columns (one resampling shared by all), resampling whole
    clusters (pairs) with replacement: the cluster bootstrap, exactly, in O(n) memory and little time.

    A resample's mean depends only on how many clusters of each kind it drew, a kind being a cluster's size and
    score sums. Drawing G clusters uniformly is drawing those kind counts from Multinomial(G, kind shares), so
    each replicate costs one multinomial draw over the K kinds instead of G index draws: judge scores take a
    few values (0, 0.5, 1), so K stays small (a handful when every row is its own pair, a few dozen for pairs
    of four aspects) whatever the number of rows. Where kinds are many (scores of many values in large
    clusters) it falls back to drawing cluster indices, a chunk of replicates at a time.
    """
    n = len(clusters)
    if n == 0:
        return [(float("nan"), float("nan"))] * len(columns)
    _, inv = np.unique(clusters, return_inverse=True)
    inv = inv.reshape(-1)
    n_clusters = int(inv.max()) + 1
    table = np.column_stack([np.bincount(inv, minlength=n_clusters).astype(float)]
                            + [np.bincount(inv, weights=np.asarray(c, dtype=float), minlength=n_clusters)
                               for c in columns])  # fmt: skip
    kinds, counts = _kinds(table)
    rng = np.random.default_rng(seed)
    totals = np.empty((n_boot, table.shape[1]))
    if len(kinds) * 4 <= n_clusters:
        step = max(1, _CHUNK // len(kinds))
        for i in range(0, n_boot, step):
            draws = rng.multinomial(n_clusters, counts / n_clusters, size=min(step, n_boot - i))
            totals[i : i + len(draws)] = draws @ kinds
    else:
        step = max(1, _CHUNK // n_clusters)
        for i in range(0, n_boot, step):
            idx = rng.integers(0, n_clusters, size=(min(step, n_boot - i), n_clusters))
            totals[i : i + len(idx)] = np.stack([col[idx].sum(axis=1) for col in table.T], axis=1)
    means = totals[:, 1:] / totals[:, :1]
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2], axis=0)
    return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def _kinds(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct rows of `table` and how often each occurs (1-D sorts of column codes, far quicker than
    `np.unique(axis=0)`)."""
    key = np.zeros(len(table), dtype=np.int64)
    radix = 1
    for col in table.T:
        values, code = np.unique(col, return_inverse=True)
        if radix * len(values) >= 2**62:
            kinds, counts = np.unique(table, axis=0, return_counts=True)
            return kinds, counts
        key += code.reshape(-1) * radix
        radix *= len(values)
    _, first, counts = np.unique(key, return_index=True, return_counts=True)
    return table[first], counts


def debias(plain: np.ndarray, swapped: np.ndarray) -> np.ndarray:
    """Order-debiased verdict of a pair judged both ways (swapped already mapped back): the verdict when both
    orders agree, Tie when they disagree, invalid when either is invalid."""
    out = np.where(plain == swapped, plain, TIE).astype(np.int8)
    out[(plain == INVALID) | (swapped == INVALID)] = INVALID
    return out


def debias_probabilities(p_plain: np.ndarray, p_swapped: np.ndarray) -> np.ndarray:
    """Verdict from the average of the two probability vectors ([n, 3] over 1/2/Tie, swapped mapped back)."""
    return np.argmax((p_plain + p_swapped) / 2, axis=1).astype(np.int8)


def majority(runs: np.ndarray) -> np.ndarray:
    """Majority vote over runs ([n_runs, n_rows]); no strict majority among valid votes gives Tie, no valid
    vote gives invalid."""
    counts = np.stack([(runs == c).sum(axis=0) for c in (0, 1, 2)])  # [3, n]
    best = counts.argmax(axis=0)
    top = counts.max(axis=0)
    unique_top = (counts == top).sum(axis=0) == 1
    out = np.where(unique_top, best, TIE).astype(np.int8)
    out[top == 0] = INVALID
    return out

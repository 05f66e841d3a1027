"""Ratings of speech systems from pairwise verdicts: Bradley-Terry strengths on the Elo scale, win rates,
bootstrap intervals over questions, order debiasing, flip rates and a duration-controlled win rate.

Everything works on numpy columns (one entry per judgment or comparison), never on Python objects per row,
so that a million judgments are rated in seconds.

Conventions (stated once, used everywhere):
- A *judgment* is one verdict in one presentation order, already mapped back to the original numbering
  (system `a` is Response 1). Verdict codes: 0 = "1" (a wins), 1 = "2" (b wins), 2 = Tie, -1 = no verdict.
- The *debiased* verdict of a comparison judged in both orders is the verdict when both orders agree, else a
  Tie; a comparison whose orders are not both valid verdicts is *invalid* (counted apart, never a loss).
  A comparison *flips* when both orders gave a valid verdict and they differ.
- Ties count half a win to each side. Every pair of systems that met also gets one virtual tie (half a win
  each way), so that a system that won every game still gets a finite strength (Bayesian smoothing; it moves
  a strength by about one game's worth).
- Strengths are natural-log odds; ratings are 1000 + 400 / ln(10) x (strength - reference), the reference
  being the baseline's strength or the mean strength (400 Elo points per factor 10 of odds).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

ELO_PER_NAT = 400.0 / math.log(10.0)
VERDICT_CODES = {"1": 0, "2": 1, "Tie": 2}
INVALID = -1
MISSING = -2
PSEUDO_TIES = 1.0  # virtual tie games per pair of systems that met
RIDGE = 1e-6  # fixes the strengths' common offset; nothing else
DURATION_RIDGE = 1e-2  # a weak prior on the duration coefficient, so that it stays finite when length decides all


@dataclass
class Comparisons:
    """Debiased comparisons, one entry each: question, aspect, systems a and b (a was Response 1 in the
    original order), a's score (1, 0.5, 0; NaN when invalid) and whether the two orders disagreed
    (1 flipped, 0 agreed, -1 not both valid or judged in one order only)."""

    question: np.ndarray
    aspect: np.ndarray
    a: np.ndarray
    b: np.ndarray
    score: np.ndarray
    flipped: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    def subset(self, mask: np.ndarray) -> Comparisons:
        return Comparisons(*(getattr(self, f)[mask] for f in ("question", "aspect", "a", "b", "score", "flipped")))


def debias(
    question: np.ndarray,
    aspect: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    swapped: np.ndarray,
    verdict: np.ndarray,
    n_systems: int,
    n_aspects: int,
    both_orders: bool = True,
) -> Comparisons:
    """Comparisons from judgments (integer columns; `verdict` coded as VERDICT_CODES, INVALID for none).

    A judgment given twice (same question, aspect, systems and order) counts once: the last one wins.
    With `both_orders` each comparison's debiased verdict is as the module says; without, the one order's."""
    question, aspect = np.asarray(question, np.int64), np.asarray(aspect, np.int64)
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    swapped, verdict = np.asarray(swapped, bool), np.asarray(verdict, np.int8)
    comp_key = ((question * n_aspects + aspect) * n_systems + a) * n_systems + b
    # the last judgment per (comparison, order): np.unique keeps the first occurrence, so look from the end
    full_key = comp_key * 2 + swapped
    _, last = np.unique(full_key[::-1], return_index=True)
    keep = len(full_key) - 1 - last
    comp_key, swapped, verdict = comp_key[keep], swapped[keep], verdict[keep]
    question, aspect, a, b = question[keep], aspect[keep], a[keep], b[keep]
    keys, first, inverse = np.unique(comp_key, return_index=True, return_inverse=True)
    n = len(keys)
    orig = np.full(n, MISSING, np.int8)
    swap = np.full(n, MISSING, np.int8)
    orig[inverse[~swapped]] = verdict[~swapped]
    swap[inverse[swapped]] = verdict[swapped]
    if both_orders:
        valid = (orig >= 0) & (swap >= 0)
        final = np.where(orig == swap, orig, 2)
        flipped = np.where(valid, (orig != swap).astype(np.int8), -1)
    else:
        final = np.where(orig != MISSING, orig, swap)
        valid = final >= 0
        flipped = np.full(n, -1, np.int8)
    score = np.array([1.0, 0.0, 0.5])[np.clip(final, 0, 2)]
    score[~valid] = np.nan
    return Comparisons(question[first], aspect[first], a[first], b[first], score, flipped.astype(np.int8))


# -- Bradley-Terry ---------------------------------------------------------------------------------------------
def win_matrices(c: Comparisons, n_systems: int, n_questions: int) -> np.ndarray:
    """Per question, W[q, i, j] = games i won against j (ties half each), from the valid comparisons."""
    ok = ~np.isnan(c.score)
    q, i, j, s = c.question[ok], c.a[ok], c.b[ok], c.score[ok]
    k2 = n_systems * n_systems
    flat = np.bincount(q * k2 + i * n_systems + j, weights=s, minlength=n_questions * k2)
    flat += np.bincount(q * k2 + j * n_systems + i, weights=1.0 - s, minlength=n_questions * k2)
    return flat.reshape(n_questions, n_systems, n_systems)


def fit_bradley_terry(wins: np.ndarray, iterations: int = 50, tol: float = 1e-9) -> np.ndarray:
    """Strengths (natural log, mean 0 over the systems that played) maximising the Bradley-Terry likelihood of
    `wins` [..., K, K] (W[i, j] = wins of i over j), with one virtual tie per pair that met. Batched: any
    leading axes (bootstrap replicates) are fitted at once by Newton's method. A system with no games is NaN."""
    wins = np.asarray(wins, np.float64)
    games = wins + np.swapaxes(wins, -1, -2)
    met = games > 0
    wins = wins + 0.5 * PSEUDO_TIES * met
    games = wins + np.swapaxes(wins, -1, -2)
    k = wins.shape[-1]
    theta = np.zeros(wins.shape[:-1])
    eye = np.eye(k)
    won = wins.sum(-1)
    scale = 1.0 + float(games.max(initial=0.0))
    for _ in range(iterations):
        p = _sigmoid(theta[..., :, None] - theta[..., None, :])
        grad = won - (games * p).sum(-1) - RIDGE * theta
        if np.max(np.abs(grad), initial=0.0) < tol * scale:
            break
        h = games * p * (1.0 - p)
        hess = eye * (h.sum(-1)[..., None] + RIDGE) - h  # the negative Hessian: a graph Laplacian plus the ridge
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        theta = theta + np.clip(step, -3.0, 3.0)
    played = met.any(-1)
    theta = np.where(played, theta, np.nan)
    mean = np.nanmean(np.where(played, theta, np.nan), axis=-1, keepdims=True) if played.any() else 0.0
    return theta - mean


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def elo(theta: np.ndarray, baseline: int | None) -> np.ndarray:
    """Strengths on the Elo scale, the baseline (or, without one, the mean) at 1000."""
    ref = theta[..., [baseline]] if baseline is not None else np.nanmean(theta, axis=-1, keepdims=True)
    return 1000.0 + ELO_PER_NAT * (theta - ref)


def opponents(n_systems: int, baseline: int | None) -> np.ndarray:
    """mask[i, j]: j counts as an opponent of i for win rates: the baseline alone when there is one (all others
    for the baseline itself), else every other system."""
    mask = ~np.eye(n_systems, dtype=bool)
    if baseline is not None:
        mask[:] = False
        mask[:, baseline] = True
        mask[baseline, :] = True
        mask[baseline, baseline] = False
    return mask


def win_rates(wins: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Share of games won (ties half) against the opponents in `mask`, batched like fit_bradley_terry."""
    games = wins + np.swapaxes(wins, -1, -2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wins * mask).sum(-1) / (games * mask).sum(-1)


# -- duration control ----------------------------------------------------------------------------------------
def fit_duration_model(
    a: np.ndarray, b: np.ndarray, score: np.ndarray, duration_diff: np.ndarray, n_systems: int, iterations: int = 50
) -> tuple[np.ndarray, float]:
    """Bradley-Terry with the answers' duration difference (seconds, a minus b) as a covariate:
    logit P(a beats b) = theta_a - theta_b + gamma * (dur_a - dur_b), ties as half a win (a fractional logistic
    fit), one virtual tie per pair that met. Returns (theta, gamma): gamma is the log-odds per second longer."""
    ok = ~np.isnan(score)
    a, b, y = np.asarray(a)[ok].astype(np.int64), np.asarray(b)[ok].astype(np.int64), np.asarray(score)[ok]
    d = np.nan_to_num(np.asarray(duration_diff, np.float64)[ok])
    pairs = np.unique(np.minimum(a, b) * n_systems + np.maximum(a, b))
    a = np.concatenate([a, pairs // n_systems])
    b = np.concatenate([b, pairs % n_systems])
    y = np.concatenate([y, np.full(len(pairs), 0.5)])
    w_row = np.concatenate([np.ones(len(d)), np.full(len(pairs), PSEUDO_TIES)])
    d = np.concatenate([d, np.zeros(len(pairs))])
    k = n_systems
    theta, gamma = np.zeros(k), 0.0
    for _ in range(iterations):
        p = _sigmoid(theta[a] - theta[b] + gamma * d)
        r = w_row * (y - p)
        w = w_row * p * (1.0 - p)
        g = np.zeros(k + 1)
        g[:k] = np.bincount(a, r, k) - np.bincount(b, r, k) - RIDGE * theta
        g[k] = r @ d - DURATION_RIDGE * gamma
        if np.max(np.abs(g)) < 1e-9 * (1.0 + len(d)):
            break
        pw = np.bincount(a * k + b, w, k * k).reshape(k, k)
        pw = pw + pw.T
        h = np.zeros((k + 1, k + 1))
        h[:k, :k] = np.diag(pw.sum(1) + RIDGE) - pw
        wd = w * d
        h[:k, k] = h[k, :k] = np.bincount(a, wd, k) - np.bincount(b, wd, k)
        h[k, k] = wd @ d + DURATION_RIDGE
        step = np.clip(np.linalg.solve(h, g), -3.0, 3.0)
        theta, gamma = theta + step[:k], gamma + step[k]
    return theta, float(gamma)


def controlled_win_rates(
    a: np.ndarray, b: np.ndarray, score: np.ndarray, theta: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """Per system, the mean over its valid comparisons against its opponents (`mask`) of the win probability
    the duration model gives at equal durations, sigma(theta_i - theta_opponent)."""
    ok = ~np.isnan(score)
    a, b = a[ok].astype(np.int64), b[ok].astype(np.int64)
    k = len(theta)
    p = _sigmoid(theta[a] - theta[b])
    on_a, on_b = mask[a, b], mask[b, a]
    total = np.bincount(a[on_a], p[on_a], k) + np.bincount(b[on_b], 1.0 - p[on_b], k)
    count = np.bincount(a[on_a], minlength=k) + np.bincount(b[on_b], minlength=k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count


# -- the table -------------------------------------------------------------------------------------------------
@dataclass
class Rated:
    """One group's (an aspect's, or all aspects') results, indexed by system."""

    rating: np.ndarray
    rating_ci: np.ndarray  # [K, 2]
    win_rate: np.ndarray
    win_rate_ci: np.ndarray  # [K, 2]
    controlled_win_rate: np.ndarray
    duration_coef: float  # log-odds per second of extra duration
    wins: np.ndarray
    losses: np.ndarray
    ties: np.ndarray
    invalid: np.ndarray
    flips: np.ndarray
    flip_n: np.ndarray
    win_matrix: np.ndarray  # [K, K] win rate of i against j (NaN where they never met)


def rate(
    c: Comparisons,
    n_systems: int,
    n_questions: int,
    baseline: int | None = None,
    durations: np.ndarray | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> Rated:
    """Ratings, win rates, their 95% bootstrap intervals over questions (each replicate draws the questions
    with replacement and keeps all their comparisons), counts and flip rates for the comparisons `c`.
    `durations[q, i]`: seconds of system i's answer to question q (NaN unknown), for the duration control."""
    k = n_systems
    wq = win_matrices(c, k, n_questions)
    seen = np.unique(c.question)
    wq = wq[seen]
    wins = wq.sum(0)
    mask = opponents(k, baseline)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(len(seen), np.full(len(seen), 1.0 / len(seen)), size=n_boot) if len(seen) else None
    boot = (counts @ wq.reshape(len(seen), k * k)).reshape(n_boot, k, k) if counts is not None else None
    stack = np.concatenate([wins[None], boot]) if boot is not None else wins[None]
    theta = fit_bradley_terry(stack)
    ratings = elo(theta, baseline)
    rates = win_rates(stack, mask)
    if baseline is not None:
        rates[:, baseline] = 0.5
    rating_ci, rate_ci = np.full((k, 2), np.nan), np.full((k, 2), np.nan)
    if boot is not None:
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a system absent from every replicate: NaN
            rating_ci = np.nanpercentile(ratings[1:], [2.5, 97.5], axis=0).T
            rate_ci = np.nanpercentile(rates[1:], [2.5, 97.5], axis=0).T

    if durations is not None and len(c):
        dd = durations[c.question, c.a] - durations[c.question, c.b]
        dtheta, gamma = fit_duration_model(c.a, c.b, c.score, dd, k)
        controlled = controlled_win_rates(c.a, c.b, c.score, dtheta, mask)
        if baseline is not None:
            controlled[baseline] = 0.5
    else:
        controlled, gamma = np.full(k, np.nan), float("nan")

    counts_ = _counts(c, k, mask)
    games = wins + wins.T
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(games > 0, wins / games, np.nan)
    return Rated(ratings[0], rating_ci, rates[0], rate_ci, controlled, gamma, *counts_, matrix)


def _counts(c: Comparisons, k: int, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """wins, losses, ties, invalid against the opponents in `mask`, and flips over all of a system's games."""
    on_a, on_b = mask[c.a, c.b], mask[c.b, c.a]

    def tally(sel_a: np.ndarray, sel_b: np.ndarray) -> np.ndarray:
        return np.bincount(c.a[on_a & sel_a], minlength=k) + np.bincount(c.b[on_b & sel_b], minlength=k)

    s = c.score
    won_a, lost_a, tie, bad = s == 1.0, s == 0.0, s == 0.5, np.isnan(s)
    wins, losses = tally(won_a, lost_a), tally(lost_a, won_a)
    ties, invalid = tally(tie, tie), tally(bad, bad)
    judged = c.flipped >= 0
    flips = np.bincount(c.a[c.flipped == 1], minlength=k) + np.bincount(c.b[c.flipped == 1], minlength=k)
    flip_n = np.bincount(c.a[judged], minlength=k) + np.bincount(c.b[judged], minlength=k)
    return wins, losses, ties, invalid, flips, flip_n

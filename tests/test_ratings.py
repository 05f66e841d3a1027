"""Ratings on synthetic verdicts: the Bradley-Terry fit against scipy, debiasing and invalid verdicts, ties,
bootstrap intervals, and the duration control."""

import numpy as np
import pytest
from scipy.optimize import minimize

from sagelm.ratings import (
    ELO_PER_NAT,
    PSEUDO_TIES,
    Comparisons,
    debias,
    elo,
    fit_bradley_terry,
    fit_duration_model,
    rate,
)


def comparisons(a, b, score, question=None) -> Comparisons:
    n = len(score)
    q = np.arange(n) if question is None else np.asarray(question)
    return Comparisons(q, np.zeros(n, int), np.asarray(a), np.asarray(b), np.asarray(score, float),
                       np.full(n, -1, np.int8))  # fmt: skip


def test_bradley_terry_matches_scipy_on_the_same_likelihood():
    rng = np.random.default_rng(0)
    k = 5
    wins = rng.integers(0, 20, size=(k, k)).astype(float)
    wins[np.diag_indices(k)] = 0
    wins[0, 3] = wins[3, 0] = 0  # a pair that never met gets no virtual tie
    theta = fit_bradley_terry(wins)
    met = (wins + wins.T) > 0
    w = wins + 0.5 * PSEUDO_TIES * met

    def nll(t):
        d = t[:, None] - t[None, :]
        return -(w * (d - np.logaddexp(0, d))).sum()

    ref = minimize(nll, np.zeros(k), method="BFGS", options={"gtol": 1e-10}).x
    assert np.allclose(theta, ref - ref.mean(), atol=1e-5)
    # batched: replicates are fitted at once, each as if alone
    stack = np.stack([wins, wins.T, wins * 2])
    both = fit_bradley_terry(stack)
    assert np.allclose(both[0], theta) and np.allclose(both[1], -theta, atol=1e-8)


def test_a_system_that_wins_everything_stays_finite_and_an_absent_one_is_nan():
    wins = np.array([[0, 30, 30, 0], [0, 0, 15, 0], [0, 15, 0, 0], [0, 0, 0, 0]], float)
    theta = fit_bradley_terry(wins)
    assert np.isfinite(theta[:3]).all() and np.isnan(theta[3])
    r = elo(theta, baseline=1)
    assert r[1] == 1000 and r[0] > r[2] and 1000 == pytest.approx(r[2], abs=1e-6)
    assert elo(np.array([0.0, np.log(10)]), None)[1] - elo(np.array([0.0, np.log(10)]), None)[0] == pytest.approx(400)
    assert ELO_PER_NAT * np.log(10) == pytest.approx(400)


def test_debiasing_agreement_flip_invalid_and_last_judgment_wins():
    # comparisons 0..4 of systems 0 vs 1; codes: 0 = "1", 1 = "2", 2 = Tie, -1 = no verdict
    q = [0, 0, 1, 1, 2, 2, 3, 4, 4, 0]
    sw = [0, 1, 0, 1, 0, 1, 0, 0, 1, 1]
    v = [0, 0, 0, 1, 2, 2, 0, 1, -1, 1]  # the last row re-judges q0 swapped: "2" replaces the earlier "1"
    c = debias(q, np.zeros(10), np.zeros(10), np.ones(10), sw, v, n_systems=2, n_aspects=1)
    order = np.argsort(c.question)
    score, flipped = c.score[order], c.flipped[order]
    # q0: 1 then (last) 2 -> flip -> Tie; q1: 1/2 -> flip -> Tie; q2: Tie/Tie; q3: one order only -> invalid;
    # q4: a verdict and none -> invalid, never a loss
    assert score[:3].tolist() == [0.5, 0.5, 0.5] and np.isnan(score[3:]).all()
    assert flipped.tolist() == [1, 1, 0, -1, -1]
    one = debias([0, 1], [0, 0], [0, 0], [1, 1], [0, 1], [0, 0], 2, 1, both_orders=False)
    assert sorted(one.score.tolist()) == [1.0, 1.0]


def test_ties_count_half_and_invalid_apart():
    c = comparisons([0, 0, 0, 0], [1, 1, 1, 1], [1.0, 0.5, 0.5, np.nan])
    r = rate(c, 2, 4, baseline=1, n_boot=50)
    assert r.win_rate[0] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert (r.wins[0], r.losses[0], r.ties[0], r.invalid[0]) == (1, 0, 2, 1)
    assert (r.wins[1], r.losses[1], r.ties[1], r.invalid[1]) == (0, 1, 2, 1)
    assert r.rating[1] == 1000 and r.rating[0] > 1000


def test_bootstrap_intervals_cover_the_truth_and_shrink_with_more_questions():
    rng = np.random.default_rng(1)
    true = np.array([-0.8, 0.0, 0.8])

    def sample(n_q):
        a = np.repeat([0, 0, 1], n_q)
        b = np.repeat([1, 2, 2], n_q)
        q = np.tile(np.arange(n_q), 3)
        s = (rng.random(len(a)) < 1 / (1 + np.exp(-(true[a] - true[b])))).astype(float)
        return rate(comparisons(a, b, s, q), 3, n_q, None, n_boot=400)

    small, big = sample(50), sample(800)
    truth = elo(true, None)
    assert np.all((big.rating_ci[:, 0] < truth) & (truth < big.rating_ci[:, 1]))
    assert np.all(np.diff(big.rating_ci, axis=1) < np.diff(small.rating_ci, axis=1))


def test_duration_control_removes_a_win_that_is_only_talking_longer():
    """'long' and 'short' are equally good; the judge prefers whichever answer is longer (noisily). 'long' is
    longer on 75% of the questions, so it wins raw; at equal durations it wins half."""
    rng = np.random.default_rng(2)
    n = 400
    durations = np.stack([rng.uniform(4, 12, n), rng.uniform(2, 10, n)], axis=1)  # [question, system]
    diff = durations[:, 0] - durations[:, 1]
    p_long = 1 / (1 + np.exp(-0.8 * diff))
    score = (rng.random(n) < p_long).astype(float)
    c = comparisons(np.zeros(n, int), np.ones(n, int), score)
    r = rate(c, 2, n, baseline=1, durations=durations, n_boot=100)
    assert r.win_rate[0] > 0.65
    assert r.controlled_win_rate[0] == pytest.approx(0.5, abs=0.07)
    assert r.duration_coef == pytest.approx(0.8, abs=0.25)
    # when quality, not length, decides, the control leaves the win rate where it was
    score_q = (rng.random(n) < 0.75).astype(float)
    rq = rate(comparisons(np.zeros(n, int), np.ones(n, int), score_q), 2, n, 1, durations, n_boot=100)
    assert rq.controlled_win_rate[0] == pytest.approx(rq.win_rate[0], abs=0.06)
    assert abs(rq.duration_coef) < 0.1
    theta, gamma = fit_duration_model(c.a, c.b, c.score, diff, 2)
    assert gamma == pytest.approx(r.duration_coef)

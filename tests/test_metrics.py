import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from sagelm import metrics as M


def enc(*vs):
    return M.encode(list(vs))


def test_accuracy_and_tie_aware_agreement_by_hand():
    pred = enc("1", "2", "Tie", "1", "Tie", None, "2")
    label = enc("1", "1", "1", "Tie", "Tie", "1", "Tie")
    acc, agr = M.row_scores(pred, label)
    assert acc.tolist() == [1, 0, 0, 0, 1, 0, 0]
    assert agr.tolist() == [1, 0, 0.5, 0.5, 1, 0, 0.5]
    assert agr.mean() == pytest.approx(3.5 / 7)


def test_all_invalid_and_single_row():
    acc, agr = M.row_scores(enc(None, None), enc("Tie", "1"))
    assert acc.tolist() == [0, 0] and agr.tolist() == [0, 0]  # an invalid verdict is never half right
    acc, agr = M.row_scores(enc("Tie"), enc("2"))
    assert (acc.tolist(), agr.tolist()) == ([0], [0.5])


def test_kappa_and_confusion_match_scikit_learn():
    rng = np.random.default_rng(0)
    names = np.array(["1", "2", "Tie", None], dtype=object)
    p = list(names[rng.integers(0, 4, 200)])
    lab = list(names[rng.integers(0, 3, 200)])
    pred, label = M.encode(p), M.encode(lab)
    ref = cohen_kappa_score([str(x) for x in p], [str(x) for x in lab])
    assert M.cohen_kappa(pred, label) == pytest.approx(ref)
    valid = [i for i, x in enumerate(p) if x is not None]
    cm = confusion_matrix([lab[i] for i in valid], [p[i] for i in valid], labels=["1", "2", "Tie"])
    assert M.confusion(pred, label) == cm.tolist()


def test_distribution():
    assert M.distribution(enc("1", "1", "Tie", None)) == {"1": 2, "2": 0, "Tie": 1, "invalid": 1}


def test_bootstrap_resamples_pairs_and_is_seeded():
    scores = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 1])  # two pairs of four aspects each
    lo, hi = M.bootstrap_ci(scores, clusters, n_boot=500, seed=1)
    # resampling whole pairs can only give means 0, 0.5 or 1
    assert lo == 0.0 and hi == 1.0
    assert M.bootstrap_ci(scores, clusters, 500, seed=1) == (lo, hi)
    lo_rows, hi_rows = M.bootstrap_ci(scores, np.arange(8), n_boot=500, seed=1)
    assert 0.0 < lo_rows < 0.5 < hi_rows < 1.0


def test_debiased_verdicts():
    plain, swapped = enc("1", "1", "Tie", None, "2"), enc("1", "2", "Tie", "1", "Tie")
    assert M.debias(plain, swapped).tolist() == [0, 2, 2, -1, 2]
    pp = np.array([[0.6, 0.3, 0.1], [0.9, 0.05, 0.05]])
    ps = np.array([[0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    assert M.debias_probabilities(pp, ps).tolist() == [1, 0]


def test_majority_vote():
    runs = np.stack([enc("1", "1", "2", None, "Tie"), enc("1", "2", "2", None, "1"), enc("2", "Tie", None, None, "2")])
    assert M.majority(runs).tolist() == [0, 2, 1, -1, 2]


def _naive_bootstrap(scores, clusters, n_boot, seed):
    """The textbook cluster bootstrap: draw cluster indices for every replicate (n_boot x n_clusters)."""
    _, inv = np.unique(clusters, return_inverse=True)
    sums, counts = np.bincount(inv, weights=scores), np.bincount(inv).astype(float)
    idx = np.random.default_rng(seed).integers(0, len(sums), size=(n_boot, len(sums)))
    return np.quantile(sums[idx].sum(axis=1) / counts[idx].sum(axis=1), [0.025, 0.975])


@pytest.mark.parametrize("continuous", [False, True])
def test_bootstrap_has_the_distribution_of_resampling_clusters(continuous):
    rng = np.random.default_rng(3)
    n = 1500
    scores = rng.random(n) if continuous else rng.choice([0.0, 0.5, 1.0], size=n, p=[0.3, 0.2, 0.5])
    clusters = rng.integers(0, 400, n)  # pairs of different sizes (a few rows each)
    lo, hi = M.bootstrap_ci(scores, clusters, n_boot=20000, seed=5)
    ref_lo, ref_hi = _naive_bootstrap(scores, clusters, 20000, seed=6)
    assert abs(lo - ref_lo) < 0.004 and abs(hi - ref_hi) < 0.004  # Monte Carlo error of 20,000 replicates


def test_bootstrap_costs_linear_memory_when_every_row_is_its_own_pair():
    """100,000 distinct pairs: resampling them by index would hold 1000 x 100,000 draws (800 MB)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    n = 100_000
    acc = (rng.random(n) < 0.7).astype(float)
    agr = np.where(acc == 1, 1.0, rng.choice([0.0, 0.5], size=n))
    clusters = rng.integers(0, 2**62, n)
    tracemalloc.start()
    try:
        (lo, hi), (alo, ahi) = M.bootstrap_cis([acc, agr], clusters, n_boot=1000, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    se = np.sqrt(acc.mean() * (1 - acc.mean()) / n)
    assert lo < acc.mean() < hi and abs((hi - lo) - 2 * 1.96 * se) < 0.2 * se  # the binomial interval
    assert alo < agr.mean() < ahi

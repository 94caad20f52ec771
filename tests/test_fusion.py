"""Fusion of detectors' scores: tail probabilities against the empirical survival function, combinations against
scipy.stats.combine_pvalues."""

import numpy as np
import pytest
from scipy import stats as sps

from proganomaly.calibration.stats import bin_counts, log_edges
from proganomaly.maps.fusion import FUSERS, FusionError, fused_score, tail_probability


@pytest.fixture
def reference():
    rng = np.random.default_rng(7)
    normal = rng.chisquare(5, 20_000).astype(np.float32)
    edges = log_edges(1e-2, 1e3, 50)
    return normal, bin_counts(normal, edges), edges


def test_tail_probability_at_the_edges_is_the_empirical_survival_function(reference):
    normal, counts, edges = reference
    at = edges[::7]
    want = ((normal[None, :] > at[:, None]).sum(axis=1) + 1) / (normal.size + 1)
    np.testing.assert_allclose(tail_probability(at, counts, edges), want, rtol=1e-12)


def test_tail_probability_between_edges_is_within_one_bin_of_the_empirical_one(reference):
    normal, counts, edges = reference
    values = np.random.default_rng(1).uniform(0.5, 20, 500)
    j = np.searchsorted(edges, values)
    got = tail_probability(values, counts, edges)
    n = normal.size
    upper = ((normal[None, :] > edges[j - 1][:, None]).sum(axis=1) + 1) / (n + 1)
    lower = ((normal[None, :] > edges[j][:, None]).sum(axis=1) + 1) / (n + 1)
    assert np.all(got <= upper + 1e-12) and np.all(got >= lower - 1e-12)
    assert np.all(np.diff(tail_probability(np.sort(values), counts, edges)) <= 1e-15), "must fall as the score rises"


def test_tail_probability_floors_keep_nan_and_never_reach_zero(reference):
    normal, counts, edges = reference
    got = tail_probability(np.array([np.nan, 1e-9, 1e9]), counts, edges)
    assert np.isnan(got[0])
    assert got[1] == 1.0  # below every normal pixel: all of them are above it
    assert got[2] == pytest.approx(1 / (normal.size + 1))


@pytest.mark.parametrize("method,scipy_name", [("fisher", "fisher"), ("min_p", "tippett")])
def test_fusers_match_scipy_combine_pvalues(method, scipy_name):
    rng = np.random.default_rng(3)
    maps = [rng.uniform(1e-6, 1, (6, 5)) for _ in range(3)]
    got = FUSERS[method](maps)
    for idx in np.ndindex(6, 5):
        want = sps.combine_pvalues([m[idx] for m in maps], method=scipy_name).pvalue
        assert got[idx] == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("method,scipy_name", [("fisher", "fisher"), ("min_p", "tippett")])
def test_unscored_pixels_combine_the_detectors_that_scored_them(method, scipy_name):
    a = np.array([[0.01, np.nan], [np.nan, 0.5]])
    b = np.array([[0.2, 0.03], [np.nan, 0.5]])
    got = FUSERS[method]([a, b])
    assert got[0, 0] == pytest.approx(sps.combine_pvalues([0.01, 0.2], method=scipy_name).pvalue)
    assert got[0, 1] == pytest.approx(0.03)  # one detector: its own p
    assert np.isnan(got[1, 0])


def test_min_p_keeps_its_digits_for_tiny_p():
    got = FUSERS["min_p"]([np.array([1e-12]), np.array([0.9])])
    assert got[0] == pytest.approx(2e-12, rel=1e-6)


def test_fused_score_is_minus_log10_p():
    p = [np.array([1e-3, 1.0]), np.array([1.0, 1.0])]
    np.testing.assert_allclose(fused_score(p, "min_p"), -np.log10(FUSERS["min_p"](p)), rtol=1e-6)
    assert fused_score(p, "fisher").dtype == np.float32


def test_bad_inputs_are_refused_with_the_reason():
    with pytest.raises(FusionError, match="different grids"):
        FUSERS["fisher"]([np.ones((2, 2)), np.ones((3, 2))])
    with pytest.raises(FusionError, match=r"\(0, 1\]"):
        FUSERS["fisher"]([np.zeros((2, 2))])
    with pytest.raises(FusionError, match="not one of"):
        fused_score([np.ones(2)], "stouffer")
    with pytest.raises(FusionError, match="empty"):
        tail_probability(np.ones(2), np.zeros(3), np.array([1.0, 2.0]))

"""Block averaging and autocorrelation on AR(1) series with a known statistical inefficiency."""

import numpy as np
import pytest

from jaxpot.analysis import stats


def _ar1(phi, n, seed):
    """x_t = φ x_{t-1} + ε_t, started in its stationary distribution (var 1/(1-φ²))."""
    rng = np.random.default_rng(seed)
    eps = rng.normal(size=n)
    x = np.empty(n)
    x[0] = eps[0] / np.sqrt(1 - phi * phi)
    for t in range(1, n):
        x[t] = phi * x[t - 1] + eps[t]
    return x


@pytest.mark.parametrize("phi", [0.0, 0.8, 0.95])
def test_block_sem_matches_ar1_theory(phi):
    # g = 1 + 2 Σ φ^t = (1+φ)/(1-φ) = 2/(1-φ) - 1; Var(mean) = g σ²/n with σ² = 1/(1-φ²).
    n = 1 << 16
    g_exact = 2.0 / (1.0 - phi) - 1.0
    sem_exact = np.sqrt(g_exact / (1 - phi * phi) / n)
    res = stats.block_average(_ar1(phi, n, seed=1))
    assert res.converged
    naive = np.sqrt(res.sems[0] ** 2)
    # the naive error is off by sqrt(g) when correlated (the check is not trivial)
    if phi > 0.5:
        assert sem_exact / naive > 2.5
    assert abs(res.sem - sem_exact) < 3 * res.sem_error + 0.02 * sem_exact
    assert abs(res.inefficiency - g_exact) / g_exact < 6 * res.sem_error / res.sem + 0.04


def test_block_sem_covers_the_true_mean_at_the_stated_rate():
    # 40 independent AR(1) series: |mean| / sem should behave like |N(0,1)|.
    z = []
    for seed in range(40):
        res = stats.block_average(_ar1(0.9, 1 << 12, seed=100 + seed))
        z.append(res.mean / res.sem)
    z = np.abs(z)
    assert np.mean(z < 1.0) > 0.5 and np.mean(z < 2.0) > 0.85


def test_autocorrelation_and_tau_against_ar1_and_pymbar():
    phi = 0.9
    x = _ar1(phi, 1 << 16, seed=3)
    rho = stats.autocorrelation(x, max_lag=5)
    np.testing.assert_allclose(rho, phi ** np.arange(6), atol=0.03)
    g_exact = 2.0 / (1.0 - phi) - 1.0
    g_ac = stats.statistical_inefficiency(x, method="autocorrelation")
    assert abs(g_ac - g_exact) / g_exact < 0.15
    timeseries = pytest.importorskip("pymbar.timeseries")
    g_pymbar = timeseries.statistical_inefficiency(x, fast=False)
    assert abs(g_ac - g_pymbar) / g_pymbar < 0.15


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="1-D"):
        stats.block_average(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="non-finite.*index 2"):
        stats.block_average([1.0, 2.0, np.nan, 3.0, 4.0])
    with pytest.raises(ValueError, match="method"):
        stats.statistical_inefficiency(np.arange(10.0), method="bogus")

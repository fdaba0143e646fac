"""Charge equilibration (jaxpot.potentials.qeq) against direct NumPy solves of the constrained
linear system, finite differences through the solve, and the CG solver against the dense one."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

import jaxpot
from jaxpot import testing
from jaxpot.potentials.qeq import coulomb_matrix
from jaxpot.potentials.qeq import solve_qeq as _solve_qeq

# jitted: eager dispatch of the many small ops is what makes these tests slow
solve_qeq = jax.jit(_solve_qeq, static_argnums=(3,), static_argnames=("method",))

K = 14.399645  # eV·Å, e²/(4πε₀)
WIDTHS = {1: 0.6, 8: 0.9, 11: 1.1, 17: 1.3}


def _gaussian_coulomb(system, charges):
    """Direct sum of Gaussian charges (a test-side stand-in for the electrostatics)."""
    table = np.zeros(119)
    for z, w in WIDTHS.items():
        table[z] = w
    mask = system.atom_mask
    n = mask.shape[0]
    x = system.positions
    pair = mask[:, None] & mask[None, :] & ~jnp.eye(n, dtype=bool)
    d = x[:, None] - x[None]
    r = jnp.sqrt(jnp.where(pair, jnp.sum(d * d, -1), 1.0))
    s = jnp.asarray(table)[jnp.where(mask, system.species, 1)]
    g = jnp.sqrt(2 * (s[:, None] ** 2 + s[None] ** 2))
    q = jnp.where(mask, charges, 0.0)
    e = jnp.where(pair, q[:, None] * q[None] * jax.scipy.special.erf(r / g) / r, 0.0)
    return K * (0.5 * jnp.sum(e) + jnp.sum(jnp.where(mask, q * q / (2 * np.sqrt(np.pi) * s),
                                                        0.0)))


def _numpy_matrix(x, z):
    """The same Coulomb matrix written out in NumPy (independent of JAX's autodiff)."""
    s = np.array([WIDTHS[int(a)] for a in z])
    r = np.linalg.norm(x[:, None] - x[None], axis=-1)
    g = np.sqrt(2 * (s[:, None] ** 2 + s[None] ** 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = K * erf(r / g) / r
    np.fill_diagonal(c, K / (np.sqrt(np.pi) * s))
    return c


def _cluster(seed=0, n=7):
    rng = np.random.default_rng(seed)
    z = np.array([11, 17, 11, 17, 8, 1, 1, 8, 11, 17][:n])
    while True:
        x = rng.uniform(0, 4.5, (n, 3))
        r = np.linalg.norm(x[:, None] - x[None], axis=-1) + 10 * np.eye(n)
        if r.min() > 1.0:
            break
    chi = rng.normal(0, 2.0, n)
    hard = rng.uniform(2.0, 6.0, n)
    return x, z, chi, hard


def _numpy_solve(x, z, chi, hard, total):
    n = len(z)
    a = _numpy_matrix(x, z) + np.diag(hard)
    k = np.zeros((n + 1, n + 1))
    k[:n, :n], k[:n, n], k[n, :n] = a, 1.0, 1.0
    sol = np.linalg.solve(k, np.concatenate([-chi, [total]]))
    return sol[:n], sol[n]


@pytest.mark.parametrize("total", [0.0, 1.0])
@pytest.mark.parametrize("method", ["exact", "cg"])
def test_charges_equal_numpy_solve(method, total):
    x, z, chi, hard = _cluster()
    system = jaxpot.System.from_arrays(x, z)
    res = solve_qeq(system, chi, hard, _gaussian_coulomb, total_charge=total, method=method)
    q_ref, lam_ref = _numpy_solve(x, z, chi, hard, total)
    assert np.abs(q_ref).max() > 0.05  # a non-trivial charge transfer
    np.testing.assert_allclose(res.charges, q_ref, atol=1e-9)
    np.testing.assert_allclose(res.multiplier, lam_ref, atol=1e-8)
    assert abs(float(res.total_charge) - total) < 1e-10
    np.testing.assert_allclose(res.dipole, q_ref @ x, atol=1e-8)
    e_ref = chi @ q_ref + 0.5 * hard @ q_ref**2 + 0.5 * q_ref @ _numpy_matrix(x, z) @ q_ref
    np.testing.assert_allclose(res.energy, e_ref, rtol=1e-10)


def test_coulomb_matrix_is_the_hessian():
    x, z, _, _ = _cluster(1)
    system = jaxpot.System.from_arrays(x, z)
    matrix = jax.jit(coulomb_matrix, static_argnums=0)(_gaussian_coulomb, system)
    np.testing.assert_allclose(matrix, _numpy_matrix(x, z), rtol=1e-10)


def test_padding_cg_and_exact_agree():
    """Padding atoms get charge 0 and change nothing; the CG solve equals the dense one."""
    x, z, chi, hard = _cluster(2, n=9)
    plain = jaxpot.System.from_arrays(x, z)
    padded = jaxpot.System.from_arrays(x, z, n_atoms=12)
    pad_chi = np.concatenate([chi, [7.0, -3.0, 1.0]])  # garbage on padding atoms
    pad_hard = np.concatenate([hard, [0.0, -1.0, 2.0]])
    ref = solve_qeq(plain, chi, hard, _gaussian_coulomb, total_charge=-1.0).charges
    for method in ("exact", "cg"):
        q = solve_qeq(padded, pad_chi, pad_hard, _gaussian_coulomb, total_charge=-1.0,
                      method=method).charges
        np.testing.assert_allclose(q[:9], ref, atol=1e-9)
        assert np.all(np.asarray(q[9:]) == 0.0)


@pytest.mark.parametrize("method", ["exact", "cg"])
def test_gradients_through_the_solve_match_finite_differences(method):
    """Forces of the QEq energy and of a non-variational function of the charges (Σ q³, where
    the envelope theorem does not help) by autodiff through the solve equal finite
    differences; and the derivative with respect to the electronegativities too."""
    x, z, chi, hard = _cluster(3)
    system = jaxpot.System.from_arrays(x, z)

    def energy(params, s):
        return solve_qeq(s, params, hard, _gaussian_coulomb, method=method).energy

    def cubic(params, s):
        return jnp.sum(solve_qeq(s, params, hard, _gaussian_coulomb, method=method).charges ** 3)

    testing.assert_forces_match_finite_differences(energy, jnp.asarray(chi), system)
    testing.assert_forces_match_finite_differences(cubic, jnp.asarray(chi), system)
    g = jax.jit(jax.grad(cubic))(jnp.asarray(chi), system)
    h = 1e-5
    jcubic = jax.jit(cubic)
    for i in range(3):
        d = np.zeros_like(chi)
        d[i] = h
        fd = (jcubic(jnp.asarray(chi + d), system) - jcubic(jnp.asarray(chi - d), system)) / (2 * h)
        np.testing.assert_allclose(g[i], fd, rtol=1e-6, atol=1e-9)


def test_bad_method():
    x, z, chi, hard = _cluster()
    with pytest.raises(ValueError, match="method"):
        _solve_qeq(jaxpot.System.from_arrays(x, z), chi, hard, _gaussian_coulomb, method="lu")

# %% [markdown]
# # The neural tangent kernel of a Behler–Parrinello network
#
# A network trained by gradient descent on a squared loss behaves, when it is wide, like its
# linearisation around the initial parameters θ₀ (Jacot et al. 2018; Lee et al. 2019): the
# predictions move as
#
#     f_t(x) = f₀(x) + Θ(x, X) Θ(X, X)⁻¹ (I − (I − η Θ(X, X))ᵗ) (y − f₀(X))
#
# with Θ the empirical NTK at θ₀ (`jaxpot.models.ntk.empirical_ntk`). Here we train BPNNs of
# growing width on a few EMT copper energies with full-batch gradient descent and compare their
# test predictions with this kernel prediction. The RMS gap, relative to how far the
# predictions moved, shrinks as the width grows.

# %%
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from jax.flatten_util import ravel_pytree

import jaxpot
from jaxpot.models.bpnn import bpnn, fit_standardisation
from jaxpot.models.ntk import empirical_ntk


# %%
def make_data(n: int, seed: int, cutoff: float):
    """``n`` rattled, strained 4-atom Cu cells with EMT energies, padded to one shape."""
    rng = np.random.default_rng(seed)
    systems, energies = [], []
    for _ in range(n):
        atoms = bulk("Cu", cubic=True)
        atoms.set_cell(atoms.cell * (1 + 0.03 * rng.uniform(-1, 1)), scale_atoms=True)
        atoms.rattle(0.15, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
        systems.append(jaxpot.System.from_ase(atoms, cutoff=cutoff))
    n_edges = max(s.n_edges for s in systems)
    systems = [s.pad(s.n_atoms, n_edges) for s in systems]
    return systems, np.asarray(energies)


def run_width(width, train, y_train, test, *, steps, cutoff, seed=0):
    """Train one BPNN by full-batch GD and return (network, NTK) test predictions."""
    pot = bpnn(species=["Cu"], cutoff=cutoff, hidden=[width], n_radial=6, n_angular=2,
               max_neighbors=32, activation="tanh")
    params = pot.init(jax.random.key(seed), train[0])
    params = fit_standardisation(pot, params, train)
    params = {**params, "atomic_shift": jnp.full_like(params["atomic_shift"],
                                                      float(np.mean(y_train)) / 4.0)}
    flat0, unravel = ravel_pytree(params)
    batch_train = jax.tree.map(lambda *x: jnp.stack(x), *train)
    batch_test = jax.tree.map(lambda *x: jnp.stack(x), *test)

    def energies(flat, batch):
        return jax.vmap(pot.energy, in_axes=(None, 0))(unravel(flat), batch)

    theta = np.asarray(empirical_ntk(pot, params, train))
    theta_star = np.asarray(empirical_ntk(pot, params, test, train))
    lr = 1.0 / np.linalg.eigvalsh(theta).max()

    @jax.jit
    def gd(flat):
        def body(f, _):
            r = energies(f, batch_train) - y_train
            g = jax.grad(lambda ff: 0.5 * jnp.sum((energies(ff, batch_train) - y_train) ** 2))(f)
            return f - lr * g, 0.5 * jnp.sum(r * r)

        return jax.lax.scan(body, flat, None, length=steps)

    f0_train = np.asarray(energies(flat0, batch_train))
    f0_test = np.asarray(energies(flat0, batch_test))
    flat_t, losses = gd(flat0)
    net = np.asarray(energies(flat_t, batch_test))
    # linearised GD after `steps` steps, in the eigenbasis of Θ
    w, v = np.linalg.eigh(theta)
    decay = 1.0 - (1.0 - lr * np.clip(w, 0, None)) ** steps
    coef = v @ (np.where(w > 1e-12 * w.max(), decay / np.where(w > 0, w, 1), lr * steps)
                * (v.T @ (y_train - f0_train)))
    ntk = f0_test + theta_star @ coef
    return net, ntk, f0_test, float(losses[0]), float(losses[-1])


# %%
def main(steps: int = 400, widths=(8, 32, 128, 512), n_train: int = 12, n_test: int = 8,
         cutoff: float = 3.5) -> dict:
    """Train BPNNs of each width; print and return the NTK-vs-network gap per width.

    Runs in float64 (``jax.enable_x64`` inside this call only): the kernel solve needs it.
    """
    with jax.enable_x64(True):
        return _study(steps, widths, n_train, n_test, cutoff)


def _study(steps, widths, n_train, n_test, cutoff) -> dict:
    train, y_train = make_data(n_train, 0, cutoff)
    test, _ = make_data(n_test, 1, cutoff)
    results = {}
    print(f"{'width':>6} {'train loss 0→T (eV²)':>24} {'RMS(net−NTK)/RMS(net−f0)':>26} "
          f"{'corr(Δnet, ΔNTK)':>17}")
    for width in widths:
        net, ntk, f0, l0, lt = run_width(width, train, y_train, test, steps=steps,
                                         cutoff=cutoff)
        moved = np.sqrt(np.mean((net - f0) ** 2))
        gap = np.sqrt(np.mean((net - ntk) ** 2))
        corr = float(np.corrcoef(net - f0, ntk - f0)[0, 1])
        results[width] = {"relative_rms_gap": float(gap / moved), "corr": corr,
                          "loss_start": l0, "loss_end": lt}
        print(f"{width:>6} {l0:>11.4g} → {lt:<10.4g} {gap / moved:>26.4f} {corr:>17.4f}")
    return results


# %%
if __name__ == "__main__":
    main()

# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # NaCl: a learned short range plus exact electrostatics
#
# A hybrid model adds the Coulomb energy of charges to any learned short-range model. Here we
# build one with fixed formal charges (Na +1, Cl −1) on a rattled rock-salt cell, check that its
# electrostatic part is the Ewald energy of those charges, and build a second one whose charges
# come from charge equilibration with electronegativities predicted per atom, on a small
# cluster. Training either on data is one command:
#
# ```
# jaxpot train --train nacl.xyz --model nequip --long-range fixed-charges --charges Na=1,Cl=-1
# ```

# %%
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from ase.build import bulk

import jaxpot
from jaxpot.potentials import coulomb
from jaxpot.registry import from_config

SMALL = {"features": "8x0e+4x1o", "radial_hidden": [16], "readout_hidden": 8, "num_layers": 1}


# %%
def rattled_nacl(repeat: int = 1, seed: int = 0, periodic: bool = True):
    """A rock-salt NaCl cell (8·repeat³ atoms), rattled by 0.1 Å."""
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(repeat)
    atoms.positions += np.random.default_rng(seed).normal(scale=0.1, size=atoms.positions.shape)
    if not periodic:
        atoms.pbc = False
        atoms.cell = np.zeros((3, 3))
    return atoms


def hybrid(charges: str, cutoff: float = 4.0, **kw):
    """A small NequIP + electrostatics hybrid for Na and Cl."""
    return from_config({"name": "hybrid", "kwargs": {
        "short": {"name": "nequip", "kwargs": SMALL}, "charges": charges,
        "species": ["Na", "Cl"], "cutoff": cutoff, **kw}})


# %% [markdown]
# ## Fixed charges: the electrostatic part is the Ewald energy

# %%
def fixed_charges(repeat: int = 1, seed: int = 0) -> dict:
    atoms = rattled_nacl(repeat, seed)
    pot = hybrid("fixed", charge_values={"Na": 1, "Cl": -1},
                 coulomb_options={"max_lengths": 6.0 * repeat, "accuracy": 1e-10})
    system = jaxpot.System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(jax.random.key(seed), system)
    out = pot.atomic(params, system)
    short = from_config(pot.config["kwargs"]["short"])
    e_short = short.energy({k: v for k, v in params.items() if k != "long_range"}, system)
    settings = coulomb.coulomb_settings("ewald", cutoff=pot.cutoff, max_lengths=6.0 * repeat,
                                        accuracy=1e-10)
    e_ewald = coulomb.coulomb_energy(system, out["charges"], settings)
    return {"energy": float(pot.energy(params, system)),
            "electrostatic": float(pot.energy(params, system) - e_short),
            "ewald": float(e_ewald), "charges": np.asarray(out["charges"]).tolist()}


# %% [markdown]
# ## Charge equilibration with learned electronegativities
#
# The second network's per-atom output is read as χ_i; the charges minimise
# Σ χ q + ½ Σ J q² + E_C(q) at zero total charge (Gaussian charges of width 0.7 Å).

# %%
def qeq_cluster(seed: int = 0) -> dict:
    atoms = rattled_nacl(1, seed, periodic=False)
    pot = hybrid("qeq", coulomb_options={"periodic": False})
    system = jaxpot.System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(jax.random.key(seed), system)
    energy, forces = jax.jit(jaxpot.energy_and_forces(pot))(params, system)
    q = pot.atomic(params, system)["charges"]
    return {"energy": float(energy), "max_force": float(jnp.abs(forces).max()),
            "charges": np.asarray(q).tolist(), "total_charge": float(jnp.sum(q)),
            "dipole": np.asarray(jnp.einsum("i,ij->j", q, system.positions)).tolist()}


# %%
def main(repeat: int = 1, seed: int = 0) -> dict:
    fixed = fixed_charges(repeat, seed)
    print(f"fixed charges: E = {fixed['energy']:.4f} eV, electrostatic "
          f"{fixed['electrostatic']:.6f} eV = Ewald {fixed['ewald']:.6f} eV")
    qeq = qeq_cluster(seed)
    print(f"QEq cluster: total charge {qeq['total_charge']:.1e} e, charges "
          f"{np.round(qeq['charges'], 4).tolist()}")
    return {"fixed": fixed, "qeq": qeq}


if __name__ == "__main__":
    main()

"""Geometry runs at full float32 precision on every backend.

On GPUs, a float32 matrix product defaults to TF32 (a 10-bit mantissa). Measured on an H200
before this guard: the ASE calculator's float32 LJ forces on 864 argon atoms were off by 7 % of
the largest force, because image offsets (``shifts @ cell``) and the strained positions of the
stress path were rounded to ~1e-3 relative. A CPU cannot show the error, so this test checks
the programs themselves: every matrix product on positions, cells and image shifts asks for
``Precision.HIGHEST``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from ase.build import bulk

import jaxpot
from jaxpot import neighbors
from jaxpot.potentials import lennard_jones


def _dots(jaxpr) -> list:
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for sub in jax.core.jaxprs_in_params(eqn.params):
            found += _dots(sub)
    return found


def _all_highest(fn, *args) -> int:
    dots = _dots(jax.make_jaxpr(fn)(*args).jaxpr)
    highest = jax.lax.Precision.HIGHEST
    assert dots, "no matrix product found: the check would be vacuous"
    assert all(p == (highest, highest) for p in dots), dots
    return len(dots)


def _argon():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    atoms.rattle(0.05, seed=0)
    return jaxpot.System.from_ase(atoms, cutoff=6.0)


def test_energy_forces_and_stress_use_full_precision_geometry():
    system = _argon()  # the precision flag is in the program whatever the dtype
    pot = lennard_jones(3.4, 0.0104, 6.0)
    params = pot.init(None, system)
    efs = jaxpot.energy_forces_stress(pot)
    assert _all_highest(lambda p, s: efs(p, s), params, system) >= 2


def test_jitted_neighbor_update_uses_full_precision_geometry():
    system = _argon()
    nbrs = neighbors.allocate(system, 6.0, skin=0.5)
    _all_highest(lambda s: neighbors.update(nbrs, s), system)


def test_the_check_finds_a_default_precision_product():
    x = jnp.ones((4, 3))
    assert _dots(jax.make_jaxpr(lambda a: a @ a.T)(x).jaxpr) == [None]

"""Physics properties of the analytic pair potentials, checked with :mod:`jaxpot.testing`.

Every assertion is applied to Lennard-Jones and Morse on periodic (cubic fcc, sheared
triclinic) and isolated (cluster) structures in float64. Each assertion is also shown to FAIL on
an energy broken in the way it is meant to detect, so none of them can pass vacuously.
"""

from __future__ import annotations

import re
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.cluster import Icosahedron

import jaxpot
from jaxpot import System, potentials, testing, units
from jaxpot.potentials.pair import pair_energy

# Ar-like parameters; 6.9 Å lies between the 3rd (6.44 Å) and 4th (7.44 Å) fcc shells, so no
# pair crosses the cutoff in a cold solid and velocity Verlet shows its clean dt² error.
CUTOFF = 6.9
LJ = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=CUTOFF)
MORSE = potentials.morse(D=0.0104, alpha=1.3, r0=3.76, cutoff=CUTOFF)
POTENTIALS = {"lj": LJ, "morse": MORSE}


def _fcc() -> Atoms:
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    atoms.rattle(0.08, seed=1)
    return atoms


def _triclinic() -> Atoms:
    atoms = bulk("Ar", "fcc", a=5.26).repeat((2, 2, 1))  # primitive (rhombohedral) cell
    shear = np.array([[1.0, 0.04, -0.03], [0.02, 0.98, 0.05], [-0.01, 0.03, 1.03]])
    atoms.set_cell(atoms.get_cell()[:] @ shear, scale_atoms=True)
    atoms.rattle(0.08, seed=2)
    return atoms


def _cluster() -> Atoms:
    atoms = Icosahedron("Ar", noshells=2, latticeconstant=5.26)
    atoms.rattle(0.08, seed=3)
    return atoms


STRUCTURES = {"fcc": _fcc, "triclinic": _triclinic, "cluster": _cluster}
PERIODIC = ["fcc", "triclinic"]


def _system(name: str, cutoff: float = CUTOFF) -> System:
    return System.from_ase(STRUCTURES[name](), cutoff=cutoff)


def _params(pot):
    return pot.init(jax.random.key(0), None)


def _cases(structures):
    return [pytest.param(p, s, id=f"{p}-{s}") for p in POTENTIALS for s in structures]


# ---------------------------------------------------------------------------------------------
# The assertions pass on correct potentials
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pot_name", "structure"), _cases(STRUCTURES))
def test_symmetries(pot_name, structure):
    pot = POTENTIALS[pot_name]
    system, params = _system(structure), _params(pot)
    testing.assert_rotation_reflection_invariance(pot, params, system, seed=1)
    testing.assert_translation_invariance(pot, params, system, seed=2)
    testing.assert_permutation_invariance(pot, params, system, seed=3)
    testing.assert_permutation_invariance(pot, params, system, seed=3, within_species=True)


@pytest.mark.parametrize("structure", list(STRUCTURES))
def test_symmetries_with_carried_edges(structure):
    """A bare energy function (no cutoff): the checks remap the given edges exactly."""
    pot = LJ
    system, params = _system(structure), _params(pot)
    testing.assert_rotation_reflection_invariance(pot.energy, params, system, seed=4)
    testing.assert_translation_invariance(pot.energy, params, system, seed=5)
    testing.assert_permutation_invariance(pot.energy, params, system, seed=6)


@pytest.mark.parametrize(("pot_name", "structure"), _cases(STRUCTURES))
def test_forces_and_padding(pot_name, structure):
    pot = POTENTIALS[pot_name]
    system, params = _system(structure), _params(pot)
    testing.assert_forces_match_finite_differences(pot, params, system)
    testing.assert_padding_invariance(pot, params, system)


@pytest.mark.parametrize(("pot_name", "structure"), _cases(PERIODIC))
def test_stress_and_extensivity(pot_name, structure):
    pot = POTENTIALS[pot_name]
    system, params = _system(structure), _params(pot)
    testing.assert_stress_matches_finite_differences(pot, params, system)
    testing.assert_supercell_extensivity(pot, params, system)


@pytest.mark.parametrize("pot_name", list(POTENTIALS))
def test_shifted_potentials_are_continuous_in_energy_only(pot_name):
    pot = POTENTIALS[pot_name]
    params = _params(pot)
    testing.assert_cutoff_smoothness(pot, params, species=(18, 18), orders=(0,))
    # Shifting makes E continuous but leaves the force jump: the derivative check sees it.
    with pytest.raises(AssertionError, match=r"dE/dr\^1.*jumps at the cutoff|d\^1E/dr\^1"):
        testing.assert_cutoff_smoothness(pot, params, species=(18, 18), orders=(0, 1))


def _smooth_pair(params, system, cutoff=CUTOFF):
    """LJ times a polynomial switch (1 − (r/rc)²)³: E, dE/dr and d²E/dr² vanish at rc."""

    def phi(r):
        x6 = (3.4 / r) ** 6
        switch = (1.0 - (r / cutoff) ** 2) ** 3
        return 4.0 * 0.0104 * (x6 * x6 - x6) * switch

    return pair_energy(phi, system, cutoff, shift=False)


def test_smooth_cutoff_passes_higher_orders():
    testing.assert_cutoff_smoothness(_smooth_pair, None, species=(18, 18), cutoff=CUTOFF,
                                     orders=(0, 1, 2))
    with pytest.raises(AssertionError, match="d\\^3E/dr\\^3"):
        testing.assert_cutoff_smoothness(_smooth_pair, None, species=(18, 18), cutoff=CUTOFF,
                                         orders=(3,))


@pytest.mark.parametrize("pot_name", list(POTENTIALS))
def test_nve_periodic(pot_name):
    pot = POTENTIALS[pot_name]
    system, params = _system("fcc"), _params(pot)
    testing.assert_nve_conservation(pot, params, system, dt_fs=4.0, steps=400,
                                    temperature_kelvin=20.0, max_drift_per_atom=1e-5)


def test_nve_falls_back_to_a_jitted_neighbour_list(monkeypatch):
    """With a tiny skin atoms outgrow the fixed edges; the check redoes the run with a list."""
    allocations = []
    allocate = testing._nb.allocate

    def spy(*args, **kwargs):
        allocations.append(kwargs)
        return allocate(*args, **kwargs)

    monkeypatch.setattr(testing._nb, "allocate", spy)
    system, params = _system("fcc"), _params(LJ)
    testing.assert_nve_conservation(LJ, params, system, dt_fs=4.0, steps=200,
                                    temperature_kelvin=60.0, skin=0.04)
    assert len(allocations) == 2  # the run at dt and the one at dt/2


def test_nve_cluster_smooth_and_run_fn():
    """Isolated cluster with the smooth pair energy, driven through ``run_fn``."""
    system = _system("cluster", cutoff=CUTOFF + 1.0)
    runner = testing._velocity_verlet(_smooth_pair, None, None, system, None, 1.0,
                                      _momenta(system, 30.0))

    def run_fn(dt_fs, steps):  # returns an object with a .log dict, like md.MDResult
        tot, pot = runner(dt_fs * units.fs, steps, 1)
        return SimpleNamespace(log={"total_energy_ev": tot, "potential_energy_ev": pot})

    testing.assert_nve_conservation(_smooth_pair, None, system, run_fn=run_fn, dt_fs=4.0,
                                    steps=300, max_drift_per_atom=1e-5)


def _momenta(system, kelvin):
    m = system.masses[:, None]
    p = jnp.sqrt(m * kelvin * units.kB) * jax.random.normal(jax.random.key(7),
                                                            system.positions.shape)
    return p - m * (jnp.sum(p, axis=0) / jnp.sum(system.masses))[None, :]


def test_float32_uses_looser_default_tolerances():
    system = System.from_ase(_fcc(), cutoff=CUTOFF, dtype=jnp.float32)
    params = jax.tree.map(lambda x: x.astype(jnp.float32), _params(LJ))
    assert testing.default_tolerances(jnp.float32) == (1e-5, 1e-6)
    testing.assert_rotation_reflection_invariance(LJ, params, system)


def test_random_rotation_is_orthogonal():
    q = testing.random_rotation(3)
    r = testing.random_rotation(3, reflect=True)
    np.testing.assert_allclose(q @ q.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(q), 1.0) and np.isclose(np.linalg.det(r), -1.0)


# ---------------------------------------------------------------------------------------------
# ... and fail on energies broken the way each one is meant to catch
# ---------------------------------------------------------------------------------------------


def lj(params, system):
    return LJ.energy(params, system)


def anisotropic(params, system):
    """Translation- and permutation-invariant, but prefers edges along x."""
    vec = system.edge_vectors()
    return lj(params, system) + 1e-3 * jnp.sum(jnp.where(system.edge_mask, vec[:, 0] ** 2, 0.0))


def in_a_field(params, system):
    """An energy that depends on absolute positions (a uniform external field)."""
    field = jnp.asarray([0.01, -0.02, 0.03], system.positions.dtype)
    return lj(params, system) + jnp.sum(jnp.where(system.atom_mask[:, None],
                                                  system.positions * field[None, :], 0.0))


def index_weighted(params, system):
    """Pair energies weighted by the receiver's index: atoms are not interchangeable."""
    vec = system.edge_vectors()
    r = jnp.sqrt(jnp.sum(vec * vec, axis=-1) + 1.0)
    w = 1e-3 * jnp.minimum(system.receivers, system.n_atoms - 1)
    return lj(params, system) + jnp.sum(jnp.where(system.edge_mask, w / r, 0.0))


def non_conservative(params, system):
    """Part of the energy hidden from autodiff: the forces miss 10 % of −∇E."""
    e = lj(params, system)
    return e + jax.lax.stop_gradient(0.1 * e)


def cell_blind(params, system):
    """The classic stress bug: image vectors built from a cell the gradient cannot see."""
    cell = jax.lax.stop_gradient(system.cell)
    x = system.positions
    n = x.shape[0]
    s = jnp.minimum(system.senders, n - 1)
    r = jnp.minimum(system.receivers, n - 1)
    vec = jnp.where(system.edge_mask[:, None], x[s] - x[r] + system.shifts @ cell, 1.0)
    r2 = jnp.sum(vec * vec, axis=-1)
    inside = system.edge_mask & (r2 < CUTOFF**2)
    x6 = (3.4**2 / jnp.where(inside, r2, 1.0)) ** 3
    xc = (3.4 / CUTOFF) ** 6
    phi = 4 * 0.0104 * (x6 * x6 - x6 - (xc * xc - xc))  # shifted, as lennard_jones
    return 0.5 * jnp.sum(jnp.where(inside, phi, 0.0))


def unmasked_reference(params, system):
    """A per-atom reference energy summed over every slot, padding included."""
    return lj(params, system) - 0.1 * system.n_atoms


def unmasked_positions(params, system):
    """A term on every slot's position, padding included: zero at x = 0, but not its gradient."""
    return lj(params, system) + 1e-6 * jnp.sum(system.positions)


def intensive(params, system):
    """Energy per atom instead of total energy."""
    return lj(params, system) / system.n_real_atoms


def test_rotation_check_fails_on_anisotropic_energy():
    system = _system("fcc")
    with pytest.raises(AssertionError, match="after rotation\\+inversion"):
        testing.assert_rotation_reflection_invariance(anisotropic, _params(LJ), system,
                                                      cutoff=CUTOFF)


def test_reflection_is_what_catches_a_chiral_energy():
    def chiral(params, system):
        # a·(b×c) of three edge vectors: invariant under rotations, odd under inversion.
        vec = system.edge_vectors()
        return lj(params, system) + 1e-2 * jnp.dot(vec[0], jnp.cross(vec[1], vec[5]))

    system = _system("cluster")
    testing.assert_rotation_reflection_invariance(chiral, _params(LJ), system, reflect=False)
    with pytest.raises(AssertionError, match="rotation\\+inversion"):
        testing.assert_rotation_reflection_invariance(chiral, _params(LJ), system)


@pytest.mark.parametrize("structure", ["fcc", "cluster"])
def test_translation_check_fails_on_absolute_positions(structure):
    with pytest.raises(AssertionError, match="net force"):
        testing.assert_translation_invariance(in_a_field, _params(LJ), _system(structure),
                                              cutoff=CUTOFF)


def test_permutation_check_fails_on_index_dependent_energy():
    with pytest.raises(AssertionError, match="permuting atoms"):
        testing.assert_permutation_invariance(index_weighted, _params(LJ), _system("fcc"))


def test_finite_difference_check_fails_on_non_conservative_forces():
    system, params = _system("fcc"), _params(LJ)
    with pytest.raises(AssertionError, match="forces are not -∇E"):
        testing.assert_forces_match_finite_differences(non_conservative, params, system,
                                                       cutoff=CUTOFF)
    # A hand-written force function that is off by 0.1 %.
    with pytest.raises(AssertionError, match="forces are not -∇E"):
        testing.assert_forces_match_finite_differences(
            LJ, params, system, forces_fn=lambda p, s: 1.001 * testing._masked_forces(lj)(p, s)
        )


def test_stress_check_fails_when_the_cell_is_invisible_to_the_gradient():
    system, params = _system("fcc"), _params(LJ)
    np.testing.assert_allclose(cell_blind(params, system), lj(params, system), rtol=1e-12)
    with pytest.raises(AssertionError, match="stress does not match finite strains"):
        testing.assert_stress_matches_finite_differences(cell_blind, params, system,
                                                         cutoff=CUTOFF)
    with pytest.raises(AssertionError, match="stress does not match"):  # wrong sign
        testing.assert_stress_matches_finite_differences(
            LJ, params, system, stress_fn=lambda p, s: -jaxpot.stress(LJ)(p, s)
        )


@pytest.mark.parametrize(("energy", "message"), [
    (unmasked_reference, "energy with zero padding"),
    (unmasked_positions, "gradient with respect to padding positions"),
])
def test_padding_check_fails_on_unmasked_terms(energy, message):
    with pytest.raises(AssertionError, match=message):
        testing.assert_padding_invariance(energy, _params(LJ), _system("cluster"))


def test_padding_check_catches_trusting_padding_species():
    def species_sum(params, system):
        # Uses species without the mask: fine with zero padding, wrong with poisoned padding.
        return lj(params, system) + 1e-3 * jnp.sum(system.species)

    system = _system("cluster")
    testing.assert_padding_invariance(species_sum, _params(LJ), system, adversarial=False)
    with pytest.raises(AssertionError, match="on top of atom 0"):
        testing.assert_padding_invariance(species_sum, _params(LJ), system)


def test_extensivity_check_fails_on_intensive_energy():
    with pytest.raises(AssertionError, match=re.escape("expected 8 x E")):
        testing.assert_supercell_extensivity(intensive, _params(LJ), _system("fcc"),
                                             cutoff=CUTOFF)


def test_cutoff_check_fails_on_unshifted_energy_and_on_leaks():
    unshifted = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=CUTOFF, shift=False)
    with pytest.raises(AssertionError, match="E of the dimer jumps"):
        testing.assert_cutoff_smoothness(unshifted, _params(unshifted), species=(18, 18),
                                         orders=(0,))

    def leaky(params, system):  # a potential that ignores its own cutoff
        vec = system.edge_vectors()
        r = jnp.sqrt(jnp.sum(vec * vec, axis=-1) + 1e-12)
        return jnp.sum(jnp.where(system.edge_mask, -1e-3 / r**6 * 1e3, 0.0))

    with pytest.raises(AssertionError, match="beyond the cutoff"):
        testing.assert_cutoff_smoothness(leaky, None, species=(18, 18), cutoff=CUTOFF,
                                         orders=(0,))


def test_nve_check_fails_on_non_conservative_forces():
    system, params = _system("fcc"), _params(LJ)
    with pytest.raises(AssertionError, match="not conserved"):
        testing.assert_nve_conservation(
            LJ, params, system, dt_fs=4.0, steps=200, temperature_kelvin=20.0,
            max_drift_per_atom=1e-5,
            forces_fn=lambda p, s: 1.1 * testing._masked_forces(lj)(p, s),
        )


def test_nve_check_fails_on_a_first_order_integrator():
    """Symplectic Euler conserves energy on average but its error scales as dt, not dt²."""
    system = _system("fcc")
    params = _params(LJ)
    p0 = _momenta(system, 20.0)
    force = jax.jit(testing._masked_forces(lj))
    energy = jax.jit(lj)
    fixed = system.with_edges(CUTOFF + 1.0)

    def run_fn(dt_fs, steps):
        dt = dt_fs * units.fs
        m = system.masses[:, None]

        @jax.jit
        def go(x, p):
            def step(c, _):
                x, p = c
                p = p + dt * force(params, fixed.replace(positions=x))
                x = x + dt * p / m
                e = energy(params, fixed.replace(positions=x)) + 0.5 * jnp.sum(p * p / m)
                return (x, p), e

            return jax.lax.scan(step, (x, p), None, length=steps)[1]

        e0 = energy(params, fixed) + 0.5 * jnp.sum(p0 * p0 / m)
        return np.concatenate([[float(e0)], np.asarray(go(fixed.positions, p0))])

    with pytest.raises(AssertionError, match="does not scale as dt²"):
        testing.assert_nve_conservation(LJ, params, system, run_fn=run_fn, dt_fs=2.0,
                                        steps=200, max_drift_per_atom=1e-3)


def test_checks_refuse_vacuous_inputs():
    perfect = System.from_ase(bulk("Ar", "fcc", a=5.26, cubic=True), cutoff=CUTOFF)
    params = _params(LJ)  # a perfect crystal has zero forces by symmetry
    with pytest.raises(AssertionError, match="vacuously"):
        testing.assert_rotation_reflection_invariance(LJ, params, perfect)
    with pytest.raises(AssertionError, match="vacuously"):
        testing.assert_forces_match_finite_differences(LJ, params, perfect)
    far = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=12.0)
    with pytest.raises(AssertionError, match="vacuously"):  # no interaction within the scan
        testing.assert_cutoff_smoothness(lambda p, s: 0.0 * far.energy(p, s), params,
                                         species=(18, 18), cutoff=12.0)

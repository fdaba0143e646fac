"""jaxpot.ase.Calculator against ASE's LJ / Morse calculators and a brute-force pair sum."""

import itertools

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.lj import LennardJones
from ase.calculators.morse import MorsePotential
from ase.neighborlist import neighbor_list as ase_neighbor_list
from ase.stress import voigt_6_to_full_3x3_stress

import jaxpot
from jaxpot.ase import Calculator
from jaxpot.potentials import lennard_jones, morse

RTOL = 1e-6
LJ = {"sigma": 3.4, "epsilon": 0.0104, "cutoff": 8.5}
MORSE = {"D": 0.05, "alpha": 1.2, "r0": 3.8, "cutoff": 8.0}


# ------------------------------------------------------------------------------- structures
def _fcc1():
    atoms = bulk("Ar", "fcc", a=5.26)  # one atom, cell much smaller than the cutoff
    atoms.set_cell(atoms.cell @ (np.eye(3) + [[0.01, 0.003, 0], [0.003, -0.02, 0.004],
                                               [0, 0.004, 0.015]]), scale_atoms=True)
    return atoms


def _bcc1():
    atoms = bulk("Ar", "bcc", a=4.2)
    atoms.set_cell(atoms.cell @ (np.eye(3) + [[-0.01, 0.002, 0.005], [0.002, 0.02, 0],
                                               [0.005, 0, 0.0]]), scale_atoms=True)
    return atoms


def _hcp2():
    atoms = bulk("Ar", "hcp", a=3.72, c=6.07)
    atoms.rattle(0.03, seed=1)
    return atoms


def _fcc_cubic():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)
    atoms.rattle(0.03, seed=2)
    return atoms


def _bcc_cubic():
    atoms = bulk("Ar", "bcc", a=4.2, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.03, seed=3)
    return atoms


def _triclinic(seed):
    rng = np.random.default_rng(seed)
    while True:
        cell = 5.5 * (np.eye(3) + 0.3 * rng.uniform(-1, 1, (3, 3)))
        if np.linalg.det(cell) > 0.5 * 5.5**3:
            break
    n = int(rng.integers(2, 6))
    atoms = Atoms("Ar", cell=cell, pbc=True, scaled_positions=[rng.uniform(0, 1, 3)])
    tries = 0
    while len(atoms) < n and tries < 2000:
        tries += 1
        trial = atoms.copy()
        trial.append("Ar")
        trial.set_scaled_positions(
            np.vstack([atoms.get_scaled_positions(), rng.uniform(-0.5, 1.5, 3)]))
        d = trial.get_all_distances(mic=True)[-1, :-1]
        if d.min() > 3.2:
            atoms = trial
    # Unwrapped positions are fine: the neighbour list must handle them.
    return atoms


def _cluster500():
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(5)
    assert len(atoms) == 500
    atoms.rattle(0.05, seed=4)
    atoms.pbc = False
    atoms.center(vacuum=6.0)
    return atoms


def _slab():
    atoms = fcc111("Ar", size=(2, 2, 3), a=5.26, vacuum=6.0)
    assert atoms.pbc.tolist() == [True, True, False]
    atoms.rattle(0.03, seed=5)
    return atoms


STRUCTURES = {
    "fcc-1atom": _fcc1,
    "bcc-1atom": _bcc1,
    "hcp-2atom": _hcp2,
    "fcc-cubic": _fcc_cubic,
    "bcc-cubic": _bcc_cubic,
    "triclinic-0": lambda: _triclinic(0),
    "triclinic-1": lambda: _triclinic(1),
    "triclinic-2": lambda: _triclinic(2),
    "cluster-500": _cluster500,
    "slab-TTF": _slab,
}
PERIODIC_FORCES = {"fcc-1atom", "bcc-1atom"}  # forces vanish by symmetry


# ------------------------------------------------------------------------------- references
def _brute_force_pairs(atoms, phi, dphi, cutoff, shift=True):
    """Energy, forces and stress of a pair potential by explicit summation over images."""
    pbc = atoms.pbc
    cell = np.asarray(atoms.cell)
    pos = atoms.get_positions()
    if pbc.any():
        frac = np.linalg.solve(cell.T, pos.T).T if atoms.cell.rank == 3 else None
        frac = np.where(pbc, frac - np.floor(frac), frac)
        pos = frac @ cell
        widths = 1.0 / np.linalg.norm(np.linalg.inv(cell).T, axis=1)
        reps = [int(np.ceil(cutoff / w)) + 1 if p else 0 for w, p in zip(widths, pbc, strict=True)]
    else:
        reps = [0, 0, 0]
    n = len(atoms)
    energy, forces, virial = 0.0, np.zeros((n, 3)), np.zeros((3, 3))
    e_cut = phi(cutoff) if shift else 0.0
    for s in itertools.product(*[range(-k, k + 1) for k in reps]):
        offset = np.asarray(s, float) @ cell
        d = pos[None, :, :] - pos[:, None, :] + offset  # d[i, j] = x_j - x_i + S.cell
        r = np.linalg.norm(d, axis=-1)
        inside = (r < cutoff) & (r > 1e-12)
        r_safe = np.where(inside, r, 1.0)
        energy += 0.5 * np.sum(np.where(inside, phi(r_safe) - e_cut, 0.0))
        g = np.where(inside, dphi(r_safe) / r_safe, 0.0)  # dphi/dr / r
        # E = 1/2 sum_ij phi(|x_j - x_i + S|); dE/dx_i = -sum_j phi'(r) d_ij / r (both halves)
        forces += np.sum(g[..., None] * d, axis=1)
        virial += 0.5 * np.einsum("ij,ija,ijb->ab", g, d, d)
    stress = virial / atoms.get_volume() if atoms.cell.rank == 3 else None
    return energy, forces, stress


def _morse_fns(D, alpha, r0):
    def phi(r):
        x = np.exp(-alpha * (r - r0))
        return D * ((1 - x) ** 2 - 1)

    def dphi(r):
        x = np.exp(-alpha * (r - r0))
        return 2 * D * alpha * (1 - x) * x

    return phi, dphi


def _ours(atoms, pot, calc=None):
    atoms = atoms.copy()
    atoms.calc = calc or Calculator(pot)
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    s = atoms.get_stress(voigt=False) if atoms.cell.rank == 3 else None
    return e, f, s


def _assert_close(ours, ref, name, check_forces=True):
    e, f, s = ours
    e_ref, f_ref, s_ref = ref
    assert abs(e - e_ref) <= RTOL * abs(e_ref), (name, e, e_ref)
    assert abs(e_ref) > 1e-6
    scale = np.abs(f_ref).max()
    if check_forces:
        assert scale > 1e-5, "vacuous force comparison"
    np.testing.assert_allclose(f, f_ref, rtol=0, atol=RTOL * max(scale, 1e-3 * abs(e_ref)))
    if s_ref is not None:
        s_ref = np.asarray(s_ref)
        if s_ref.shape == (6,):
            s_ref = voigt_6_to_full_3x3_stress(s_ref)
        sscale = np.abs(s_ref).max()
        assert sscale > 1e-9
        np.testing.assert_allclose(s, s_ref, rtol=0, atol=RTOL * sscale)
    else:
        assert s is None


# ------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_lennard_jones_matches_ase(name):
    atoms = STRUCTURES[name]()
    ref = atoms.copy()
    ref.calc = LennardJones(sigma=LJ["sigma"], epsilon=LJ["epsilon"], rc=LJ["cutoff"],
                            smooth=False)
    ref_vals = (ref.get_potential_energy(), ref.get_forces(),
                ref.get_stress(voigt=False) if atoms.cell.rank == 3 else None)
    _assert_close(_ours(atoms, lennard_jones(**LJ)), ref_vals, name,
                  check_forces=name not in PERIODIC_FORCES)
    # and the brute-force sum agrees with ASE too (validates the reference itself)
    s, e = LJ["sigma"], LJ["epsilon"]
    bf = _brute_force_pairs(
        atoms, lambda r: 4 * e * ((s / r) ** 12 - (s / r) ** 6),
        lambda r: 4 * e * (-12 * s**12 / r**13 + 6 * s**6 / r**7), LJ["cutoff"])
    _assert_close(bf, ref_vals, name, check_forces=name not in PERIODIC_FORCES)


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_morse_matches_brute_force(name):
    atoms = STRUCTURES[name]()
    phi, dphi = _morse_fns(MORSE["D"], MORSE["alpha"], MORSE["r0"])
    ref = _brute_force_pairs(atoms, phi, dphi, MORSE["cutoff"])
    _assert_close(_ours(atoms, morse(**MORSE)), ref, name,
                  check_forces=name not in PERIODIC_FORCES)


def _gap(atoms, lo=7.0, hi=9.5):
    """A window (a, b) of distances with no pair inside, between lo and hi Å."""
    d = np.unique(np.round(ase_neighbor_list("d", atoms, hi + 0.5), 6))
    d = d[(d > lo - 1) & (d < hi + 0.5)]
    gaps = np.diff(d)
    k = int(np.argmax(np.where((d[:-1] > lo) & (d[1:] < hi + 0.5), gaps, 0)))
    assert gaps[k] > 0.2, "no usable gap in the pair distances"
    return d[k] + 0.05, d[k + 1] - 0.05


@pytest.mark.parametrize("name", ["fcc-1atom", "bcc-1atom", "hcp-2atom", "fcc-cubic", "slab-TTF"])
def test_morse_matches_ase_morse(name):
    """ASE's MorsePotential: V = ε[e^{-2ρ0(r/r0-1)} - 2e^{-ρ0(r/r0-1)}] = D[(1-x)²-1] with
    D = ε, α = ρ0/r0, times a smooth switch between rcut1·r0 and rcut2·r0. With the switch
    placed inside a gap of the pair-distance distribution it is a hard, unshifted cutoff."""
    atoms = STRUCTURES[name]()
    a, b = _gap(atoms)
    cutoff = 0.5 * (a + b)
    ref = atoms.copy()
    ref.calc = MorsePotential(epsilon=MORSE["D"], rho0=MORSE["alpha"] * MORSE["r0"],
                              r0=MORSE["r0"], rcut1=a / MORSE["r0"], rcut2=b / MORSE["r0"])
    ref_vals = (ref.get_potential_energy(), ref.get_forces(), ref.get_stress(voigt=False))
    pot = morse(MORSE["D"], MORSE["alpha"], MORSE["r0"], cutoff, shift=False)
    _assert_close(_ours(atoms, pot), ref_vals, name, check_forces=name not in PERIODIC_FORCES)


def test_compiled_function_reused_within_bucket():
    pot = lennard_jones(**LJ)
    calc = Calculator(pot)
    atoms = _fcc_cubic().repeat((2, 1, 1))
    energies = []
    for seed in range(4):
        a = atoms.copy()
        a.rattle(0.02, seed=seed)
        a.calc = calc
        energies.append(a.get_potential_energy())
        a.get_forces()
        a.get_stress()
    assert len(set(energies)) == 4
    assert calc.n_compiles == 1
    assert calc._efs._cache_size() == 1
    # padding to the bucket changes nothing: compare with an unpadded evaluation
    system = jaxpot.System.from_ase(a, cutoff=pot.cutoff)
    assert calc.system(a).n_atoms > len(a) or calc.system(a).n_edges > system.n_edges
    e, f, s = jaxpot.energy_forces_stress(pot)(calc.params, system)
    assert abs(float(e) - energies[-1]) <= 1e-12 * abs(float(e))
    np.testing.assert_allclose(a.get_forces(), np.asarray(f), atol=1e-12)


def test_results_are_float64_and_free_energy():
    atoms = _hcp2()
    atoms.calc = Calculator(morse(**MORSE))
    assert atoms.get_forces().dtype == np.float64
    assert atoms.get_stress().shape == (6,)
    assert atoms.get_potential_energy(force_consistent=True) == atoms.get_potential_energy()


def test_stress_needs_volume():
    atoms = Atoms("Ar3", positions=[[0, 0, 0], [3.8, 0, 0], [0, 3.9, 0.3]])  # no cell
    atoms.calc = Calculator(lennard_jones(**LJ))
    assert np.abs(atoms.get_forces()).max() > 0
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_default_params_and_from_file(tmp_path):
    pot = morse(**MORSE)
    params = {k: v * 1.1 for k, v in pot.init(jax.random.key(0), None).items()}
    path = tmp_path / "morse.jaxpot"
    jaxpot.save_model(path, pot, params)
    atoms = _slab()
    e_file = _ours(atoms, None, Calculator.from_file(path))[0]
    e_direct = _ours(atoms, None, Calculator(pot, params))[0]
    e_default = _ours(atoms, pot)[0]
    assert e_file == e_direct
    assert e_file != e_default


def test_bad_structure_is_a_value_error():
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [np.nan, 0, 0]])
    atoms.calc = Calculator(lennard_jones(**LJ))
    with pytest.raises(ValueError, match="non-finite"):
        atoms.get_potential_energy()


def test_float32_system_gives_float64_results_close_to_float64():
    import jax.numpy as jnp

    atoms = _fcc_cubic().repeat((2, 2, 1))
    pot = lennard_jones(**LJ)
    e64, f64, s64 = _ours(atoms, pot)
    e32, f32, s32 = _ours(atoms, pot, Calculator(pot, dtype=jnp.float32))
    assert f32.dtype == np.float64 and s32.dtype == np.float64
    assert e32 != e64  # really computed in single precision
    assert abs(e32 - e64) <= 1e-5 * abs(e64)
    np.testing.assert_allclose(f32, f64, atol=1e-4 * np.abs(f64).max())

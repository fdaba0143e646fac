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
    with count_compiles() as compiles:  # the same bucket again: nothing is traced or compiled
        b = atoms.copy()
        b.rattle(0.02, seed=9)
        b.calc = calc
        b.get_forces()
    assert compiles == []
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


# ------------------------------------------------------------------------------- ASE scale
_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/backend_compile_duration")


class count_compiles:  # noqa: N801 - used like a function: ``with count_compiles() as c``
    """Records JAX's own tracing and backend-compile events inside a ``with`` block."""

    def __enter__(self):
        self.events = []

        def listener(event, duration, **kwargs):
            if event in _EVENTS:
                self.events.append(event)

        self._listener = listener
        jax.monitoring.register_event_duration_secs_listener(listener)
        return self.events

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listener)


def _argon(repeat=(2, 2, 2), seed=0):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def _ase_lj(atoms):
    ref = atoms.copy()
    ref.calc = LennardJones(sigma=LJ["sigma"], epsilon=LJ["epsilon"], rc=LJ["cutoff"],
                            smooth=False)
    return ref


def test_compile_counter_sees_compiles():
    """The counter used below is not vacuous: a new shape is traced and compiled."""
    calc = Calculator(lennard_jones(**LJ), min_atoms=37)  # an unusual bucket, new to the cache
    atoms = _argon((1, 1, 1))
    atoms.calc = calc
    with count_compiles() as compiles:
        atoms.get_potential_energy()
    assert _EVENTS[0] in compiles and _EVENTS[1] in compiles


def test_second_calculator_from_the_same_model_file_does_not_compile(tmp_path):
    pot = lennard_jones(**LJ)
    path = tmp_path / "lj.jaxpot"
    jaxpot.save_model(path, pot, pot.init(jax.random.key(0), None))
    atoms = _argon(seed=3)
    first, second = atoms.copy(), atoms.copy()
    first.calc = Calculator.from_file(path)
    second.calc = Calculator.from_file(path)
    assert first.calc.potential is not second.calc.potential
    f1 = first.get_forces()
    scaled = {**second.calc.params, "epsilon": 1.1 * second.calc.params["epsilon"]}
    with count_compiles() as compiles:
        f2 = second.get_forces()
        e2 = second.get_potential_energy()
        second.get_stress()
        # New params do not compile either, and give a new answer.
        second.calc.params = scaled
        e3 = second.get_potential_energy()
    assert compiles == []
    # Same program, same inputs; on a GPU, scatter-adds may sum in another order (1e-17 eV/Å).
    np.testing.assert_allclose(f1, f2, rtol=1e-12, atol=1e-15)
    assert abs(e2 - first.get_potential_energy()) <= 1e-12 * abs(e2)
    assert abs(e3 - 1.1 * e2) <= 1e-9 * abs(e2)  # epsilon scales the LJ energy


def test_new_params_give_new_results():
    pot = morse(**MORSE)
    params = pot.init(jax.random.key(0), None)
    atoms = _argon((1, 1, 2), seed=4)
    atoms.calc = calc = Calculator(pot, params)
    e1, f1 = atoms.get_potential_energy(), atoms.get_forces()
    deeper = {**params, "D": params["D"] * 2.0}
    calc.params = deeper
    e2, f2 = atoms.get_potential_energy(), atoms.get_forces()
    assert abs(e2 - 2.0 * e1) <= 1e-9 * abs(e1)
    np.testing.assert_allclose(f2, 2.0 * f1, atol=1e-12)
    calc.set(params=params)  # ASE's way
    assert atoms.get_potential_energy() == e1
    reference = atoms.copy()
    reference.calc = Calculator(pot, deeper)
    assert reference.get_potential_energy() == e2


def test_pickled_atoms_give_the_same_energy():
    import pickle

    atoms = _argon(seed=5)
    atoms.calc = Calculator(lennard_jones(**LJ))
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    clone = pickle.loads(pickle.dumps(atoms))
    assert clone.calc is not atoms.calc
    assert clone.get_potential_energy() == energy  # cached results travel
    clone.calc.results = {}  # and a fresh evaluation agrees
    assert abs(clone.get_potential_energy() - energy) <= 1e-12 * abs(energy)
    np.testing.assert_allclose(clone.get_forces(), forces, atol=1e-12)
    clone.rattle(0.01, seed=1)
    moved = clone.copy()
    moved.calc = Calculator(lennard_jones(**LJ))
    assert clone.get_potential_energy() == pytest.approx(moved.get_potential_energy(), 1e-12)
    # float32 calculators keep their dtype through pickling.
    import jax.numpy as jnp

    calc32 = pickle.loads(pickle.dumps(Calculator(morse(**MORSE), dtype=jnp.float32)))
    atoms.calc = calc32
    assert atoms.calc.system(atoms).positions.dtype == np.float32
    assert np.isfinite(atoms.get_potential_energy())


def test_pickling_an_unregistered_potential_names_it():
    import pickle

    pot = lennard_jones(**LJ)._replace(config={"name": "my_private_lj", "kwargs": {}})
    with pytest.raises(TypeError, match="my_private_lj"):
        pickle.dumps(Calculator(pot))


def test_per_atom_energies_match_ase_lennard_jones():
    atoms = _argon(seed=6)
    atoms.calc = Calculator(lennard_jones(**LJ))
    energies = atoms.get_potential_energies()
    ref = _ase_lj(atoms).get_potential_energies()
    assert energies.shape == (len(atoms),) and np.ptp(ref) > 1e-5
    np.testing.assert_allclose(energies, ref, rtol=0, atol=1e-8)
    assert energies.sum() == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_charges()


def _charged_pair_potential():
    """LJ plus per-atom charges q_i = 0.1·Σ_j exp(-r_ij) − 0.05 (a test double for a charge
    model; only the plumbing of ``charges`` is under test)."""
    import jax.numpy as jnp

    base = lennard_jones(**LJ)

    def atomic(params, system):
        vec = system.edge_vectors()
        r = jnp.sqrt(jnp.sum(vec * vec, axis=1) + ~system.edge_mask)
        w = jnp.where(system.edge_mask & (r < LJ["cutoff"]), jnp.exp(-r), 0.0)
        q = 0.1 * jax.ops.segment_sum(w, system.receivers, system.n_atoms) - 0.05
        return {**base.atomic(params, system), "charges": jnp.where(system.atom_mask, q, 0.0)}

    return base._replace(atomic=atomic, outputs=("energy", "charges"),
                         config={"name": "test_charged_lj", "kwargs": {}})


def test_charges_when_the_model_has_them():
    pot = _charged_pair_potential()
    atoms = _argon((1, 1, 1), seed=7)
    atoms.calc = Calculator(pot)
    charges = atoms.get_charges()
    pos, cell = atoms.get_positions(), atoms.cell.array
    i, j, shifts = ase_neighbor_list("ijS", atoms, LJ["cutoff"])
    r = np.linalg.norm(pos[j] - pos[i] + shifts @ cell, axis=1)
    expected = 0.1 * np.bincount(i, np.exp(-r), minlength=len(atoms)) - 0.05
    assert np.ptp(expected) > 1e-6
    np.testing.assert_allclose(charges, expected, rtol=1e-10)
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy())


def test_verlet_skin_reuses_edges_and_stays_exact():
    """An ASE MD run: the list is rebuilt only after atoms moved skin/2, every step is exact."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    atoms = _argon(seed=8)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    atoms.calc = calc = Calculator(lennard_jones(**LJ), skin=0.3)
    dyn = VelocityVerlet(atoms, 10 * units.fs)
    worst = 0.0
    for _ in range(12):
        dyn.run(1)
        ref = _ase_lj(atoms).get_forces()
        worst = max(worst, np.abs(atoms.get_forces() - ref).max() / np.abs(ref).max())
        assert atoms.get_potential_energy() == pytest.approx(
            _ase_lj(atoms).get_potential_energy(), rel=1e-9)
    assert worst < 1e-9
    assert 1 < calc.n_neighbor_builds < 13  # reused, but rebuilt once atoms moved far enough
    # A changed cell (same positions) never reuses the old edges.
    builds = calc.n_neighbor_builds
    atoms.set_cell(atoms.cell * 1.001, scale_atoms=False)
    assert atoms.get_potential_energy() == pytest.approx(
        _ase_lj(atoms).get_potential_energy(), rel=1e-9)
    assert calc.n_neighbor_builds == builds + 1


def test_skin_reuse_across_a_periodic_face():
    atoms = _argon((2, 2, 2), seed=9)
    atoms.positions[0] = [0.02, 1.0, 1.0]  # just inside the x = 0 face
    atoms.calc = calc = Calculator(lennard_jones(**LJ), skin=0.5)
    atoms.get_forces()
    atoms.positions[0, 0] -= 0.1  # crosses the face: wrapped, it would jump by a cell length
    f = atoms.get_forces()
    assert calc.n_neighbor_builds == 1
    np.testing.assert_allclose(f, _ase_lj(atoms).get_forces(), atol=1e-10)


@pytest.mark.parametrize("periodic", [True, False])
def test_float32_far_from_the_origin(periodic):
    """Coordinates 1e4 Å away lose 3 decimal digits in float32 unless translated on the host."""
    import jax.numpy as jnp

    atoms = _argon((2, 2, 2), seed=10)
    if not periodic:
        atoms.pbc = False
    pot = lennard_jones(**LJ)
    near = atoms.copy()
    near.calc = Calculator(pot, dtype=jnp.float32)
    far = atoms.copy()
    far.translate([1.0e4 + 0.37, -2.0e4 + 0.11, 0.5e4])
    far.calc = Calculator(pot, dtype=jnp.float32)
    exact = _ase_lj(atoms)
    e_near, e_far, e_ref = (near.get_potential_energy(), far.get_potential_energy(),
                            exact.get_potential_energy())
    assert abs(e_near - e_ref) <= 2e-5 * abs(e_ref)
    assert abs(e_far - e_ref) <= 2e-5 * abs(e_ref)
    scale = np.abs(exact.get_forces()).max()
    np.testing.assert_allclose(far.get_forces(), exact.get_forces(), atol=1e-4 * scale)
    np.testing.assert_allclose(far.get_forces(), near.get_forces(), atol=1e-4 * scale)


def test_unknown_element_is_refused_before_any_compile():
    pot = lennard_jones(**LJ)._replace(species=(18,))
    atoms = _argon((1, 1, 1))
    atoms.numbers[2] = 29
    atoms.calc = Calculator(pot, pot.init(jax.random.key(0), None))
    with count_compiles() as compiles, pytest.raises(ValueError, match=r"Cu \(first at atom 2\)"):
        atoms.get_potential_energy()
    assert compiles == []


def test_nearly_flat_cell_is_refused_by_the_calculator():
    atoms = Atoms("Ar2", positions=[[0, 0, 0], [2.0, 2.0, 0]],
                  cell=[[5.0, 0, 0], [0, 5.0, 0], [1.0, 1.0, 1e-6]], pbc=True)
    atoms.calc = Calculator(lennard_jones(**LJ))
    with pytest.raises(ValueError, match="thick"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match="skin"):
        Calculator(lennard_jones(**LJ), skin=-1.0)


def _energy_in_worker(atoms):
    return atoms.get_potential_energy()


@pytest.mark.slow
def test_atoms_with_the_calculator_cross_a_process_boundary():
    """multiprocessing (spawn) pickles Atoms with their calculator to a fresh interpreter."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    atoms = _argon(seed=11)
    atoms.calc = Calculator(lennard_jones(**LJ))
    expected = atoms.get_potential_energy()
    atoms.calc.results = {}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        energy = pool.submit(_energy_in_worker, atoms).result(timeout=300)
    # The worker runs in JAX's default float32 (no conftest there): float32 agreement.
    assert energy == pytest.approx(expected, rel=1e-5)

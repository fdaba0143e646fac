"""Vibrations from the exact Hessian against ASE's finite-difference ``Vibrations`` (with ASE's own
Morse and Lennard-Jones calculators), batching and padding, the Lanczos path against the dense
one, and harmonic thermodynamics against a numerically summed partition function."""

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.lj import LennardJones
from ase.calculators.morse import MorsePotential
from ase.optimize import BFGS
from ase.vibrations import Vibrations as AseVibrations

from jaxpot import units
from jaxpot.analysis import vibrations as vib
from jaxpot.potentials import lennard_jones, morse
from jaxpot.system import System, stack

D, ALPHA, R0 = 2.0, 1.5, 1.2


def _ase_frequencies(atoms, tmp_path, name):
    v = AseVibrations(atoms, name=str(tmp_path / name), delta=0.005, nfree=4)
    v.run()
    f = v.get_frequencies()
    v.clean()
    return np.where(np.abs(f.imag) > 0, -np.abs(f.imag), f.real)  # imaginary as negative


def _morse_cluster():
    pos = np.array([[0, 0, 0], [1.2, 0, 0], [0.3, 1.1, 0], [0.2, 0.4, 1.0], [1.1, 0.9, 0.8]])
    atoms = Atoms("C2NOH", positions=pos)
    atoms.calc = MorsePotential(epsilon=D, r0=R0, rho0=ALPHA * R0, rcut1=9.0, rcut2=10.0)
    BFGS(atoms, logfile=None).run(fmax=1e-7, steps=2000)
    return atoms


def _compare(ours: vib.Vibrations, ref: np.ndarray, *, floor=100.0):
    n = int(ours.n_modes)
    f = np.asarray(ours.frequencies)
    assert np.all(np.isnan(f[n:])) and np.all(np.isfinite(f[:n]))
    ref = np.sort(ref)
    keep = np.abs(ref) > 1.0  # ASE's near-zero translations/rotations
    assert keep.sum() == n
    ref = ref[keep]
    big = np.abs(ref) > floor
    assert big.sum() >= 3
    np.testing.assert_allclose(f[:n][big], ref[big], atol=0.5)
    return f[:n]


def test_morse_cluster_matches_ase_vibrations_with_padding(tmp_path):
    atoms = _morse_cluster()
    ref = _ase_frequencies(atoms, tmp_path, "morse")
    pot = morse(D, ALPHA, R0, 10.0)
    params = pot.init(None, None)
    system = System.from_ase(atoms, cutoff=10.0, n_atoms=7, n_edges=48)  # padded
    out = vib.vibrations(pot, params, system)
    assert int(out.n_modes) == 3 * 5 - 6
    f = _compare(out, ref)
    assert f.max() > 1000  # non-trivial spectrum
    # modes: unit Cartesian patterns, zero on padding, orthonormal in mass-weighted form
    n = int(out.n_modes)
    modes = np.asarray(out.modes)[:n]
    np.testing.assert_allclose(np.linalg.norm(modes.reshape(n, -1), axis=1), 1.0, rtol=1e-12)
    assert np.all(modes[:, 5:] == 0)
    mw = np.asarray(out.mass_weighted)[:n].reshape(n, -1)
    np.testing.assert_allclose(mw @ mw.T, np.eye(n), atol=1e-10)
    # the modes carry no net momentum (translations projected out)
    m = atoms.get_masses()
    p = np.einsum("kia,i->ka", np.asarray(out.mass_weighted)[:n, :5] / np.sqrt(m)[None, :, None]
                  * m[None, :, None], np.ones(5))
    np.testing.assert_allclose(p, 0.0, atol=1e-10)


def test_linear_lj_trimer_is_a_saddle_with_imaginary_bends(tmp_path):
    sigma, eps = 2.0, 0.4
    r = 2 ** (1 / 6) * sigma
    atoms = Atoms("Ar3", positions=[[0, 0, 0], [r, 0, 0], [2 * r, 0, 0]])
    atoms.calc = LennardJones(sigma=sigma, epsilon=eps, rc=12.0, smooth=False)
    BFGS(atoms, logfile=None).run(fmax=1e-8, steps=200)  # relaxes along the line only
    ref = _ase_frequencies(atoms, tmp_path, "lj3")
    pot = lennard_jones(sigma, eps, 12.0)
    out = vib.vibrations(pot, pot.init(None, None), System.from_ase(atoms, cutoff=12.0))
    assert int(out.n_modes) == 4  # 3N - 5 for a linear molecule
    f = _compare(out, ref, floor=10.0)
    assert np.sum(f < 0) == 2 and abs(f[0] - f[1]) < 1e-4  # the degenerate imaginary bend


def test_batch_equals_single_and_lanczos_equals_dense():
    atoms = _morse_cluster()
    pot = morse(D, ALPHA, R0, 10.0)
    params = pot.init(None, None)
    rng = np.random.default_rng(1)
    systems = []
    for k in range(3):
        a = atoms.copy()
        a.positions += rng.normal(scale=0.03, size=a.positions.shape) * (k > 0)
        systems.append(System.from_ase(a, cutoff=10.0, n_atoms=6, n_edges=40))
    batch = vib.vibrations_batch(pot, params, stack(systems, n_atoms=6, n_edges=40))
    assert batch.frequencies.shape == (3, 18)
    for k, s in enumerate(systems):
        one = vib.vibrations(pot, params, s)
        np.testing.assert_allclose(batch.frequencies[k], one.frequencies, rtol=1e-9)
    assert not np.allclose(batch.frequencies[0, :9], batch.frequencies[1, :9], atol=1.0)
    low = vib.lowest_modes(pot, params, systems[1], n_modes=4, krylov=18)
    dense = np.asarray(batch.frequencies[1])
    np.testing.assert_allclose(low["frequencies"], dense[:4], rtol=1e-8)
    assert np.all(np.asarray(low["residuals"]) < 1e-8)


@pytest.mark.slow  # the molecule case runs by default (test_batch_equals_single_...)
def test_lanczos_lowest_modes_of_a_crystal():
    from ase.build import bulk

    atoms = bulk("Ar", "fcc", a=5.3, cubic=True).repeat((2, 2, 1))
    atoms.rattle(0.05, seed=2)
    pot = lennard_jones(3.4, 0.0104, 7.0)
    params = pot.init(None, None)
    system = System.from_ase(atoms, cutoff=7.0)
    dense = vib.vibrations(pot, params, system)
    assert int(dense.n_modes) == 3 * 16 - 3  # periodic: translations only
    low = vib.lowest_modes(pot, params, system, n_modes=3, krylov=40)
    np.testing.assert_allclose(low["frequencies"], dense.frequencies[:3], rtol=1e-5)


def _summed_partition(e_quantum, t):
    """F = −kT ln Σ_n e^{−(n+½)ε/kT}, summed numerically (no closed form)."""
    kt = units.kB * t
    n = np.arange(20000)
    return -kt * np.log(np.sum(np.exp(-(n + 0.5) * e_quantum / kt)))


def test_harmonic_thermo_equals_summed_partition_function():
    freqs = np.array([np.nan, -50.0, 120.0, 800.0, 3000.0])  # cm⁻¹; NaN and imaginary skipped
    t = 400.0
    th = vib.harmonic_thermo(freqs, t)
    quanta = freqs[2:] * vib.EV_PER_CM
    f_ref = sum(_summed_partition(q, t) for q in quanta)
    dt = 1e-3
    s_ref = -sum(_summed_partition(q, t + dt) - _summed_partition(q, t - dt) for q in quanta) / (
        2 * dt)
    assert th.n_imaginary == 1
    assert th.free_energy == pytest.approx(f_ref, rel=1e-10)
    assert th.entropy == pytest.approx(s_ref, rel=1e-6)
    assert th.energy == pytest.approx(th.free_energy + t * th.entropy, rel=1e-10)
    assert th.zpe == pytest.approx(0.5 * quanta.sum(), rel=1e-12)
    assert vib.harmonic_thermo(freqs, 0.0).free_energy == pytest.approx(th.zpe)
    # ASE's ħω for an eigenvalue of 1 eV/(Å² amu): sqrt(eV/(Å² amu)) in s⁻¹ times ħ
    omega = np.sqrt(units._e / units._amu) * 1e10
    assert vib.HBAR_OMEGA == pytest.approx(units._hbar * omega / units._e, rel=1e-12)
    with pytest.raises(ValueError, match="temperature"):
        vib.harmonic_thermo(freqs, -1.0)


def test_properties_cli_morse_dimer_is_analytic_and_bad_input_exits_2(tmp_path, capsys):
    import json

    from ase.io import write

    from jaxpot import cli
    from jaxpot.serialization import save_model

    pot = morse(D, ALPHA, R0, 6.0)
    save_model(tmp_path / "m.model", pot, pot.init(None, None))
    write(tmp_path / "co.xyz", Atoms("CO", positions=[[0, 0, 0], [0, 0, 1.3]]))
    out = tmp_path / "props.json"
    capsys.readouterr()
    assert cli.main(["properties", str(tmp_path / "m.model"), str(tmp_path / "co.xyz"),
                     "-o", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text()) == printed
    f = printed["vibrations"]["frequencies_cm1"]
    mu = 12.011 * 15.999 / (12.011 + 15.999)
    analytic = vib.HBAR_OMEGA * np.sqrt(2 * D * ALPHA**2 / mu) / vib.EV_PER_CM  # k = 2Dα²
    assert len(f) == 1 and f[0] == pytest.approx(analytic, rel=1e-4)  # relaxed to 1e-4 eV/Å
    zpe = printed["vibrations"]["zpe_eV"]
    assert zpe == pytest.approx(0.5 * analytic * vib.EV_PER_CM, rel=1e-4)
    args = ["properties", str(tmp_path / "m.model"), str(tmp_path / "co.xyz")]
    assert cli.main([*args, "--what", "elastic"]) == 2  # not for a molecule
    assert cli.main([*args, "-o", str(tmp_path / "co.xyz")]) == 2  # would overwrite the input
    assert "refusing to overwrite" in capsys.readouterr().err


@pytest.mark.slow  # compiling NequIP's Hessian and the calculator costs ~30 s of one core
def test_nequip_model_frequencies_match_ase_vibrations_on_its_calculator(tmp_path):
    """A NequIP model (random parameters: the Hessian path is the same as for a trained one)
    through ``jaxpot.ase.Calculator`` for ASE; at an unrelaxed geometry only translations are
    exact zero modes, so both sides keep the rotations (``rotations=False``)."""
    import jax
    from ase.build import molecule

    from jaxpot import models
    from jaxpot.ase import Calculator

    pot = models.nequip(species=["H", "C", "O"], cutoff=4.0, features="4x0e+4x1o", l_max=1,
                        num_bessel=4, radial_hidden=[8], avg_num_neighbors=8.0,
                        readout_hidden=4, num_layers=1)
    atoms = molecule("H2CO")
    atoms.rattle(0.05, seed=1)
    system = System.from_ase(atoms, cutoff=pot.cutoff)
    params = pot.init(jax.random.key(0), system)
    atoms.calc = Calculator(pot, params)
    ref = _ase_frequencies(atoms, tmp_path, "nequip")
    out = vib.vibrations(pot, params, system, rotations=False)
    assert int(out.n_modes) == 3 * 4 - 3
    n = int(out.n_modes)
    f = np.sort(np.asarray(out.frequencies)[:n])
    ref = np.sort(ref)
    ref = np.delete(ref, np.argsort(np.abs(ref))[:3])  # ASE's three translations (≈ 0)
    big = np.abs(ref) > 100
    assert big.sum() >= 3
    np.testing.assert_allclose(f[big], ref[big], atol=0.5)

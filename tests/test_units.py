"""jaxpot.units must be ASE's unit system, constant for constant (CODATA 2014)."""

import math

import ase.units
import numpy as np
import pytest

from jaxpot import units

# Names that ase.units defines too: they must agree to rounding.
SHARED = [
    "Ang", "Angstrom", "nm", "Bohr", "eV", "Hartree", "Rydberg", "kJ", "kcal", "mol", "J", "C",
    "kB", "kg", "s", "second", "fs", "GPa", "Pascal", "bar",
    "_e", "_amu", "_hbar", "_c", "_mu0", "_hplanck", "_me", "_mp", "_Nav", "_k", "_eps0",
]


@pytest.mark.parametrize("name", SHARED)
def test_constant_equals_ase(name):
    ours, theirs = getattr(units, name), getattr(ase.units, name)
    assert ours == pytest.approx(theirs, rel=1e-12, abs=0.0), name


def test_public_names_are_covered():
    """Every public constant is either checked against ASE above or derived below."""
    derived = {"amu", "ps", "ns", "coulomb_constant"}
    assert set(units.__all__) <= set(SHARED) | derived


def test_coulomb_constant_is_e_over_4_pi_eps0_in_ev_angstrom():
    # LAMMPS's qqr2e in metal units (14.399645), which the nacl_bmh data were labelled with;
    # CODATA gives e/(4π ε0 · 1 Å) = 14.39964548 V, 2e-8 relative away.
    exact = ase.units._e / (4 * np.pi * ase.units._eps0 * 1e-10)
    assert units.coulomb_constant == pytest.approx(exact, rel=1e-7)
    assert units.coulomb_constant == 14.399645


def test_ase_codata_version_is_2014():
    # If ASE moves to a newer CODATA by default, jaxpot must follow (or pin) deliberately.
    assert ase.units.__codata_version__ == "2014"


def test_derived_units():
    # ASE's mass unit is the amu: one amu in ASE's kg is 1.
    assert units.amu == 1.0
    assert units.amu == pytest.approx(ase.units._amu * ase.units.kg, rel=1e-12)
    assert units.ps == pytest.approx(1000.0 * ase.units.fs, rel=1e-12)
    assert units.ns == pytest.approx(1e6 * ase.units.fs, rel=1e-12)


def test_internal_time_unit_and_kT():
    # The internal time unit Å·sqrt(amu/eV) is about 10.1805 fs.
    assert 1.0 / units.fs == pytest.approx(10.1805055, rel=1e-7)
    assert math.sqrt(ase.units._amu / ase.units._e) * 1e-10 / 1e-15 == pytest.approx(
        1.0 / units.fs, rel=1e-12
    )
    assert 300.0 * units.kB == pytest.approx(0.025852, abs=1e-6)
    # Kinetic energy of 1 amu at 1 Å/fs, in eV (a standard MD sanity number).
    assert 0.5 * units.amu * (units.Ang / units.fs) ** 2 == pytest.approx(51.8213, rel=1e-5)
    # 1 eV/Å³ = 160.2 GPa.
    assert 1.0 / units.GPa == pytest.approx(160.21766208, rel=1e-9)

"""Units: ASE's internal system, so ``ase.Atoms`` round-trip with no conversion.

Length is Å, energy eV, mass amu (unified atomic mass unit). The time unit follows:
``Å·sqrt(amu/eV) ≈ 10.1805 fs``. Temperatures enter as ``kT`` in eV (``kT = 300 * kB``).
Forces are eV/Å, stress eV/Å³ with ASE's sign (σ = (1/V) ∂E/∂ε, negative under compression),
and pressure = −trace(σ)/3. Constants are CODATA 2014, as in ``ase.units``.

Example:
  >>> from jaxpot import units
  >>> dt = 1.0 * units.fs           # one femtosecond in internal time units
  >>> round(300.0 * units.kB, 6)    # kT at 300 K in eV
  0.025852
"""

import math

__all__ = [
    "Ang", "nm", "Bohr", "eV", "Hartree", "kJ", "kcal", "mol", "J", "C", "kB", "amu", "kg",
    "s", "second", "fs", "ps", "ns", "GPa", "Pascal", "bar", "_e", "_amu", "_hbar",
    "coulomb_constant",
]

# CODATA 2014 (as ase.units uses by default)
_c = 299792458.0  # m/s
_mu0 = 4.0e-7 * math.pi
_grav = 6.67408e-11
_hplanck = 6.626070040e-34  # J s
_e = 1.6021766208e-19  # C
_me = 9.10938356e-31  # kg
_mp = 1.672621898e-27  # kg
_Nav = 6.022140857e23
_k = 1.38064852e-23  # J/K
_amu = 1.660539040e-27  # kg
_eps0 = 1.0 / _mu0 / _c**2
_hbar = _hplanck / (2.0 * math.pi)

Ang = Angstrom = 1.0
nm = 10.0
Bohr = 4.0e10 * math.pi * _eps0 * _hbar**2 / _me / _e**2
eV = 1.0
Hartree = _me * _e**3 / 16.0 / math.pi**2 / _eps0**2 / _hbar**2
kJ = 1000.0 / _e
kcal = 4.184 * kJ
mol = _Nav
Rydberg = 0.5 * Hartree
J = 1.0 / _e
C = 1.0 / _e
kB = _k / _e  # eV/K
amu = 1.0
kg = 1.0 / _amu
second = s = 1e10 * math.sqrt(_e / _amu)
fs = 1e-15 * second
ps = 1e-12 * second
ns = 1e-9 * second
Pascal = (1.0 / _e) / 1e30  # eV/Å³
GPa = 1e9 * Pascal
bar = 1e5 * Pascal

coulomb_constant = 14.399645
"""``e²/(4π ε₀)`` in eV·Å: the energy of two unit charges 1 Å apart. The value LAMMPS uses
(``qqr2e`` of ``units metal``), so jaxpot's electrostatics reproduce LAMMPS labels exactly; the
CODATA 2014 value is 14.39964535 (2e-8 relative difference)."""

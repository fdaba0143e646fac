"""Grimme's D3 reference data, read at run time from the installed ``dftd3`` package.

jaxpot ships none of the D3 tables. The reference C6 coefficients, reference coordination
numbers, the ``<r⁴>/<r²>`` expectation values, the D3 covalent radii and the zero-damping
cutoff radii live inside the shared library of ``dftd3`` (simple-dftd3, LGPL-3.0-or-later),
which has no C function that returns them. This module calls the library's own accessor
functions and reads its read-only data arrays through :mod:`ctypes` when a D3 potential is
built, so the data stay in the LGPL package and jaxpot only links to it at run time. The
damping parameters of each functional come from the ``parameters.toml`` that ships with the
same package (read with :mod:`tomllib`).

All values are in atomic units (bohr, hartree), as the library stores them.
"""

from __future__ import annotations

import ctypes
import functools
import os
import tomllib
from typing import NamedTuple

import numpy as np

__all__ = ["D3Tables", "d3_tables", "d3_damping_params", "MAX_ELEMENT"]

MAX_ELEMENT = 103
"""Elements 1..103 have D3 reference data."""
_MAX_REF = 7

_INSTALL_HINT = ("jaxpot's D3 potential reads Grimme's reference tables at run time from the "
                 "'dftd3' package (simple-dftd3, LGPL), which is not installed; install it with "
                 "'pip install dftd3' or 'conda install -c conda-forge simple-dftd3 dftd3-python' "
                 "(or use jaxpot.potentials.dispersion.dispersion with your own C6)")


class D3Tables(NamedTuple):
    """D3 reference data for elements 1..103 (row ``Z − 1``), atomic units.

    Attributes:
      c6: ``[103, 103, 7, 7]`` reference C6 (hartree·bohr⁶); ``c6[zi−1, zj−1, a, b]`` pairs
        reference ``a`` of element ``zi`` with reference ``b`` of element ``zj``; 0 for
        references an element does not have.
      cn: ``[103, 7]`` reference coordination numbers (−1 where absent).
      n_ref: ``[103]`` number of references of each element.
      r4r2: ``[103]`` ``sqrt(½ √Z <r⁴>/<r²>)``, so that ``C8 = 3 C6 r4r2_i r4r2_j``.
      rcov: ``[103]`` D3 covalent radii (bohr, Pyykkö's scaled by 4/3).
      r0: ``[103, 103]`` pair cutoff radii of the zero damping (bohr).
    """

    c6: np.ndarray
    cn: np.ndarray
    n_ref: np.ndarray
    r4r2: np.ndarray
    rcov: np.ndarray
    r0: np.ndarray


def _package_dir() -> str:
    try:
        import dftd3.interface  # noqa: F401  (loads the shared library)
        import dftd3.library
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return os.path.dirname(dftd3.library.__file__)


def _shared_library() -> ctypes.CDLL:
    folder = _package_dir()
    names = sorted(f for f in os.listdir(folder) if f.startswith("_libdftd3"))
    if not names:
        raise ImportError(f"{_INSTALL_HINT} (no _libdftd3 shared library in {folder})")
    return ctypes.CDLL(os.path.join(folder, names[0]))


def _function(lib: ctypes.CDLL, name: str):
    try:
        fn = getattr(lib, name)
    except AttributeError:
        raise ImportError(f"the installed dftd3 library has no symbol {name!r}; jaxpot's D3 "
                          f"needs simple-dftd3 >= 1.0 built with its Fortran module "
                          f"symbols exported") from None
    fn.restype = ctypes.c_double
    return fn


def _int(v: int):
    return ctypes.byref(ctypes.c_int(int(v)))


def _initialise_reference_c6() -> None:
    """The library fills its C6 table when the first D3 model is created."""
    from dftd3.interface import DispersionModel

    DispersionModel(np.array([1, 1]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.4]]))


def _check(tables: D3Tables) -> None:
    ok = (np.all((tables.n_ref >= 1) & (tables.n_ref <= _MAX_REF))
          and tables.cn[0, 0] > 0 and tables.c6[5, 5, 0, 0] > 0
          and np.all(tables.rcov > 0) and np.all(tables.r4r2 > 0))
    if not ok:
        raise ImportError("the D3 tables read from the installed dftd3 library look wrong "
                          "(unexpected layout); jaxpot's D3 cannot use this dftd3 build")


@functools.lru_cache(maxsize=1)
def d3_tables() -> D3Tables:
    """Read the D3 reference data from the installed ``dftd3`` library (once per process).

    Raises:
      ImportError: ``dftd3`` is not installed, or its library lacks the expected symbols.
    """
    lib = _shared_library()
    _initialise_reference_c6()
    n_ref = np.array((ctypes.c_int * MAX_ELEMENT).in_dll(
        lib, "__dftd3_reference_MOD_number_of_references"), dtype=np.int64)
    cn = np.array((ctypes.c_double * (_MAX_REF * MAX_ELEMENT)).in_dll(
        lib, "__dftd3_reference_MOD_reference_cn")).reshape(MAX_ELEMENT, _MAX_REF)
    get_c6 = _function(lib, "__dftd3_reference_MOD_get_c6")
    r4r2 = _function(lib, "__dftd3_data_r4r2_MOD_get_r4r2_val_num")
    rcov = _function(lib, "__mctc_data_covrad_MOD_get_covalent_rad_num")
    r0 = _function(lib, "__dftd3_data_vdwrad_MOD_get_vdw_rad_pair_num")
    c6 = np.zeros((MAX_ELEMENT, MAX_ELEMENT, _MAX_REF, _MAX_REF))
    r0ab = np.zeros((MAX_ELEMENT, MAX_ELEMENT))
    for zi in range(1, MAX_ELEMENT + 1):
        for zj in range(1, zi + 1):
            r0ab[zi - 1, zj - 1] = r0ab[zj - 1, zi - 1] = r0(_int(zi), _int(zj))
            for a in range(n_ref[zi - 1]):
                for b in range(n_ref[zj - 1]):
                    value = get_c6(_int(a + 1), _int(b + 1), _int(zi), _int(zj))
                    c6[zi - 1, zj - 1, a, b] = c6[zj - 1, zi - 1, b, a] = value
    z = range(1, MAX_ELEMENT + 1)
    tables = D3Tables(c6=c6, cn=cn, n_ref=n_ref,
                      r4r2=np.array([r4r2(_int(k)) for k in z]),
                      rcov=np.array([rcov(_int(k)) for k in z]), r0=r0ab)
    _check(tables)
    return tables


_DAMPING_KEYS = {"bj": ("s6", "s8", "a1", "a2"), "zero": ("s6", "s8", "rs6", "rs8", "alp")}


def d3_damping_params(functional: str, damping: str = "bj") -> dict[str, float]:
    """The D3 damping parameters of ``functional`` from ``dftd3``'s ``parameters.toml``.

    Args:
      functional: e.g. ``"pbe"``, ``"b3lyp"`` (case-insensitive).
      damping: ``"bj"`` (rational, Becke–Johnson) or ``"zero"``.

    Returns:
      ``{"s6", "s8", "a1", "a2"}`` (bj, ``a2`` in bohr) or ``{"s6", "s8", "rs6", "rs8", "alp"}``
      (zero).

    Raises:
      ImportError: ``dftd3`` is not installed.
      ValueError: unknown damping, or no parameters for this functional and damping.
    """
    if damping not in _DAMPING_KEYS:
        raise ValueError(f"d3: damping must be one of {sorted(_DAMPING_KEYS)}, got {damping!r}")
    path = os.path.join(_package_dir(), "parameters.toml")
    with open(path, "rb") as fh:
        data = tomllib.load(fh)
    entry = data.get("parameter", {}).get(str(functional).lower(), {}).get("d3", {})
    if damping not in entry:
        known = sorted(k for k, v in data.get("parameter", {}).items()
                       if damping in v.get("d3", {}))
        raise ValueError(f"d3: no D3({damping}) parameters for functional {functional!r} in "
                         f"{path}; known: {', '.join(known)}")
    merged = {**data["default"]["parameter"]["d3"][damping], **entry[damping]}
    return {k: float(merged[k]) for k in _DAMPING_KEYS[damping]}

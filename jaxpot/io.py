"""Reading and writing labelled structures (extxyz and anything else ASE reads).

:func:`read` returns a list of ``ase.Atoms``; each frame's labels (energy, forces, stress),
whatever keys the file used for them, are attached as a ``SinglePointCalculator`` so that
``atoms.get_potential_energy()`` and friends return them. :func:`labels` stacks them into
arrays for training, and :func:`write` writes extxyz atomically::

    frames = jaxpot.io.read("train.xyz", energy_key="REF_energy", forces_key="REF_forces")
    y = jaxpot.io.labels(frames)   # {"energy": [n], "forces": [[n_i, 3], ...], "stress": ...}
    jaxpot.io.write("copy.xyz", frames)

Units are ASE's: eV, eV/Å, eV/Å³ (stress with ASE's sign, negative under compression).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

from jaxpot.serialization import atomic_write

__all__ = ["read", "write", "labels", "read_structure"]

_DEFAULT_KEYS = {"energy": "energy", "forces": "forces", "stress": "stress"}


def _read_frames(path, index) -> list[ase.Atoms]:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a structure file")
    try:
        frames = ase.io.read(path, index=index)
    except (FileNotFoundError, KeyboardInterrupt):
        raise
    except KeyError as err:  # ASE's way of saying "unknown element symbol"
        raise ValueError(f"cannot read {path!r}: unknown element or key {err}") from None
    except Exception as err:  # ASE raises many types for malformed files
        raise ValueError(f"cannot read {path!r}: {type(err).__name__}: {err}") from None
    if isinstance(frames, ase.Atoms):
        frames = [frames]
    frames = list(frames)
    if not frames:
        raise ValueError(f"{path!r} holds no structures (index {index!r})")
    return frames


def _stored(atoms: ase.Atoms, key: str, kind: str):
    """Look up a label under ``key`` in the calculator results, info or arrays."""
    results = atoms.calc.results if atoms.calc is not None else {}
    if key == _DEFAULT_KEYS[kind] and key in results:
        return results[key]
    if kind == "forces":
        return atoms.arrays.get(key)
    return atoms.info.get(key)


def _as_stress(value, where: str) -> np.ndarray:
    s = np.asarray(value, np.float64).reshape(-1)
    if s.size == 6:
        return voigt_6_to_full_3x3_stress(s)
    if s.size == 9:
        return s.reshape(3, 3)
    raise ValueError(f"{where}: stress must have 6 (Voigt) or 9 values, got {s.size}")


def read(
    path: str | os.PathLike,
    index: int | str | slice = ":",
    *,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    require: Sequence[str] = (),
) -> list[ase.Atoms]:
    """Read structures and their labels from any file ASE reads (extxyz for training data).

    Labels are looked up under the given keys in ``atoms.info`` (energy, stress),
    ``atoms.arrays`` (forces) or, for the default key names, the calculator ASE attached. A
    label is optional, but if some frames have it every frame must have it (a partially
    labelled file is almost always a mistake). A label whose key you changed from the default
    must be present, as must every label named in ``require``.

    Args:
      path: file name.
      index: ASE index: ``":"`` (all frames), an int, a slice or ``"a:b:c"``.
      energy_key: info key of the total energy, eV (``None``: ignore energies).
      forces_key: arrays key of the forces, ``[n_atoms, 3]`` eV/Å (``None``: ignore).
      stress_key: info key of the stress, 6 (Voigt) or 9 values, eV/Å³ (``None``: ignore).
      require: label kinds (``"energy"``, ``"forces"``, ``"stress"``) every frame must have.

    Returns:
      A list of ``ase.Atoms``, each with a ``SinglePointCalculator`` holding the labels it has
      under ASE's names (``energy``, ``forces``, Voigt ``stress``); other info keys are kept.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file cannot be parsed, is empty, or a label is missing or malformed;
        the message names the file, the frame index and the key.
    """
    path = os.fspath(path)
    frames = _read_frames(path, index)
    keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key}
    unknown = set(require) - set(keys)
    if unknown:
        raise ValueError(f"require: unknown label kinds {sorted(unknown)}; use {sorted(keys)}")
    found = {kind: [] for kind in keys}
    for atoms in frames:
        for kind, key in keys.items():
            found[kind].append(None if key is None else _stored(atoms, key, kind))
    for kind, key in keys.items():
        values = found[kind]
        present = [v is not None for v in values]
        must = kind in require or (key is not None and key != _DEFAULT_KEYS[kind])
        if key is None:
            if kind in require:
                raise ValueError(f"{path!r}: {kind} is required but {kind}_key is None")
            continue
        if all(present) or (not any(present) and not must):
            continue
        missing = present.index(False)
        where = "info" if kind != "forces" else "arrays"
        available = sorted(getattr(frames[missing], where))
        reason = ("frame 0 has it" if present and present[0] else
                  "it was requested" if must else "other frames have it")
        raise ValueError(
            f"{path!r}: frame {missing} has no {kind} label under key {key!r} ({reason}); "
            f"{where} keys there: {available}"
        )
    out = []
    for i, atoms in enumerate(frames):
        where = f"{path!r} frame {i}"
        results = {}
        e = found["energy"][i]
        if e is not None:
            e = np.asarray(e, np.float64)
            if e.size != 1:
                raise ValueError(f"{where}: energy {energy_key!r} must be one number")
            results["energy"] = float(e.reshape(()))
            results["free_energy"] = results["energy"]
        f = found["forces"][i]
        if f is not None:
            f = np.asarray(f, np.float64)
            if f.shape != (len(atoms), 3):
                raise ValueError(f"{where}: forces {forces_key!r} have shape {f.shape}, "
                                 f"expected ({len(atoms)}, 3)")
            results["forces"] = f.copy()
        s = found["stress"][i]
        if s is not None:
            results["stress"] = full_3x3_to_voigt_6_stress(_as_stress(s, where))
        for kind, value in results.items():
            if not np.all(np.isfinite(value)):
                raise ValueError(f"{where}: non-finite {kind} label")
        clean = atoms.copy()  # drops the calculator ASE attached
        for kind, key in keys.items():
            if key is not None and key != _DEFAULT_KEYS[kind]:
                (clean.arrays if kind == "forces" else clean.info).pop(key, None)
        if results:
            clean.calc = SinglePointCalculator(clean, **results)
        out.append(clean)
    return out


def read_structure(path: str | os.PathLike, index: int | str = -1) -> ase.Atoms:
    """One structure (by default the last frame) from any file ASE reads.

    Raises:
      FileNotFoundError: no such file.
      ValueError: unreadable file or unknown element (message names the file).
    """
    frames = _read_frames(path, index)
    return frames[-1]


def labels(atoms_list: Sequence[ase.Atoms]) -> dict:
    """Stack the labels of structures returned by :func:`read`.

    Args:
      atoms_list: structures whose calculators hold ``energy`` (required) and optionally
        ``forces`` and ``stress``.

    Returns:
      ``{"energy": [n] eV, "forces": list of [n_atoms_i, 3] eV/Å or None,
      "stress": [n, 3, 3] eV/Å³ or None}`` (float64). Forces/stress are ``None`` when no
      structure has them.

    Raises:
      ValueError: a structure lacks an energy, or has forces/stress while another does not;
        the message names the frame index.
    """
    if len(atoms_list) == 0:
        raise ValueError("labels: no structures")

    def get(atoms, kind):
        results = atoms.calc.results if atoms.calc is not None else {}
        return results.get(kind)

    energies, forces, stresses = [], [], []
    for i, atoms in enumerate(atoms_list):
        e = get(atoms, "energy")
        if e is None:
            raise ValueError(f"labels: frame {i} ({atoms.get_chemical_formula()}) has no energy")
        energies.append(float(e))
        forces.append(get(atoms, "forces"))
        stresses.append(get(atoms, "stress"))

    def all_or_none(values, kind):
        present = [v is not None for v in values]
        if not any(present):
            return None
        if not all(present):
            raise ValueError(f"labels: frame {present.index(False)} has no {kind} while "
                             f"frame {present.index(True)} has")
        return values

    forces = all_or_none(forces, "forces")
    stresses = all_or_none(stresses, "stress")
    return {
        "energy": np.asarray(energies, np.float64),
        "forces": None if forces is None else [np.asarray(f, np.float64) for f in forces],
        "stress": None if stresses is None else np.stack(
            [_as_stress(s, f"frame {i}") for i, s in enumerate(stresses)]),
    }


def write(path: str | os.PathLike, atoms_list: ase.Atoms | Sequence[ase.Atoms]) -> None:
    """Write structures (with any calculator results as labels) to extxyz, atomically.

    Args:
      path: destination; replaced only once the new file is complete.
      atoms_list: one ``ase.Atoms`` or a sequence of them.
    """
    if isinstance(atoms_list, ase.Atoms):
        atoms_list = [atoms_list]
    atoms_list = list(atoms_list)
    if not atoms_list:
        raise ValueError(f"write {os.fspath(path)!r}: no structures to write")
    with atomic_write(path, "w") as f:
        ase.io.write(f, atoms_list, format="extxyz")

"""Reading and writing labelled structures: the one place labels are read and validated.

:func:`read` returns a list of ``ase.Atoms``; each frame's labels (energy, forces, stress,
charges), whatever keys the file used for them, are attached as a ``SinglePointCalculator`` so
that ``atoms.get_potential_energy()`` and friends return them. :func:`extract_labels` is the
label reader behind it (and behind :mod:`jaxpot.data`): it looks labels up, checks their shapes
and values, applies the partial-label rule and the sanity checks, and returns a :class:`Labels`.
:func:`write` writes extxyz atomically::

    frames = jaxpot.io.read("train.xyz", energy_key="REF_energy", forces_key="REF_forces")
    y = jaxpot.io.labels(frames)   # {"energy": [n], "forces": [[n_i, 3], ...], "stress": ...}
    jaxpot.io.write("copy.xyz", frames)

Units are ASE's: eV, eV/Å, eV/Å³ (stress with ASE's sign, negative under compression),
charges in e.

Rules for labels (one set, used by every reader):

- **Partly labelled files.** A label kind present in some frames and missing in others is an
  error naming the first frame without it, unless ``allow_partial=True``: then those frames are
  masked for that term and a warning says how many.
- **Keys.** A key you changed from its default (``forces_key="REF_forces"``) must exist in some
  frame; if it exists in none the error lists the keys that do exist.
- **Values.** Non-finite labels, forces above 1e3 eV/Å, stress above 1e2 eV/Å³ (16 TPa), and
  frames whose energy per atom is far from the rest (:func:`energy_outliers`) are refused,
  naming the frame.
- **Units.** When pairs of frames with the same atoms and cell exist (frames of an MD
  trajectory), energy differences are compared with the work of the forces along the straight
  path between them (:func:`energy_force_consistency`); energies and forces in different units
  (e.g. kcal/mol with eV/Å) are refused.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence

import ase
import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

from jaxpot.files import atomic_write

__all__ = [
    "read",
    "read_frames",
    "write",
    "labels",
    "read_structure",
    "Labels",
    "extract_labels",
    "energy_outliers",
    "energy_force_consistency",
    "check_overlap",
]

_DEFAULT_KEYS = {"energy": "energy", "forces": "forces", "stress": "stress",
                 "charges": "charges"}
_PER_ATOM = ("forces", "charges")
MAX_FORCE = 1e3  # eV/Å; larger force labels are a mistake in the data
MAX_STRESS = 1e2  # eV/Å³ (16 TPa)
OUTLIER_FLOOR = 20.0  # eV/atom: an energy-per-atom residual this far from the median is refused
OUTLIER_MADS = 100.0  # ... or this many robust standard deviations, whichever is larger
UNIT_RATIO_LIMIT = 3.0  # energy/force unit ratio outside [1/3, 3] is refused
_MIN_BYTES_PER_ATOM = 6  # "H 0 0 0" is 7 characters with its newline


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def _is_xyz(path: str) -> bool:
    if path.lower().endswith((".xyz", ".extxyz")):
        return True
    try:
        from ase.io.formats import filetype

        return filetype(path, guess=False) in ("xyz", "extxyz")
    except Exception:  # noqa: BLE001 - any failure: not a format we scan
        return False


def _check_xyz_counts(path: str) -> None:
    """Refuse an (ext)xyz file whose atom-count line claims more atoms than the file holds.

    ASE trusts the count and would try to read (or allocate) that many lines; a header claiming
    10⁹ atoms in a small file hangs it. The file is streamed once in binary, frame by frame.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset, line_no = 0, 0
        while True:
            line = f.readline()
            if not line:
                return
            line_no += 1
            offset += len(line)
            text = line.strip()
            if not text:
                continue
            try:
                count = int(text)
            except ValueError:
                return  # not a count line: let ASE report what is wrong
            if count < 0 or count * _MIN_BYTES_PER_ATOM > size - offset:
                raise ValueError(
                    f"{path}: line {line_no} claims {count} atoms, but only "
                    f"{size - offset} bytes follow (at least {_MIN_BYTES_PER_ATOM} per atom); "
                    "the file is truncated or its atom count is wrong"
                )
            for _ in range(count + 1):  # the comment line, then one line per atom
                line = f.readline()
                if not line:
                    return  # truncated: ASE names the problem
                line_no += 1
                offset += len(line)


def read_frames(path: str | os.PathLike, index: int | str | slice = ":", *,
                format: str | None = None) -> list[ase.Atoms]:
    """Structures from any file ASE reads, as a non-empty list (labels untouched).

    Args:
      path: file name.
      index: ASE index: ``":"`` (all frames), an int, a slice or ``"a:b:c"``.
      format: ASE format name (default: guessed from the name and contents).

    Raises:
      FileNotFoundError: no such file.
      ValueError: a directory, an unreadable file, an (ext)xyz atom count larger than the file
        can hold, or no frames; the message names the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a directory, not a structure file")
    if format in ("xyz", "extxyz") or (format is None and _is_xyz(path)):
        _check_xyz_counts(path)
    try:
        frames = ase.io.read(path, index=index, format=format)
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


def read_structure(path: str | os.PathLike, index: int | str = -1) -> ase.Atoms:
    """One structure (by default the last frame) from any file ASE reads.

    Raises:
      FileNotFoundError: no such file.
      ValueError: unreadable file, unknown element, or an atom count larger than the file
        (message names the file).
    """
    return read_frames(path, index)[-1]


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


# ---------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Labels:
    """Validated labels of a list of frames (host-side NumPy, float64, ASE units).

    Attributes:
      energy: ``[n_frames]`` total energies, eV; NaN where a frame has none.
      forces: per frame ``[n_atoms_i, 3]`` eV/Å, or None.
      stress: per frame ``[3, 3]`` eV/Å³ (ASE sign), or None.
      charges: per frame ``[n_atoms_i]`` e, or None.
      weight: ``[n_frames]`` per-frame loss weights (1 unless the file gives them).
      present: ``{kind: [n_frames] bool}`` which frames have each label kind.
      source: the file (or name) the frames came from, used in messages.
    """

    energy: np.ndarray
    forces: list
    stress: list
    charges: list
    weight: np.ndarray
    present: dict
    source: str = "atoms"

    def has(self, kind: str) -> bool:
        """Whether any frame has labels of ``kind``."""
        return bool(self.present[kind].any())


def _live_value(atoms: ase.Atoms, kind: str):
    """Ask an attached calculator that has not run yet for energy or forces."""
    calc = atoms.calc
    if calc is None or isinstance(calc, SinglePointCalculator):
        return None
    try:
        return atoms.get_potential_energy() if kind == "energy" else atoms.get_forces()
    except Exception:  # noqa: BLE001 - calculators raise many types; treat as missing
        return None


def _lookup(atoms: ase.Atoms, key: str, kind: str):
    """A label under ``key``: ``info``, then ``arrays``, then the calculator's results.

    Values the user put in ``info``/``arrays`` win over a calculator's (possibly stale) ones.
    """
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    results = (getattr(atoms.calc, "results", None) or {}) if atoms.calc is not None else {}
    if key in results:
        return results[key]
    if key == _DEFAULT_KEYS.get(kind) and kind in ("energy", "forces"):
        return _live_value(atoms, kind)
    return None


def _keys_in(images: Sequence[ase.Atoms]) -> str:
    info, arrays, results = set(), set(), set()
    for atoms in images:
        info |= set(atoms.info)
        arrays |= set(atoms.arrays) - {"numbers", "positions"}
        if atoms.calc is not None:
            results |= set(getattr(atoms.calc, "results", None) or {})
    return f"info keys {sorted(info)}, per-atom arrays {sorted(arrays)}, " \
           f"calculator results {sorted(results)}"


def _as_stress(value, where: str) -> np.ndarray:
    s = np.asarray(value, np.float64).reshape(-1)
    if s.size == 6:
        return voigt_6_to_full_3x3_stress(s)
    if s.size == 9:
        return s.reshape(3, 3)
    raise ValueError(f"{where}: stress must have 6 (Voigt) or 9 values, got {s.size}")


def _number(value, where: str, what: str) -> float:
    try:
        v = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} {value!r} is not a number") from None
    if v.size != 1:
        raise ValueError(f"{where}: {what} must be one number, got {v.size} values")
    v = float(v.reshape(()))
    if not np.isfinite(v):
        raise ValueError(f"{where}: {what} is not finite ({v})")
    return v


def _per_atom(value, n: int, where: str, what: str, shape: tuple, limit: float | None):
    try:
        v = np.asarray(value, np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {what} are not numbers") from None
    if v.shape != shape:
        raise ValueError(f"{where}: {what} have shape {v.shape}, expected {shape}")
    rows = v.reshape(n, -1)
    bad = np.nonzero(~np.all(np.isfinite(rows), axis=1))[0]
    if bad.size:
        raise ValueError(f"{where}: non-finite {what.split()[0].rstrip('s')} on atom "
                         f"{int(bad[0])} ({what}; {bad.size} atom(s) affected)")
    if limit is not None:
        norms = np.linalg.norm(rows, axis=1)
        big = np.nonzero(norms > limit)[0]
        if big.size:
            i = int(big[np.argmax(norms[big])])
            raise ValueError(f"{where}: {what} on atom {i} has magnitude {norms[i]:.4g}, above "
                             f"{limit:g} (an absurd label; wrong units or a failed calculation?)")
    return v.copy()


def _value(kind: str, raw, atoms: ase.Atoms, where: str, key: str):
    n = len(atoms)
    name = kind if key == _DEFAULT_KEYS[kind] else f"{kind} {key!r}"
    if kind == "energy":
        return _number(raw, where, name)
    if kind == "forces":
        return _per_atom(raw, n, where, name, (n, 3), MAX_FORCE)
    if kind == "charges":
        return _per_atom(raw, n, where, name, (n,), None)
    stress = _as_stress(raw, where)
    if not np.all(np.isfinite(stress)):
        raise ValueError(f"{where}: non-finite {name}")
    if np.abs(stress).max() > MAX_STRESS:
        raise ValueError(f"{where}: {name} has a component of "
                         f"{np.abs(stress).max():.4g} eV/Å³, above {MAX_STRESS:g} eV/Å³")
    return stress


def _partial_rule(kind, key, present, images, source, *, required, allow_partial) -> None:
    """Apply the one rule for labels that some frames have and others lack."""
    explicit = key != _DEFAULT_KEYS[kind]
    if not present.any():
        if required or explicit:
            why = "it is required" if required else "the key was given explicitly"
            raise ValueError(f"{source}: frame 0 has no {kind} label under key {key!r}, nor "
                             f"does any other frame ({why}); the frames have "
                             f"{_keys_in(images)}")
        return
    if present.all():
        return
    missing = np.nonzero(~present)[0]
    if allow_partial and not required:
        warnings.warn(f"{source}: {missing.size} of {present.size} frames have no {kind} "
                      f"label (key {key!r}), first frame {int(missing[0])}; the {kind} term is "
                      "masked for them", stacklevel=3)
        return
    first_with = int(np.nonzero(present)[0][0])
    raise ValueError(
        f"{source}: frame {int(missing[0])} has no {kind} label under key {key!r}, but frame "
        f"{first_with} has one ({missing.size} of {present.size} frames lack it); label every "
        f"frame, or pass allow_partial=True (jaxpot train: --allow-partial-labels) to mask "
        f"the {kind} term where it is missing"
    )


def _weights(images, weight_key, source) -> np.ndarray:
    weight = np.ones(len(images))
    if weight_key is None:
        return weight
    found = False
    for i, atoms in enumerate(images):
        if weight_key in atoms.info:
            found = True
            w = _number(atoms.info[weight_key], f"{source}: frame {i}", f"weight {weight_key!r}")
            if w < 0:
                raise ValueError(f"{source}: frame {i}: weight {weight_key!r} is negative ({w})")
            weight[i] = w
    if not found and weight_key != "weight":
        raise ValueError(f"{source}: no frame has a weight under info key {weight_key!r}; the "
                         f"frames have {_keys_in(images)}")
    if not weight.any():
        raise ValueError(f"{source}: every frame has weight 0 (key {weight_key!r})")
    return weight


def extract_labels(
    images: Sequence[ase.Atoms],
    *,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    charges_key: str | None = "charges",
    weight_key: str | None = "weight",
    require: Sequence[str] = (),
    allow_partial: bool = False,
    check_units: bool = True,
    check_outliers: bool = True,
    source: str = "atoms",
) -> Labels:
    """Read and validate the labels of ``images`` (the one label path of jaxpot).

    Labels are looked up under the given keys in ``atoms.info``, then ``atoms.arrays``, then
    the calculator's results (where ``ase.io.read`` puts ``energy``/``forces``/``stress``); a live
    calculator (EMT, DFT) attached but not run yet is asked for energy and forces under the
    default keys.

    Args:
      images: ``ase.Atoms`` frames.
      energy_key, forces_key, stress_key, charges_key: label names; ``None`` ignores the label.
      weight_key: info key of a per-frame loss weight ≥ 0 (frames without it weigh 1; the
        default key ``"weight"`` may be absent from every frame, another key may not).
      require: label kinds every frame must have (``"energy"``, ``"forces"``, ...).
      allow_partial: mask, with a warning, a label kind that only some frames have (instead of
        refusing the file).
      check_units: compare energy differences with the forces' work
        (:func:`energy_force_consistency`) and refuse energies and forces in different units.
      check_outliers: refuse frames whose energy per atom is far from the rest
        (:func:`energy_outliers`).
      source: the file name, used in messages.

    Returns:
      :class:`Labels`.

    Raises:
      ValueError: naming ``source``, the frame and the key: a missing or malformed label, a key
        that exists in no frame (listing the keys that do), non-finite or absurd values, an
        energy outlier, or energies and forces in disagreeing units.
    """
    keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key,
            "charges": charges_key}
    unknown = set(require) - set(keys)
    if unknown:
        raise ValueError(f"require: unknown label kinds {sorted(unknown)}; use {sorted(keys)}")
    if len(images) == 0:
        raise ValueError(f"{source}: no frames")
    values = {kind: [None] * len(images) for kind in keys}
    present = {kind: np.zeros(len(images), bool) for kind in keys}
    for kind, key in keys.items():
        if key is None:
            if kind in require:
                raise ValueError(f"{source}: {kind} is required but {kind}_key is None")
            continue
        for i, atoms in enumerate(images):
            raw = _lookup(atoms, key, kind)
            if raw is not None:
                values[kind][i] = _value(kind, raw, atoms, f"{source}: frame {i}", key)
                present[kind][i] = True
        _partial_rule(kind, key, present[kind], images, source, required=kind in require,
                      allow_partial=allow_partial)
    energy = np.array([np.nan if e is None else e for e in values["energy"]], np.float64)
    out = Labels(energy=energy, forces=values["forces"], stress=values["stress"],
                 charges=values["charges"], weight=_weights(images, weight_key, source),
                 present=present, source=source)
    _sanity(images, out, check_units=check_units, check_outliers=check_outliers)
    return out


def _sanity(images, labels: Labels, *, check_units: bool, check_outliers: bool) -> None:
    bad = energy_outliers([a.numbers for a in images], labels.energy) if check_outliers else []
    if bad:
        i, per_atom, median = bad[0]
        raise ValueError(
            f"{labels.source}: frame {i}: energy per atom {per_atom:.6g} eV (after per-element "
            f"reference energies) is far from the other frames' median {median:.6g} eV; "
            f"{len(bad)} frame(s) affected (an outlier, or a frame in other units?); pass "
            "check_outliers=False (jaxpot train: --no-outlier-check) if this is intended"
        )
    if not check_units or not labels.has("forces"):
        return
    result = energy_force_consistency(images, labels.energy, labels.forces)
    if result is None or result["correlation"] < 0.8:
        return  # no pairs of nearby frames, or not enough signal: no verdict
    ratio = result["ratio"]
    if 1 / UNIT_RATIO_LIMIT <= ratio <= UNIT_RATIO_LIMIT:
        return
    known = {"energies in kcal/mol (23.06)": 23.06, "energies in kJ/mol (96.49)": 96.49,
             "energies in meV (1000)": 1000.0, "energies in Hartree (1/27.21)": 1 / 27.211,
             "forces in kcal/mol/Å (1/23.06)": 1 / 23.06,
             "forces in Ha/Bohr (51.42)": 51.422}
    near = [k for k in known if abs(np.log(ratio / known[k])) < np.log(1.5)]
    guess = " or ".join(near) or min(known, key=lambda k: abs(np.log(ratio / known[k])))
    raise ValueError(
        f"{labels.source}: energies and forces disagree in units: along {result['n_pairs']} "
        f"pairs of similar frames (e.g. frames {result['example'][0]} and "
        f"{result['example'][1]}) energy differences are {ratio:.3g} times the work of the "
        f"forces (expected 1 for eV with eV/Å; nearest common mismatch: {guess}). Convert the "
        "labels to eV and eV/Å, or pass check_units=False (jaxpot train: --no-unit-check) if "
        "this is intended"
    )


def energy_outliers(numbers: Sequence[np.ndarray], energies: np.ndarray
                    ) -> list[tuple[int, float, float]]:
    """Frames whose energy per atom is far from all the others.

    Per-element reference energies are fitted by least squares on the composition; the
    residual energy per atom of a frame is an outlier when it is further from the median than
    ``max(OUTLIER_FLOOR, OUTLIER_MADS · 1.4826 · MAD)`` (20 eV/atom, or 100 robust standard
    deviations). The floor keeps legitimate mixtures (isolated atoms with solids: cohesive
    energies are below 10 eV/atom) clear of it; a 1e10 eV frame, or a frame of DFT total
    energies (tens of eV/atom or more) in kcal/mol among eV frames, is caught. A frame whose
    energy per atom is small in any unit cannot be told apart this way.

    Args:
      numbers: per frame ``[n_atoms_i]`` atomic numbers.
      energies: ``[n_frames]`` eV (NaN frames are skipped).

    Returns:
      ``[(frame, residual eV/atom, median eV/atom), ...]``, worst first (empty when fine).
    """
    energies = np.asarray(energies, np.float64)
    idx = np.nonzero(np.isfinite(energies))[0]
    if idx.size < 3:
        return []
    elements = sorted({int(z) for i in idx for z in np.unique(numbers[i])})
    col = {z: k for k, z in enumerate(elements)}
    a = np.zeros((idx.size, len(elements)))
    for r, i in enumerate(idx):
        z, c = np.unique(numbers[i], return_counts=True)
        a[r, [col[int(x)] for x in z]] = c
    n_atoms = a.sum(1)
    refs = np.linalg.lstsq(a, energies[idx], rcond=None)[0]
    resid = (energies[idx] - a @ refs) / n_atoms
    median = float(np.median(resid))
    spread = 1.4826 * float(np.median(np.abs(resid - median)))
    limit = max(OUTLIER_FLOOR, OUTLIER_MADS * spread)
    far = np.nonzero(np.abs(resid - median) > limit)[0]
    far = far[np.argsort(-np.abs(resid[far] - median))]
    return [(int(idx[k]), float(resid[k]), median) for k in far]


def _kabsch(anchor: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Rotations ``R [m, 3, 3]`` with ``others[k] @ R[k].T`` closest to ``anchor`` (centred)."""
    h = np.einsum("mni,nj->mij", others, anchor)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("mij,mjk->mik", u, vt)))
    diag = np.ones((len(others), 3))
    diag[:, 2] = d
    return np.einsum("mji,mj,mkj->mik", vt, diag, u)


def _pair_sample(n: int, limit: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Atom pairs ``(i, j)``, ``i < j``: all of them, or ``limit`` fixed random ones."""
    i, j = np.triu_indices(n, 1)
    if i.size > limit:
        keep = np.random.default_rng(0).choice(i.size, limit, replace=False)
        i, j = i[keep], j[keep]
    return i, j


def _nearest(anchor: int, group: list[int], images, forces):
    """The frame of ``group`` nearest to ``anchor``: ``(frame, displacements, its forces)``."""
    a = images[anchor]
    x = np.stack([images[j].positions for j in group])
    f = np.stack([forces[j] for j in group])
    if a.pbc.any():
        # Lattice translations of single atoms (along periodic directions) leave E and F
        # unchanged: take the shortest. No rotation: a cell fixes the orientation.
        cell = np.asarray(a.cell)
        frac = (x - a.positions) @ np.linalg.inv(cell)
        frac = np.where(a.pbc, frac - np.round(frac), frac)
        d = frac @ cell
        k = int(np.argmin(np.sum(d**2, axis=(1, 2))))
        return group[k], d[k], f[k]
    # Free structures: rotations and translations leave E unchanged (forces rotate along).
    # Candidates by interatomic distances (rotation invariant), then the optimal rotation.
    xa = a.positions - a.positions.mean(0)
    xc = x - x.mean(1, keepdims=True)
    i, j = _pair_sample(len(a))
    da = np.linalg.norm(xa[i] - xa[j], axis=-1)
    dc = np.linalg.norm(xc[:, i] - xc[:, j], axis=-1)
    near = np.argsort(np.sum((dc - da) ** 2, axis=1))[:8]
    rot = _kabsch(xa, xc[near])
    xr = np.einsum("mni,mji->mnj", xc[near], rot)
    k = int(np.argmin(np.sum((xr - xa) ** 2, axis=(1, 2))))
    return group[near[k]], xr[k] - xa, f[near[k]] @ rot[k].T


def energy_force_consistency(images: Sequence[ase.Atoms], energies: np.ndarray,
                             forces: Sequence, *, n_pairs: int = 64, seed: int = 0
                             ) -> dict | None:
    """Compare energy differences between similar frames with the work of the forces.

    For two frames ``a``, ``b`` with the same atoms (and cell), the trapezoid rule along the
    straight path gives ``E_b − E_a ≈ −½ (F_a + F_b)·(x_b − x_a)``, exact for a quadratic
    energy. Each of up to ``n_pairs`` random anchor frames is paired with its nearest frame
    (shortest lattice-equivalent displacement for periodic cells, after optimal rotation for
    free molecules). On the closest half of the pairs (the trapezoid error grows as the
    distance cubed), the slope of ``ΔE`` against the work (the geometric mean of both
    regressions through the origin, as both carry errors) is the ratio of the energy unit to
    the force unit times Å: 1 for eV with eV/Å (0.76–1.03, correlation ≥ 0.92 on the train and
    valid files of cu_emt, ethanol_xtb and nacl_bmh over six seeds), 23 for kcal/mol with eV/Å.

    Args:
      images: frames (positions, numbers, cell, pbc).
      energies: ``[n_frames]`` eV (NaN: skipped).
      forces: per frame ``[n_atoms, 3]`` eV/Å or None (skipped).
      n_pairs: number of anchor frames.
      seed: choice of anchors.

    Returns:
      ``{"ratio", "correlation", "n_pairs", "example"}`` (``example`` is the closest pair of
      frame indices), or None when fewer than 16 frames have a comparable partner.
    """
    found = _pair_work(images, energies, forces, n_pairs=n_pairs, seed=seed)
    if found is None:
        return None
    d_e, work, dist, pairs = found
    # The pairs closest together (trapezoid error ~ distance³), then the symmetric slope
    # (geometric mean of the two regressions; both ΔE and the work carry errors).
    keep = np.argsort(dist)[: max(8, len(dist) // 2)]
    d_e, work = d_e[keep], work[keep]
    if np.std(d_e) == 0 or np.std(work) == 0:
        return None
    sign = np.sign(d_e @ work) or 1.0
    return {"ratio": float(sign * np.sqrt((d_e @ d_e) / (work @ work))),
            "correlation": float(np.corrcoef(d_e, work)[0, 1]),
            "n_pairs": len(keep), "example": pairs[int(keep[0])]}


def _pair_work(images, energies, forces, *, n_pairs: int, seed: int):
    """``(ΔE, work, rms distance, pairs)`` of anchors and their nearest frames, or None."""
    groups: dict = {}
    for i, atoms in enumerate(images):
        if forces[i] is None or not np.isfinite(energies[i]):
            continue
        periodic = bool(atoms.pbc.any())
        if periodic and abs(np.linalg.det(np.asarray(atoms.cell))) < 1e-6:
            continue  # a slab or wire without a full cell: no fractional coordinates
        key = (atoms.numbers.tobytes(), atoms.pbc.tobytes(),
               np.round(np.asarray(atoms.cell), 6).tobytes() if periodic else b"")
        groups.setdefault(key, []).append(i)
    pool = [i for g in groups.values() if len(g) > 1 for i in g]
    if len(pool) < 16:
        return None
    group_of = {i: g for g in groups.values() for i in g}
    anchors = np.random.default_rng(seed).choice(pool, size=min(n_pairs, len(pool)),
                                                 replace=False)
    d_e, work, dist, pairs = [], [], [], []
    for a in anchors.tolist():
        b, d, f_b = _nearest(a, [j for j in group_of[a] if j != a], images, forces)
        d_e.append(energies[b] - energies[a])
        work.append(-0.5 * float(np.sum((forces[a] + f_b) * d)))
        dist.append(float(np.sqrt(np.mean(np.sum(d**2, axis=1)))))
        pairs.append((a, b))
    return np.asarray(d_e), np.asarray(work), np.asarray(dist), pairs


def check_overlap(first, second, *, decimals: int = 6) -> list[tuple[int, int]]:
    """Pairs of identical structures in two sets (e.g. a validation set that repeats training).

    Two structures are identical when their atomic numbers, pbc, cell and positions agree after
    rounding to ``decimals`` (Å). Labels are not compared.

    Args:
      first, second: sequences of ``ase.Atoms`` or of :class:`jaxpot.data.Structure` (anything
        with ``positions``, ``numbers`` or ``get_atomic_numbers()``, ``cell`` and ``pbc``).
      decimals: rounding of positions and cell, Å.

    Returns:
      ``[(index in first, index in second), ...]`` sorted; empty when the sets are disjoint.

    Example:
      >>> pairs = check_overlap(train, valid)
      >>> if pairs: warnings.warn(f"{len(pairs)} validation frames repeat training frames")
    """
    def key(s) -> bytes:
        numbers = s.get_atomic_numbers() if hasattr(s, "get_atomic_numbers") else s.numbers
        parts = (np.asarray(numbers, np.int64), np.asarray(s.pbc, bool),
                 np.round(np.asarray(s.cell, np.float64), decimals) + 0.0,
                 np.round(np.asarray(s.positions, np.float64), decimals) + 0.0)
        return b"|".join(p.tobytes() for p in parts)

    index: dict[bytes, list[int]] = {}
    for i, s in enumerate(first):
        index.setdefault(key(s), []).append(i)
    return sorted((i, j) for j, s in enumerate(second) for i in index.get(key(s), []))


# ---------------------------------------------------------------------------------------------
# Atoms with labels
# ---------------------------------------------------------------------------------------------


def read(
    path: str | os.PathLike,
    index: int | str | slice = ":",
    *,
    energy_key: str | None = "energy",
    forces_key: str | None = "forces",
    stress_key: str | None = "stress",
    charges_key: str | None = "charges",
    weight_key: str | None = "weight",
    require: Sequence[str] = (),
    allow_partial: bool = False,
    check_units: bool = True,
    check_outliers: bool = True,
) -> list[ase.Atoms]:
    """Read structures and their labels from any file ASE reads (extxyz for training data).

    The labels go through :func:`extract_labels` (see the module docstring for the rules).

    Args:
      path: file name.
      index: ASE index: ``":"`` (all frames), an int, a slice or ``"a:b:c"``.
      energy_key: key of the total energy, eV (``None``: ignore energies).
      forces_key: key of the forces, ``[n_atoms, 3]`` eV/Å (``None``: ignore).
      stress_key: key of the stress, 6 (Voigt) or 9 values, eV/Å³ (``None``: ignore).
      charges_key: key of per-atom charges, e (``None``: ignore).
      weight_key: info key of a per-frame weight (kept in ``atoms.info["weight"]``).
      require: label kinds every frame must have.
      allow_partial: mask, with a warning, labels that only some frames have.
      check_units: refuse energies and forces in disagreeing units.
      check_outliers: refuse frames whose energy per atom is far from the rest.

    Returns:
      A list of ``ase.Atoms``, each with a ``SinglePointCalculator`` holding the labels it has
      under ASE's names (``energy``, ``forces``, Voigt ``stress``, ``charges``); other info
      keys are kept.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file cannot be parsed or is empty, or a label is missing or malformed;
        the message names the file, the frame index and the key.
    """
    path = os.fspath(path)
    frames = read_frames(path, index)
    y = extract_labels(frames, energy_key=energy_key, forces_key=forces_key,
                       stress_key=stress_key, charges_key=charges_key, weight_key=weight_key,
                       require=require, allow_partial=allow_partial, check_units=check_units,
                       check_outliers=check_outliers, source=path)
    keys = {"energy": energy_key, "forces": forces_key, "stress": stress_key,
            "charges": charges_key}
    out = []
    for i, atoms in enumerate(frames):
        results = {}
        if y.present["energy"][i]:
            results["energy"] = results["free_energy"] = float(y.energy[i])
        if y.present["forces"][i]:
            results["forces"] = y.forces[i]
        if y.present["stress"][i]:
            results["stress"] = full_3x3_to_voigt_6_stress(y.stress[i])
        if y.present["charges"][i]:
            results["charges"] = y.charges[i]
        clean = atoms.copy()  # drops the calculator ASE attached
        for kind, key in keys.items():
            if key is not None and key != _DEFAULT_KEYS[kind]:
                (clean.arrays if kind in _PER_ATOM else clean.info).pop(key, None)
        if weight_key is not None and weight_key in clean.info:
            clean.info["weight"] = float(y.weight[i])
        if results:
            clean.calc = SinglePointCalculator(clean, **results)
        out.append(clean)
    return out


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
    y = extract_labels(atoms_list, charges_key=None, weight_key=None, require=("energy",),
                       check_units=False, check_outliers=False, source="labels")
    return {
        "energy": y.energy,
        "forces": y.forces if y.has("forces") else None,
        "stress": np.stack(y.stress) if y.has("stress") else None,
    }

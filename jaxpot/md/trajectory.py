"""Trajectories as arrays; ``ase.Atoms`` only when frames are written or asked for."""

from __future__ import annotations

import dataclasses
import os
import weakref

import numpy as np

__all__ = ["Trajectory", "TrajectoryWriter", "read_trajectory", "write_trajectory"]


@dataclasses.dataclass
class Trajectory:
    """Frames of an MD run, real atoms only (padding dropped).

    Attributes:
      step: ``[n_frames]`` step numbers (0 is the starting structure).
      time_fs: ``[n_frames]`` fs.
      positions: ``[n_frames, n_atoms, 3]`` Å, unwrapped.
      momenta: ``[n_frames, n_atoms, 3]`` amu·Å/t (ASE's momentum unit).
      cells: ``[n_frames, 3, 3]`` rows are lattice vectors, Å.
      potential_energy_ev: ``[n_frames]`` eV.
      numbers: ``[n_atoms]`` atomic numbers.
      masses: ``[n_atoms]`` amu.
      pbc: ``[3]`` bool.
    """

    step: np.ndarray
    time_fs: np.ndarray
    positions: np.ndarray
    momenta: np.ndarray
    cells: np.ndarray
    potential_energy_ev: np.ndarray
    numbers: np.ndarray
    masses: np.ndarray
    pbc: np.ndarray

    def __len__(self) -> int:
        return int(self.step.shape[0])

    @classmethod
    def empty(cls, system) -> Trajectory:
        """No frames, with the atoms of ``system`` (a :class:`~jaxpot.System`)."""
        mask = np.asarray(system.atom_mask, bool)
        n = int(mask.sum())
        return cls(step=np.zeros(0, np.int64), time_fs=np.zeros(0),
                   positions=np.zeros((0, n, 3)), momenta=np.zeros((0, n, 3)),
                   cells=np.zeros((0, 3, 3)), potential_energy_ev=np.zeros(0),
                   numbers=np.asarray(system.species)[mask],
                   masses=np.asarray(system.masses, np.float64)[mask],
                   pbc=np.asarray(system.pbc, bool))

    def select(self, keep) -> Trajectory:
        """The frames where ``keep`` (a boolean mask or indices over frames) holds."""
        per_frame = ("step", "time_fs", "positions", "momenta", "cells", "potential_energy_ev")
        return dataclasses.replace(self, **{k: getattr(self, k)[keep] for k in per_frame})

    def to_atoms(self) -> list:
        """One ``ase.Atoms`` per frame, with momenta; ``info`` holds ``step``, ``time_fs``,
        ``potential_energy_ev``."""
        import ase

        frames = []
        for k in range(len(self)):
            atoms = ase.Atoms(numbers=self.numbers, positions=self.positions[k],
                              cell=self.cells[k], pbc=self.pbc, masses=self.masses)
            atoms.set_momenta(self.momenta[k])
            atoms.info.update(step=int(self.step[k]), time_fs=float(self.time_fs[k]),
                              potential_energy_ev=float(self.potential_energy_ev[k]))
            frames.append(atoms)
        return frames


def write_trajectory(path, trajectory, *, format: str | None = None) -> None:
    """Write frames with ASE (``extxyz``, ``traj``, ... chosen from the file name).

    Args:
      path: output file.
      trajectory: a :class:`Trajectory` or an :class:`~jaxpot.md.MDResult`.
      format: ASE format name, default from the extension.
    """
    from ase.io import write

    traj = getattr(trajectory, "trajectory", trajectory)
    if not isinstance(traj, Trajectory):
        raise TypeError(f"write_trajectory expects a Trajectory or MDResult, got "
                        f"{type(trajectory).__name__}")
    if len(traj) == 0:
        raise ValueError(f"write_trajectory: no frames to write to {path!r} (run simulate "
                         "with trajectory_every)")
    write(path, traj.to_atoms(), format=format)


# ------------------------------------------------------------------------------ streaming

_H5MD_SUFFIXES = (".h5", ".h5md", ".hdf5")


def _is_h5md(path) -> bool:
    return os.fspath(path).lower().endswith(_H5MD_SUFFIXES)


class TrajectoryWriter:
    """Appends frames to a file while a run goes on, in one background thread.

    ``extxyz`` (any other suffix; ASE writes it, with momenta, cell, ``step``, ``time_fs`` and
    ``potential_energy_ev`` per frame) or H5MD (``.h5``/``.h5md``/``.hdf5``, with ``h5py``:
    ``/particles/all/{position,velocity,box/edges}`` and ``/observables/potential_energy``,
    Å, Å/fs and eV). Each :meth:`add` hands a block of frames to the thread and returns at
    once, so the device keeps stepping while the host formats and writes; the file is flushed
    after every block, so an interrupted run keeps every block written before it stopped.

    Args:
      path: the file.
      template: a :class:`Trajectory` (no frames needed) giving the atoms.
      append: continue an existing file (a restarted run) instead of starting a new one.
      step_offset: added to the frames' step numbers (and time), for a restarted run that
        counts its steps from 0; its step-0 frame, already in the file, is not written again.
    """

    def __init__(self, path, template: Trajectory, *, append: bool = False,
                 step_offset: int | None = None):
        from concurrent.futures import ThreadPoolExecutor

        self.path = os.fspath(path)
        self.template = template
        self.h5md = _is_h5md(self.path)
        self.n_written = 0
        self.step_offset = step_offset
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxpot-traj")
        self._pending = None
        self._h5 = None
        if self.h5md:
            self._h5 = _H5MDFile(self.path, template, append=append)
        elif not append:
            with open(self.path, "w"):
                pass
        # closes the thread and the file even when the run fails before close() is reached
        self._release = weakref.finalize(self, _release, self._pool, self._h5)

    def add(self, frames: Trajectory) -> None:
        """Queue ``frames`` (a :class:`Trajectory`) for writing; raises an earlier write error."""
        self._wait()
        if self.step_offset is not None:  # time per step from the frames themselves
            frames = frames.select(frames.step > 0)
            per_step = frames.time_fs / np.maximum(frames.step, 1)
            frames = dataclasses.replace(frames, step=frames.step + self.step_offset,
                                         time_fs=(frames.step + self.step_offset) * per_step)
        if len(frames):
            self._pending = self._pool.submit(self._write, frames)

    def _write(self, frames: Trajectory) -> None:
        if self._h5 is not None:
            self._h5.append(frames)
        else:
            import io as _io

            from ase.io import write

            buf = _io.StringIO()
            write(buf, frames.to_atoms(), format="extxyz")
            with open(self.path, "a") as f:  # one write per block: whole frames only
                f.write(buf.getvalue())
                f.flush()
                os.fsync(f.fileno())
        self.n_written += len(frames)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def close(self) -> None:
        """Wait for the queued frames, then close the file."""
        try:
            self._wait()
        finally:
            self._release()


def _release(pool, h5) -> None:
    pool.shutdown(wait=True)
    if h5 is not None:
        h5.close()


class _H5MDFile:
    """The H5MD 1.1 layout of a :class:`Trajectory` (time-dependent elements grown per block)."""

    def __init__(self, path, template: Trajectory, *, append: bool):
        try:
            import h5py
        except ImportError as err:  # pragma: no cover - h5py is the h5md extra
            raise ImportError(f"writing {path!r} as H5MD needs h5py (pip install "
                              "'jaxpot[h5md]')") from err
        from jaxpot import __version__

        self.f = h5py.File(path, "a" if append else "w")
        if append and "particles/all/position" in self.f:
            return
        n = len(template.numbers)
        h5md = self.f.create_group("h5md")
        h5md.attrs["version"] = np.array([1, 1])
        h5md.create_group("author").attrs["name"] = os.environ.get("USER", "jaxpot user")
        creator = h5md.create_group("creator")
        creator.attrs.update({"name": "jaxpot", "version": __version__})
        part = self.f.create_group("particles/all")
        part.create_dataset("species", data=np.asarray(template.numbers, np.int32))
        part.create_dataset("mass", data=np.asarray(template.masses, np.float64))
        box = part.create_group("box")
        box.attrs["dimension"] = 3
        box.attrs["boundary"] = np.array(["periodic" if p else "none" for p in template.pbc],
                                         dtype=h5py.string_dtype())
        for name, shape, unit in (("position", (n, 3), "angstrom"),
                                  ("velocity", (n, 3), "angstrom fs-1"),
                                  ("box/edges", (3, 3), "angstrom")):
            self._element(part, name, shape, unit)
        self._element(self.f.require_group("observables"), "potential_energy", (), "eV")

    @staticmethod
    def _element(parent, name, shape, unit):
        g = parent.create_group(name)
        g.create_dataset("step", (0,), maxshape=(None,), dtype=np.int64)
        g.create_dataset("time", (0,), maxshape=(None,), dtype=np.float64).attrs["unit"] = "fs"
        v = g.create_dataset("value", (0, *shape), maxshape=(None, *shape), dtype=np.float64,
                             chunks=(max(1, 4096 // max(1, int(np.prod(shape)))), *shape))
        v.attrs["unit"] = unit

    def append(self, frames: Trajectory) -> None:
        from jaxpot import units

        velocity = frames.momenta / frames.masses[None, :, None] * units.fs
        for name, value in (("particles/all/position", frames.positions),
                            ("particles/all/velocity", velocity),
                            ("particles/all/box/edges", frames.cells),
                            ("observables/potential_energy", frames.potential_energy_ev)):
            g = self.f[name]
            k, m = g["step"].shape[0], len(frames)
            for key, data in (("step", frames.step), ("time", frames.time_fs), ("value", value)):
                g[key].resize(k + m, axis=0)
                g[key][k:] = data
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def read_trajectory(path) -> Trajectory:
    """Read a trajectory written by :class:`TrajectoryWriter` (extxyz or H5MD).

    Any extxyz that ASE reads works; ``step``/``time_fs`` fall back to the frame index when a
    frame does not carry them, momenta to zero.
    """
    if _is_h5md(path):
        import h5py

        from jaxpot import units

        with h5py.File(path, "r") as f:
            part = f["particles/all"]
            masses = part["mass"][()]
            return Trajectory(
                step=part["position/step"][()], time_fs=part["position/time"][()],
                positions=part["position/value"][()],
                momenta=part["velocity/value"][()] * masses[None, :, None] / units.fs,
                cells=part["box/edges/value"][()],
                potential_energy_ev=f["observables/potential_energy/value"][()],
                numbers=part["species"][()], masses=masses,
                pbc=np.array([b == b"periodic" or b == "periodic"
                              for b in part["box"].attrs["boundary"]]))
    from ase.io import read

    frames = read(path, ":")
    if not frames:
        raise ValueError(f"read_trajectory: {os.fspath(path)!r} has no frames")
    step = np.array([a.info.get("step", k) for k, a in enumerate(frames)], np.int64)
    return Trajectory(
        step=step, time_fs=np.array([a.info.get("time_fs", np.nan) for a in frames], float),
        positions=np.stack([a.positions for a in frames]),
        momenta=np.stack([a.get_momenta() for a in frames]),
        cells=np.stack([np.asarray(a.cell) for a in frames]),
        potential_energy_ev=np.array([a.info.get("potential_energy_ev", np.nan)
                                      for a in frames], float),
        numbers=frames[0].numbers, masses=frames[0].get_masses(), pbc=frames[0].pbc)

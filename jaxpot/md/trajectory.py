"""Trajectories as arrays; ``ase.Atoms`` only when frames are written or asked for."""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Trajectory", "write_trajectory"]


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

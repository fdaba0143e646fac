"""MD walkers of the active-learning loop: one segment of jitted MD with the uncertainty check
inside the loop, and the choice of frames to label when it triggers.

The per-atom force spread is computed by the model's ``atomic`` outputs (the params enter the
compiled block as an argument, not as constants), so a refitted model with the same parameter
shapes reuses the compiled MD block through JAX's persistent compilation cache. The runs use
float64 (a GAP variance is a difference of nearly equal terms; float32 rounds small spreads to
0), under a scoped :func:`jax.enable_x64`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Walker", "Segment", "run_segment", "select_frames", "spread_potential"]


@dataclasses.dataclass
class Walker:
    """One MD walker: its bath, strain and where it continues from (JSON-serialisable)."""

    temperature: float
    strain: float
    numbers: list
    positions: list
    cell: list
    pbc: list
    momenta: list | None = None
    capacity: int = 0
    runs: int = 0

    def atoms(self):
        import ase

        atoms = ase.Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell,
                          pbc=self.pbc)
        if self.momenta is not None:
            atoms.set_momenta(np.asarray(self.momenta))
        return atoms

    def move_to(self, positions, momenta, cell) -> None:
        self.positions = np.asarray(positions, np.float64).tolist()
        self.momenta = None if momenta is None else np.asarray(momenta, np.float64).tolist()
        self.cell = np.asarray(cell, np.float64).tolist()


def new_walker(start, temperature: float, strain: float) -> Walker:
    """A walker at ``temperature`` (K) on ``start`` with its cell scaled by ``1 + strain``."""
    atoms = start.copy()
    if strain:
        atoms.set_cell(np.asarray(atoms.get_cell()) * (1.0 + strain), scale_atoms=True)
    return Walker(float(temperature), float(strain), atoms.numbers.tolist(),
                  atoms.get_positions().tolist(), np.asarray(atoms.get_cell()).tolist(),
                  atoms.get_pbc().tolist())


@dataclasses.dataclass
class Segment:
    """What one MD segment of a walker gave.

    Attributes:
      steps: steps run; full: it ran to the end without a trigger.
      trigger: log index of the first frame over the threshold, or None.
      spreads: ``[n_log]`` largest per-atom force spread, eV/Å; energies: ``[n_log]`` potential
        energy per atom, eV; frames: the logged frames (``ase.Atoms`` with momenta).
      restart: index of the frame to continue from (the last trusted one).
      unstable: the run blew up (no frames).
    """

    steps: int
    full: bool
    trigger: int | None
    spreads: np.ndarray
    energies: np.ndarray
    frames: list
    restart: int
    unstable: str = ""


def spread_potential(potential):
    """``potential`` whose per-atom outputs are ``{"force_std": [n_atoms] eV/Å}``."""
    from jaxpot.uncertainty.spread import atom_force_std

    std = atom_force_std(potential)
    return potential._replace(atomic=lambda params, system: {"force_std": std(params, system)},
                              outputs=("force_std",))


def _observe(state, output) -> dict:
    mask = state.system.atom_mask
    s = jnp.where(mask, output.atomic["force_std"], 0.0)
    return {"max_force_std": jnp.max(s), "mean_force_std": jnp.sum(s) / jnp.sum(mask)}


def _multiplier(atoms, rc: float, target: int) -> tuple[float, int]:
    """A capacity multiplier giving the neighbour list exactly ``target`` slots per atom (so
    every segment compiles the same shapes), and the target (raised when too small)."""
    from ase.neighborlist import neighbor_list

    count = int(np.bincount(neighbor_list("i", atoms, rc), minlength=len(atoms)).max())
    if target - 1.5 < count * 1.05:
        target = int(np.ceil(count * 1.3)) + 2
    return (target - 1.5) / max(count, 1), target


def run_segment(potential, params, walker: Walker, *, steps: int, threshold: float,
                dt_fs: float, log_every: int, block_steps: int, friction_per_fs: float,
                seed: int) -> Segment:
    """Langevin MD of ``walker`` for ``steps`` steps, stopped at the first block whose largest
    per-atom force spread exceeds ``threshold`` (eV/Å)."""
    from jaxpot import md
    from jaxpot.system import System

    atoms = walker.atoms()
    mult, walker.capacity = _multiplier(atoms, potential.cutoff + 0.5, walker.capacity)
    with jax.enable_x64(True):
        system = System.from_ase(atoms, dtype=jnp.float64)
        momenta = None if walker.momenta is None else np.asarray(walker.momenta)
        try:
            res = md.simulate(
                spread_potential(potential), params, system, ensemble="langevin", dt_fs=dt_fs,
                temperature_kelvin=walker.temperature, steps=steps, log_every=log_every,
                trajectory_every=log_every, observers=[_observe], atomic=True, seed=seed,
                block_steps=block_steps, momenta=momenta, friction_per_fs=friction_per_fs,
                skin=0.5, capacity_multiplier=mult,
                stop=lambda state, rows: bool(np.any(rows["max_force_std"] > threshold)))
        except md.SimulationUnstable as err:
            return Segment(0, False, None, np.zeros(0), np.zeros(0), [], 0, str(err))
    return _segment(res, threshold, len(atoms))


def _segment(res, threshold: float, n_atoms: int) -> Segment:
    spreads = np.asarray(res.log["max_force_std"], np.float64)
    energies = np.asarray(res.log["potential_energy_ev"], np.float64) / n_atoms
    frames = res.to_atoms()
    by_step = {int(a.info["step"]): a for a in frames}
    frames = [by_step[int(s)] for s in res.log["step"]]
    over = np.flatnonzero(spreads > threshold)
    trigger = int(over[0]) if over.size else None
    if trigger is None:
        restart = len(frames) - 1
    else:
        trusted = np.flatnonzero(spreads[:trigger] <= threshold)
        restart = int(trusted[-1]) if trusted.size else trigger
    return Segment(int(res.steps_done), trigger is None, trigger, spreads, energies, frames,
                   restart)


def structure_features(atoms, r_max: float = 6.0, n_bins: int = 48) -> np.ndarray:
    """A per-structure invariant feature: the normalised pair-distance histogram (and the
    volume per atom), for farthest-point selection of diverse frames."""
    from ase.neighborlist import neighbor_list

    d = neighbor_list("d", atoms, r_max)
    hist, _ = np.histogram(d, bins=n_bins, range=(0.0, r_max))
    hist = hist / max(len(atoms), 1)
    vol = atoms.get_volume() / len(atoms) if all(atoms.get_pbc()) else 0.0
    return np.concatenate([hist, [vol]])


def select_frames(frames: list, trigger: int, n_select: int, window: int) -> list[int]:
    """The trigger frame, then ``n_select - 1`` frames of the ``window`` frames before it by
    farthest-point sampling (Euclidean, on :func:`structure_features`)."""
    chosen = [trigger]
    candidates = list(range(max(0, trigger - window), trigger))
    if n_select <= 1 or not candidates:
        return chosen
    feats = {i: structure_features(frames[i]) for i in candidates + [trigger]}
    while len(chosen) < n_select and candidates:
        dist = [min(np.linalg.norm(feats[c] - feats[k]) for k in chosen) for c in candidates]
        pick = candidates.pop(int(np.argmax(dist)))
        chosen.append(pick)
    return chosen


def spread_levels(potential, params, frames: list) -> np.ndarray:
    """Largest per-atom force spread (eV/Å) of each frame, in float64."""
    from jaxpot.uncertainty.spread import atom_force_std

    with jax.enable_x64(True):
        fn = jax.jit(atom_force_std(potential))
        return np.array([float(np.max(fn(params, s))) for s in _systems(potential, frames)])


def force_errors(potential, params, frames: list) -> dict[str, Any]:
    """Force RMSE (eV/Å) and energy RMSE (eV/atom) of the model on labelled frames."""
    from jaxpot.potential import energy_and_forces

    sq, n, e_sq = 0.0, 0, []
    with jax.enable_x64(True):
        fn = jax.jit(energy_and_forces(potential.energy))
        for atoms, s in zip(frames, _systems(potential, frames), strict=True):
            e, f = fn(params, s)
            k = len(atoms)
            sq += float(np.sum((np.asarray(f)[:k] - atoms.get_forces()) ** 2))
            n += 3 * k
            e_sq.append(((float(e) - atoms.get_potential_energy()) / k) ** 2)
    return {"force_rmse": float(np.sqrt(sq / max(n, 1))),
            "energy_rmse": float(np.sqrt(np.mean(e_sq))) if e_sq else float("nan")}


def _systems(potential, frames) -> list:
    """Float64 systems with edges for ``potential.cutoff``, padded to few shapes (call under
    ``jax.enable_x64``)."""
    from jaxpot.system import System

    plain = [System.from_ase(a, cutoff=potential.cutoff, dtype=np.float64) for a in frames]
    n_atoms = max(len(a) for a in frames)
    n_edges = max(int(np.sum(np.asarray(s.senders) < len(s.atom_mask))) for s in plain)
    n_edges = int(np.ceil((n_edges + 1) / 512) * 512)
    return [System.from_ase(a, cutoff=potential.cutoff, dtype=np.float64, n_atoms=n_atoms,
                            n_edges=n_edges) for a in frames]

"""The fused MD loop: jitted ``lax.scan`` blocks, host-side checks between blocks, observers.

:func:`simulate` runs ``steps`` time steps as a sequence of jitted blocks. A block is a
``lax.scan`` over log intervals, each a ``lax.scan`` over ``log_every`` steps whose last step
also computes the virial stress; observables (the built-in energies and pressure, and any
user **observers**) are recorded at the end of every interval, inside the scan (no host round
trip per step). The bath temperature of every step comes from a host-side schedule passed into
the block as an array, so a temperature ramp costs no recompilation.

Between blocks the host (1) reads the neighbour list's sticky ``overflow`` flag and, if set,
reallocates the list from the state at the **start** of the block and redoes it
(:func:`jaxpot.md.blocks.run_checked`), so no step is ever computed on a truncated list;
(2) checks the block's log for a blow-up (:class:`jaxpot.md.checks.StabilityMonitor`);
(3) asks the user's ``stop`` predicate whether to end the run. The next block is dispatched
before the current one is looked at (JAX's asynchronous dispatch), so the checks cost no device
idle time; when a block is redone or the run stops, the speculative block is thrown away.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot import units
from jaxpot.md.blocks import NeighborKeeper, NeighborListError, run_checked
from jaxpot.md.checks import StabilityMonitor, check_inputs
from jaxpot.md.forces import ForceOutput, provider
from jaxpot.md.integrators import (
    Integrator,
    degrees_of_freedom,
    kinetic_energy,
    langevin,
    nose_hoover,
    nve,
)
from jaxpot.md.mtk import mtk, mtk_conserved
from jaxpot.md.npt import c_rescale, check_npt_options
from jaxpot.md.restart import apply_restart, load_state, restart_system
from jaxpot.md.trajectory import Trajectory, TrajectoryWriter, write_trajectory
from jaxpot.potential import Potential
from jaxpot.system import System

__all__ = ["MDResult", "simulate", "ENSEMBLES", "Observer", "StopPredicate"]

ENSEMBLES = ("nve", "langevin", "nose-hoover", "npt")
_BLOCK_STEPS = 200  # aim for blocks of about this many steps between host checks

Observer = Callable[[Any, ForceOutput], dict]
"""``(state, output) -> {name: array}``, traced inside the fused loop at every log point."""
StopPredicate = Callable[[Any, dict], bool]
"""``(state, observed) -> bool`` on the host after each block; True ends the run."""

_BUILTIN = ("step", "time_fs", "potential_energy_ev", "kinetic_energy_ev", "total_energy_ev",
            "temperature_k", "target_temperature_k", "pressure_gpa")


@dataclasses.dataclass
class MDResult:
    """What :func:`simulate` returns.

    Attributes:
      log: dict of NumPy arrays with one row per log point (step 0 included): ``step``,
        ``time_fs``, ``potential_energy_ev``, ``kinetic_energy_ev``, ``total_energy_ev``,
        ``temperature_k`` (``2K / ((3N − 3) k_B)``, N real atoms), ``target_temperature_k``
        (the bath temperature at that step), for fully periodic cells ``pressure_gpa``
        (virial + kinetic ``2K/3V``), and one entry per observer output (``[n_log, ...]``).
      trajectory: a :class:`~jaxpot.md.Trajectory` of arrays (``positions``
        ``[n_frames, n_atoms, 3]`` Å, ``momenta``, ``cells``...), every ``trajectory_every``
        steps; no frames if not requested.
      final_system: the :class:`~jaxpot.System` at the last step (unwrapped positions, edges from
        the final neighbour list, valid for the potential's cutoff).
      compile_s: seconds spent compiling (and in the first force evaluation).
      wall_s: seconds spent stepping, after compilation.
      atom_steps_per_s: real atoms × steps done / ``wall_s``.
      ns_per_day: simulated nanoseconds per day of ``wall_s``.
      n_reallocations: how many times the neighbour list overflowed and was reallocated.
      final_state: the integrator state at the last step (to continue a run).
      stopped: True when the ``stop`` predicate ended the run early.
      steps_done: steps actually run (``steps`` unless stopped).
    """

    log: dict[str, np.ndarray]
    trajectory: Trajectory
    final_system: System
    compile_s: float
    wall_s: float
    atom_steps_per_s: float
    ns_per_day: float
    n_reallocations: int
    final_state: Any = None
    stopped: bool = False
    steps_done: int = 0

    @property
    def stop_step(self) -> int | None:
        """The step at which the ``stop`` predicate ended the run, or None."""
        return self.steps_done if self.stopped else None

    def to_atoms(self) -> list:
        """The trajectory frames as ``ase.Atoms`` (with momenta and ``info``)."""
        return self.trajectory.to_atoms()

    @property
    def frames(self) -> list:
        """``ase.Atoms`` frames (converted on each access; prefer :attr:`trajectory`)."""
        return self.to_atoms()

    def write_trajectory(self, path, *, format: str | None = None) -> None:
        """Write the frames with ASE (see :func:`jaxpot.md.write_trajectory`)."""
        write_trajectory(path, self.trajectory, format=format)


# ------------------------------------------------------------------------------ set-up pieces


def _integrator(ensemble, force, dt, kT, friction, tau, npt=None) -> Integrator:
    if ensemble == "npt" and npt["barostat"] == "mtk":
        return mtk(force, None, dt, kT, npt["pressure"], tau, npt["tau_p"])
    if ensemble == "npt":
        return c_rescale(force, None, dt, kT, friction, npt["pressure"], npt["tau_p"],
                         compressibility=npt["compressibility"], cell_dof=npt["cell_dof"],
                         mask=npt["mask"])
    if ensemble == "nve":
        return nve(force, None, dt)
    if ensemble == "langevin":
        return langevin(force, None, dt, kT, friction)
    return nose_hoover(force, None, dt, kT, tau)


def _plan(steps: int, log_every: int, block_steps: int) -> list[tuple[int, int]]:
    """Blocks as ``(n_intervals, interval_length)``, using few distinct shapes."""
    n_full, rest = divmod(steps, log_every)
    target = max(1, block_steps // log_every)
    blocks: list[tuple[int, int]] = []
    if n_full:
        # Prefer a block size that divides the number of intervals (one compiled shape).
        k = max(d for d in range(1, min(target, n_full) + 1) if n_full % d == 0)
        if k < max(1, min(target, n_full) // 4):
            k = min(target, n_full)
        q, r = divmod(n_full, k)
        blocks += [(k, log_every)] * q
        if r:
            blocks.append((r, log_every))
    if rest:
        blocks.append((1, rest))
    return blocks


def _schedule(temperature_kelvin, steps: int, *, positive: bool = False
              ) -> Callable[[np.ndarray], np.ndarray]:
    """``steps [k] -> kelvin [k]`` from a number, a ``(start, end)`` ramp or a callable;
    ``positive``: refuse 0 K too (a Nosé–Hoover chain's masses are kT·τ², so 0 K gives 0/0)."""
    if callable(temperature_kelvin):
        fn = temperature_kelvin

        def table(s):
            try:
                out = np.broadcast_to(np.asarray(fn(s), np.float64), s.shape)
            except Exception:  # a scalar-only callable: one call per step
                out = np.array([float(fn(int(k))) for k in s], np.float64)
            return out
    elif isinstance(temperature_kelvin, tuple | list) and len(temperature_kelvin) == 2:
        t0, t1 = (float(t) for t in temperature_kelvin)

        def table(s):
            return t0 + (t1 - t0) * np.asarray(s, np.float64) / max(steps, 1)
    else:
        try:
            value = float(temperature_kelvin)
        except (TypeError, ValueError):
            raise ValueError(f"simulate: temperature_kelvin must be a number, a (start, end) "
                             f"pair or a callable of the step, got {temperature_kelvin!r}"
                             ) from None

        def table(s):
            return np.full(np.shape(s), value)

    def checked(s):
        s = np.asarray(s, np.int64)
        t = table(s)
        bad = np.flatnonzero(~np.isfinite(t) | ((t <= 0) if positive else (t < 0)))
        if bad.size:
            need = "> 0 K for Nosé–Hoover" if positive else "≥ 0 K"
            raise ValueError(f"simulate: temperature_kelvin is {float(t[bad[0]])!r} K at step "
                             f"{int(s[bad[0]])}; temperatures must be finite and {need}")
        return t

    return checked


def _as_observer(observers) -> Observer | None:
    """One observer from None, a callable or a sequence of callables."""
    if observers is None:
        return None
    fns = [observers] if callable(observers) else list(observers)
    for fn in fns:
        if not callable(fn):
            raise TypeError(f"simulate: observers must be callables (state, output) -> dict, "
                            f"got {fn!r}")

    def observe(state, output):
        merged: dict = {}
        for fn in fns:
            for k, v in dict(fn(state, output)).items():
                if k in merged or k in _BUILTIN:
                    raise ValueError(f"simulate: observer output {k!r} is produced twice or "
                                     f"clashes with a built-in log column {_BUILTIN}")
                merged[k] = jnp.asarray(v)
        return merged

    return observe


# ------------------------------------------------------------------------------ the fused block


@dataclasses.dataclass(frozen=True)
class _Config:
    """What the traced block needs besides ``(params, state, kT table)``."""

    potential: Potential
    ensemble: str
    dt: float
    friction: float
    tau: float
    periodic: bool
    want_frames: bool
    observe: Observer | None
    with_atomic: bool
    npt: Any = None  # dict(pressure eV/Å³, tau_p, compressibility Å³/eV, cell_dof, mask)

    def integrator(self, force, kT) -> Integrator:
        """The ensemble's integrator around ``force`` (bath ``kT``, eV)."""
        npt = None if self.npt is None else dict(self.npt)
        return _integrator(self.ensemble, force, self.dt, kT, self.friction, self.tau, npt)


def _observe(cfg: _Config, force, s) -> dict:
    """Observations at a log point (traced): energies, virial pressure, frames, observers."""
    sysm = s.system
    obs = {"pe": s.energy, "ke": kinetic_energy(s.momenta, sysm.masses, sysm.atom_mask),
           "virial_p": -jnp.trace(s.stress) / 3.0, "cell_now": sysm.cell}
    if hasattr(s, "box_momentum"):  # MTK: the extended-system energy
        obs["conserved"] = mtk_conserved(s, dict(cfg.npt)["tau_p"])
    if cfg.want_frames:
        obs.update(positions=sysm.positions, momenta=s.momenta, cell=sysm.cell)
    if cfg.observe is not None:
        atomic = force.atomic(sysm, s.neighbors) if cfg.with_atomic else {}
        out = ForceOutput(energy=s.energy, forces=s.forces, stress=s.stress,
                          neighbors=s.neighbors, atomic=atomic)
        obs["user"] = cfg.observe(s, out)
    return obs


def _block_fn(cfg: _Config):
    """``(params, state, kT [n_intervals, length]) -> (state, observations)``, traced."""

    def block(params, state, kT_table):
        force = provider(cfg.potential, params)
        integ = cfg.integrator(force, None)

        def one(s, kT):
            return integ.step(s.replace(kT=kT)), None

        def interval(s, kT_row):
            if kT_row.shape[0] > 1:
                s = jax.lax.scan(one, s, kT_row[:-1])[0]
            s = integ.step(s.replace(kT=kT_row[-1]), stress=cfg.periodic)
            return s, _observe(cfg, force, s)

        return jax.lax.scan(interval, state, kT_table)

    return block


class _Blocks:
    """Compiled blocks, one per (neighbour-list spec, block shape); times the compilations."""

    def __init__(self, cfg: _Config, params):
        self.jitted = jax.jit(_block_fn(cfg))
        self.params = params
        self.compiled: dict = {}
        self.compile_s = 0.0

    def __call__(self, state, table):
        key = (state.neighbors.spec, table.shape)
        if key not in self.compiled:
            t0 = time.perf_counter()
            self.compiled[key] = self.jitted.lower(self.params, state, table).compile()
            self.compile_s += time.perf_counter() - t0
        return self.compiled[key](self.params, state, table)


# ------------------------------------------------------------------------------ the log


def _cell_columns(cells: np.ndarray, volume: np.ndarray, total_mass: float) -> dict:
    """NPT log columns: volume (Å³), lattice-vector lengths (Å), density (g/cm³)."""
    lengths = np.linalg.norm(cells, axis=-1)
    grams = total_mass * units._amu * 1e3
    return {"volume_a3": volume, "cell_a": lengths[:, 0], "cell_b": lengths[:, 1],
            "cell_c": lengths[:, 2], "density_g_cm3": grams / (volume * 1e-24)}


class _Log:
    """Log rows and trajectory frames, gathered block by block on the host."""

    def __init__(self, *, dt_fs, dof, volume, trajectory_every, system, npt=False,
                 writer: TrajectoryWriter | None = None):
        self.dt_fs, self.dof, self.volume, self.npt = dt_fs, dof, volume, npt
        self.system, self.writer = system, writer
        mask = np.asarray(system.atom_mask, bool)
        self.total_mass = float(np.asarray(system.masses, np.float64)[mask].sum())
        self.every = trajectory_every
        self.mask = np.asarray(system.atom_mask, bool)
        self.cols: dict[str, list] = {}
        self.frames: dict[str, list] = {k: [] for k in
                                        ("step", "positions", "momenta", "cell", "pe")}

    def add(self, steps: np.ndarray, obs: dict, t_target: np.ndarray) -> dict:
        """Append one block (``obs`` on the host); returns its rows under public names."""
        ke = np.asarray(obs["ke"], np.float64)
        pe = np.asarray(obs["pe"], np.float64)
        rows = {"step": steps, "time_fs": steps * self.dt_fs, "potential_energy_ev": pe,
                "kinetic_energy_ev": ke, "total_energy_ev": pe + ke,
                "temperature_k": 2.0 * ke / (self.dof * units.kB),
                "target_temperature_k": np.asarray(t_target, np.float64)}
        if self.volume:
            cells = np.asarray(obs["cell_now"], np.float64)
            volume = np.abs(np.linalg.det(cells))
            rows["pressure_gpa"] = (np.asarray(obs["virial_p"], np.float64)
                                    + 2.0 * ke / (3.0 * volume)) / units.GPa
            if self.npt:
                rows.update(_cell_columns(cells, volume, self.total_mass))
        if "conserved" in obs:
            rows["conserved_ev"] = np.asarray(obs["conserved"], np.float64)
        rows.update({k: np.asarray(v) for k, v in obs.get("user", {}).items()})
        for k, v in rows.items():
            self.cols.setdefault(k, []).append(v)
        if self.every is not None:
            keep = np.flatnonzero(steps % self.every == 0)
            block = {k: [np.asarray(src[j]) for j in keep]
                     for k, src in (("step", steps), ("positions", obs["positions"]),
                                    ("momenta", obs["momenta"]), ("cell", obs["cell"]),
                                    ("pe", pe))}
            if self.writer is not None:
                self.writer.add(self._frames(block))
            else:
                for k, v in block.items():
                    self.frames[k].extend(v)
        return rows

    def log(self) -> dict[str, np.ndarray]:
        return {k: np.concatenate(v) for k, v in self.cols.items()}

    def trajectory(self, system) -> Trajectory:
        return self._frames(self.frames)

    def _frames(self, frames: dict) -> Trajectory:
        traj = Trajectory.empty(self.system)
        if not frames["step"]:
            return traj
        f = {k: np.stack(v) for k, v in frames.items()}
        step = f["step"].astype(np.int64)
        return dataclasses.replace(
            traj, step=step, time_fs=step * self.dt_fs,
            positions=f["positions"][:, self.mask].astype(np.float64),
            momenta=f["momenta"][:, self.mask].astype(np.float64),
            cells=f["cell"].astype(np.float64), potential_energy_ev=f["pe"].astype(np.float64))


# ------------------------------------------------------------------------------ the block loop


@dataclasses.dataclass
class _Loop:
    """Host side of the run: blocks, neighbour lists, log, stability and stop checks."""

    blocks: _Blocks
    keeper: NeighborKeeper
    schedule: Callable[[np.ndarray], np.ndarray]
    log: _Log
    monitor: StabilityMonitor
    stop: StopPredicate | None
    dtype: Any
    bar: Any = None

    def table(self, step_done: int, n_int: int, length: int) -> tuple[np.ndarray, jax.Array]:
        """Bath temperatures (K) of steps ``step_done+1 …`` and the kT table for the block."""
        kelvin = self.schedule(step_done + 1 + np.arange(n_int * length)).reshape(n_int, length)
        return kelvin, jnp.asarray(kelvin * units.kB, self.dtype)

    def run(self, state, plan: list[tuple[int, int]]) -> tuple[Any, int, bool]:
        """Run ``plan`` from ``state``; returns ``(final state, steps done, stopped)``."""
        i, step_done, pending = 0, 0, None
        while i < len(plan):
            n_int, length = plan[i]
            kelvin, table = self.table(step_done, n_int, length)
            first = pending[1] if pending is not None and pending[0] == i else None
            first = self.blocks(state, table) if first is None else first
            pending = None
            if i + 1 < len(plan):  # dispatch the next block before looking at this one
                n2, l2 = plan[i + 1]
                pending = (i + 1, self.blocks(first[0], self.table(step_done + n_int * length,
                                                                   n2, l2)[1]))
            where = f"in steps {step_done}-{step_done + n_int * length}"
            try:
                _, out = run_checked(lambda s, t=table: self.blocks(s, t), state, self.keeper,
                                     first=first, where=where)
            except NeighborListError as err:
                if not err.outside or n_int == 1:
                    raise
                plan[i:i + 1] = [(n_int // 2, length), (n_int - n_int // 2, length)]
                pending = None  # atoms outrun the list: same steps in two shorter blocks
                continue
            if out is not first:
                pending = None
            state, obs = out
            steps_here = step_done + np.arange(1, n_int + 1) * length
            rows = self.log.add(steps_here, jax.device_get(obs), kelvin[:, -1])
            self.monitor.check(steps_here, rows["potential_energy_ev"],
                               rows["kinetic_energy_ev"])
            step_done += n_int * length
            if self.bar is not None:
                self.bar.update(n_int * length)
            if self.stop is not None and bool(self.stop(state, rows)):
                return state, step_done, True
            i += 1
        return state, step_done, False


def _initial(cfg: _Config, params, system, keeper, *, seed, kT0, momenta, restart=None):
    """Neighbour list, initial state and the step-0 observations (host + one small jit)."""
    nbrs = keeper.allocate(system)
    force = provider(cfg.potential, params)
    integ = cfg.integrator(force, kT0)
    state = integ.init(jax.random.key(seed), system, nbrs, kT=kT0, momenta=momenta)
    if restart is not None:
        state = apply_restart(state, restart)
    obs = jax.jit(lambda p, s: _observe(cfg, provider(cfg.potential, p), s))(params, state)
    return state, jax.device_get(obs)


def _first_row(log: _Log, obs0: dict, schedule, system, *, ensemble, dt_fs, kelvin_max,
               tolerance) -> StabilityMonitor:
    """Log step 0 and build the blow-up monitor from it (reference energy and temperature)."""
    mask = np.asarray(system.atom_mask, bool)
    rows0 = log.add(np.zeros(1, np.int64), jax.tree.map(lambda a: np.asarray(a)[None], obs0),
                    schedule(np.zeros(1)))
    monitor = StabilityMonitor(
        ensemble, int(mask.sum()), dt_fs, float(rows0["total_energy_ev"][0]),
        max(kelvin_max, float(rows0["temperature_k"][0])) * units.kB,
        float(np.asarray(system.masses, np.float64)[mask].min(initial=np.inf)), tolerance)
    monitor.check(rows0["step"], rows0["potential_energy_ev"], rows0["kinetic_energy_ev"])
    return monitor


def _load_restart(restart, ensemble, system, momenta):
    """``(data, system, momenta)``: a restart file's state, or ``(None, system, momenta)``."""
    if restart is None:
        return None, system, momenta
    data = restart if isinstance(restart, dict) else load_state(restart)
    if str(data["ensemble"]) != ensemble:
        raise ValueError(f"simulate: the restart was written by a {str(data['ensemble'])!r} "
                         f"run, not {ensemble!r}")
    return data, restart_system(data, system), data["momenta"]


def _npt_options(system, **kw) -> tuple:
    """Checked NPT options in internal units, as a hashable tuple of pairs."""
    check_npt_options(system, **kw)
    return (("pressure", float(kw["pressure_gpa"]) * units.GPa),
            ("tau_p", float(kw["tau_p_fs"]) * units.fs),
            ("compressibility", float(kw["compressibility_per_gpa"]) / units.GPa),
            ("cell_dof", kw["cell_dof"]), ("mask", tuple(bool(m) for m in kw["mask"])),
            ("barostat", kw["barostat"]))


def _thermalize(potential, params, system, ps, dt_fs, seed, kelvin, friction_per_fs, skin):
    """Langevin for ``ps`` picoseconds at ``kelvin``; returns ``(system, momenta)`` after it."""
    ps = float(ps)
    if not (np.isfinite(ps) and ps >= 0):
        raise ValueError(f"simulate: thermalize_ps must be a finite time ≥ 0 ps, got {ps!r}")
    steps = max(1, int(round(ps * 1000.0 / dt_fs)))
    res = simulate(potential, params, system, ensemble="langevin", dt_fs=dt_fs,
                   temperature_kelvin=kelvin, steps=steps, log_every=min(steps, 50),
                   seed=seed + 1, friction_per_fs=friction_per_fs, skin=skin)
    end = res.final_state
    return system.replace(positions=end.system.positions), end.momenta


def _writer(path, system, restart_data) -> TrajectoryWriter | None:
    """The streaming writer of ``trajectory_file`` (continuing the file after a restart)."""
    if path is None:
        return None
    offset = None if restart_data is None else int(restart_data["step"])
    return TrajectoryWriter(path, Trajectory.empty(system), append=offset is not None,
                            step_offset=offset)


def _checked_schedule(temperature_kelvin, steps, ensemble):
    """``(schedule, hottest K)``; NVE refuses a temperature that changes during the run."""
    schedule = _schedule(temperature_kelvin, steps, positive=ensemble == "nose-hoover")
    sampled = schedule(np.unique(np.r_[np.arange(0, steps + 1, max(1, steps // 1000)), steps]))
    if ensemble == "nve" and np.ptp(sampled) > 0:
        raise ValueError("simulate: a temperature that changes during the run needs a "
                         "thermostat (ensemble='langevin' or 'nose-hoover'); NVE uses "
                         "temperature_kelvin only for the initial momenta")
    return schedule, float(np.max(sampled))


def _check_trajectory_file(path, restart, trajectory_every, log_every):
    """``trajectory_every`` (default ``log_every`` when frames go to ``path``); the file's
    folder must exist and the file must not be the restart file."""
    from jaxpot.files import check_outputs

    if path is None:
        return trajectory_every
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"simulate: trajectory_file: folder {folder!r} does not exist")
    inputs = {"restart": restart} if isinstance(restart, (str, os.PathLike)) else {}
    check_outputs({"trajectory_file": path}, inputs)
    return log_every if trajectory_every is None else trajectory_every


def _rate(n_real: int, steps: int, dt_fs: float, wall_s: float) -> tuple[float, float]:
    wall_s = max(wall_s, 1e-12)
    return n_real * steps / wall_s, steps * dt_fs * 1e-6 / wall_s * 86400.0


def simulate(
    potential: Potential,
    params,
    system: System,
    *,
    ensemble: str = "nve",
    dt_fs: float,
    temperature_kelvin: float | tuple[float, float] | Callable[[Any], Any],
    steps: int,
    log_every: int = 10,
    seed: int = 0,
    friction_per_fs: float = 0.01,
    tau_fs: float = 100.0,
    skin: float = 0.5,
    trajectory_every: int | None = None,
    progress: bool = False,
    momenta=None,
    capacity_multiplier: float = 1.25,
    neighbor_method: str = "auto",
    observers: Observer | Sequence[Observer] | None = None,
    stop: StopPredicate | None = None,
    atomic: bool | None = None,
    block_steps: int | None = None,
    max_energy_error_per_atom: float | None = None,
    pressure_gpa: float = 0.0,
    barostat: str = "c-rescale",
    cell_dof: str = "iso",
    cell_mask: Sequence[bool] = (True, True, True),
    tau_p_fs: float = 1000.0,
    compressibility_per_gpa: float = 0.1,
    thermalize_ps: float = 0.0,
    restart: str | dict | None = None,
    trajectory_file: str | os.PathLike | None = None,
) -> MDResult:
    """Run molecular dynamics with jitted, fused steps.

    Args:
      potential: the :class:`~jaxpot.Potential`.
      params: its parameters.
      system: the starting structure (unbatched; its edges are ignored, a jitted neighbour list
        with a Verlet ``skin`` is allocated from it).
      ensemble: ``"nve"`` (velocity Verlet), ``"langevin"`` (BAOAB), ``"nose-hoover"``
        (Nosé–Hoover chain of length 3) or ``"npt"`` (stochastic cell rescaling + BAOAB
        Langevin, :mod:`jaxpot.md.npt`; the log gains ``volume_a3``, ``cell_a``, ``cell_b``,
        ``cell_c``, ``density_g_cm3``; with ``barostat="mtk"`` also ``conserved_ev``).
      dt_fs: time step, fs.
      temperature_kelvin: bath temperature, K: a number, a ``(start, end)`` pair for a linear
        ramp over the run, or a callable ``step -> K`` (called on the host with an integer
        array of steps, or one integer at a time). Step k uses the value at k; the initial
        Maxwell–Boltzmann momenta (zero total momentum) use the value at step 0.
      steps: number of time steps (0 only evaluates the starting structure).
      log_every: steps between log points (one jitted interval; the stress is computed only on
        its last step).
      seed: seed of the initial momenta and the Langevin noise.
      friction_per_fs: Langevin friction γ, 1/fs.
      tau_fs: Nosé–Hoover period, fs.
      skin: Verlet skin, Å.
      trajectory_every: keep a frame every this many steps (a multiple of ``log_every``);
        None for none.
      progress: show a tqdm bar (only when stdout is a terminal).
      momenta: optional initial momenta ``[n, 3]`` amu·Å/t (e.g. ``result.final_state.momenta``)
        instead of Maxwell–Boltzmann ones.
      capacity_multiplier: head-room of the first neighbour-list allocation.
      neighbor_method: ``"auto"``, ``"brute"`` or ``"cell"`` (see ``neighbors.allocate``).
      observers: callables ``(state, output) -> {name: array}`` traced inside the fused loop at
        every log point; ``output`` is a :class:`~jaxpot.md.ForceOutput` of the state's
        energy, forces, stress, list and (see ``atomic``) the model's per-atom outputs. Their
        values appear in ``log[name]`` with a leading ``[n_log]`` axis (step 0 included).
      stop: ``(state, observed) -> bool``, called on the host after each block with the final
        state and the block's log rows (dict of ``[k]`` arrays: the log columns and observer
        outputs); True ends the run there (``MDResult.stopped``, ``stop_step``).
      atomic: fill ``output.atomic`` for the observers (one forward pass per log point);
        default: when there are observers and the model has per-atom outputs.
      block_steps: about how many steps run between host checks (default 200); the stop
        predicate is checked this often.
      max_energy_error_per_atom: NVE blow-up threshold on ``|E_tot(t) − E_tot(0)| / N``, eV;
        default ``max(0.005, 0.75 kT)`` (see :mod:`jaxpot.md.checks`); ``inf`` disables it.
      pressure_gpa: NPT target pressure, GPa.
      barostat: NPT barostat: ``"c-rescale"`` (stochastic cell rescaling, with Langevin) or
        ``"mtk"`` (isotropic Martyna–Tobias–Klein with Nosé–Hoover chains, periods ``tau_fs``
        and ``tau_p_fs``; :mod:`jaxpot.md.mtk`).
      cell_dof: NPT cell freedom: ``"iso"``, ``"aniso"`` or ``"full"``.
      cell_mask: three booleans, the lattice directions the barostat may move (e.g.
        ``(True, True, False)`` keeps a slab's vacuum along z).
      tau_p_fs: NPT barostat relaxation time, fs.
      compressibility_per_gpa: NPT compressibility guess β_T, 1/GPa (only ``β_T/τ_p``
        matters: the speed of the volume relaxation, not its distribution).
      thermalize_ps: first run this long with Langevin dynamics at the step-0 temperature
        (same cell, friction ``friction_per_fs``, not logged), then start the run from its
        positions and momenta, so a crystal starts at its set temperature.
      restart: a restart file (or :func:`jaxpot.md.load_state`'s dict) written from a previous
        run's ``final_state`` by :func:`jaxpot.md.save_state`: positions, cell, momenta, noise
        key and thermostat chain continue from it (``system`` supplies the atoms; the file's
        ensemble must match).
      trajectory_file: write the frames (every ``trajectory_every`` steps, default
        ``log_every``) to this file as the run goes, from a background thread so the device
        keeps stepping: extxyz, or H5MD for ``.h5``/``.h5md``/``.hdf5`` (see
        :class:`jaxpot.md.TrajectoryWriter`). With ``restart`` the file is continued, not
        started anew. The frames are then not kept in ``MDResult.trajectory`` (read them back
        with :func:`jaxpot.md.read_trajectory`).

    Returns:
      An :class:`MDResult`. Temperatures count ``3N − 3`` degrees of freedom (N real atoms;
      the total momentum is zero and stays zero in every ensemble here).

    Notes:
      Steps run in jitted blocks of whole log intervals; each distinct block shape compiles
      once (usually one shape, plus one for a final partial block and one per neighbour-list
      reallocation); the temperature schedule is an argument, so ramps do not recompile.
      ``compile_s`` includes the neighbour-list allocation and the first force evaluation.

    Raises:
      ValueError: a bad option, atom, element or parameter, named (before anything compiles).
      jaxpot.md.SimulationUnstable: the run blew up (energies exploding or non-finite); the
        message gives the likely cause.
      jaxpot.md.NeighborListError: the neighbour list keeps overflowing after reallocation.

    Example:
      >>> from jaxpot import md, potentials, System  # doctest: +SKIP
      >>> res = md.simulate(pot, params, system, dt_fs=2.0, temperature_kelvin=90.0,
      ...                   steps=1000)  # doctest: +SKIP
      >>> res.log["temperature_k"].mean()  # doctest: +SKIP
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"simulate: unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")
    restart_data, system, momenta = _load_restart(restart, ensemble, system, momenta)
    trajectory_every = _check_trajectory_file(trajectory_file, restart, trajectory_every,
                                              log_every)
    dt_fs, steps, log_every, trajectory_every = check_inputs(
        potential, params, system, ensemble=ensemble, dt_fs=dt_fs, steps=steps,
        log_every=log_every, trajectory_every=trajectory_every,
        friction_per_fs=friction_per_fs, tau_fs=tau_fs, momenta=momenta)
    schedule, kelvin_all_max = _checked_schedule(temperature_kelvin, steps, ensemble)
    npt = None
    if ensemble == "npt":
        npt = _npt_options(system, pressure_gpa=pressure_gpa, barostat=barostat,
                           cell_dof=cell_dof, mask=cell_mask, tau_p_fs=tau_p_fs,
                           compressibility_per_gpa=compressibility_per_gpa,
                           friction_per_fs=friction_per_fs)
    observe = _as_observer(observers)
    cfg = _Config(potential=potential, ensemble=ensemble, dt=dt_fs * units.fs,
                  friction=float(friction_per_fs) / units.fs, tau=float(tau_fs) * units.fs,
                  periodic=bool(np.all(np.asarray(system.pbc))),
                  want_frames=trajectory_every is not None, observe=observe,
                  with_atomic=(observe is not None and potential.atomic is not None
                               if atomic is None else bool(atomic)), npt=npt)
    mask = np.asarray(system.atom_mask, bool)
    volume = (float(abs(np.linalg.det(np.asarray(system.cell, np.float64))))
              if cfg.periodic else 0.0)

    if thermalize_ps and restart is None:
        system, momenta = _thermalize(potential, params, system, thermalize_ps, dt_fs, seed,
                                      float(schedule(np.zeros(1))[0]), friction_per_fs, skin)
    t0 = time.perf_counter()
    keeper = NeighborKeeper(potential.cutoff, skin, capacity_multiplier, neighbor_method)
    kT0 = float(schedule(np.zeros(1))[0]) * units.kB
    state, obs0 = _initial(cfg, params, system, keeper, seed=seed, kT0=kT0, momenta=momenta,
                           restart=restart_data)
    log = _Log(dt_fs=dt_fs, dof=degrees_of_freedom(mask), volume=volume,
               trajectory_every=trajectory_every, system=system, npt=npt is not None,
               writer=_writer(trajectory_file, system, restart_data))
    writer = log.writer
    monitor = _first_row(log, obs0, schedule, system, ensemble=ensemble, dt_fs=dt_fs,
                         kelvin_max=kelvin_all_max, tolerance=max_energy_error_per_atom)
    blocks = _Blocks(cfg, params)
    loop = _Loop(blocks, keeper, schedule, log, monitor, stop, system.positions.dtype)
    compile_s = time.perf_counter() - t0
    if progress and sys.stdout.isatty():
        from tqdm.auto import tqdm

        loop.bar = tqdm(total=steps, unit="step")
    t_start = time.perf_counter()
    try:
        state, done, stopped = loop.run(state, _plan(steps, log_every,
                                                     block_steps or _BLOCK_STEPS))
        jax.block_until_ready(state)
    finally:
        if loop.bar is not None:
            loop.bar.close()
        if writer is not None:
            writer.close()
    wall_s = time.perf_counter() - t_start - blocks.compile_s
    rate, ns_day = _rate(int(mask.sum()), done, dt_fs, wall_s)
    return MDResult(log=log.log(), trajectory=log.trajectory(system),
                    final_system=state.neighbors.attach(state.system),
                    compile_s=compile_s + blocks.compile_s, wall_s=max(wall_s, 1e-12),
                    atom_steps_per_s=rate, ns_per_day=ns_day,
                    n_reallocations=keeper.n_reallocations, final_state=state,
                    stopped=stopped, steps_done=done)

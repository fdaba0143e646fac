"""The fused MD loop: jitted ``lax.scan`` blocks, host-side overflow checks, observables.

:func:`simulate` runs ``steps`` time steps as a sequence of jitted blocks. A block is a
``lax.scan`` over log intervals, each a ``lax.scan`` over ``log_every`` steps whose last step
also computes the virial stress; observables are recorded at the end of every interval (no host
round trip per step). After each block the host reads the neighbour list's sticky ``overflow``
flag; if it is set, the list is reallocated with more capacity from the state at the **start**
of the block and the block is redone, so no step is ever computed on a truncated list. The next
block is dispatched before the flag of the current one is read (JAX's asynchronous dispatch), so
the check costs no device idle time; on an overflow the speculative block is thrown away.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot import neighbors as nb
from jaxpot import units
from jaxpot.md.integrators import (
    Integrator,
    degrees_of_freedom,
    kinetic_energy,
    langevin,
    nose_hoover,
    nve,
)
from jaxpot.potential import Potential
from jaxpot.system import System

__all__ = ["MDResult", "simulate", "ENSEMBLES"]

ENSEMBLES = ("nve", "langevin", "nose-hoover")
_BLOCK_STEPS = 200  # aim for blocks of about this many steps between host checks
_MAX_REALLOCATIONS_PER_BLOCK = 8


@dataclasses.dataclass
class MDResult:
    """What :func:`simulate` returns.

    Attributes:
      log: dict of ``[n_log]`` NumPy arrays, one row per log point (step 0 included):
        ``step``, ``time_fs``, ``potential_energy_ev``, ``kinetic_energy_ev``,
        ``total_energy_ev``, ``temperature_k`` (``2K / ((3N − 3) k_B)``, N real atoms) and, for
        fully periodic cells, ``pressure_gpa`` (virial + kinetic ``2K/3V``).
      frames: ``ase.Atoms`` every ``trajectory_every`` steps (with momenta; ``info`` holds
        ``step``, ``time_fs``, ``potential_energy_ev``); empty if not requested.
      final_system: the :class:`~jaxpot.System` at the last step (unwrapped positions, edges from
        the final neighbour list, valid for the potential's cutoff).
      compile_s: seconds spent compiling (and in the first force evaluation).
      wall_s: seconds spent stepping, after compilation.
      atom_steps_per_s: real atoms × steps / ``wall_s``.
      ns_per_day: simulated nanoseconds per day of ``wall_s``.
      n_reallocations: how many times the neighbour list overflowed and was reallocated.
      final_state: the integrator state at the last step (to continue a run).
    """

    log: dict[str, np.ndarray]
    frames: list
    final_system: System
    compile_s: float
    wall_s: float
    atom_steps_per_s: float
    ns_per_day: float
    n_reallocations: int
    final_state: Any = None


def _integrator(ensemble, potential, params, dt, kT, friction, tau) -> Integrator:
    if ensemble == "nve":
        return nve(potential, params, dt)
    if ensemble == "langevin":
        return langevin(potential, params, dt, kT, friction)
    return nose_hoover(potential, params, dt, kT, tau)


def _plan(steps: int, log_every: int) -> list[tuple[int, int]]:
    """Blocks as ``(n_intervals, interval_length)``, using few distinct shapes."""
    n_full, rest = divmod(steps, log_every)
    target = max(1, _BLOCK_STEPS // log_every)
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


def simulate(
    potential: Potential,
    params,
    system: System,
    *,
    ensemble: str = "nve",
    dt_fs: float,
    temperature_kelvin: float,
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
) -> MDResult:
    """Run molecular dynamics with jitted, fused steps.

    Args:
      potential: the :class:`~jaxpot.Potential`.
      params: its parameters.
      system: the starting structure (unbatched; its edges are ignored, a jitted neighbour list
        with a Verlet ``skin`` is allocated from it).
      ensemble: ``"nve"`` (velocity Verlet), ``"langevin"`` (BAOAB) or ``"nose-hoover"``
        (Nosé–Hoover chain of length 3).
      dt_fs: time step, fs.
      temperature_kelvin: bath temperature, K; also the temperature of the initial
        Maxwell–Boltzmann momenta (zero total momentum).
      steps: number of time steps.
      log_every: steps between log points (one jitted interval; the stress is computed only on
        its last step).
      seed: seed of the initial momenta and the Langevin noise.
      friction_per_fs: Langevin friction γ, 1/fs.
      tau_fs: Nosé–Hoover period, fs.
      skin: Verlet skin, Å.
      trajectory_every: keep an ``ase.Atoms`` frame every this many steps (a multiple of
        ``log_every``); None for none.
      progress: show a tqdm bar (only when stdout is a terminal).
      momenta: optional initial momenta ``[n, 3]`` amu·Å/t (e.g. ``result.final_state.momenta``)
        instead of Maxwell–Boltzmann ones.
      capacity_multiplier: head-room of the first neighbour-list allocation.
      neighbor_method: ``"auto"``, ``"brute"`` or ``"cell"`` (see ``neighbors.allocate``).

    Returns:
      An :class:`MDResult`. Temperatures count ``3N − 3`` degrees of freedom (N real atoms;
      the total momentum is zero and stays zero in every ensemble here).

    Notes:
      Steps run in jitted blocks of whole log intervals (about 200 steps per block); each
      distinct block shape compiles once (usually one shape, plus one for a final partial
      block and one per neighbour-list reallocation). ``compile_s`` includes the neighbour-list
      allocation and the first force evaluation.

    Raises:
      ValueError: unknown ensemble, non-positive ``steps``/``log_every``, a ``trajectory_every``
        that is not a multiple of ``log_every``, or a neighbour list that keeps overflowing.

    Example:
      >>> from jaxpot import md, potentials, System  # doctest: +SKIP
      >>> res = md.simulate(pot, params, system, dt_fs=2.0, temperature_kelvin=90.0,
      ...                   steps=1000)  # doctest: +SKIP
      >>> res.log["temperature_k"].mean()  # doctest: +SKIP
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {ENSEMBLES}")
    steps, log_every = int(steps), int(log_every)
    if steps < 1 or log_every < 1:
        raise ValueError(f"steps and log_every must be positive (got {steps}, {log_every})")
    if trajectory_every is not None and (
        int(trajectory_every) < 1 or int(trajectory_every) % log_every
    ):
        raise ValueError(
            f"trajectory_every ({trajectory_every}) must be a positive multiple of "
            f"log_every ({log_every})"
        )
    if np.ndim(system.positions) != 2:
        raise ValueError("simulate runs one unbatched system")

    dt = float(dt_fs) * units.fs
    kT = float(temperature_kelvin) * units.kB
    friction = float(friction_per_fs) / units.fs
    tau = float(tau_fs) * units.fs
    mask_np = np.asarray(system.atom_mask, bool)
    n_real = int(mask_np.sum())
    dof = degrees_of_freedom(mask_np)
    periodic = bool(np.all(np.asarray(system.pbc)))
    volume = float(abs(np.linalg.det(np.asarray(system.cell, np.float64)))) if periodic else 0.0
    want_frames = trajectory_every is not None

    def make(p):
        return _integrator(ensemble, potential, p, dt, kT, friction, tau)

    # ---------------------------------------------------------------- set-up (counted as compile)
    t0 = time.perf_counter()
    mult = float(capacity_multiplier)
    nbrs = nb.allocate(system, potential.cutoff, skin=skin, capacity_multiplier=mult,
                       method=neighbor_method)
    key = jax.random.key(seed)
    state = make(params).init(key, system, nbrs, kT=kT, momenta=momenta)
    if bool(state.neighbors.overflow):  # cannot happen right after allocate, but be safe
        raise ValueError("neighbour list overflowed at allocation")
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0

    def block_fn(params, state, n_intervals, length):
        integ = make(params)

        def interval(s, _):
            if length > 1:
                s = jax.lax.scan(lambda c, _: (integ.step(c), None), s, None,
                                 length=length - 1)[0]
            s = integ.step(s, stress=periodic)
            sysm = s.system
            obs = {
                "pe": s.energy,
                "ke": kinetic_energy(s.momenta, sysm.masses, sysm.atom_mask),
                "virial_p": -jnp.trace(s.stress) / 3.0,
            }
            if want_frames:
                obs["positions"] = sysm.positions
                obs["momenta"] = s.momenta
            return s, obs

        return jax.lax.scan(interval, state, None, length=n_intervals)

    jitted = jax.jit(block_fn, static_argnums=(2, 3))
    compiled: dict = {}

    def get_compiled(st, n_int, length):
        nonlocal compile_s
        k = (st.neighbors.spec, n_int, length)
        if k not in compiled:
            tc = time.perf_counter()
            compiled[k] = jitted.lower(params, st, n_int, length).compile()
            compile_s += time.perf_counter() - tc
        return compiled[k]

    # ---------------------------------------------------------------- log rows
    rows = {"step": [0], "pe": [float(state.energy)],
            "ke": [float(kinetic_energy(state.momenta, state.system.masses,
                                        state.system.atom_mask))],
            "virial_p": [float(-jnp.trace(state.stress) / 3.0)]}
    frames: list = []

    def add_frame(step, positions, momenta_, pe):
        atoms = state.system.replace(positions=jnp.asarray(positions)).to_ase()
        atoms.set_momenta(np.asarray(momenta_, np.float64)[mask_np])
        atoms.info.update(step=int(step), time_fs=float(step * dt_fs),
                          potential_energy_ev=float(pe))
        frames.append(atoms)

    if want_frames:
        add_frame(0, state.system.positions, state.momenta, rows["pe"][0])

    blocks = _plan(steps, log_every)
    bar = None
    if progress and sys.stdout.isatty():
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, unit="step")

    n_realloc = 0
    step_done = 0
    compile_before = compile_s
    t_start = time.perf_counter()
    pending = None  # (block index, start state, output) dispatched speculatively
    i = 0
    while i < len(blocks):
        n_int, length = blocks[i]
        if pending is not None and pending[0] == i:
            _, start, out = pending
        else:
            start = state
            out = get_compiled(start, n_int, length)(params, start)
        pending = None
        new_state, obs = out
        if i + 1 < len(blocks):  # dispatch the next block before looking at this one
            n2, l2 = blocks[i + 1]
            pending = (i + 1, new_state, get_compiled(new_state, n2, l2)(params, new_state))
        attempts = 0
        while bool(new_state.neighbors.overflow):
            pending = None
            attempts += 1
            n_realloc += 1
            if attempts > _MAX_REALLOCATIONS_PER_BLOCK:
                raise ValueError(
                    f"neighbour list keeps overflowing near step {step_done} "
                    f"(max_neighbors={new_state.neighbors.spec.max_neighbors}); atoms may be "
                    "collapsing or leaving a non-periodic box"
                )
            old = new_state.neighbors
            mult *= 1.5
            min_cap = max(int(math.ceil(old.spec.max_neighbors * 1.5)),
                          int(math.ceil(int(old.max_count) * 1.25)) + 1)
            fresh = nb.allocate(start.system, potential.cutoff, skin=skin,
                                capacity_multiplier=mult, method=old.spec.method,
                                min_capacity=min_cap)
            start = start.replace(neighbors=fresh)
            new_state, obs = get_compiled(start, n_int, length)(params, start)
        obs = jax.device_get(obs)
        steps_here = np.arange(1, n_int + 1) * length + step_done
        rows["step"] += steps_here.tolist()
        for name in ("pe", "ke", "virial_p"):
            rows[name] += np.asarray(obs[name]).tolist()
        if want_frames:
            for j, s in enumerate(steps_here):
                if s % trajectory_every == 0:
                    add_frame(s, obs["positions"][j], obs["momenta"][j], obs["pe"][j])
        state = new_state
        step_done += n_int * length
        if bar is not None:
            bar.update(n_int * length)
        i += 1
    jax.block_until_ready(state)
    wall_s = time.perf_counter() - t_start - (compile_s - compile_before)
    if bar is not None:
        bar.close()

    step_arr = np.asarray(rows["step"], np.int64)
    pe = np.asarray(rows["pe"], np.float64)
    ke = np.asarray(rows["ke"], np.float64)
    log = {
        "step": step_arr,
        "time_fs": step_arr * float(dt_fs),
        "potential_energy_ev": pe,
        "kinetic_energy_ev": ke,
        "total_energy_ev": pe + ke,
        "temperature_k": 2.0 * ke / (dof * units.kB),
    }
    if periodic:
        log["pressure_gpa"] = (np.asarray(rows["virial_p"]) + 2.0 * ke / (3.0 * volume)) / units.GPa
    wall_s = max(wall_s, 1e-12)
    return MDResult(
        log=log,
        frames=frames,
        final_system=state.neighbors.attach(state.system),
        compile_s=compile_s,
        wall_s=wall_s,
        atom_steps_per_s=n_real * steps / wall_s,
        ns_per_day=steps * float(dt_fs) * 1e-6 / wall_s * 86400.0,
        n_reallocations=n_realloc,
        final_state=state,
    )

"""Many replicas in one run: MD and relaxation of a batch of systems, stepped by ``vmap``.

A temperature scan, a strain scan or an ensemble of starting structures runs as one program:
the systems are padded to one shape bucket (:func:`jaxpot.system.stack`), each gets its own
neighbour list, seed, temperature and initial state, and one jitted block ``lax.scan``\\ s a
``vmap``\\ ped integrator step over all of them. It compiles once for the whole batch.

Neighbour lists: every replica has its own list (its own edges, overflow flag and count) but
all lists share one static :class:`~jaxpot.neighbors.NeighborSpec` (all-pairs over the union
of the replicas' image shifts, the largest capacity), so they stack into one pytree
(:func:`allocate_replicas`). Inside the vmapped step the Verlet-skin test is reduced over the
replicas (``lax.psum`` over the named vmap axis): when any replica needs a rebuild, all rebuild
(a rebuild gives the same pairs within the cutoff, so no replica's physics changes), and the
rebuild stays a real branch instead of a select that would rebuild every step. A block in which
any replica's list overflowed is thrown away; all lists are reallocated at the block's start
with more room and the block is redone, so no replica ever keeps a step computed on a
truncated list and none is disturbed by another's overflow.

The integrator is any ``Integrator(init, step)`` factory of :mod:`jaxpot.md` taking a
:class:`~jaxpot.md.ForceProvider` (``nve``, ``langevin``, ``nose_hoover``, and the NPT
integrator that ``md.simulate`` uses for ``ensemble="npt"``); per-replica temperatures travel in
the state's ``kT`` (and pressures in its ``pressure``), which the thermostats read every step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxpot import neighbors as nb
from jaxpot import units
from jaxpot.md.blocks import NeighborListError
from jaxpot.md.forces import ForceOutput, ForceProvider
from jaxpot.md.integrators import Integrator, kinetic_energy
from jaxpot.md.relax import (
    FireConfig,
    _check_relax_inputs,
    _max_force,
    _program,
    _stripped,
    current_system,
    initial_state,
)
from jaxpot.md.run import _integrator
from jaxpot.potential import Potential, energy_and_forces, energy_forces_stress
from jaxpot.potentials.pair import shared_branch_axis
from jaxpot.system import System, stack, unstack

__all__ = ["ReplicaResult", "allocate_replicas", "relax_replicas", "simulate_replicas"]

AXIS = "replica"  # name of the vmapped replica axis (for the collective skin test)
CHUNK = 8  # replicas per vmapped group when there are more (see _chunk)


def allocate_replicas(systems: Sequence[System], cutoff: float, *, skin: float = 0.5,
                      capacity_multiplier: float = 1.25, min_capacity: int = 0) -> nb.Neighbors:
    """One neighbour list per replica, sharing one static spec, stacked on a leading axis.

    Args:
      systems: unbatched systems of one shape (padded to one bucket).
      cutoff, skin: interaction cutoff and Verlet skin, Å.
      capacity_multiplier: head-room of the capacity (see :func:`jaxpot.neighbors.allocate`).
      min_capacity: lower bound on the neighbour slots per atom.

    Returns:
      A :class:`~jaxpot.neighbors.Neighbors` with a leading ``[n_replicas]`` axis on every
      array (all-pairs method, the union of the replicas' image shifts).

    Raises:
      ValueError: systems of different shapes or periodicity.
    """
    shapes = {(s.positions.shape, tuple(np.asarray(s.pbc, bool))) for s in systems}
    if len(shapes) != 1:
        raise ValueError(f"replicas must share one shape and pbc (pad them with "
                         f"jaxpot.system.stack); got {sorted(shapes)}")
    kw = dict(skin=skin, capacity_multiplier=capacity_multiplier, method="brute")
    lists = [nb.allocate(s, cutoff, min_capacity=min_capacity, **kw) for s in systems]
    m = max(li.spec.max_neighbors for li in lists)
    lists = [li if li.spec.max_neighbors == m else nb.allocate(s, cutoff, min_capacity=m, **kw)
             for li, s in zip(lists, systems, strict=True)]
    shifts = sorted(set().union(*(li.spec.shifts for li in lists)))
    if not all(np.asarray(systems[0].pbc, bool)):
        boxes = {li.spec.box for li in lists}
        if len(boxes) > 1:
            raise ValueError("replicas that are not periodic along every direction must share "
                             "one cell")
    spec = dataclasses.replace(lists[0].spec, max_neighbors=m, shifts=tuple(shifts))
    batched = jax.tree.map(lambda *xs: jnp.stack(xs), *[li.replace(spec=spec) for li in lists])
    return _rebuild_all(batched, jax.tree.map(lambda *xs: jnp.stack(xs), *systems))


_rebuild_all = jax.jit(jax.vmap(nb.rebuild))


class _ReplicaProvider(ForceProvider):
    """A force provider whose skin test is shared by the replicas (inside ``vmap`` over
    ``AXIS``): the rebuild is a real branch, taken when any replica needs it."""

    def __call__(self, system, neighbors, positions, *, stress: bool = False) -> ForceOutput:
        moved = system.replace(positions=positions)
        need = nb.needs_rebuild(neighbors, positions, system.atom_mask, system.cell)
        any_need = jax.lax.psum(need.astype(jnp.int32), AXIS) > 0
        neighbors = jax.lax.cond(any_need, lambda n: nb.rebuild(n, moved), lambda n: n,
                                 neighbors)
        full = neighbors.attach(moved)
        with shared_branch_axis(AXIS):
            if stress:
                e, f, sigma = energy_forces_stress(self.potential)(self.params, full)
            else:
                (e, f), sigma = energy_and_forces(self.potential)(self.params, full), None
        return ForceOutput(energy=e, forces=f, stress=sigma, neighbors=neighbors, atomic={})


class ReplicaResult(NamedTuple):
    """What :func:`simulate_replicas` returns.

    Attributes:
      log: ``{name: [n_log, n_replicas]}``: ``step``, ``potential_energy_ev``,
        ``kinetic_energy_ev``, ``total_energy_ev``, ``temperature_k`` (step 0 included).
      positions: ``[n_log, n_replicas, n_atoms, 3]`` Å at the log points (padding included).
      final_states: the batched integrator state.
      final_systems: the replicas' final structures (unbatched, padding kept).
      n_compiles: distinct block programs compiled (1 unless a list was reallocated or the
        last block is shorter).
      n_reallocations: blocks redone after an overflow.
      wall_s: time of the steps after compilation, s.
      atom_steps_per_s: real atoms × steps / ``wall_s``, summed over the replicas.
    """

    log: dict
    positions: np.ndarray
    final_states: Any
    final_systems: list
    n_compiles: int
    n_reallocations: int
    wall_s: float
    atom_steps_per_s: float


class _InitProvider(ForceProvider):
    """Used only by ``Integrator.init``: a trivial step-0 evaluation (compiles in
    milliseconds); the real one runs afterwards for all replicas in one vmapped program."""

    def evaluate(self, system):
        x = system.positions
        return jnp.zeros((), x.dtype), jnp.zeros_like(x), jnp.zeros((3, 3), x.dtype)


IntegratorFactory = Callable[[ForceProvider, Any], Integrator]


def _factory(ensemble, dt_fs, friction_per_fs, tau_fs) -> IntegratorFactory:
    def make(force, kT):
        return _integrator(ensemble, force, dt_fs * units.fs, kT,
                           float(friction_per_fs) / units.fs, float(tau_fs) * units.fs)
    return make


def _initial_states(potential, params, systems, lists, make, kelvin, seeds):
    """Per-replica ``init`` (own key, temperature) with a trivial evaluation, stacked; then
    the step-0 energies, forces and stress of all replicas in one vmapped program."""
    states = []
    for r, s in enumerate(systems):
        nbrs = jax.tree.map(lambda a, r=r: a[r], lists)
        kT = float(kelvin[r]) * units.kB
        integ = make(_InitProvider(potential, params), kT)
        states.append(integ.init(jax.random.key(int(seeds[r])), s, nbrs, kT=kT))
    states = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    e, f, sigma = _first_eval(potential)(params, states.neighbors.attach(states.system))
    return states.replace(energy=e, forces=f, stress=sigma)


def _first_eval(potential):
    return jax.jit(jax.vmap(lambda p, s: ForceProvider(potential, p).evaluate(s),
                            in_axes=(None, 0)))


def _observe(s):
    sysm = s.system
    return {"pe": s.energy, "ke": kinetic_energy(s.momenta, sysm.masses, sysm.atom_mask),
            "positions": sysm.positions}


def _block(potential, make, periodic: bool, n_int: int, length: int, chunk: int | None = None):
    """``(params, states) -> (states, obs)``: ``n_int`` log intervals of ``length`` steps of
    every replica (vmapped over ``AXIS``; with ``chunk``, over groups of that many replicas
    taken one after the other)."""

    def one_replica(params, state):
        integ = make(_ReplicaProvider(potential, params), None)

        def interval(s, _):
            if length > 1:
                s = jax.lax.scan(lambda c, _: (integ.step(c), None), s, None,
                                 length=length - 1)[0]
            s = integ.step(s, stress=periodic)
            return s, _observe(s)

        return jax.lax.scan(interval, state, None, length=n_int)

    batched = jax.vmap(one_replica, in_axes=(None, 0), axis_name=AXIS)
    if chunk is None:
        return batched

    def in_chunks(params, states):
        n_rep = jax.tree.leaves(states)[0].shape[0]
        groups = jax.tree.map(lambda a: a.reshape(n_rep // chunk, chunk, *a.shape[1:]), states)
        out = jax.lax.map(lambda g: batched(params, g), groups)
        return jax.tree.map(lambda a: a.reshape(n_rep, *a.shape[2:]), out)

    return in_chunks


def _chunk(n_rep: int, split) -> int | None:
    """Replicas per vmapped group: many replicas run as a loop over groups of ``CHUNK`` (one
    group's state stays in cache through a block) rather than one wide ``vmap``."""
    if split is not None or n_rep <= CHUNK or n_rep % CHUNK:
        return None
    return CHUNK


class _Programs:
    """Compiled blocks, one per (list spec, block shape); counts the compilations."""

    def __init__(self, potential, make, periodic, params, chunk=None):
        self.potential, self.make, self.periodic, self.params = potential, make, periodic, params
        self.chunk = chunk
        self.compiled: dict = {}

    def compile(self, states, n_int, length):
        """The compiled block for these states (compiled now if new; nothing is run)."""
        key = (states.neighbors.spec, n_int, length)
        if key not in self.compiled:
            fn = jax.jit(_block(self.potential, self.make, self.periodic, n_int, length,
                                self.chunk))
            self.compiled[key] = fn.lower(self.params, states).compile()
        return self.compiled[key]

    def __call__(self, states, n_int, length):
        return self.compile(states, n_int, length)(self.params, states)


def _replica_placement(devices, n_rep: int):
    """``place(tree)`` putting the replica axis (leading) over ``devices``, and the
    replicated placement of the shared parameters; ``(None, None)`` for one device."""
    if devices is None:
        return None, None
    if isinstance(devices, (int, np.integer)):
        if not 1 <= int(devices) <= len(jax.devices()):
            raise ValueError(f"devices: asked for {devices}, this run sees "
                             f"{len(jax.devices())}")
        chosen = jax.devices()[: int(devices)]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices: an empty list")
    if n_rep % len(chosen):
        raise ValueError(f"{n_rep} replicas do not split evenly over {len(chosen)} devices; "
                         f"use a multiple of {len(chosen)} replicas")
    if len(chosen) == 1:
        return None, None
    mesh = Mesh(np.asarray(chosen, dtype=object), (AXIS,))
    split, whole = NamedSharding(mesh, PartitionSpec(AXIS)), NamedSharding(mesh, PartitionSpec())
    return (lambda tree: jax.device_put(tree, split)), (lambda tree: jax.device_put(tree, whole))


def _plan(steps: int, log_every: int, block_steps: int) -> list[tuple[int, int]]:
    n_full, rest = divmod(steps, log_every)
    k = max(1, min(n_full, block_steps // log_every)) if n_full else 0
    plan = [(k, log_every)] * (n_full // k) if k else []
    if k and n_full % k:
        plan.append((n_full % k, log_every))
    if rest:
        plan.append((1, rest))
    return plan


def _regrow(states, potential, skin, tries):
    """Lists for every replica at ``states`` with more room (after an overflow)."""
    nbrs = states.neighbors
    m = int(nbrs.spec.max_neighbors)
    need = int(np.max(np.asarray(nbrs.max_count)))
    systems = unstack(states.system)
    fresh = allocate_replicas(systems, potential.cutoff, skin=skin,
                              capacity_multiplier=1.25 * 1.5 ** tries,
                              min_capacity=max(int(np.ceil(m * 1.5)), int(need * 1.25) + 1))
    return states.replace(neighbors=fresh)


def simulate_replicas(
    potential: Potential,
    params,
    systems: Sequence[System],
    *,
    ensemble: str = "nve",
    dt_fs: float,
    temperatures_kelvin,
    steps: int,
    log_every: int = 10,
    seeds: Sequence[int] | None = None,
    friction_per_fs: float = 0.01,
    tau_fs: float = 100.0,
    skin: float = 0.5,
    integrator: IntegratorFactory | None = None,
    block_steps: int = 200,
    n_atoms: int | None = None,
    devices=None,
) -> ReplicaResult:
    """Run MD of many replicas together: one compiled, vmapped, fused loop for all.

    Replica ``r`` starts exactly as ``md.simulate(potential, params, systems[r],
    ensemble=..., temperature_kelvin=temperatures_kelvin[r], seed=seeds[r], ...)`` does
    (Maxwell–Boltzmann momenta from ``jax.random.key(seeds[r])``) and follows the same
    trajectory up to floating-point summation order.

    Args:
      potential, params: the potential and its parameters (shared by all replicas).
      systems: the starting structures; padded to one bucket of ``n_atoms`` slots (default:
        the largest).
      ensemble: ``"nve"``, ``"langevin"`` or ``"nose-hoover"`` (ignored with ``integrator``).
      dt_fs: time step, fs.
      temperatures_kelvin: one temperature per replica (or one for all), K: the initial
        momenta and the bath.
      steps: time steps.
      log_every: steps between log points.
      seeds: one seed per replica (default ``0 … n−1``).
      friction_per_fs, tau_fs: Langevin friction (1/fs) and Nosé–Hoover period (fs).
      skin: Verlet skin, Å.
      integrator: optional ``(force_provider, kT or None) -> Integrator`` factory (e.g. an NPT
        integrator); its step must read the bath from ``state.kT``.
      block_steps: steps per jitted block between host checks.
      n_atoms: atom slots of the bucket.
      devices: spread the replicas over this many devices (or these devices): the replica
        axis is split over a device mesh, the parameters replicated, and the same compiled
        program runs partitioned (the number of replicas must be a multiple of the device
        count). None: one device.

    Returns:
      A :class:`ReplicaResult`.

    Raises:
      ValueError: bad options, or replicas of different periodicity.
      NeighborListError: the lists keep overflowing after reallocation.
    """
    n_rep = len(systems)
    kelvin, seeds = _check_replica_inputs(n_rep, temperatures_kelvin, seeds, steps, log_every,
                                          dt_fs)
    padded = unstack(stack(list(systems), n_atoms=n_atoms))
    make = integrator or _factory(ensemble, dt_fs, friction_per_fs, tau_fs)
    lists = allocate_replicas(padded, potential.cutoff, skin=skin)
    states = _initial_states(potential, params, padded, lists, make, kelvin, seeds)
    split, whole = _replica_placement(devices, n_rep)
    if split is not None:
        states, params = split(states), whole(params)
    periodic = bool(np.all(np.asarray(padded[0].pbc)))
    programs = _Programs(potential, make, periodic, params, _chunk(n_rep, split))
    obs = [jax.device_get(jax.vmap(_observe)(states))]
    obs[0] = jax.tree.map(lambda a: a[None], obs[0])
    n_realloc, wall, done = 0, 0.0, [0]
    for n_int, length in _plan(steps, log_every, block_steps):
        tries = 0
        programs.compile(states, n_int, length)  # compile (only) outside the timing
        t0 = time.perf_counter()
        out, seen = jax.block_until_ready(programs(states, n_int, length))
        wall += time.perf_counter() - t0
        while bool(jnp.any(out.neighbors.overflow)):
            if tries >= 8:
                raise NeighborListError(f"simulate_replicas: lists still overflow after {tries} "
                                        "reallocations (atoms collapsing?)")
            tries += 1
            n_realloc += 1
            states = _regrow(states, potential, skin, tries)
            if split is not None:
                states = split(states)
            out, seen = programs(states, n_int, length)
        states = out
        # vmap puts the replica axis first: [R, n_int, ...] -> [n_int, R, ...]
        obs.append(jax.tree.map(lambda a: np.swapaxes(np.asarray(a), 0, 1),
                                jax.device_get(seen)))
        done.extend(done[-1] + length * np.arange(1, n_int + 1))
    return _result(obs, states, kelvin, np.asarray(done), programs, n_realloc, wall, steps)


def _result(obs, states, kelvin, done, programs, n_realloc, wall, steps) -> ReplicaResult:
    cat = {k: np.concatenate([np.asarray(o[k]) for o in obs]) for k in obs[0]}
    mask = np.asarray(states.system.atom_mask, bool)  # [R, n]
    dof = np.maximum(3 * mask.sum(axis=1) - 3, 1)
    ke, pe = cat["ke"].astype(np.float64), cat["pe"].astype(np.float64)
    log = {"step": done, "potential_energy_ev": pe, "kinetic_energy_ev": ke,
           "total_energy_ev": pe + ke,
           "temperature_k": 2.0 * ke / (dof * units.kB),
           "target_temperature_k": np.broadcast_to(kelvin, pe.shape)}
    finals = [states.neighbors.attach(s) for s in unstack(states.system)]
    n_real = int(mask.sum())
    return ReplicaResult(log=log, positions=cat["positions"], final_states=states,
                         final_systems=finals, n_compiles=len(programs.compiled),
                         n_reallocations=n_realloc, wall_s=max(wall, 1e-12),
                         atom_steps_per_s=n_real * steps / max(wall, 1e-12))


def _check_replica_inputs(n_rep, temperatures_kelvin, seeds, steps, log_every, dt_fs):
    if n_rep < 1:
        raise ValueError("simulate_replicas: give at least one system")
    kelvin = np.broadcast_to(np.asarray(temperatures_kelvin, np.float64), (n_rep,)).copy()
    if not np.all(np.isfinite(kelvin) & (kelvin >= 0)):
        raise ValueError(f"simulate_replicas: temperatures must be finite and ≥ 0 K, got "
                         f"{kelvin.tolist()}")
    seeds = list(range(n_rep)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != n_rep:
        raise ValueError(f"simulate_replicas: {len(seeds)} seeds for {n_rep} replicas")
    if int(steps) != steps or steps < 0:
        raise ValueError(f"simulate_replicas: steps must be an integer ≥ 0, got {steps!r}")
    if int(log_every) != log_every or log_every < 1:
        raise ValueError(f"simulate_replicas: log_every must be an integer ≥ 1, got "
                         f"{log_every!r}")
    if not (np.isfinite(dt_fs) and dt_fs > 0):
        raise ValueError(f"simulate_replicas: dt_fs must be > 0 fs, got {dt_fs!r}")
    return kelvin, seeds


def relax_replicas(
    potential: Potential,
    params,
    systems: Sequence[System],
    *,
    cell: bool = True,
    fmax: float = 0.05,
    pressures_gpa=0.0,
    mask=None,
    hydrostatic: bool = False,
    max_steps: int = 1000,
    fire: FireConfig | None = None,
    skin: float = 0.5,
    check_every: int = 100,
    n_atoms: int | None = None,
) -> list[tuple[System, dict]]:
    """Relax many structures together (one compiled, vmapped FIRE program for all).

    Each replica follows exactly the path of :func:`jaxpot.md.relax` on its own (the same
    FIRE and cell coordinates; a replica that has converged stops moving while the others go
    on), so structures of different sizes and cells padded into one bucket relax at the cost
    of one compilation.

    Args:
      potential, params: the potential and its parameters.
      systems: the starting structures (padded to ``n_atoms`` slots, default the largest).
      cell, fmax, mask, hydrostatic, max_steps, fire, skin, check_every: as in
        :func:`jaxpot.md.relax` (shared by all replicas).
      pressures_gpa: target pressure per replica (or one for all), GPa.
      n_atoms: atom slots of the bucket.

    Returns:
      One ``(relaxed_system, info)`` per replica, as :func:`jaxpot.md.relax` returns them
      (padding kept).

    Raises:
      ValueError: bad options or structures (named).
      NeighborListError: the lists keep overflowing at the same step.
    """
    n_rep = len(systems)
    fire = fire or FireConfig()
    if n_rep < 1:
        raise ValueError("relax_replicas: give at least one system")
    press = np.broadcast_to(np.asarray(pressures_gpa, np.float64), (n_rep,))
    padded = unstack(stack(list(systems), n_atoms=n_atoms))
    opts = [_check_relax_inputs(
        potential, params, s, cell=cell, fmax=fmax, pressure_gpa=float(p), stress_gpa=None,
        mask=mask, max_steps=max_steps, check_every=check_every)
        for s, p in zip(padded, press, strict=True)]
    opts = jax.tree.map(lambda *xs: jnp.stack(xs), *opts)
    refs = jax.tree.map(lambda *xs: jnp.stack(xs), *[_stripped(s) for s in padded])
    lists = allocate_replicas(padded, potential.cutoff, skin=skin)
    states = [initial_state(s, jax.tree.map(lambda a, r=r: a[r], lists), fire)
              for r, s in enumerate(padded)]
    states = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    segment = _program(potential, bool(hydrostatic) and cell, fire, batched=True)
    states, n_realloc = _drive_replicas(segment, params, refs, opts, states, potential, skin,
                                        fmax=fmax, max_steps=max_steps, check_every=check_every)
    out = []
    for r in range(n_rep):
        st = jax.tree.map(lambda a, r=r: a[r], states)
        ref = jax.tree.map(lambda a, r=r: a[r], refs)
        final = current_system(ref, st, opts["mask"][r])
        volume = float(np.abs(np.linalg.det(np.asarray(final.cell))))
        f_max = float(_max_force(st))
        energy = float(st.energy)
        enthalpy = energy + press[r] * units.GPa * volume
        out.append((final, {"energy": energy, "enthalpy": enthalpy,
                            "stress": np.asarray(st.stress), "fmax": f_max,
                            "steps": int(st.steps), "converged": f_max < fmax,
                            "n_reallocations": n_realloc}))
    return out


def _drive_replicas(segment, params, refs, opts, states, potential, skin, *, fmax, max_steps,
                    check_every):
    """Host loop of :func:`relax_replicas`; any overflow reallocates every list (at each
    replica's last good state) and the dropped steps are computed again."""
    n_realloc, tries = 0, 0
    dtype = states.energy.dtype
    while True:
        fm = np.asarray(jax.vmap(_max_force)(states))
        steps = np.asarray(states.steps)
        going = ~np.asarray(states.evaluated) | ((fm >= fmax) & (steps < max_steps))
        if not going.any():
            return states, n_realloc
        stop_at = jnp.asarray(np.minimum(steps + check_every, max_steps), jnp.int32)
        states, bad = segment(params, refs, opts, states, stop_at, jnp.asarray(fmax, dtype))
        if not bool(np.any(bad)):
            tries = 0
            continue
        tries += 1
        if tries > 8:
            raise NeighborListError("relax_replicas: the neighbour lists still overflow after "
                                    "8 reallocations (atoms or a cell collapsing?)")
        n_realloc += 1
        here = [current_system(jax.tree.map(lambda a, r=r: a[r], refs),
                                      jax.tree.map(lambda a, r=r: a[r], states), opts["mask"][r])
                for r in range(steps.shape[0])]
        m = int(states.neighbors.spec.max_neighbors)
        need = int(np.max(np.asarray(states.neighbors.max_count)))
        fresh = allocate_replicas(here, potential.cutoff, skin=skin,
                                  capacity_multiplier=1.25 * 1.5 ** tries,
                                  min_capacity=max(m, int(need * 1.25) + 1))
        states = states._replace(neighbors=fresh)

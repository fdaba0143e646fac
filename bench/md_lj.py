"""Lennard-Jones NVE benchmark: jaxpot vs JAX MD (and ASE for scale), in one process.

The system is LAMMPS's ``bench/in.lj``: an fcc Lennard-Jones fluid in reduced units
(σ = ε = m = 1), reduced density 0.8442, cutoff 2.5σ, Verlet skin 0.3σ, Maxwell-Boltzmann
velocities at T* = 1.44, time step 0.005 τ, float32. Both JAX codes start from the same
positions and velocities and run velocity-Verlet NVE with a cell-list neighbour list that is
rebuilt when an atom has moved more than half the skin; the steps are fused on the device
(``lax.scan`` for jaxpot, ``lax.fori_loop`` for JAX MD) and timed after compilation, interleaved
round by round so that both see the same machine load.

Measured: atom-steps per second (atoms × steps / wall time, median over ``--repeats`` rounds)
and the relative energy drift |E(end) − E(0)| / |E(0)| over the timed run of each code.

JAX MD is run with its own ``simulate.nve``, ``partition.neighbor_list`` and
``energy.lennard_jones_neighbor_list`` (which smoothly switches the LJ pair energy to zero between
2.0σ and 2.5σ, where jaxpot and ASE shift it; the cost per pair is the same) in every neighbour
list format (``Dense``, ``Sparse``, ``OrderedSparse``); the fastest is reported as the peer.

Usage::

    python bench/md_lj.py                      # N = 4000 and 32000
    python bench/md_lj.py --sizes 4000 --steps 200 --repeats 5
    python bench/md_lj.py --quick              # tiny smoke test (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import jax
import numpy as np

jax.config.update("jax_enable_x64", False)
warnings.filterwarnings("ignore", message="Explicitly requested dtype")

import jax.numpy as jnp  # noqa: E402

DENSITY = 0.8442
CUTOFF = 2.5
SKIN = 0.3
TEMPERATURE = 1.44
DT = 0.005


# ---------------------------------------------------------------------------------------------
# Initial state (shared by every code)
# ---------------------------------------------------------------------------------------------


def lattice_state(n_atoms: int, seed: int = 0):
    """fcc lattice at the LJ density and MB velocities at T* (zero momentum, exact T*)."""
    k = round((n_atoms / 4) ** (1 / 3))
    if 4 * k**3 != n_atoms:
        raise ValueError(
            f"N must be 4·k³ for an fcc box (4000 = 4·10³, 32000 = 4·20³); got {n_atoms}")
    box = (n_atoms / DENSITY) ** (1 / 3)
    a = box / k
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cells = np.stack(np.meshgrid(*[np.arange(k)] * 3, indexing="ij"), -1).reshape(-1, 1, 3)
    positions = ((cells + basis[None]) * a).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    velocities = rng.normal(size=(n_atoms, 3))
    velocities -= velocities.mean(0)
    t_now = (velocities**2).sum() / (3 * n_atoms - 3)
    velocities *= np.sqrt(TEMPERATURE / t_now)
    return positions, velocities, box


def initial_state(n_atoms: int, melt_steps: int, seed: int = 0):
    """The lattice state melted by ``melt_steps`` NVE steps (jaxpot, generous list capacity).

    Starting the timed runs from a liquid keeps the neighbour counts of both codes near their
    steady state (a perfect lattice gives every atom the same count, so a list sized on it
    overflows as soon as the crystal melts).
    """
    positions, velocities, box = lattice_state(n_atoms, seed)
    if melt_steps:
        c = make_jaxpot(positions, velocities, box, melt_steps, capacity_multiplier=1.6)
        (x, v, _, nbrs), _ = c["run"](c["carry"])
        if bool(nbrs.overflow):
            raise RuntimeError("neighbour list overflowed while melting")
        positions = np.asarray(x, np.float64) % box
        velocities = np.asarray(v, np.float64)
    return positions, velocities, box


# ---------------------------------------------------------------------------------------------
# jaxpot
# ---------------------------------------------------------------------------------------------


def make_jaxpot(positions, velocities, box, steps, capacity_multiplier=1.25):
    """A minimal fused velocity-Verlet loop built on jaxpot's primitives (no md module)."""
    import jaxpot
    from jaxpot import neighbors
    from jaxpot.potentials import lennard_jones

    system = _jaxpot_system(positions, box)
    pot = lennard_jones(sigma=1.0, epsilon=1.0, cutoff=CUTOFF)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), pot.init(None, system))
    t0 = time.perf_counter()
    nbrs = neighbors.allocate(system, CUTOFF, skin=SKIN, capacity_multiplier=capacity_multiplier)
    t_alloc = time.perf_counter() - t0
    ef = jaxpot.energy_and_forces(pot)

    def forces(x, nbrs):
        s = system.replace(positions=x)
        nbrs = neighbors.update(nbrs, s)
        e, f = ef(params, nbrs.attach(s))
        return e, f, nbrs

    @jax.jit
    def init(x, v, nbrs):
        e, f, nbrs = forces(x, nbrs)
        return (x, v, f, nbrs), e + 0.5 * jnp.sum(v * v)

    @jax.jit
    def run(carry):
        def step(carry, _):
            x, v, f, nbrs = carry
            v = v + (0.5 * DT) * f
            x = x + DT * v
            e, f, nbrs = forces(x, nbrs)
            v = v + (0.5 * DT) * f
            return (x, v, f, nbrs), None

        carry, _ = jax.lax.scan(step, carry, None, length=steps)
        x, v, f, nbrs = carry
        s = system.replace(positions=x)
        e = pot.energy(params, nbrs.attach(s)) + 0.5 * jnp.sum(v * v)
        return carry, e

    def overflow(carry):
        return bool(carry[3].overflow)

    carry, e0 = init(jnp.asarray(positions, jnp.float32), jnp.asarray(velocities, jnp.float32),
                     nbrs)
    return {"run": run, "carry": carry, "e0": float(e0), "overflow": overflow,
            "alloc_s": t_alloc, "max_neighbors": nbrs.spec.max_neighbors}


def _jaxpot_system(positions, box):
    import jaxpot

    n = positions.shape[0]
    return jaxpot.System.from_arrays(
        positions, np.full(n, 18), cell=np.eye(3) * box, pbc=True, masses=np.ones(n),
        dtype=jnp.float32,
    )


def make_jaxpot_md(positions, velocities, box, steps):
    """jaxpot's public MD API: ``md.nve`` steps fused in ``lax.scan``."""
    from jaxpot import md, neighbors
    from jaxpot.potentials import lennard_jones

    system = _jaxpot_system(positions, box)
    pot = lennard_jones(sigma=1.0, epsilon=1.0, cutoff=CUTOFF)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), pot.init(None, system))
    t0 = time.perf_counter()
    nbrs = neighbors.allocate(system, CUTOFF, skin=SKIN)
    t_alloc = time.perf_counter() - t0
    integ = md.nve(pot, params, DT)
    state = integ.init(None, system, nbrs, momenta=jnp.asarray(velocities, jnp.float32))

    @jax.jit
    def run(state):
        state = jax.lax.scan(lambda s, _: (integ.step(s), None), state, None, length=steps)[0]
        return state, state.energy + 0.5 * jnp.sum(state.momenta**2)

    e0 = float(state.energy + 0.5 * jnp.sum(state.momenta**2))
    return {"run": run, "carry": state, "e0": e0, "alloc_s": t_alloc,
            "overflow": lambda state: bool(state.neighbors.overflow)}


def run_md_simulate(positions, velocities, box, steps, log_every):
    """``jaxpot.md.simulate`` end to end (its own timer excludes compilation)."""
    from jaxpot import md, units
    from jaxpot.potentials import lennard_jones

    system = _jaxpot_system(positions, box)
    pot = lennard_jones(sigma=1.0, epsilon=1.0, cutoff=CUTOFF)
    params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), pot.init(None, system))
    res = md.simulate(pot, params, system, dt_fs=DT / units.fs,
                      temperature_kelvin=TEMPERATURE / units.kB, steps=steps,
                      log_every=log_every, momenta=velocities, skin=SKIN)
    e = res.log["total_energy_ev"]
    return res.atom_steps_per_s, abs(e[-1] - e[0]) / abs(e[0]), res


# ---------------------------------------------------------------------------------------------
# JAX MD
# ---------------------------------------------------------------------------------------------


def make_jax_md(positions, velocities, box, steps, fmt: str):
    from jax_md import energy, partition, quantity, simulate, space

    box_j = jnp.float32(box)
    displacement, shift = space.periodic(box_j)
    neighbor_fn, energy_fn = energy.lennard_jones_neighbor_list(
        displacement, box_j, sigma=1.0, epsilon=1.0, r_cutoff=CUTOFF, dr_threshold=SKIN,
        format=getattr(partition.NeighborListFormat, fmt),
    )
    init_fn, apply_fn = simulate.nve(energy_fn, shift, dt=DT)
    x = jnp.asarray(positions, jnp.float32)
    t0 = time.perf_counter()
    nbrs = neighbor_fn.allocate(x)
    t_alloc = time.perf_counter() - t0
    mass = jnp.float32(1.0)
    state = init_fn(jax.random.key(0), x, kT=TEMPERATURE, neighbor=nbrs)
    state = state.set(momentum=jnp.asarray(velocities, jnp.float32) * mass)

    def total(state, nbrs):
        return energy_fn(state.position, neighbor=nbrs) + quantity.kinetic_energy(
            momentum=state.momentum, mass=state.mass)

    @jax.jit
    def run(carry):
        def body(i, carry):
            state, nbrs = carry
            nbrs = nbrs.update(state.position)
            state = apply_fn(state, neighbor=nbrs)
            return state, nbrs

        state, nbrs = jax.lax.fori_loop(0, steps, body, carry)
        return (state, nbrs), total(state, nbrs)

    e0 = float(jax.jit(total)(state, nbrs))
    return {"run": run, "carry": (state, nbrs), "e0": e0,
            "overflow": lambda carry: bool(carry[1].did_buffer_overflow), "alloc_s": t_alloc}


# ---------------------------------------------------------------------------------------------
# ASE (for scale)
# ---------------------------------------------------------------------------------------------


def run_ase(positions, velocities, box, steps):
    import ase
    from ase.calculators.lj import LennardJones
    from ase.md.verlet import VelocityVerlet

    n = positions.shape[0]
    atoms = ase.Atoms(f"Ar{n}", positions=positions, cell=np.eye(3) * box, pbc=True)
    atoms.set_masses(np.ones(n))
    atoms.set_velocities(velocities)
    atoms.calc = LennardJones(sigma=1.0, epsilon=1.0, rc=CUTOFF, smooth=False)
    dyn = VelocityVerlet(atoms, timestep=DT)
    e0 = atoms.get_total_energy()
    dyn.run(1)  # builds the neighbour list once
    t0 = time.perf_counter()
    dyn.run(steps)
    elapsed = time.perf_counter() - t0
    return n * steps / elapsed, abs(atoms.get_total_energy() - e0) / abs(e0), elapsed


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------


def _block(tree):
    jax.block_until_ready(tree)
    return tree


def bench_size(n, args):
    t0 = time.perf_counter()
    positions, velocities, box = initial_state(n, args.melt_steps)
    print(f"\n== N = {n}, box = {box:.4f} σ, {args.steps} steps per round, "
          f"{args.repeats} rounds (melted for {args.melt_steps} steps in "
          f"{time.perf_counter() - t0:.0f} s) ==", flush=True)
    makers = {"jaxpot (own loop)": make_jaxpot}
    if _have_md():
        makers["jaxpot md.nve"] = make_jaxpot_md
    for fmt in args.jax_md_formats:
        makers[f"jax_md[{fmt}]"] = (
            lambda *a, fmt=fmt: make_jax_md(*a, fmt))
    codes = {}
    for name, make in makers.items():
        t0 = time.perf_counter()
        codes[name] = make(positions, velocities, box, args.steps)
        print(f"  {name}: allocate {codes[name]['alloc_s']:.1f} s, setup "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    # Compile (and warm up) every code with one round.
    for name, c in codes.items():
        t0 = time.perf_counter()
        c["carry"], e = _block(c["run"](c["carry"]))
        c["times"], c["energies"] = [], [float(e)]
        print(f"  {name}: compile + first round {time.perf_counter() - t0:.1f} s", flush=True)
    for _ in range(args.repeats):  # interleaved rounds: every code sees the same load
        for c in codes.values():
            t0 = time.perf_counter()
            c["carry"], e = _block(c["run"](c["carry"]))
            c["times"].append(time.perf_counter() - t0)
            c["energies"].append(float(e))
    results = {}
    for name, c in codes.items():
        if c["overflow"](c["carry"]):
            print(f"  {name}: NEIGHBOUR LIST OVERFLOW, result invalid")
        rate = n * args.steps / statistics.median(c["times"])
        drift = abs(c["energies"][-1] - c["e0"]) / abs(c["e0"])
        results[name] = rate
        spread = n * args.steps / max(c["times"]), n * args.steps / min(c["times"])
        print(f"  {name:22s} {rate:10.4g} atom-steps/s  (range {spread[0]:.3g}-{spread[1]:.3g})  "
              f"rel. energy drift {drift:.1e} over {(args.repeats + 1) * args.steps} steps, "
              f"E0/N = {c['e0'] / n:.4f}", flush=True)
    if args.simulate and _have_md():
        rate, drift, _ = run_md_simulate(positions, velocities, box,
                                         args.repeats * args.steps, args.steps)
        results["jaxpot md.simulate"] = rate
        print(f"  {'jaxpot md.simulate':22s} {rate:10.4g} atom-steps/s  (one call, "
              f"{args.repeats * args.steps} steps, not interleaved)  rel. energy drift "
              f"{drift:.1e}", flush=True)
    peers = {k: v for k, v in results.items() if k.startswith("jax_md")}
    best = max(peers, key=peers.get) if peers else None
    if best:
        for name in results:
            if name.startswith("jaxpot"):
                print(f"  ratio {name} / {best} = {results[name] / peers[best]:.2f}")
    if args.ase_steps and n <= args.ase_max_atoms:
        rate, drift, el = run_ase(positions, velocities, box, args.ase_steps)
        results["ase"] = rate
        print(f"  {'ase VelocityVerlet+LJ':22s} {rate:10.4g} atom-steps/s  "
              f"({args.ase_steps} steps, "
              f"{el:.1f} s, rel. drift {drift:.1e}); jaxpot / ase = "
              f"{results['jaxpot (own loop)'] / rate:.0f}")
    return results


def _have_md():
    try:
        from jaxpot import md

        return hasattr(md, "nve") and hasattr(md, "simulate")
    except ImportError:
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[4000, 32000])
    p.add_argument("--steps", type=int, default=100, help="MD steps per timed round")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds per code")
    p.add_argument("--ase-steps", type=int, default=3, help="ASE steps (0 skips ASE)")
    p.add_argument("--ase-max-atoms", type=int, default=4000, help="skip ASE above this N")
    p.add_argument("--jax-md-formats", nargs="*", default=["Dense", "Sparse", "OrderedSparse"])
    p.add_argument("--melt-steps", type=int, default=400,
                   help="NVE steps that melt the fcc lattice before timing")
    p.add_argument("--no-simulate", dest="simulate", action="store_false",
                   help="skip the end-to-end jaxpot.md.simulate run")
    p.add_argument("--quick", action="store_true", help="tiny sizes and few steps (smoke test)")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.repeats, args.ase_steps = [864], 20, 2, 2
        args.melt_steps = 50
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, float32")
    for n in args.sizes:
        bench_size(n, args)


if __name__ == "__main__":
    sys.exit(main())

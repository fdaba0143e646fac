"""Coulomb energy + forces of a large ionic cell: jaxpot's smooth PME vs jax-pme vs LAMMPS PPPM.

The system is rattled rock-salt NaCl (±1 e, a = 5.64 Å, 0.1 Å rattle) with 1 000 and 8 000 ions,
float64, real-space cutoff 8 Å for all three codes. Each code computes the total electrostatic
energy and the forces; the compiled JAX programs and LAMMPS' ``run`` are timed after compilation
and setup, in the same process, interleaved round by round (median of ``--rounds``).

Accuracy is measured, not assumed: every code's forces are compared with a reference computed
by jaxpot's PME at a much tighter setting (order 10, ``accuracy=1e-10``; checked against jaxpot's
plain Ewald sum at 1 000 ions), and the RMS force error is printed next to the time, so the
speed ratio is read at matched accuracy. LAMMPS runs ``pair_style coul/long 8.0`` +
``kspace_style pppm <accuracy>`` (its own choice of splitting and mesh for that relative force
accuracy); jax-pme runs its ``P3M`` calculator (5 interpolation nodes, full neighbour list)
with jaxpot's splitting and a mesh spacing chosen to give the same error. The neighbour lists are
built once on the host and not timed (LAMMPS does not rebuild its list either in a ``run`` whose
atoms do not move).

Usage::

    LD_LIBRARY_PATH=.venv/lib python bench/coulomb.py                # 1000 and 8000 ions
    LD_LIBRARY_PATH=.venv/lib python bench/coulomb.py --sizes 1000 --rounds 3
    python bench/coulomb.py --quick                                   # smoke test (64 ions)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
from ase.build import bulk  # noqa: E402

import jaxpot.potentials.coulomb as C  # noqa: E402
from jaxpot import System, units  # noqa: E402

CUTOFF = 8.0


def nacl(n_ions: int, seed: int = 0):
    reps = round((n_ions / 8) ** (1 / 3))
    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True).repeat(reps)
    atoms.rattle(0.1, seed=seed)
    return atoms, np.where(atoms.numbers == 11, 1.0, -1.0)


def jaxpot_fn(settings, system, q):
    # the structure and charges are arguments (not constants folded into the program), as in MD
    def energy(x, system, q):
        return C.coulomb_energy(system.replace(positions=x), q, settings)

    fn = jax.jit(jax.value_and_grad(energy))
    qj = jnp.asarray(q)
    return lambda: [np.asarray(v) * s for v, s in zip(fn(system.positions, system, qj), (1, -1),
                                                       strict=True)]


def jaxpme_fn(system, q, alpha, spacing):
    import jaxpme
    from jaxpme.kspace import get_kgrid_mesh

    calc = jaxpme.P3M(prefactor=units.coulomb_constant, interpolation_nodes=5,
                      full_neighbor_list=True)
    cell = np.asarray(system.cell)
    k_grid = get_kgrid_mesh(cell, spacing)
    smearing = 1.0 / (np.sqrt(2.0) * alpha)
    n = system.n_atoms
    i, j = np.asarray(system.receivers), np.asarray(system.senders)
    keep = (i < n) & (j < n)
    args = (jnp.asarray(i[keep]), jnp.asarray(j[keep]), jnp.asarray(system.shifts)[keep],
            k_grid, smearing)
    fn = jax.jit(calc.energy_forces)
    pos, cellj, qj = system.positions, jnp.asarray(cell), jnp.asarray(q)
    return lambda: [np.asarray(v) for v in fn(qj, cellj, pos, *args)], tuple(k_grid.shape)


def lammps_fn(atoms, q, accuracy):
    from lammps import lammps

    lmp = lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "nacl.data")
        c = atoms.cell.lengths()
        with open(path, "w") as fh:
            fh.write(f"nacl\n\n{len(atoms)} atoms\n2 atom types\n\n0 {c[0]} xlo xhi\n"
                     f"0 {c[1]} ylo yhi\n0 {c[2]} zlo zhi\n\nMasses\n\n1 22.99\n2 35.45\n\n"
                     "Atoms # charge\n\n")
            for k, (x, charge) in enumerate(zip(atoms.positions, q, strict=True)):
                fh.write(f"{k + 1} {1 if charge > 0 else 2} {float(charge)!r} "
                         f"{float(x[0])!r} {float(x[1])!r} {float(x[2])!r}\n")
        for cmd in ["units metal", "atom_style charge", "boundary p p p",
                    "atom_modify map array sort 0 0", f"read_data {path}",
                    f"pair_style coul/long {CUTOFF}", "pair_coeff * *",
                    f"kspace_style pppm {accuracy}", "neighbor 0.5 bin",
                    "thermo_style custom step pe", "run 0"]:
            lmp.command(cmd)
    steps = 5

    def run():
        lmp.command(f"run {steps} pre no post no")
        f = np.array(lmp.numpy.extract_atom("f"))[:len(atoms)]
        ids = np.array(lmp.numpy.extract_atom("id"))[:len(atoms)]
        return [lmp.get_thermo("pe"), f[np.argsort(ids)]]

    return run, steps


def timed(fn, rounds_out, calls=1):
    t = time.perf_counter()
    out = fn()
    rounds_out.append((time.perf_counter() - t) / calls)
    return out


def rms(f, ref):
    return float(np.sqrt(np.mean((f - ref) ** 2)))


def run_size(n_ions: int, rounds: int, accuracy: float, lammps_accuracy: float):
    atoms, q = nacl(n_ions)
    system = System.from_ase(atoms, cutoff=CUTOFF)
    lengths = atoms.cell.lengths().max()
    ref_settings = C.coulomb_settings("pme", accuracy=1e-10, cutoff=CUTOFF, order=10,
                                      max_lengths=lengths, periodic=True)
    e_ref, f_ref = jaxpot_fn(ref_settings, system, q)()
    settings = C.coulomb_settings("pme", accuracy=accuracy, cutoff=CUTOFF, max_lengths=lengths,
                                  periodic=True)
    codes = {"jaxpot PME": (jaxpot_fn(settings, system, q), 1)}
    # jax-pme's meshes are powers of two (2 ceil(L/spacing) + 1, rounded up): the smallest
    # one at least as fine as jaxpot's, and the next coarser one
    fine = 1 << int(np.ceil(np.log2(settings.mesh[0])))
    for points in (fine, fine // 2):
        spacing = lengths / ((points - 1) // 2)
        pme_peer, grid = jaxpme_fn(system, q, settings.alpha, spacing)
        codes[f"jax-pme P3M (mesh {grid[0]}^3)"] = (pme_peer, 1)
    try:
        lmp_run, steps = lammps_fn(atoms, q, lammps_accuracy)
        codes[f"LAMMPS pppm {lammps_accuracy:g}"] = (lmp_run, steps)
    except (ImportError, OSError) as err:
        print(f"  LAMMPS skipped: {err}")
    times = {k: [] for k in codes}
    results = {k: fn() for k, (fn, _) in codes.items()}  # compile / set up
    for _ in range(rounds):
        for k, (fn, calls) in codes.items():
            results[k] = timed(fn, times[k], calls)
    print(f"\n{n_ions} ions, cell {lengths:.2f} Å, real-space cutoff {CUTOFF} Å; jaxpot mesh "
          f"{settings.mesh} order {settings.order}, α = {settings.alpha:.4f} Å⁻¹")
    print(f"  reference energy {float(e_ref):.6f} eV, RMS force {rms(f_ref, 0):.4f} eV/Å")
    base = statistics.median(times["jaxpot PME"])
    for k in codes:
        e, f = results[k]
        t = statistics.median(times[k])
        print(f"  {k:38s} {1e3 * t:9.2f} ms  ratio to jaxpot {t / base:6.2f}  "
              f"force RMS error {rms(f, f_ref):.2e} eV/Å  energy error "
              f"{abs(float(e) - float(e_ref)):.2e} eV")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--accuracy", type=float, default=1e-5)
    parser.add_argument("--lammps-accuracy", type=float, default=1e-5)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}")
    for n in ([64] if args.quick else args.sizes):
        run_size(n, 1 if args.quick else args.rounds, args.accuracy, args.lammps_accuracy)


if __name__ == "__main__":
    main()

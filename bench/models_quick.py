"""Quick timing of jaxpot's NequIP and MACE on a 108-atom fcc Cu cell (r_c = 5 Å).

Times jitted energy + forces and one Adam training step on 8 rattled cells (energy + forces
loss) for the 2-layer ``32x0e+32x1o+32x2e`` models, the hyperparameters of the acceptance
comparison against InstaDeep's ``mlip``. Prints wall and process-CPU seconds (best of N): on a
shared machine the CPU time is the steadier figure. mlip is not run here (not installed).

Usage: ``python bench/models_quick.py [--repeats 10] [--models nequip,mace]``
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from ase.build import bulk

import jaxpot
from jaxpot import System, models

CONFIG = dict(species=["Cu"], cutoff=5.0, features="32x0e+32x1o+32x2e", num_layers=2, l_max=2,
              num_bessel=8, envelope_p=6, radial_hidden=[64, 64])


def _time(fn, *args, repeats: int) -> tuple[float, float]:
    jax.block_until_ready(fn(*args))
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn(*args))
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def _cells(n: int) -> list[System]:
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
        atoms.rattle(0.05, seed=i)
        out.append(System.from_ase(atoms, cutoff=5.0))
    return out


def main(repeats: int = 10, names: tuple[str, ...] = ("nequip", "mace")) -> dict:
    cells = _cells(8)
    system = cells[0]
    avg = models.average_num_neighbors(cells, 5.0)
    batch = jaxpot.stack(cells)
    print(f"108-atom Cu cell: {int(np.sum(system.edge_mask))} edges ({avg:.1f} per atom)")
    results = {}
    for name in names:
        pot = getattr(models, name)(**CONFIG, avg_num_neighbors=avg)
        params = pot.init(jax.random.key(0), system)
        ef = jax.jit(jaxpot.energy_and_forces(pot))
        wall, cpu = _time(ef, params, system, repeats=repeats)
        print(f"{name:7s} energy+forces : wall {wall:.4f} s  cpu {cpu:.4f} s")

        e_ref, f_ref = jax.vmap(ef, in_axes=(None, 0))(params, batch)
        opt = optax.adam(1e-3)

        def loss(p, b):
            e, f = jax.vmap(jaxpot.energy_and_forces(pot), in_axes=(None, 0))(p, b)
            return jnp.mean((e - e_ref) ** 2) + jnp.mean((f - 1.01 * f_ref) ** 2)

        @jax.jit
        def step(p, s, b):
            val, g = jax.value_and_grad(loss)(p, b)
            upd, s = opt.update(g, s, p)
            return optax.apply_updates(p, upd), s, val

        state = opt.init(params)
        wall_t, cpu_t = _time(lambda p, s: step(p, s, batch), params, state,
                              repeats=max(2, repeats // 3))
        print(f"{name:7s} train step (8): wall {wall_t:.4f} s  cpu {cpu_t:.4f} s")
        results[name] = {"energy_forces_s": wall, "train_step_s": wall_t}
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--models", default="nequip,mace")
    args = ap.parse_args()
    main(args.repeats, tuple(args.models.split(",")))

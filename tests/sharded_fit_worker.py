"""Worker for tests/test_sharding.py: train a small NequIP model on several devices or processes.

Run as a script in a fresh process (the device count of the CPU backend is fixed at start-up):

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python sharded_fit_worker.py OUT.json \
        --devices 1 2 4 [--checkpoint DIR] [--process-id K --num-processes N --port P]

Writes a JSON file with, per device count, the loss of every step and the final parameters.
"""

from __future__ import annotations

import argparse
import json
import sys


def _dataset(n: int):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    from jaxpot import data

    images = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        images.append(atoms)
    return data.from_atoms(images, cutoff=3.0), images[0]


def _model(name: str, stats):
    from jaxpot import potentials
    from jaxpot.models import nequip

    if name == "nequip":
        return nequip(species=["Cu"], features="4x0e+4x1o", cutoff=3.0, radial_hidden=[8],
                      num_layers=1, avg_num_neighbors=stats.avg_num_neighbors)
    return potentials.morse(D=0.3, alpha=1.4, r0=2.7, cutoff=3.0)


class Killed(Exception):
    """Raised by the callback to stop a run as a kill would, after a checkpoint."""


def _fit(devices, tr, va, example, *, model: str, epochs: int, checkpoint: str | None,
         kill_after_epoch: int | None = None):
    import jax
    import numpy as np

    from jaxpot import System, data, train

    stats = data.statistics(tr)
    pot = _model(model, stats)
    init = pot.init(jax.random.key(0), System.from_ase(example, cutoff=3.0))
    pot, params = train.attach_element_refs(pot, init, stats)
    cfg = train.TrainConfig(batch_size=4, eval_batch_size=4, epochs=epochs, lr=5e-3,
                            warmup_epochs=0.0, dtype="float32", progress=False, patience=None,
                            stress_weight=0.0, seed=0)
    losses = []

    def record(event):
        if event["event"] == "step":
            losses.append(float(event["metrics"]["loss"]))
        elif event["epoch"] + 1 == kill_after_epoch:  # the epoch's checkpoint is written
            raise Killed

    res = train.fit(pot, params, tr, va, cfg, stats=stats, devices=devices,
                    checkpoint_path=checkpoint, callback=record, verbose=False)
    evals = [train.evaluate(pot, res.params, va, batch_size=4, devices=d) for d in (None, devices)]
    leaves = [np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(res.state.params)]
    shardings = {str(x.sharding) for x in jax.tree.leaves(res.state.params)}
    return {"losses": losses, "params": np.concatenate(leaves).tolist(),
            "n_devices_seen": len(jax.devices()), "shardings": sorted(shardings)[:2],
            "eval_one_device": evals[0], "eval_sharded": evals[1]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--devices", type=int, nargs="+", default=[1])
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--model", choices=("nequip", "morse"), default="nequip")
    p.add_argument("--checkpoint", help="also train on the first count for 3 epochs with this "
                   "checkpoint, then resume on 1 device for the rest")
    p.add_argument("--process-id", type=int)
    p.add_argument("--num-processes", type=int)
    p.add_argument("--port", type=int, default=12400)
    args = p.parse_args(argv)
    import jax

    if args.num_processes:
        jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                                   num_processes=args.num_processes, process_id=args.process_id)
    ds, example = _dataset(20)
    from jaxpot import data

    tr, va = data.split(ds, n_valid=4, seed=0)
    kw = dict(model=args.model, checkpoint=None)
    out = {str(n): _fit(n, tr, va, example, epochs=args.epochs, **kw) for n in args.devices}
    if args.checkpoint:
        kw["checkpoint"] = args.checkpoint
        try:
            _fit(args.devices[-1], tr, va, example, epochs=args.epochs, kill_after_epoch=3,
                 **kw)
        except Killed:
            pass
        out["resumed_on_1"] = _fit(1, tr, va, example, epochs=args.epochs, **kw)
    if jax.process_index() == 0:
        with open(args.out, "w") as f:
            json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())

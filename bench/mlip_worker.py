"""Worker for ``bench/mlip_throughput.py``: times InstaDeep's ``mlip`` in its own venv.

Run with ``.venv-mlip/bin/python`` (see ``bench/mlip_env.sh``); it never imports jaxpot. It
reads the benchmark cells from an extxyz file written by the parent (108-atom rattled fcc Cu
with EMT energy/force labels), builds mlip's NequIP or MACE with the hyperparameters given on
the command line, and prints one JSON object on stdout:

- ``n_params``: parameter count of the force field;
- ``ef_s``: per-call wall times of the jitted energy+forces on the first cell (after compile);
- ``train_s``: per-step wall times of mlip's own jitted ``make_train_step`` (MSE energy+force
  loss, ``optax.adam``, parameter EMA, as in mlip's training loop) on one batch of all cells;
- ``energy``, ``max_force``: a sanity check of the first evaluation;
- ``*_jit_cache_size``: compiled versions after a second call (1 = no retrace).

With ``--serve`` it prints that object (without the timings) once compiled, then answers
``ef N`` / ``train N`` lines on stdin with ``{"phase", "s" (seconds per call),
"jit_cache_sizes"}`` so that the parent can interleave its own rounds with mlip's.

Graphs are built with mlip's own neighbour list (``Graph.from_chemical_system``) and padded
with ``dynamically_batch`` exactly as mlip's ASE calculator and training loop do (one dummy
padding graph, one padding node, one padding edge).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

warnings.filterwarnings("ignore")

import ase.io  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from mlip.data import ChemicalSystem, DatasetInfo  # noqa: E402
from mlip.data.helpers.dynamically_batch import dynamically_batch  # noqa: E402
from mlip.graph import Graph  # noqa: E402
from mlip.models import ForceField, Mace, Nequip  # noqa: E402
from mlip.models.loss import MSELoss  # noqa: E402
from mlip.training.ema import exponentially_moving_average  # noqa: E402
from mlip.training.training_state import init_training_state  # noqa: E402
from mlip.training.training_step import make_train_step  # noqa: E402


def build_force_field(args, atomic_numbers):
    info = DatasetInfo(
        atomic_energies_map={int(z): 0.0 for z in sorted(set(atomic_numbers))},
        graph_cutoff_angstrom=args.cutoff,
        avg_num_neighbors=args.avg_num_neighbors,
        avg_r_min_angstrom=args.avg_r_min,
        scaling_mean=0.0,
        scaling_stdev=1.0,
    )
    radial = [int(w) for w in args.radial_hidden.split(",")]
    if args.model == "nequip":
        cfg = Nequip.Config(
            num_layers=args.num_layers,
            target_irreps=args.features,
            l_max=args.l_max,
            num_rbf=args.num_bessel,
            radial_mlp_hidden=radial,
            avg_num_neighbors=args.avg_num_neighbors,
        )
        net = Nequip(cfg, info)
    else:
        cfg = Mace.Config(
            num_layers=args.num_layers,
            num_channels=args.channels,
            l_max=args.l_max,
            correlation=args.correlation,
            num_rbf=args.num_bessel,
            radial_mlp_hidden=radial,
            readout_irreps=(f"{args.readout_hidden}x0e", "0e"),
            avg_num_neighbors=args.avg_num_neighbors,
        )
        net = Mace(cfg, info)
    return ForceField.from_mlip_network(net, seed=0), cfg


def graphs_of(images, cutoff):
    return [Graph.from_chemical_system(ChemicalSystem.from_ase_atoms(a), cutoff) for a in images]


def batch(graphs):
    """All graphs in one padded batch (+1 node, +1 edge, +1 dummy graph, as mlip pads)."""
    n_node = sum(int(g.n_node[0]) for g in graphs) + 1
    n_edge = sum(int(g.n_edge[0]) for g in graphs) + 1
    return next(dynamically_batch(graphs, n_node=n_node, n_edge=n_edge,
                                  n_graph=len(graphs) + 1))


def timed(fn, repeats, number):
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            jax.block_until_ready(fn())
        out.append((time.perf_counter() - t0) / number)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("nequip", "mace"), required=True)
    p.add_argument("--input", required=True, help="extxyz with the cells (labels included)")
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--features", default="32x0e + 32x1o + 32x2e")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--l-max", type=int, default=2)
    p.add_argument("--correlation", type=int, default=3)
    p.add_argument("--num-bessel", type=int, default=8)
    p.add_argument("--radial-hidden", default="64,64")
    p.add_argument("--readout-hidden", type=int, default=16)
    p.add_argument("--avg-num-neighbors", type=float, required=True)
    p.add_argument("--avg-r-min", type=float, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--number-ef", type=int, default=5)
    p.add_argument("--number-train", type=int, default=2)
    p.add_argument("--skip", default="", help="comma list of phases to skip: ef,train")
    p.add_argument("--serve", action="store_true",
                   help="after compiling, answer timing commands from stdin (used by the parent)")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))

    images = ase.io.read(args.input, ":")
    ff, cfg = build_force_field(args, images[0].numbers)
    graphs = graphs_of(images, args.cutoff)
    result = {
        "mlip_version": __import__("importlib.metadata").metadata.version("mlip"),
        "jax_version": jax.__version__,
        "model": args.model,
        "config": json.loads(cfg.model_dump_json()),
        "n_params": int(sum(x.size for x in jax.tree.leaves(ff.params))),
        "n_edges_first": int(graphs[0].n_edge[0]),
    }

    calls, jitted = {}, {}
    if "ef" not in skip:
        g1 = batch(graphs[:1])
        calc = jax.jit(ff.predictor.apply)
        t0 = time.perf_counter()
        out = jax.block_until_ready(calc(ff.params, g1))
        result["ef_compile_s"] = time.perf_counter() - t0
        n = int(graphs[0].n_node[0])
        result["energy"] = float(out.globals.energy[0])
        result["max_force"] = float(np.abs(np.asarray(out.nodes.forces)[:n]).max())
        calls["ef"] = lambda: calc(ff.params, g1)
        warm = timed(calls["ef"], 1, 1)[0]  # a second call: a retrace would show up here
        result["ef_second_call_s"] = warm
        result["ef_jit_cache_size"] = calc._cache_size()
        jitted["ef"] = calc

    if "train" not in skip:
        gb = batch(graphs)
        optimizer = optax.adam(1e-3)
        ema = exponentially_moving_average(0.99)
        step = make_train_step(ff.predictor, MSELoss(), optimizer, ema,
                               avg_n_graphs_per_batch=float(len(graphs)))
        state = init_training_state(ff.params, optimizer, ema)
        t0 = time.perf_counter()
        state, metrics = jax.block_until_ready(step(state, gb, 0))
        result["train_compile_s"] = time.perf_counter() - t0
        result["train_loss0"] = float(metrics["loss"])
        holder = {"state": state}

        def one():
            holder["state"], m = step(holder["state"], gb, 0)
            return m["loss"]

        calls["train"] = one
        result["train_second_call_s"] = timed(one, 1, 1)[0]
        result["train_jit_cache_size"] = step._cache_size()
        jitted["train"] = step

    if args.serve:
        # Interleaved mode: the parent sends "ef N" / "train N" lines and gets one JSON line
        # back per command ({"phase": ..., "s": seconds per call}); "quit" ends.
        print(json.dumps(result), flush=True)
        for line in sys.stdin:
            words = line.split()
            if not words or words[0] == "quit":
                break
            phase, number = words[0], int(words[1])
            s = timed(calls[phase], 1, number)[0]
            cache = {k: f._cache_size() for k, f in jitted.items()}  # 1 = no retrace
            print(json.dumps({"phase": phase, "s": s, "jit_cache_sizes": cache}), flush=True)
        return
    if "ef" in calls:
        result["ef_s"] = timed(calls["ef"], args.repeats, args.number_ef)
    if "train" in calls:
        result["train_s"] = timed(calls["train"], args.repeats, args.number_train)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()

"""Train InstaDeep's ``mlip`` NequIP on the EMT Cu data for a wall-time budget; report valid MAEs.

The peer run for jaxpot's training accuracy comparison. It runs under ``.venv-mlip`` (made by
``bench/mlip_env.sh``); started with another interpreter it re-executes itself there.

Pipeline (mlip's own pieces throughout): ``ExtxyzReader`` + ``GraphDatasetBuilder`` (training
mode: dataset info, i.e. least-squares atomic energies and ``avg_num_neighbors``, from the
train split; r_c = 5 Å; batch size 4), ``Nequip`` + ``ForceField``, ``MSELoss`` (default
weights: energy 1, forces 25), ``get_default_mlip_optimizer`` (AMSGrad, lr 0.01, gradient
clipping; the MACE-torch recipe), parameter EMA 0.99, and mlip's jitted ``make_train_step``.
The training loop runs until its wall-time budget is spent (checked every 10 steps, every step
with ``--quick``). The budget covers the training steps after the first one: reading the data,
building the graphs, compiling the train step (the first step) and the final evaluation are
timed and reported separately. Then the EMA parameters are evaluated on the validation file.

Model (the project's reference run): 2 layers, ``l_max`` 2, node irreps
``16x0e + 16x0o + 8x1o + 8x1e + 4x2e + 4x2o``, 8 Bessel functions, radial MLP 64-64.
Reference: mlip 0.2.5, 25 min -> valid force MAE 10.2 meV/Å, energy MAE 5.2 meV/atom.

Output: one JSON object on stdout (and ``--json FILE``) with ``energy_mae_mev_per_atom``,
``force_mae_mev_per_a`` (mean |ΔF| over force components), RMSEs, steps, epochs, timings.

Usage::

    python bench/mlip_train.py                   # 25 min budget
    python bench/mlip_train.py --quick           # 1 min smoke run
    python bench/mlip_train.py --minutes 10 --json bench/results/mlip_train.json
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MLIP_PYTHON = ROOT / ".venv-mlip" / "bin" / "python"

try:
    import mlip  # noqa: F401
except ImportError as err:
    # (compare prefixes: the venv's python is a symlink to the base interpreter)
    if MLIP_PYTHON.exists() and Path(sys.prefix).resolve() != MLIP_PYTHON.parents[1].resolve():
        os.execv(str(MLIP_PYTHON), [str(MLIP_PYTHON), __file__, *sys.argv[1:]])
    raise SystemExit("mlip is not importable: run `bash bench/mlip_env.sh` first") from err

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

warnings.filterwarnings("ignore")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from mlip.data import ExtxyzReader, GraphDatasetBuilder  # noqa: E402
from mlip.models import ForceField, Nequip  # noqa: E402
from mlip.models.loss import MSELoss  # noqa: E402
from mlip.training.ema import exponentially_moving_average, get_debiased_params  # noqa: E402
from mlip.training.optimizer import get_default_mlip_optimizer  # noqa: E402
from mlip.training.optimizer_config import OptimizerConfig  # noqa: E402
from mlip.training.training_state import init_training_state  # noqa: E402
from mlip.training.training_step import make_train_step  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "cu_emt"


def evaluate(predictor, params, dataset) -> dict:
    """Energy MAE per atom and force MAE per component over every real graph of ``dataset``."""
    apply = jax.jit(predictor.apply)
    e_err, f_err = [], []
    for graph in dataset:
        out = apply(params, graph)
        gmask = np.asarray(graph.graph_mask())
        nmask = np.asarray(graph.node_mask())
        n_node = np.asarray(graph.n_node)
        de = (np.asarray(out.globals.energy) - np.asarray(graph.globals.energy))
        e_err.append((de / np.maximum(n_node, 1))[gmask])
        df = np.asarray(out.nodes.forces) - np.asarray(graph.nodes.forces)
        f_err.append(df[nmask].ravel())
    e = np.concatenate(e_err)
    f = np.concatenate(f_err)
    return {
        "n_valid_structures": int(e.size),
        "energy_mae_mev_per_atom": 1e3 * float(np.mean(np.abs(e))),
        "energy_rmse_mev_per_atom": 1e3 * float(np.sqrt(np.mean(e * e))),
        "force_mae_mev_per_a": 1e3 * float(np.mean(np.abs(f))),
        "force_rmse_mev_per_a": 1e3 * float(np.sqrt(np.mean(f * f))),
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", default=str(DATA / "train.xyz"))
    p.add_argument("--valid", default=str(DATA / "valid.xyz"))
    p.add_argument("--minutes", type=float, default=25.0, help="wall-time budget")
    p.add_argument("--quick", action="store_true", help="1-minute smoke run")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--irreps", default="16x0e + 16x0o + 8x1o + 8x1e + 4x2e + 4x2o")
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--l-max", type=int, default=2)
    p.add_argument("--num-bessel", type=int, default=8)
    p.add_argument("--lr", type=float, default=None,
                   help="constant learning rate (default: mlip's optimizer default, 0.01)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", help="also write the result to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes = 1.0
    budget = 60.0 * args.minutes
    logging.getLogger("mlip").setLevel(logging.WARNING)
    t_start = time.perf_counter()

    builder = GraphDatasetBuilder(
        {"train": ExtxyzReader(args.train), "valid": ExtxyzReader(args.valid)},
        GraphDatasetBuilder.Config(graph_cutoff_angstrom=args.cutoff,
                                   batch_size=args.batch_size),
        mode="training",
    )
    datasets = builder.get_datasets()
    info = builder.dataset_info
    train_ds, valid_ds = datasets["train"], datasets["valid"]
    t_data = time.perf_counter() - t_start

    cfg = Nequip.Config(num_layers=args.num_layers, target_irreps=args.irreps,
                        l_max=args.l_max, num_rbf=args.num_bessel)
    ff = ForceField.from_mlip_network(Nequip(cfg, info), seed=args.seed)
    opt_cfg = OptimizerConfig() if args.lr is None else OptimizerConfig(
        init_learning_rate=args.lr, peak_learning_rate=args.lr, final_learning_rate=args.lr)
    optimizer = get_default_mlip_optimizer(opt_cfg)
    decay = 0.99
    ema = exponentially_moving_average(decay)
    n_graphs = train_ds.number_of_graphs()
    step = make_train_step(ff.predictor, MSELoss(), optimizer, ema,
                           avg_n_graphs_per_batch=n_graphs / len(train_ds))
    state = init_training_state(ff.params, optimizer, ema)

    n_steps = epochs = 0
    check_every = 1 if args.quick else 10
    t_compile = None
    t_loop = time.perf_counter()
    deadline = None  # set after the first (compiling) step: the budget is for training steps
    stop = False
    while not stop:
        for graph in train_ds:
            t0 = time.perf_counter()
            state, metrics = step(state, graph, epochs)
            n_steps += 1
            if t_compile is None:
                jax.block_until_ready(metrics["loss"])
                t_compile = time.perf_counter() - t0
                deadline = time.perf_counter() + budget
            if n_steps % check_every == 0:
                jax.block_until_ready(metrics["loss"])  # bound the async dispatch queue
                if time.perf_counter() > deadline:
                    stop = True
                    break
        else:
            epochs += 1
            loss = float(metrics["loss"])
            if not np.isfinite(loss):
                raise SystemExit(f"loss is {loss} after epoch {epochs}")
            print(f"epoch {epochs}: {n_steps} steps, loss {loss:.4g}, "
                  f"{time.perf_counter() - t_start:.0f} s", file=sys.stderr, flush=True)
        if time.perf_counter() > deadline:
            stop = True
    jax.block_until_ready(state.params)
    t_train = time.perf_counter() - t_loop - t_compile

    t0 = time.perf_counter()
    params = get_debiased_params(state.ema_state, decay)
    result = evaluate(ff.predictor, params, valid_ds)
    result.update({
        "mlip_version": __import__("importlib.metadata").metadata.version("mlip"),
        "jax_version": jax.__version__,
        "model": "nequip",
        "config": json.loads(cfg.model_dump_json()),
        "n_params": int(sum(x.size for x in jax.tree.leaves(ff.params))),
        "batch_size": args.batch_size,
        "n_train_structures": int(n_graphs),
        "avg_num_neighbors": float(info.avg_num_neighbors),
        "budget_s": budget,
        "steps": n_steps,
        "epochs_completed": epochs,
        "data_s": t_data,
        "first_step_compile_s": t_compile,
        "train_s_after_compile": t_train,
        "eval_s": time.perf_counter() - t0,
        "total_s": time.perf_counter() - t_start,
        "params_evaluated": "EMA (decay 0.99, debiased)",
        "load_average": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    })
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

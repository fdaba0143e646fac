"""Train InstaDeep's ``mlip`` (NequIP or MACE) for a wall-time budget; report valid/test errors.

The peer side of jaxpot's equal-budget accuracy benchmark. It runs under ``.venv-mlip`` (made
by ``bench/mlip_env.sh``); started with another interpreter it re-executes itself there (the
budget clock then starts in the re-executed process).

Budget: the clock starts at the top of this file, before the heavy imports. Imports, reading
the extxyz files, building the graphs (and mlip's dataset statistics), initialising the model,
compiling the train step and the training itself all count; training stops at the first check
after ``time.perf_counter() - t0 > budget``. Checks block on the loss (which also bounds the async
dispatch queue) every 1-10 steps, so that about 0.5 s passes between checks (every step with
``--quick``). Everything after the stop (learning-curve and test evaluation) is outside the
budget and timed separately.

Pipeline (mlip's own pieces throughout): ``ExtxyzReader`` + ``GraphDatasetBuilder`` (training
mode: least-squares atomic energies and ``avg_num_neighbors`` from the train split; r_c 5 Å;
batch size 4; mlip's median-based batch padding), ``Nequip`` or ``Mace`` + ``ForceField``
(energy and forces; no stress), ``MSELoss()`` with mlip's default weights (energy 1, forces 25,
stress 0: stress labels in cu_emt / nacl_bmh are read but not trained on),
``get_default_mlip_optimizer`` (AMSGrad, lr 0.01, gradient clipping 500; the MACE-torch
recipe), parameter EMA 0.99 (mlip's default), and mlip's jitted ``make_train_step``. All
evaluations use the debiased EMA parameters.

Models (``--family``), sized like jaxpot's defaults (and like ``bench/mlip_worker.py``):

- ``nequip``: 2 layers, ``l_max`` 2, node irreps ``16x0e + 16x0o + 8x1o + 8x1e + 4x2e + 4x2o``,
  8 Bessel functions, radial MLP 64-64 (24,200 / 25,384 / 26,568 parameters with 1 / 2 / 3
  species: cu_emt / nacl_bmh / ethanol_xtb).
- ``mace``: 2 layers, 32 channels, ``l_max`` 2 (node irreps ``32x0e + 32x1o + 32x2e``),
  correlation 3 (body order 4), 8 Bessel functions, radial MLP 64-64 (mlip's default is
  64-64-64), readout ``16x0e`` -> ``0e`` (67,792 / 74,608 / 81,424 parameters). mlip's
  documentation names no small model; its default (128 channels, ``l_max`` 3, "recommended to
  keep it at 3") is far too slow for a CPU budget, so this is jaxpot's MACE default, the size
  ``bench/mlip_throughput.py`` compares.

Model initialisation: mlip's ``ForceField.from_mlip_network`` initialises the parameters
eagerly (op by op), 30-70 s on one loaded CPU core, inside the budget. ``--jit-init`` runs the
same ``predictor.init`` (same key, same dummy graph) under ``jax.jit`` instead: 5-17 s,
parameters equal to 2e-7. The default is mlip's own path.

Learning curve: the EMA parameters are copied to the host at the first check after each mark
k/N of the budget (N = ``--curve-points``, k < N; marks passed before training starts give one
snapshot) and at the stop, and evaluated on the valid file after the budget. Each evaluation is
a full pass over the valid file (e.g. 20-50 s for 200 Cu cells on one core).

``--test FILE ...``: the final EMA parameters are evaluated on each extxyz file, overall and
per ``atoms.info["config_type"]``. Test graphs are built here from ase frames (mlip's
``ChemicalSystem.from_ase_atoms`` and neighbour list, one graph per frame, in file order), and
evaluation batches are padded to ``--eval-batch-size`` times the largest frame of the file, so
cells larger than the training ones are fine; frames with elements absent from the training
set are skipped and counted.

Errors: energy MAE / RMSE per atom (meV/atom; per frame |ΔE| / n_atoms), force MAE / RMSE over
all force components (meV/Å).

Output: one JSON object on stdout (and, written atomically, ``--json FILE``): the final valid
errors (top-level ``energy_mae_mev_per_atom``, ...), ``family``, ``config``, ``n_params``,
``steps``, ``learning_curve`` (list of ``elapsed_s``, ``steps``, ``epochs``, and the error
fields), ``test`` (per file: ``all`` and ``by_config_type``), ``timings_s`` (``imports``,
``data``, ``model_init`` (network, parameters, optimizer state), ``first_step`` (includes
compilation), ``second_step`` (also blocked on, in case it recompiles), ``train`` (the rest
of the loop), ``stop`` (elapsed since t0 at the stop), ``eval_curve``, ``eval_test``,
``total``).

Usage::

    D=../shared/data T=bench/results/testsets
    python bench/mlip_train.py --family nequip --minutes 30 \\
        --train $D/cu_emt/train.xyz --valid $D/cu_emt/valid.xyz \\
        --test $T/cu_emt/same.xyz $T/cu_emt/harder.xyz --json bench/results/mlip_nequip_cu.json
    python bench/mlip_train.py --family mace --minutes 30 \\
        --train $D/ethanol_xtb/train.xyz --valid $D/ethanol_xtb/valid.xyz \\
        --test $T/ethanol_xtb/same.xyz $T/ethanol_xtb/harder.xyz --json eth_mace.json
    python bench/mlip_train.py --family mace --minutes 30 \\
        --train $D/nacl_bmh/train.xyz --valid $D/nacl_bmh/valid.xyz \\
        --test $T/nacl_bmh/same.xyz $T/nacl_bmh/harder.xyz --json nacl_mace.json
    python bench/mlip_train.py --quick --jit-init   # 1-minute smoke run on cu_emt
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # the budget clock: everything below counts

import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

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
import resource  # noqa: E402
import warnings  # noqa: E402
from collections import defaultdict  # noqa: E402

warnings.filterwarnings("ignore")

import ase.io  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
from mlip.data import ChemicalSystem, ExtxyzReader, GraphDatasetBuilder  # noqa: E402
from mlip.data.helpers.dummy_init_graph import get_dummy_graph_for_model_init  # noqa: E402
from mlip.data.helpers.dynamically_batch import dynamically_batch  # noqa: E402
from mlip.graph import Graph  # noqa: E402
from mlip.models import ForceField, Mace, Nequip  # noqa: E402
from mlip.models.loss import MSELoss  # noqa: E402
from mlip.training.ema import exponentially_moving_average, get_debiased_params  # noqa: E402
from mlip.training.optimizer import get_default_mlip_optimizer  # noqa: E402
from mlip.training.optimizer_config import OptimizerConfig  # noqa: E402
from mlip.training.training_state import init_training_state  # noqa: E402
from mlip.training.training_step import make_train_step  # noqa: E402
from mlip.typing.properties import Properties  # noqa: E402

T_IMPORTS = time.perf_counter() - T0
DATA = ROOT.parent / "shared" / "data" / "cu_emt"
EMA_DECAY = 0.99  # mlip's TrainingLoopConfig default
SYNC_TARGET_S = 0.5  # aim for this much wall time between budget checks
MAX_CHECK_EVERY = 10  # never more than this many steps in flight


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", choices=("nequip", "mace"), default="nequip")
    p.add_argument("--train", default=str(DATA / "train.xyz"))
    p.add_argument("--valid", default=str(DATA / "valid.xyz"))
    p.add_argument("--test", nargs="+", default=[], metavar="FILE",
                   help="extxyz files to evaluate the final EMA parameters on")
    p.add_argument("--minutes", type=float, default=25.0,
                   help="wall-time budget from process start to the end of training")
    p.add_argument("--quick", action="store_true", help="1-minute smoke run")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--l-max", type=int, default=2)
    p.add_argument("--num-bessel", type=int, default=8)
    p.add_argument("--radial-hidden", default="64,64", help="radial MLP widths, comma list")
    p.add_argument("--irreps", default="16x0e + 16x0o + 8x1o + 8x1e + 4x2e + 4x2o",
                   help="NequIP node irreps")
    p.add_argument("--channels", type=int, default=32, help="MACE channels")
    p.add_argument("--correlation", type=int, default=3, help="MACE correlation order")
    p.add_argument("--readout-hidden", type=int, default=16, help="MACE readout width")
    p.add_argument("--lr", type=float, default=None,
                   help="constant learning rate (default: mlip's optimizer default, 0.01)")
    p.add_argument("--curve-points", type=int, default=10,
                   help="learning-curve snapshots over the budget (0: final only)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--jit-init", action="store_true",
                   help="initialise the parameters under jax.jit (not mlip's eager default)")
    p.add_argument("--json", help="also write the result to this file (atomically)")
    args = p.parse_args(argv)
    if args.quick:
        args.minutes = 1.0
    return args


def load_data(args):
    """mlip's reader + builder (training mode): train/valid datasets and the train statistics."""
    builder = GraphDatasetBuilder(
        {"train": ExtxyzReader(args.train), "valid": ExtxyzReader(args.valid)},
        GraphDatasetBuilder.Config(graph_cutoff_angstrom=args.cutoff,
                                   batch_size=args.batch_size),
        mode="training",
    )
    datasets = builder.get_datasets()
    return datasets["train"], datasets["valid"], builder.dataset_info


def build_network(args, info):
    """mlip's NequIP or MACE on the dataset info from the train split; returns (net, config)."""
    radial = [int(w) for w in args.radial_hidden.split(",")]
    if args.family == "nequip":
        cfg = Nequip.Config(num_layers=args.num_layers, target_irreps=args.irreps,
                            l_max=args.l_max, num_rbf=args.num_bessel,
                            radial_mlp_hidden=radial)
        return Nequip(cfg, info), cfg
    cfg = Mace.Config(num_layers=args.num_layers, num_channels=args.channels,
                      l_max=args.l_max, correlation=args.correlation,
                      num_rbf=args.num_bessel, radial_mlp_hidden=radial,
                      readout_irreps=(f"{args.readout_hidden}x0e", "0e"))
    return Mace(cfg, info), cfg


def build_force_field(net, seed: int, jit_init: bool) -> ForceField:
    """``ForceField.from_mlip_network`` (energy + forces), or its steps with a jitted init.

    mlip initialises the parameters eagerly (op by op), 30-70 s on one CPU core;
    ``jit_init`` runs the same ``predictor.init`` on the same key and dummy graph under
    ``jax.jit`` instead.
    """
    if not jit_init:
        return ForceField.from_mlip_network(net, seed=seed)
    props = Properties()
    predictor = ForceField.get_predictor_class(props, net.config)(
        mlip_network=net, required_properties=props,
        energy_head=ForceField.get_energy_head(net.config, props, net))
    params = jax.jit(predictor.init)(jax.random.key(seed), get_dummy_graph_for_model_init())
    return ForceField(predictor=predictor, params=params)


def make_step(args, ff, train_ds):
    """mlip's jitted train step (MSELoss defaults, default optimizer, EMA) and its state."""
    opt_cfg = OptimizerConfig() if args.lr is None else OptimizerConfig(
        init_learning_rate=args.lr, peak_learning_rate=args.lr, final_learning_rate=args.lr)
    optimizer = get_default_mlip_optimizer(opt_cfg)
    ema = exponentially_moving_average(EMA_DECAY)
    step = make_train_step(ff.predictor, MSELoss(), optimizer, ema,
                           avg_n_graphs_per_batch=train_ds.number_of_graphs() / len(train_ds))
    return step, init_training_state(ff.params, optimizer, ema)


class Clock:
    """Budget bookkeeping of the training loop: when to sync, snapshot and stop."""

    def __init__(self, budget: float, curve_points: int, quick: bool):
        self.budget = budget
        self.marks = [budget * k / curve_points for k in range(1, curve_points)]
        self.fixed = quick
        self.every = 1  # steps between checks (adapted after each check)
        self.left = 1
        self.last = (time.perf_counter(), 0)

    def due(self) -> bool:
        """Count one dispatched step; True when a check (a blocking sync) is due."""
        self.left -= 1
        return self.left <= 0

    def check(self, n_steps: int) -> tuple[float, bool]:
        """After a sync: elapsed seconds since t0, and whether a snapshot mark was passed."""
        now = time.perf_counter()
        t_last, n_last = self.last
        if not self.fixed and n_steps > n_last:
            per_step = (now - t_last) / (n_steps - n_last)
            self.every = int(min(MAX_CHECK_EVERY, max(1, SYNC_TARGET_S / max(per_step, 1e-9))))
        self.left, self.last = self.every, (now, n_steps)
        elapsed = now - T0
        passed = bool(self.marks) and elapsed >= self.marks[0]
        while self.marks and elapsed >= self.marks[0]:
            self.marks.pop(0)
        return elapsed, passed


def snapshot(state, elapsed: float, steps: int, epochs: int) -> dict:
    """Debiased EMA parameters on the host, with when they were taken."""
    params = jax.device_get(get_debiased_params(state.ema_state, EMA_DECAY))
    return {"elapsed_s": elapsed, "steps": steps, "epochs": epochs, "params": params}


def train(step, state, train_ds, args) -> tuple[object, dict]:
    """Run training steps until the budget (counted from T0) is spent."""
    clock = Clock(60.0 * args.minutes, max(args.curve_points, 1), args.quick)
    rec = {"steps": 0, "epochs": 0, "snapshots": [], "compile": []}
    t_log = t_loop = time.perf_counter()
    while True:
        for graph in train_ds:
            t_step = time.perf_counter()
            state, metrics = step(state, graph, rec["epochs"])
            rec["steps"] += 1
            if rec["steps"] <= 2:  # compile; the 2nd would recompile if the state changed type
                jax.block_until_ready(metrics["loss"])
                rec["compile"].append(time.perf_counter() - t_step)
            if not clock.due():
                continue
            jax.block_until_ready(metrics["loss"])  # bound the async dispatch queue
            elapsed, passed = clock.check(rec["steps"])
            if elapsed > clock.budget:
                rec["stop_s"] = elapsed
                rec["train_s"] = time.perf_counter() - t_loop - sum(rec["compile"])
                rec["snapshots"].append(snapshot(state, elapsed, rec["steps"], rec["epochs"]))
                return state, rec
            if passed:
                rec["snapshots"].append(snapshot(state, elapsed, rec["steps"], rec["epochs"]))
        rec["epochs"] += 1
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            raise SystemExit(f"loss is {loss} after epoch {rec['epochs']}")
        if time.perf_counter() - t_log > 30.0 or rec["epochs"] == 1:
            t_log = time.perf_counter()
            print(f"epoch {rec['epochs']}: {rec['steps']} steps, loss {loss:.4g}, "
                  f"{t_log - T0:.0f} s", file=sys.stderr, flush=True)


def frame_errors(apply, params, graphs, batch_size: int):
    """Per-frame energy error per atom (eV/atom) and per-frame force errors ([n, 3], eV/Å).

    The graphs are batched in order (mlip's ``dynamically_batch``) into batches padded to
    ``batch_size`` times the largest frame's nodes and edges (smaller frames pack more per
    batch), so one compiled shape serves the whole set.
    """
    sizes = np.array([(int(g.n_node[0]), int(g.n_edge[0])) for g in graphs])
    n_node, n_edge = batch_size * sizes.max(axis=0) + 1
    n_graph = int(n_node // max(sizes[:, 0].min(), 1)) + 1
    e_err, f_err = [], []
    for batch in dynamically_batch(graphs, n_node=int(n_node), n_edge=int(n_edge),
                                   n_graph=n_graph):
        out = apply(params, batch)
        real = np.asarray(batch.graph_mask())
        n = np.asarray(batch.n_node)[real]
        de = np.asarray(out.globals.energy)[real] - np.asarray(batch.globals.energy)[real]
        e_err.append(de / n)
        df = np.asarray(out.nodes.forces) - np.asarray(batch.nodes.forces)
        f_err.extend(np.split(df[: n.sum()], np.cumsum(n)[:-1]))
    if len(f_err) != len(graphs):
        raise RuntimeError(f"evaluated {len(f_err)} of {len(graphs)} frames")
    return np.concatenate(e_err), f_err


def error_stats(e: np.ndarray, forces: list[np.ndarray]) -> dict:
    """MAE / RMSE of energies per atom (meV/atom) and force components (meV/Å)."""
    f = np.concatenate([x.ravel() for x in forces])
    return {
        "n_structures": int(e.size),
        "n_atoms": int(f.size // 3),
        "energy_mae_mev_per_atom": 1e3 * float(np.mean(np.abs(e))),
        "energy_rmse_mev_per_atom": 1e3 * float(np.sqrt(np.mean(e * e))),
        "force_mae_mev_per_a": 1e3 * float(np.mean(np.abs(f))),
        "force_rmse_mev_per_a": 1e3 * float(np.sqrt(np.mean(f * f))),
    }


def learning_curve(apply, snapshots, valid_graphs, batch_size: int) -> list[dict]:
    """Valid errors of every snapshot, in order."""
    curve = []
    for snap in snapshots:
        e, f = frame_errors(apply, snap["params"], valid_graphs, batch_size)
        stats = error_stats(e, f)
        curve.append({k: snap[k] for k in ("elapsed_s", "steps", "epochs")}
                     | {k: v for k, v in stats.items() if "mae" in k or "rmse" in k})
    return curve


def read_labelled_frames(path: str, cutoff: float, allowed_z):
    """Graphs, config types and the number skipped (unseen elements) of an extxyz file."""
    graphs, types, skipped = [], [], 0
    for i, atoms in enumerate(ase.io.read(path, ":", format="extxyz")):
        if not set(atoms.numbers.tolist()) <= allowed_z:
            skipped += 1
            continue
        results = atoms.calc.results if atoms.calc is not None else {}
        if "energy" not in results or "forces" not in results:
            raise SystemExit(f"{path}: frame {i} has no energy/forces labels")
        system = ChemicalSystem.from_ase_atoms(atoms)
        graphs.append(Graph.from_chemical_system(system, cutoff))
        types.append(str(atoms.info.get("config_type", "none")))
    return graphs, types, skipped


def evaluate_test_file(apply, params, path: str, info, args) -> dict:
    """Errors of ``params`` on one extxyz file, overall and per config_type."""
    allowed = {int(z) for z in info.atomic_energies_map}
    graphs, types, skipped = read_labelled_frames(path, args.cutoff, allowed)
    if not graphs:
        return {"n_skipped_unseen_elements": skipped}
    e, f = frame_errors(apply, params, graphs, args.eval_batch_size)
    groups = defaultdict(list)
    for i, t in enumerate(types):
        groups[t].append(i)
    by_type = {t: error_stats(e[idx], [f[i] for i in idx]) for t, idx in sorted(groups.items())}
    return {"all": error_stats(e, f), "by_config_type": by_type,
            "n_skipped_unseen_elements": skipped,
            "max_atoms": max(int(g.n_node[0]) for g in graphs)}


def write_json(path: str, result: dict) -> None:
    """Atomic write: a temporary file in the same folder, then ``os.replace``."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, target)


def describe(args, cfg, ff, info, train_ds, valid_ds) -> dict:
    """The run's static description (versions, model, data, recipe)."""
    return {
        "family": args.family,
        "mlip_version": __import__("importlib.metadata").metadata.version("mlip"),
        "jax_version": jax.__version__,
        "config": json.loads(cfg.model_dump_json()),
        "n_params": int(sum(x.size for x in jax.tree.leaves(ff.params))),
        "train_file": args.train,
        "valid_file": args.valid,
        "n_train_structures": int(train_ds.number_of_graphs()),
        "n_valid_structures": len(valid_ds.graphs),
        "batch_size": args.batch_size,
        "cutoff": args.cutoff,
        "avg_num_neighbors": float(info.avg_num_neighbors),
        "atomic_energies": {str(z): float(e) for z, e in info.atomic_energies_map.items()},
        "recipe": "mlip MSELoss() (E 1, F 25, stress 0), get_default_mlip_optimizer("
                  + ("" if args.lr is None else f"lr {args.lr}") + "), EMA 0.99",
        "params_evaluated": "EMA (decay 0.99, debiased)",
        "budget_s": 60.0 * args.minutes,
        "budget_covers": "process start (before imports) to the end of training",
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.getLogger("mlip").setLevel(logging.WARNING)
    t = time.perf_counter()
    train_ds, valid_ds, info = load_data(args)
    t_data = time.perf_counter() - t
    net, cfg = build_network(args, info)
    ff = build_force_field(net, args.seed, args.jit_init)
    step, state = make_step(args, ff, train_ds)
    t_init = time.perf_counter() - t - t_data
    state, rec = train(step, state, train_ds, args)
    jax.block_until_ready(state.params)

    apply = jax.jit(ff.predictor.apply)
    t = time.perf_counter()
    curve = learning_curve(apply, rec["snapshots"], valid_ds.graphs, args.eval_batch_size)
    t_curve = time.perf_counter() - t
    final = rec["snapshots"][-1]["params"]
    test = {path: evaluate_test_file(apply, final, path, info, args) for path in args.test}
    t_test = time.perf_counter() - t - t_curve

    result = describe(args, cfg, ff, info, train_ds, valid_ds)
    result.update({k: v for k, v in curve[-1].items() if "mae" in k or "rmse" in k})
    result.update({
        "steps": rec["steps"],
        "epochs_completed": rec["epochs"],
        "learning_curve": curve,
        "test": test,
        "timings_s": {"imports": T_IMPORTS, "data": t_data, "model_init": t_init,
                      "first_step": rec["compile"][0],
                      "second_step": rec["compile"][1] if len(rec["compile"]) > 1 else None,
                      "train": rec["train_s"], "stop": rec["stop_s"],
                      "eval_curve": t_curve, "eval_test": t_test,
                      "total": time.perf_counter() - T0},
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpus": len(os.sched_getaffinity(0)),
        "load_average": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    })
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()

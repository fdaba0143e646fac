"""``jaxpot train`` and ``jaxpot eval`` (registered into :mod:`jaxpot.cli`).

::

    jaxpot train [CONFIG.yaml] [--train PATH] [--valid PATH] [--model NAME] [--cutoff Å]
                 [--epochs N] [--batch-size B] [--lr LR] [--time-budget-min M] [--seed S]
                 [--out DIR] [--resume | --restart]
    jaxpot eval MODEL DATA.xyz [--batch-size B]

Flags override the YAML file's fields (:class:`jaxpot.train.TrainConfig`); flags alone are
enough. ``train`` writes ``DIR/model``, ``DIR/metrics.csv``, ``DIR/plots/*.png`` and
``DIR/checkpoint``, resumes from ``DIR/checkpoint`` unless ``--restart``, and prints a JSON
summary. ``eval`` prints a JSON object of error metrics.
"""

from __future__ import annotations

import json
import sys
import time

__all__ = ["register", "load_config"]

_T0 = time.monotonic()  # the CLI imports this module at start-up: the time budget starts here


def load_config(path: str | None, overrides: dict):
    """A :class:`~jaxpot.train.TrainConfig` from a YAML file plus non-None ``overrides``."""
    from jaxpot.train.loop import TrainConfig

    data: dict = {}
    if path:
        import yaml

        try:
            with open(path) as f:
                data = yaml.safe_load(f) or {}
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a training config must be a YAML mapping")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(data)


def _cmd_train(args) -> int:
    from jaxpot.train.loop import train

    model_kwargs = None
    if args.model_kwargs:
        try:
            model_kwargs = json.loads(args.model_kwargs)
        except json.JSONDecodeError as err:
            raise ValueError(f"--model-kwargs is not valid JSON: {err}") from None
    overrides = {
        "train": args.train, "valid": args.valid, "model": args.model, "cutoff": args.cutoff,
        "time_budget_min": args.time_budget_min, "seed": args.seed, "out": args.out,
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "patience": args.patience, "dtype": args.dtype, "model_kwargs": model_kwargs,
    }
    config = load_config(args.config, overrides)
    result = train(config, resume=not args.restart, t_start=_T0)
    summary = {k: result[k] for k in ("model", "best", "stop_reason", "epochs")}
    summary["wall_time_s"] = time.monotonic() - _T0
    print(json.dumps(summary, indent=2, default=float))
    return 0


def _cmd_eval(args) -> int:
    if args.float64:
        import jax

        jax.config.update("jax_enable_x64", True)
    from jaxpot.data import read_extxyz
    from jaxpot.serialization import load_model
    from jaxpot.train.metrics import evaluate

    potential, params = load_model(args.model)
    dataset = read_extxyz(args.data, cutoff=potential.cutoff, energy_key=args.energy_key,
                          forces_key=args.forces_key, stress_key=args.stress_key)
    metrics = evaluate(potential, params, dataset, batch_size=args.batch_size)
    json.dump(metrics, sys.stdout, indent=2)
    print()
    return 0


def register(subparsers) -> None:
    """Add the ``train`` and ``eval`` subcommands to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "train", help="train a potential on extxyz data",
        description="Train a potential. Options come from CONFIG.yaml (fields of "
                    "jaxpot.train.TrainConfig) and are overridden by flags.")
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="YAML training config")
    p.add_argument("--train", metavar="PATH", help="training extxyz file")
    p.add_argument("--valid", metavar="PATH",
                   help="validation extxyz file (default: hold out valid_fraction of --train)")
    p.add_argument("--model", metavar="NAME",
                   help="registered model (nequip, mace, morse, ...); default nequip")
    p.add_argument("--model-kwargs", metavar="JSON", help="model options as a JSON object")
    p.add_argument("--cutoff", type=float, metavar="Å", help="neighbour cutoff in Å")
    p.add_argument("--epochs", type=int, help="maximum number of epochs")
    p.add_argument("--batch-size", type=int, help="structures per batch")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    p.add_argument("--time-budget-min", type=float, metavar="M",
                   help="wall-time budget of the whole run in minutes (compilation included)")
    p.add_argument("--seed", type=int, help="seed for split, initialisation and shuffling")
    p.add_argument("--dtype", choices=["float32", "float64"], help="training precision")
    p.add_argument("--out", metavar="DIR", help="output directory (default ./run)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="resume from DIR/checkpoint if it exists (the default)")
    g.add_argument("--restart", action="store_true",
                   help="ignore and overwrite an existing DIR/checkpoint")
    p.set_defaults(func=_cmd_train)

    e = subparsers.add_parser(
        "eval", help="error metrics of a model on labelled extxyz data",
        description="Print a JSON object with energy (meV/atom), force (meV/Å) and stress "
                    "(meV/Å³) errors of MODEL on DATA.xyz.")
    e.add_argument("model", metavar="MODEL", help="model file written by jaxpot train")
    e.add_argument("data", metavar="DATA.xyz", help="labelled extxyz file")
    e.add_argument("--batch-size", type=int, default=16, help="structures per batch")
    e.add_argument("--energy-key", default="energy")
    e.add_argument("--forces-key", default="forces")
    e.add_argument("--stress-key", default="stress")
    e.add_argument("--float64", action="store_true", help="evaluate in float64")
    e.set_defaults(func=_cmd_eval)

"""``jaxpot train`` and ``jaxpot eval`` (registered into :mod:`jaxpot.cli`).

::

    jaxpot train [CONFIG.yaml] [--train PATH] [--valid PATH] [--model NAME] [--cutoff Å]
                 [--epochs N] [--batch-size B] [--lr LR] [--time-budget-min M] [--seed S]
                 [--out DIR] [--resume | --restart] [--keep-incomplete]
                 [--long-range {none,fixed-charges,predicted-charges,qeq}]
                 [--charges Na=1,Cl=-1] [--dispersion {none,d3bj,fitted}]
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

import numpy as np

__all__ = ["register", "load_config", "evaluate_files"]



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
    from jaxpot.train.loop import IncompleteTraining, train

    # The budget counts from the start of the command (set by jaxpot.cli.main), not from
    # when this module was imported: in a notebook or a test that is long before.
    t0 = getattr(args, "t_start", None) or time.monotonic()
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
        "keep_incomplete": True if args.keep_incomplete else None,
        "allow_partial_labels": True if args.allow_partial_labels else None,
        "check_units": False if args.no_unit_check else None,
        "check_outliers": False if args.no_outlier_check else None,
        "long_range": getattr(args, "long_range", None), "charges": getattr(args, "charges", None),
        "dispersion": getattr(args, "dispersion", None), "devices": args.devices,
        "ensemble": args.ensemble, "init_from": args.init_from,
        "freeze": args.freeze or None,
        "noise_head": True if getattr(args, "noise_head", False) else None,
    }
    config = load_config(args.config, overrides)  # every option checked before any work
    try:
        result = train(config, resume=not args.restart, t_start=t0)
    except IncompleteTraining as err:  # valid input, but the run did not finish: exit 3
        print(f"jaxpot train: error: {err}", file=sys.stderr)
        return 3
    summary = {k: result[k] for k in ("model", "best", "stop_reason", "epochs")}
    summary["steps"] = result.get("n_steps")
    summary["first_step_s"] = result.get("first_step_s")
    summary["wall_time_s"] = time.monotonic() - t0
    print(json.dumps(summary, indent=2, default=float))
    return 0


def _cmd_eval(args) -> int:
    import contextlib

    import jax

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    from jaxpot.serialization import stores_float64

    if args.per_structure is not None:
        from jaxpot.files import check_outputs

        check_outputs({"--per-structure": args.per_structure},
                      {"MODEL": args.model, "DATA.xyz": args.data})
    x64 = args.float64 or stores_float64(args.model)  # a float64 model (GAP) runs in float64
    scope = jax.enable_x64(True) if x64 else contextlib.nullcontext()
    with scope:
        metrics = evaluate_files(args.model, args.data, batch_size=args.batch_size,
                                 energy_key=args.energy_key, forces_key=args.forces_key,
                                 stress_key=args.stress_key, devices=args.devices,
                                 per_structure=args.per_structure)
    print(json.dumps(metrics, indent=2, allow_nan=False))
    return 0


def evaluate_files(model_path: str, data_path: str, *, batch_size: int = 16,
                   energy_key: str = "energy", forces_key: str | None = "forces",
                   stress_key: str | None = "stress", devices: int | None = None,
                   per_structure: str | None = None) -> dict:
    """Error metrics of a model file on a labelled extxyz file (what ``jaxpot eval`` prints).

    With ``per_structure`` (a CSV path) one row per structure is also written, atomically
    (:func:`jaxpot.train.metrics.per_structure_rows`: index, source, n_atoms, energy error,
    force MAE and largest atomic force error).

    Checked on the host before anything is compiled: the model's parameter arrays against the
    shapes its ``init`` gives (:func:`jaxpot.serialization.load_model`), and every element of
    the data against the model's species (:func:`jaxpot.potential.check_species`). A
    file without force labels (or a ``forces_key`` that no frame has) gives no force metric and
    a ``"forces"`` entry saying why; a non-finite prediction is an error naming the frame.

    Raises:
      ValueError: naming the file, frame, element or parameter that is wrong.
    """
    from jaxpot.data import read_extxyz
    from jaxpot.models.cells import fit_cells
    from jaxpot.potential import check_species
    from jaxpot.serialization import load_model
    from jaxpot.train.metrics import evaluate

    potential, params = load_model(model_path)
    dataset = read_extxyz(data_path, cutoff=potential.cutoff, energy_key=energy_key,
                          forces_key=forces_key, stress_key=stress_key)
    if len(dataset) == 0:
        raise ValueError(f"{data_path}: no structures")
    for s in dataset.structures:
        check_species(potential, s.numbers, where=s.source or data_path)
    potential = fit_cells(potential, [s.cell for s in dataset.structures if np.any(s.pbc)])
    metrics = evaluate(potential, params, dataset, batch_size=batch_size, devices=devices,
                       return_predictions=per_structure is not None)
    if per_structure is not None:
        metrics, predictions = metrics
    spread = _uncertainty(potential, params, dataset, model_path)
    if spread is not None:
        metrics["uncertainty"] = spread[0]
    if per_structure is not None:
        _write_per_structure(per_structure, dataset, predictions,
                             None if spread is None else spread[1])
        metrics["per_structure"] = str(per_structure)
    if not dataset.has_forces:
        metrics["forces"] = (f"no force metric: no force labels in {data_path} "
                             f"(--forces-key {forces_key!r})")
    return metrics


def _uncertainty(potential, params, dataset, model_path: str):
    """``(summary metrics, per-structure rows)`` of a model that states a spread, else None."""
    from jaxpot.uncertainty.calibration import uncertainty_metrics
    from jaxpot.uncertainty.evaluate import structure_uncertainty
    from jaxpot.uncertainty.spread import has_spread

    if not has_spread(potential):
        return None
    score = _feature_score(potential, model_path)
    rows = structure_uncertainty(potential, params, dataset.structures, score=score)
    summary = uncertainty_metrics(rows)
    if score is not None:
        from jaxpot.uncertainty.calibration import auroc, spearman

        maha = np.array([float(np.max(r["mahalanobis"])) for r in rows])
        mae = np.array([np.mean(np.abs(r["force_error"])) if r["force_error"] is not None
                        else np.nan for r in rows])
        ok = np.isfinite(mae)
        summary["mahalanobis_spearman_structure"] = spearman(maha[ok], mae[ok])
        summary["mahalanobis_auroc_high_error"] = auroc(maha[ok], mae[ok] > np.median(mae[ok]))
    return {k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in summary.items()}, rows


def _feature_score(potential, model_path: str):
    """The Mahalanobis score of the model file's feature density, or None without one."""
    from jaxpot.uncertainty.distance import mahalanobis, read_density

    density = read_density(model_path)
    return None if density is None else mahalanobis(potential, density)


def _write_per_structure(path: str, dataset, predictions, spread_rows) -> None:
    from jaxpot.files import write_csv
    from jaxpot.train.metrics import PER_STRUCTURE_FIELDS, per_structure_rows

    rows = per_structure_rows(dataset, predictions)
    fields = list(PER_STRUCTURE_FIELDS)
    if spread_rows is not None:
        from jaxpot.uncertainty.evaluate import UNCERTAINTY_FIELDS, uncertainty_columns

        fields += list(UNCERTAINTY_FIELDS)
        for r in rows:
            r.update(uncertainty_columns(spread_rows[r["index"]]))
    write_csv(path, fields, [[r[k] for k in fields] for r in rows])


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
    p.add_argument("--init-from", metavar="MODEL",
                   help="fine-tune: start from this model file (its family and options); "
                        "elements of the data it does not know are added")
    p.add_argument("--freeze", action="append", metavar="REGEX",
                   help="keep parameters whose path (net/layer_0/..., atomic_scale) matches "
                        "at their initial values; repeatable")
    p.add_argument("--ensemble", type=int, metavar="K",
                   help="train K members together in one compiled step (seeds seed..seed+K-1); "
                        "the model reports their spread as its uncertainty")
    p.add_argument("--noise-head", action="store_true",
                   help="add a head predicting per-atom force/energy noise (aleatoric "
                        "uncertainty), trained by a Gaussian NLL; with --ensemble, per member")
    p.add_argument("--dtype", choices=["float32", "float64"], help="training precision")
    p.add_argument("--devices", type=int, metavar="N",
                   help="data-parallel training on N devices (default: all visible devices "
                        "that divide the batch size); several hosts: see docs/scaling.md")
    p.add_argument("--out", metavar="DIR", help="output directory (default ./run)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help="resume from DIR/checkpoint if it exists (the default)")
    g.add_argument("--restart", action="store_true",
                   help="start over: replace DIR/checkpoint and the outputs of an earlier "
                        "jaxpot run in DIR (never files jaxpot did not write)")
    p.add_argument("--keep-incomplete", action="store_true",
                   help="write the model even if no validation fitted in the time budget "
                        "(default: exit 3 without a model)")
    p.add_argument("--allow-partial-labels", action="store_true",
                   help="accept frames missing a label other frames have (they drop out of "
                        "that loss term) instead of refusing the file")
    p.add_argument("--no-unit-check", action="store_true",
                   help="skip the energy/force unit consistency check")
    p.add_argument("--no-outlier-check", action="store_true",
                   help="accept frames whose energy per atom is far off the rest")
    p.add_argument("--long-range", choices=["none", "fixed-charges", "predicted-charges", "qeq"],
                   help="add electrostatics: train a hybrid of --model (short range) and the "
                        "Coulomb energy of fixed, predicted or QEq charges (default none)")
    p.add_argument("--charges", metavar="EL=Q,...",
                   help="per-element charges in e for --long-range fixed-charges, e.g. "
                        "Na=1,Cl=-1")
    p.add_argument("--dispersion", choices=["none", "d3bj", "fitted"],
                   help="add a dispersion term to the hybrid model (default none)")
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
    e.add_argument("--devices", type=int, metavar="N",
                   help="spread each batch over N devices (--batch-size a multiple of N)")
    e.add_argument("--per-structure", metavar="OUT.csv",
                   help="also write one CSV row per structure: index, source, n_atoms, "
                        "energy error (meV/atom), force MAE and largest atomic force error "
                        "(meV/Å)")
    e.set_defaults(func=_cmd_eval)

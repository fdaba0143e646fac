"""Train the descriptor models (BPNN on ACSF, GAP on SOAP) on the EMT copper data set.

Prints validation energy / force MAE for both and, for GAP, the Spearman rank correlation
between the predicted force standard deviation and the actual force error (target ≥ 0.5).

    python bench/train_descriptor_models.py                   # 30 min per model
    python bench/train_descriptor_models.py --budget-min 5    # indicative numbers
    python bench/train_descriptor_models.py --quick           # smoke run (~minutes)

BPNN goes through the same :func:`jaxpot.train.train` path as ``jaxpot train --model bpnn``;
GAP goes through ``jaxpot train --model gap`` too (closed-form :func:`jaxpot.models.gap.fit_gap`,
then :func:`jaxpot.models.gap.gap_uncertainty_report` on the validation frames).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "cu_emt"))


def _subset_file(src: str, n: int | None, dst: str) -> str:
    import ase.io

    if n is None:
        return src
    frames = ase.io.read(src, f":{n}")
    ase.io.write(dst, frames)
    return dst


def run_bpnn(args, train_path, valid_path, workdir) -> dict:
    from jaxpot.train.loop import TrainConfig, train

    cfg = TrainConfig(train=train_path, valid=valid_path, model="bpnn",
                      cutoff=args.bpnn_cutoff,
                      model_kwargs={"hidden": [64, 64], "n_radial": 10, "n_angular": 3},
                      time_budget_min=args.budget_min, out=os.path.join(workdir, "bpnn"),
                      plots=False, progress=False)
    t0 = time.monotonic()
    result = train(cfg)
    best = result["best"]
    return {"model": "bpnn", "energy_mae_mev_per_atom": best.get("energy_mae_mev_per_atom"),
            "force_mae_mev_per_a": best.get("force_mae_mev_per_a"),
            "epochs": result["epochs"], "stop_reason": result["stop_reason"],
            "wall_s": time.monotonic() - t0}


def run_gap(args, train_path, valid_path, workdir) -> dict:
    from jaxpot.train.loop import TrainConfig, train

    cfg = TrainConfig(train=train_path, valid=valid_path, model="gap", cutoff=args.cutoff,
                      model_kwargs={"n_sparse": args.n_sparse, "n_max": 6, "l_max": 4,
                                    "sigma": 0.5},
                      batch_size=4, time_budget_min=args.budget_min, dtype="float64",
                      out=os.path.join(workdir, "gap"), plots=False, stress_key=None,
                      progress=False)
    t0 = time.monotonic()
    best = train(cfg)["best"]
    fit = best.get("fit", {})
    return {"model": "gap", "energy_mae_mev_per_atom": best.get("energy_mae_mev_per_atom"),
            "force_mae_mev_per_a": best.get("force_mae_mev_per_a"),
            "n_valid_evaluated": best.get("n_structures"),
            "uncertainty": best.get("uncertainty", {}),
            "n_train_used": fit.get("n_structures"), "n_sparse": fit.get("n_sparse"),
            "sigma_energy": fit.get("sigma_energy"), "sigma_force": fit.get("sigma_force"),
            "delta": fit.get("delta"), "fit_s": fit.get("time_s"),
            "wall_s": time.monotonic() - t0}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="folder with train.xyz, valid.xyz")
    p.add_argument("--budget-min", type=float, default=30.0, help="minutes per model")
    p.add_argument("--models", default="bpnn,gap")
    p.add_argument("--cutoff", type=float, default=5.0, help="GAP (SOAP) cutoff, Å")
    p.add_argument("--bpnn-cutoff", type=float, default=4.5,
                   help="BPNN (ACSF) cutoff, Å (three fcc shells; the angular ACSF cost "
                        "grows with the square of the neighbour count)")
    p.add_argument("--n-sparse", type=int, default=1000, help="GAP sparse points")
    p.add_argument("--n-train", type=int, default=None, help="use the first N train frames")
    p.add_argument("--n-valid", type=int, default=None, help="use the first N valid frames")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny subsets, 1 min each")
    args = p.parse_args(argv)
    if args.quick:
        args.budget_min = min(args.budget_min, 1.5)
        args.n_train = args.n_train or 16
        args.n_valid = args.n_valid or 6
        args.n_sparse = min(args.n_sparse, 100)
    workdir = tempfile.mkdtemp(prefix="jaxpot-bench-")
    train_path = _subset_file(os.path.join(args.data, "train.xyz"), args.n_train,
                              os.path.join(workdir, "train.xyz"))
    valid_path = _subset_file(os.path.join(args.data, "valid.xyz"), args.n_valid,
                              os.path.join(workdir, "valid.xyz"))
    out = []
    for name in args.models.split(","):
        if name == "bpnn":
            res = run_bpnn(args, train_path, valid_path, workdir)
        elif name == "gap":
            res = run_gap(args, train_path, valid_path, workdir)
        else:
            raise SystemExit(f"unknown model {name!r}")
        print(json.dumps(res), flush=True)
        out.append(res)
    print("\nmodel  E MAE (meV/atom)  F MAE (meV/Å)  extra", file=sys.stderr)
    def num(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    for r in out:
        u = {k: float("nan") for k in ("spearman_component", "spearman_component_ceiling",
                                       "spearman_atom", "spearman_structure")}
        u.update(r.get("uncertainty") or {})
        extra = (f"Spearman(σ_F, |ΔF|) = {u['spearman_component']:.3f} per component "
                 f"(calibrated: {u['spearman_component_ceiling']:.3f}), "
                 f"{u['spearman_atom']:.3f} per atom, {u['spearman_structure']:.3f} per frame "
                 "(target ≥ 0.5)"
                 if r["model"] == "gap" else f"{r['epochs']} epochs ({r['stop_reason']})")
        print(f"{r['model']:<6} {num(r['energy_mae_mev_per_atom'], '>16.2f')} "
              f"{num(r['force_mae_mev_per_a'], '>14.1f')}  {extra}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()

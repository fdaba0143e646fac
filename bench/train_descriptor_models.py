"""Train the descriptor models (BPNN on ACSF, GAP on SOAP) on the EMT copper data set.

Prints validation energy / force MAE for both and, for GAP, the Spearman rank correlation
between the predicted force standard deviation and the actual force error (target ≥ 0.5).

    python bench/train_descriptor_models.py                   # 30 min per model
    python bench/train_descriptor_models.py --budget-min 5    # indicative numbers
    python bench/train_descriptor_models.py --quick           # smoke run (~minutes)

BPNN goes through the same :func:`jaxpot.train.train` path as ``jaxpot train --model bpnn``;
GAP is fitted in closed form by :func:`jaxpot.models.gap.fit_gap` (what ``jaxpot train --model
gap`` runs), then evaluated with :func:`jaxpot.models.gap.gap_predictor` for the variances.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

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
                      model_kwargs={"hidden": [32, 32], "n_radial": 8, "n_angular": 2},
                      batch_size=4, epochs=1000, lr=3e-3, time_budget_min=args.budget_min,
                      patience=None, out=os.path.join(workdir, "bpnn"), plots=False,
                      stress_key=None, progress=False)
    t0 = time.monotonic()
    result = train(cfg)
    best = result["best"]
    return {"model": "bpnn", "energy_mae_mev_per_atom": best.get("energy_mae_mev_per_atom"),
            "force_mae_mev_per_a": best.get("force_mae_mev_per_a"),
            "epochs": result["epochs"], "stop_reason": result["stop_reason"],
            "wall_s": time.monotonic() - t0}


def run_gap(args, train_path, valid_path) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    from scipy.stats import spearmanr

    from jaxpot import data as jdata
    from jaxpot.models.gap import fit_gap, gap_predictor

    t0 = time.monotonic()
    deadline = t0 + 60.0 * args.budget_min
    train = jdata.read_extxyz(train_path, cutoff=args.cutoff, stress_key=None)
    valid = jdata.read_extxyz(valid_path, cutoff=args.cutoff, stress_key=None)
    fit_deadline = t0 + 0.6 * (deadline - t0)
    stats = jdata.statistics(train)
    pot, params, info = fit_gap(train, cutoff=args.cutoff, n_sparse=args.n_sparse, n_max=6,
                                l_max=4, sigma=0.5, optimize_noise=True,
                                avg_num_neighbors=stats.avg_num_neighbors,
                                deadline=fit_deadline, verbose=True)
    predict = gap_predictor(pot)
    n_at = max(valid.n_atoms)
    n_ed = max(valid.n_edges)
    e_err, f_err, f_std, a_err, a_std = [], [], [], [], []
    for s in valid:
        if time.monotonic() > deadline and len(e_err) >= 5:
            break
        e, _, f, fv = predict(params, s.system(n_atoms=n_at, n_edges=n_ed))
        e_err.append(abs(float(e) - s.energy) / s.n_atoms)
        f_err.append(np.abs(np.asarray(f)[: s.n_atoms] - s.forces).reshape(-1))
        f_std.append(np.sqrt(np.asarray(fv)[: s.n_atoms]).reshape(-1))
        # per atom: |ΔF_i| against sqrt(Σ_c var F_ic) (less noisy than single components)
        a_err.append(np.linalg.norm(np.asarray(f)[: s.n_atoms] - s.forces, axis=1))
        a_std.append(np.sqrt(np.asarray(fv)[: s.n_atoms].sum(1)))
    f_err = np.concatenate(f_err)
    f_std = np.concatenate(f_std)
    rho = float(spearmanr(f_std, f_err).statistic)
    rho_atom = float(spearmanr(np.concatenate(a_std), np.concatenate(a_err)).statistic)
    return {"model": "gap", "energy_mae_mev_per_atom": 1e3 * float(np.mean(e_err)),
            "force_mae_mev_per_a": 1e3 * float(np.mean(f_err)),
            "spearman_force_std_vs_error": rho, "spearman_per_atom": rho_atom,
            "n_valid_evaluated": len(e_err),
            "n_train_used": info.n_structures, "n_sparse": info.n_sparse,
            "sigma_energy": info.sigma_energy, "sigma_force": info.sigma_force,
            "delta": info.delta, "fit_s": info.time_s, "wall_s": time.monotonic() - t0}


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="folder with train.xyz, valid.xyz")
    p.add_argument("--budget-min", type=float, default=30.0, help="minutes per model")
    p.add_argument("--models", default="bpnn,gap")
    p.add_argument("--cutoff", type=float, default=4.5, help="GAP (SOAP) cutoff, Å")
    p.add_argument("--bpnn-cutoff", type=float, default=4.0,
                   help="BPNN (ACSF) cutoff, Å (first two fcc shells; the angular ACSF cost "
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
            res = run_gap(args, train_path, valid_path)
        else:
            raise SystemExit(f"unknown model {name!r}")
        print(json.dumps(res), flush=True)
        out.append(res)
    print("\nmodel  E MAE (meV/atom)  F MAE (meV/Å)  extra", file=sys.stderr)
    def num(x, fmt):
        return "n/a" if x is None else format(x, fmt)

    for r in out:
        extra = (f"Spearman(σ_F, |ΔF|) = {r['spearman_force_std_vs_error']:.3f} per component, "
                 f"{r['spearman_per_atom']:.3f} per atom (target ≥ 0.5)"
                 if r["model"] == "gap" else f"{r['epochs']} epochs ({r['stop_reason']})")
        print(f"{r['model']:<6} {num(r['energy_mae_mev_per_atom'], '>16.2f')} "
              f"{num(r['force_mae_mev_per_a'], '>14.1f')}  {extra}", file=sys.stderr)
    return out


if __name__ == "__main__":
    main()

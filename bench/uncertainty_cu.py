"""Ensembles on EMT copper: accuracy at equal wall time, out-of-distribution ranking, step cost.

1. Trains one NequIP and a K-member ensemble (``jaxpot train --ensemble K``) on
   ``../shared/data/cu_emt`` with the same wall-clock budget each, and evaluates both on
   ``valid.xyz`` (the ensemble's prediction is the committee mean).
2. Builds a held-back set with ASE's EMT: in-distribution frames (the first ``--n-valid`` of
   ``valid.xyz``) and out-of-distribution ones absent from training (hotter: rattled by 0.20–0.30
   Å; strained by ±7–10 %; larger: 4×4×4 cells rattled as the data are). Reports, for the
   ensemble's calibrated force spread: Spearman of per-structure mean spread against force MAE,
   AUROC of separating OOD from ID frames, AUROC of separating frames with force MAE above the
   median, and the 1σ/2σ coverage on the in-distribution frames and on all frames. With a
   feature density (:mod:`jaxpot.uncertainty.distance`) the same for the Mahalanobis score.
3. Times one compiled K-member training step against K compiled single-member steps on the
   same batch (the ratio is the speed-up of training the committee in one vmapped step).

Usage (pin it: ``taskset -c 0``)::

    python bench/uncertainty_cu.py --minutes 6 --members 4 --out runs/uncertainty_cu
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cu_emt"
MODEL = {"features": "8x0e+8x1o+4x2e", "num_layers": 2, "radial_hidden": [32]}


def train(out: Path, minutes: float, members: int, n_train: int) -> dict:
    from jaxpot.train import TrainConfig
    from jaxpot.train import train as run

    frames = ase.io.read(DATA / "train.xyz", f":{n_train}")
    out.mkdir(parents=True, exist_ok=True)
    ase.io.write(out / "train.xyz", frames)
    cfg = TrainConfig(train=str(out / "train.xyz"), valid=str(DATA / "valid.xyz"),
                      model="nequip", model_kwargs=MODEL, cutoff=5.0, batch_size=4,
                      time_budget_min=minutes, out=str(out / f"k{members}"), ensemble=members,
                      plots=False, max_shapes=2, eval_batch_size=8)
    t = time.monotonic()
    result = run(cfg, resume=False)
    out_row = {"members": members, "wall_s": time.monotonic() - t, "steps": result["n_steps"],
               "epochs": result["epochs"], **{k: result["best"].get(k) for k in
                                              ("energy_mae_mev_per_atom", "force_mae_mev_per_a")}}
    if members > 1:
        out_row["each_member"] = member_errors(Path(cfg.out) / "model")
    return out_row


def member_errors(model_path: Path) -> list[dict]:
    """Validation errors of each member alone (the committee mean is the run's own figure)."""
    from jaxpot import data
    from jaxpot.models.ensemble import ensemble_parts, member_params
    from jaxpot.serialization import load_model
    from jaxpot.train.metrics import evaluate

    pot, params = load_model(model_path)
    member, size, _ = ensemble_parts(pot)
    valid = data.read_extxyz(DATA / "valid.xyz", cutoff=pot.cutoff)
    rows = []
    for k in range(size):
        m = evaluate(member, member_params(params, k), valid, batch_size=8)
        rows.append({"energy_mae_mev_per_atom": m["energy_mae_mev_per_atom"],
                     "force_mae_mev_per_a": m["force_mae_mev_per_a"]})
    return rows


def held_back(n_valid: int, seed: int = 7) -> tuple[list, np.ndarray]:
    rng = np.random.default_rng(seed)
    ind = ase.io.read(DATA / "valid.xyz", f":{n_valid}")
    ood = []
    for i in range(n_valid):
        kind = i % 3
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3) if kind < 2 else (4, 4, 4))
        if kind == 0:  # hot
            a.rattle(rng.uniform(0.20, 0.30), seed=int(rng.integers(1 << 30)))
        elif kind == 1:  # strongly strained
            s = 1.0 + rng.choice([-1, 1]) * rng.uniform(0.07, 0.10)
            a.set_cell(a.cell * s, scale_atoms=True)
            a.rattle(0.05, seed=int(rng.integers(1 << 30)))
        else:  # larger cell
            a.rattle(0.08, seed=int(rng.integers(1 << 30)))
        a.calc = EMT()
        a.get_potential_energy()
        a.get_forces()
        ood.append(a)
    return ind + ood, np.array([0] * len(ind) + [1] * len(ood), bool)


def ranking(model_path: Path, frames: list, is_ood: np.ndarray) -> dict:
    from jaxpot import data
    from jaxpot.serialization import load_model, read_model_extras
    from jaxpot.uncertainty.calibration import auroc, coverage, spearman
    from jaxpot.uncertainty.evaluate import structure_uncertainty

    pot, params = load_model(model_path)
    ds = data.from_atoms(frames, cutoff=pot.cutoff)
    from jaxpot.uncertainty.distance import FeatureDensity, fit_feature_density, mahalanobis

    extras = read_model_extras(model_path)
    if "feature_density" in extras:
        density = FeatureDensity.from_tree(extras["feature_density"])
    else:  # a model trained before training stored densities: fit one as training would
        from jaxpot.models.ensemble import ensemble_parts, member_params

        parts = ensemble_parts(pot)
        model, p = (pot, params) if parts is None else (parts[0], member_params(params, 0))
        train = ase.io.read(model_path.parent.parent / "train.xyz", ":256")
        density = fit_feature_density(model, p, data.from_atoms(train, cutoff=pot.cutoff))
    score = mahalanobis(pot, density)
    rows = structure_uncertainty(pot, params, ds.structures, score=score)
    mae = np.array([np.mean(np.abs(r["force_error"])) for r in rows])
    std = np.array([np.mean(r["forces_std"]) for r in rows])
    comp_e = [np.abs(r["force_error"]).ravel() for r in rows]
    comp_s = [np.repeat(r["forces_std"], 3) for r in rows]
    ind = ~is_ood
    e_id = np.concatenate([comp_e[i] for i in np.flatnonzero(ind)])
    s_id = np.concatenate([comp_s[i] for i in np.flatnonzero(ind)])
    e_all, s_all = np.concatenate(comp_e), np.concatenate(comp_s)
    out = {"force_mae_id_mev": 1e3 * mae[ind].mean(), "force_mae_ood_mev": 1e3 * mae[~ind].mean(),
           "spearman_structure": spearman(std, mae), "auroc_ood": auroc(std, is_ood),
           "auroc_high_error": auroc(std, mae > np.median(mae)),
           "coverage_1sigma_id": coverage(e_id, s_id),
           "coverage_2sigma_id": coverage(e_id, s_id, 2.0),
           "coverage_1sigma_all": coverage(e_all, s_all),
           "coverage_2sigma_all": coverage(e_all, s_all, 2.0)}
    if score is not None:  # always, now
        maha = np.array([np.max(r["mahalanobis"]) for r in rows])
        out.update(mahalanobis_spearman=spearman(maha, mae),
                   mahalanobis_auroc_ood=auroc(maha, is_ood))
    return out


def step_timing(members: int, repeats: int = 5) -> dict:
    import jax

    from jaxpot import data
    from jaxpot.models import ensemble, nequip
    from jaxpot.train import make_optimizer, make_train_step
    from jaxpot.train.loss import LossWeights
    from jaxpot.train.state import TrainState

    frames = ase.io.read(DATA / "train.xyz", ":4")
    ds = data.from_atoms(frames, cutoff=5.0)
    batch = next(data.BatchLoader(ds, 4, shuffle=False).batches(0))
    member = nequip(species=["Cu"], cutoff=5.0, avg_num_neighbors=44.0, **MODEL)
    opt, _ = make_optimizer(1e-3, total_steps=10)
    w = LossWeights(1.0, 1.0, 0.0)

    def timed(pot):
        params = pot.init(jax.random.key(0), ds[0].system())
        state = TrainState.create(params, opt)
        step = make_train_step(pot, opt, w)
        state, m = step(state, batch)
        jax.block_until_ready(m["loss"])
        t = time.perf_counter()
        for _ in range(repeats):
            state, m = step(state, batch)
        jax.block_until_ready(m["loss"])
        return (time.perf_counter() - t) / repeats

    single = timed(member)
    joint = timed(ensemble(member, members))
    return {"single_step_s": single, "ensemble_step_s": joint,
            "k_separate_over_joint": members * single / joint}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=6.0, help="training budget per model")
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-valid", type=int, default=30, help="ID frames (and as many OOD)")
    p.add_argument("--out", default="runs/uncertainty_cu")
    p.add_argument("--skip-train", action="store_true", help="reuse the models in --out")
    args = p.parse_args(argv)
    out = Path(args.out)
    res = {"timing": step_timing(args.members)}
    print(json.dumps(res["timing"], indent=1), flush=True)
    if not args.skip_train:
        res["single"] = train(out, args.minutes, 1, args.n_train)
        res["ensemble"] = train(out, args.minutes, args.members, args.n_train)
        print(json.dumps({k: res[k] for k in ("single", "ensemble")}, indent=1), flush=True)
    frames, is_ood = held_back(args.n_valid)
    res["ranking"] = ranking(out / f"k{args.members}" / "model", frames, is_ood)
    print(json.dumps(res["ranking"], indent=1), flush=True)
    (out / "results.json").write_text(json.dumps(res, indent=1, default=float))
    return res


if __name__ == "__main__":
    main()

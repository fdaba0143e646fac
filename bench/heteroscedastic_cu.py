"""Aleatoric against epistemic uncertainty on EMT copper with injected label noise.

Data: 32-atom fcc copper cells, rattled by 0.05 Å, labelled by ASE's EMT, in two regions:
compressed (lattice × 0.97, clean labels) and expanded (× 1.03, Gaussian noise of std
``--noise`` eV/Å added to every force component of every frame). Held-back test frames of both
regions carry clean labels.

Two runs of ``jaxpot train --ensemble K --noise-head`` (same model, seeds, epochs):

- ``noisy``: the data above;
- ``clean``: the same frames without the injected noise (the reference for the epistemic part).

For each run and region it reports, on the test frames: the committee's force error against
the clean EMT forces; the predicted aleatoric std (``force_noise_std`` of
:func:`jaxpot.uncertainty.spread.spread_fn`, the members' mean variance); the epistemic spread
(``forces_std``) both raw (calibration factor 1) and with the factor the run fitted on its
validation set; and the same head prediction of every member alone. The claims to check:

1. aleatoric: ``noisy`` predicts ≈ ``noise`` on expanded frames (the model's own training error
   adds in quadrature) and far less on compressed ones; ``clean`` predicts the training error;
2. epistemic: the raw ensemble spread on expanded frames is about the same in ``noisy`` as in
   ``clean`` (the noise goes into the head, not into the members' disagreement).

Usage (pin it: ``taskset -c 1``; about 2 minutes on one loaded core with the defaults)::

    python bench/heteroscedastic_cu.py --out runs/heteroscedastic_cu
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
from ase.calculators.singlepoint import SinglePointCalculator

MODEL = {"features": "8x0e+4x1o", "num_layers": 1, "radial_hidden": [16]}
CUTOFF = 3.0
REGIONS = {"compressed": 0.97, "expanded": 1.03}


def frames(n: int, seed: int, scale: float, noise: float, rattle: float = 0.05) -> list:
    """``n`` EMT frames; every force component gets Gaussian noise of std ``noise`` eV/Å."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", cubic=True).repeat(2)
        a.set_cell(a.cell * scale, scale_atoms=True)
        a.rattle(rattle, seed=int(rng.integers(1 << 30)))
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f + noise * rng.standard_normal(f.shape))
        out.append(a)
    return out


def write_data(out: Path, n_train: int, noise: float) -> None:
    """train/valid files of the noisy and the clean run (same frames), and clean test frames."""
    for name, sigma in (("noisy", noise), ("clean", 0.0)):
        d = out / name
        d.mkdir(parents=True, exist_ok=True)
        for split, n, seed in (("train", n_train, 0), ("valid", max(4, n_train // 8), 100)):
            images = []
            for k, (region, scale) in enumerate(REGIONS.items()):
                images += frames(n, seed + k, scale, sigma if region == "expanded" else 0.0)
            ase.io.write(d / f"{split}.xyz", images)
    for k, (region, scale) in enumerate(REGIONS.items()):
        ase.io.write(out / f"test_{region}.xyz", frames(8, 200 + k, scale, 0.0))


def train(out: Path, name: str, epochs: int, members: int) -> dict:
    from jaxpot.train import TrainConfig
    from jaxpot.train import train as run

    d = out / name
    cfg = TrainConfig(train=str(d / "train.xyz"), valid=str(d / "valid.xyz"), model="nequip",
                      model_kwargs=MODEL, cutoff=CUTOFF, batch_size=4, epochs=epochs,
                      ensemble=members, noise_head=True, plots=False, progress=False,
                      out=str(d / "run"))
    t = time.monotonic()
    result = run(cfg, resume=False)
    return {"wall_s": round(time.monotonic() - t, 1), "epochs": result["epochs"],
            "valid_force_mae_mev_per_a": result["best"].get("force_mae_mev_per_a")}


def evaluate(out: Path, name: str) -> dict:
    """Per region: committee force RMSE (clean labels), aleatoric and epistemic means."""
    import jax

    import jaxpot
    from jaxpot.models.ensemble import ensemble_parts, member_params
    from jaxpot.models.heteroscedastic import noise_variances
    from jaxpot.serialization import load_model
    from jaxpot.uncertainty.spread import spread_fn

    pot, params = load_model(out / name / "run" / "model")
    member, size, calibration = ensemble_parts(pot)
    raw = jax.jit(spread_fn(pot, {"energy": 1.0, "forces": 1.0}))
    per_member = jax.jit(lambda p, s: noise_variances(member, p, s)[0])
    rows = {}
    for region in REGIONS:
        err, alea, epi, heads = [], [], [], []
        for a in ase.io.read(out / f"test_{region}.xyz", ":"):
            s = jaxpot.System.from_ase(a, cutoff=CUTOFF)
            o = raw(params, s)
            err.append(np.mean((np.asarray(o["forces"]) - a.get_forces()) ** 2))
            alea.append(np.mean(np.asarray(o["force_noise_std"])))
            epi.append(np.mean(np.asarray(o["forces_std"])))
            heads.append([float(np.mean(np.sqrt(per_member(member_params(params, k), s))))
                          for k in range(size)])
        rows[region] = {
            "force_rmse_vs_clean": float(np.sqrt(np.mean(err))),
            "aleatoric_force_std": float(np.mean(alea)),
            "aleatoric_each_member": np.round(np.mean(heads, axis=0), 4).tolist(),
            "epistemic_force_std_raw": float(np.mean(epi)),
            "epistemic_force_std_calibrated": float(np.mean(epi))
            * calibration.get("forces", 1.0),
        }
    rows["calibration_forces"] = calibration.get("forces", 1.0)
    return rows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/heteroscedastic_cu")
    p.add_argument("--n-train", type=int, default=40, help="training frames per region")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--noise", type=float, default=0.1, help="injected force noise, eV/Å")
    args = p.parse_args(argv)
    out = Path(args.out)
    t0 = time.monotonic()
    write_data(out, args.n_train, args.noise)
    report = {"noise": args.noise, "members": args.members, "n_train_per_region": args.n_train,
              "epochs": args.epochs, "model": MODEL}
    for name in ("noisy", "clean"):
        report[name] = {"train": train(out, name, args.epochs, args.members),
                        **evaluate(out, name)}
    n, c = report["noisy"], report["clean"]
    report["summary"] = {
        "aleatoric_expanded_over_noise": n["expanded"]["aleatoric_force_std"] / args.noise,
        "aleatoric_compressed_over_expanded": n["compressed"]["aleatoric_force_std"]
        / n["expanded"]["aleatoric_force_std"],
        "epistemic_expanded_noisy_over_clean": n["expanded"]["epistemic_force_std_raw"]
        / c["expanded"]["epistemic_force_std_raw"],
        "epistemic_compressed_noisy_over_clean": n["compressed"]["epistemic_force_std_raw"]
        / c["compressed"]["epistemic_force_std_raw"],
        "wall_s": round(time.monotonic() - t0, 1),
    }
    print(json.dumps(report, indent=2))
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

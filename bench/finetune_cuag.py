"""Fine-tuning a copper NequIP model to Cu–Ag against training from scratch on the same frames.

A parent model trained on copper only (``--parent``, e.g. ``examples/train_cu_nequip.yaml``'s
output) is extended to silver (``jaxpot train --init-from``: Ag appended to its species, the Cu
parameters carried over) and trained on ``--n-train`` Cu–Ag frames labelled by ASE's EMT
(108-atom fcc cells, random Ag fraction 0–50 %, rattled, ±3 % strain). A model of the same
architecture is trained from scratch on the same frames with the same wall-clock budget. Both
are evaluated on held-back Cu–Ag frames drawn the same way.

Usage (pin it: ``taskset -c 1``)::

    python bench/finetune_cuag.py --parent runs/cu_nequip/model --minutes 5 --out runs/ft
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT


def frames(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.7, cubic=True).repeat(3)
        sym = np.array(a.get_chemical_symbols())
        sym[rng.random(len(a)) < rng.uniform(0.0, 0.5)] = "Ag"
        a.set_chemical_symbols(sym)
        a.set_cell(a.cell * rng.uniform(0.97, 1.03), scale_atoms=True)
        a.rattle(rng.uniform(0.03, 0.12), seed=int(rng.integers(1 << 30)))
        a.calc = EMT()
        a.get_potential_energy()
        a.get_stress()
        out.append(a)
    return out


def run(out: Path, name: str, minutes: float, extra: dict) -> dict:
    from jaxpot.train import TrainConfig, train

    cfg = TrainConfig(train=str(out / "train.xyz"), valid=str(out / "valid.xyz"),
                      cutoff=5.0, batch_size=4, time_budget_min=minutes, out=str(out / name),
                      plots=False, max_shapes=2, **extra)
    result = train(cfg, resume=False)
    return {k: result["best"].get(k) for k in ("energy_mae_mev_per_atom", "force_mae_mev_per_a")
            } | {"steps": result["n_steps"], "epochs": result["epochs"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parent", required=True, help="a copper-only NequIP model file")
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--n-train", type=int, default=100)
    p.add_argument("--n-valid", type=int, default=40)
    p.add_argument("--out", default="runs/finetune_cuag")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ase.io.write(out / "train.xyz", frames(args.n_train, 1))
    ase.io.write(out / "valid.xyz", frames(args.n_valid, 2))
    from jaxpot.serialization import read_model_info

    parent_kwargs = read_model_info(args.parent)["config"]["kwargs"]
    arch = {k: parent_kwargs[k] for k in ("features", "num_layers", "l_max", "radial_hidden",
                                          "readout_hidden", "num_bessel")}
    res = {"fine_tuned": run(out, "fine_tuned", args.minutes, {"init_from": args.parent}),
           "scratch": run(out, "scratch", args.minutes,
                          {"model": "nequip", "model_kwargs": arch})}
    res["force_ratio_scratch_over_fine_tuned"] = (res["scratch"]["force_mae_mev_per_a"]
                                                  / res["fine_tuned"]["force_mae_mev_per_a"])
    print(json.dumps(res, indent=1))
    (out / "results.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()

"""Conservative against direct-force NequIP on EMT copper: force errors and NVE drift.

Trains a conservative NequIP (forces = −∇E) and a direct-force NequIP
(:func:`jaxpot.models.direct_force.nequip_direct`: forces from an equivariant ``1o`` head, with
net-force and torque penalties) with the same trunk, data and wall-clock budget, reports their
validation errors, then runs NVE on a 108-atom fcc box with each (velocity Verlet, same start)
and reports the total-energy drift (linear fit, meV/atom/ps), the largest excursion, and the
drift of the total momentum. The direct model runs twice: as trained, and with the net force
projected out at prediction time (``remove_net_force=True``, same parameters).

Run pinned to one core (about 12 minutes with the defaults)::

    taskset -c 0 python bench/direct_force_drift.py --minutes 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import ase.io
import jax.numpy as jnp
import numpy as np
from ase.build import bulk

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cu_emt"
MODEL = {"features": "8x0e+4x1o+2x1e", "num_layers": 2, "radial_hidden": [16], "num_bessel": 6}
CUTOFF = 3.2  # Å: first fcc shell (2.55 Å) only, to keep one-core compilation short


def train(kind: str, out: Path, minutes: float) -> dict:
    from jaxpot.train import TrainConfig
    from jaxpot.train import train as run

    name = "nequip" if kind == "conservative" else "nequip_direct"
    cfg = TrainConfig(train=str(out / "train.xyz"), valid=str(out / "valid.xyz"), model=name,
                      model_kwargs=MODEL, cutoff=CUTOFF, batch_size=2, time_budget_min=minutes,
                      out=str(out / kind), plots=False, max_shapes=2, eval_batch_size=8)
    t = time.monotonic()
    result = run(cfg, resume=False)
    best = result["best"]
    return {"model": str(result["model"]), "wall_s": round(time.monotonic() - t, 1),
            "steps": result["n_steps"], "epochs": result["epochs"],
            "energy_mae_mev_per_atom": best.get("energy_mae_mev_per_atom"),
            "force_mae_mev_per_a": best.get("force_mae_mev_per_a"),
            "force_rmse_mev_per_a": best.get("force_rmse_mev_per_a")}


def nve(force, params, steps: int, dt_fs: float, kelvin: float) -> dict:
    """NVE from a 108-atom fcc box; drift of energy and momentum, and the speed."""
    from jaxpot import System, md

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    system = System.from_ase(atoms, cutoff=force.cutoff)
    n = len(atoms)
    res = md.simulate(force, params, system, ensemble="nve", dt_fs=dt_fs,
                      temperature_kelvin=kelvin, steps=steps, log_every=20, seed=0,
                      max_energy_error_per_atom=float("inf"),
                      observers=lambda s, o: {"momentum": jnp.sum(s.momenta, axis=0)})
    log = res.log
    t_ps = np.asarray(log["time_ps"]) if "time_ps" in log else np.asarray(
        log["step"]) * dt_fs / 1000.0
    e = np.asarray(log["total_energy_ev"]) / n
    slope = np.polyfit(t_ps, e, 1)[0]
    p = np.linalg.norm(np.asarray(log["momentum"]), axis=1)  # amu·Å/(ASE time unit)
    from jaxpot import units

    v_com = p / (n * 63.546) * units.fs * 1000.0  # centre-of-mass speed, Å/ps
    return {"drift_mev_per_atom_per_ps": round(1000.0 * slope, 3),
            "max_abs_de_mev_per_atom": round(1000.0 * float(np.abs(e - e[0]).max()), 3),
            "temperature_mean_k": round(float(np.mean(log["temperature_k"][1:])), 1),
            "temperature_end_k": round(float(log["temperature_k"][-1]), 1),
            "com_speed_end_a_per_ps": round(float(v_com[-1]), 4),
            "com_speed_slope_a_per_ps2": round(float(np.polyfit(t_ps, v_com, 1)[0]), 4),
            "atom_steps_per_s": round(res.atom_steps_per_s), "compile_s": round(res.compile_s)}


def main(minutes: float = 3.0, n_train: int = 200, n_valid: int = 50, steps: int = 2000,
         dt_fs: float = 2.0, kelvin: float = 600.0, out: str = "/tmp/direct_force_drift"):
    from jaxpot.md.direct import direct_provider
    from jaxpot.models.direct_force import nequip_direct
    from jaxpot.serialization import load_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ase.io.write(out / "train.xyz", ase.io.read(DATA / "train.xyz", f":{n_train}"))
    ase.io.write(out / "valid.xyz", ase.io.read(DATA / "valid.xyz", f":{n_valid}"))
    rows: dict = {"setup": {"minutes": minutes, "n_train": n_train, "n_valid": n_valid,
                            "steps": steps, "dt_fs": dt_fs, "kelvin": kelvin, "model": MODEL}}
    for kind in ("direct", "conservative"):
        rows[kind] = {"train": train(kind, out, minutes)}
        print(kind, rows[kind]["train"], flush=True)
    pot, params = load_model(rows["conservative"]["train"]["model"])
    rows["conservative"]["nve"] = nve(pot, params, steps, dt_fs, kelvin)
    print("conservative", rows["conservative"]["nve"], flush=True)
    dpot, dparams = load_model(rows["direct"]["train"]["model"])
    rows["direct"]["nve"] = nve(direct_provider(dpot, dparams), None, steps, dt_fs, kelvin)
    print("direct", rows["direct"]["nve"], flush=True)
    proj = nequip_direct(**{**dpot.config["kwargs"], "remove_net_force": True})
    rows["direct_projected"] = {"nve": nve(direct_provider(proj, dparams), None, steps, dt_fs,
                                           kelvin)}
    print("direct_projected", rows["direct_projected"]["nve"], flush=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    return rows


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    p.add_argument("--n-train", type=int, default=200)
    p.add_argument("--n-valid", type=int, default=50)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--dt-fs", type=float, default=2.0)
    p.add_argument("--kelvin", type=float, default=600.0)
    p.add_argument("--out", default="/tmp/direct_force_drift")
    a = p.parse_args()
    main(a.minutes, a.n_train, a.n_valid, a.steps, a.dt_fs, a.kelvin, a.out)

"""``jaxpot demo``: the whole workflow on data it makes itself, in a few minutes on a CPU.

1. Label a small copper dataset with ASE's EMT calculator (Langevin MD at several temperatures
   and strains, 32-atom fcc cells).
2. Train a small equivariant potential on it with a wall-time budget.
3. Report validation errors, run NVE molecular dynamics with the trained model and report the
   energy drift; write the model, metrics, logs and plots to the output folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

__all__ = ["make_copper_dataset", "run_demo", "register", "DEMO_OUTPUTS", "MARKER"]

MARKER = ".jaxpot-demo"
"""File the demo writes first into its output folder; a folder holding it may be reused."""

DEMO_OUTPUTS = ("train.xyz", "valid.xyz", "model", "checkpoint", "config.json", "run.json",
                "metrics.csv", "summary.json", "md_start.xyz", "md_log.csv", "md_traj.xyz",
                "md_summary.json", "plots/learning_curve.png", "plots/parity.png",
                "plots/md_energy.png")
"""Paths inside ``--out`` that the demo (and the training run it starts) writes."""


def make_copper_dataset(
    n_frames: int = 240,
    *,
    seed: int = 0,
    temperatures=(300.0, 800.0, 1400.0),
    strains=(-0.03, 0.0, 0.03),
    size: int = 2,
    stride: int = 10,
):
    """Label Cu frames with ASE's EMT calculator by Langevin MD.

    Args:
      n_frames: frames to return (spread over the temperature × strain conditions).
      seed: seeds the velocities, the thermostat noise and the frame order.
      temperatures: thermostat targets, K.
      strains: isotropic strains applied to the fcc lattice (a = 3.61 Å).
      size: repeats of the 4-atom conventional cell per direction (2 → 32 atoms).
      stride: MD steps (2 fs each) between frames.

    Returns:
      A shuffled list of ``ase.Atoms`` carrying EMT energies, forces and stresses.
    """
    from ase import units
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    rng = np.random.default_rng(seed)
    conditions = [(t, s) for t in temperatures for s in strains]
    per = int(np.ceil(n_frames / len(conditions)))
    frames = []
    for k, (temp, strain) in enumerate(conditions):
        atoms = bulk("Cu", "fcc", a=3.61 * (1 + strain), cubic=True).repeat(size)
        atoms.calc = EMT()
        MaxwellBoltzmannDistribution(atoms, temperature_K=temp, rng=rng)
        Stationary(atoms)
        dyn = Langevin(atoms, 2.0 * units.fs, temperature_K=temp, friction=0.02,
                       fixcm=False, rng=np.random.default_rng(seed * 1000 + k))
        dyn.run(5 * stride)  # short equilibration
        for _ in range(per):
            dyn.run(stride)
            frame = atoms.copy()
            frame.calc = SinglePointCalculator(
                frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces(),
                stress=atoms.get_stress(voigt=False),
            )
            frame.info["temperature_K"] = temp
            frame.info["strain"] = strain
            frames.append(frame)
    order = rng.permutation(len(frames))[:n_frames]
    return [frames[i] for i in order]


def run_demo(
    out: str | os.PathLike = "jaxpot-demo",
    *,
    n_frames: int = 240,
    time_budget_min: float = 4.0,
    md_steps: int = 2000,
    seed: int = 0,
    model: str = "nequip",
) -> dict:
    """Run the demo end to end and return the summary (also written to ``out/summary.json``)."""
    from jaxpot import io
    from jaxpot.data import read_extxyz
    from jaxpot.files import atomic_write_text
    from jaxpot.serialization import load_model
    from jaxpot.train.loop import TrainConfig, train
    from jaxpot.train.metrics import evaluate

    _check_demo_options(n_frames, time_budget_min, md_steps)
    out = Path(out)
    _claim_output_folder(out)
    t0 = time.perf_counter()
    print(f"[1/3] labelling {n_frames} Cu frames with ASE's EMT calculator ...", flush=True)
    frames = make_copper_dataset(n_frames, seed=seed)
    n_valid = max(1, len(frames) // 6)
    io.write(out / "train.xyz", frames[n_valid:])
    io.write(out / "valid.xyz", frames[:n_valid])
    t_data = time.perf_counter() - t0
    print(f"      {len(frames) - n_valid} train / {n_valid} valid frames in {t_data:.0f} s")

    print(f"[2/3] training a small {model} model for at most {time_budget_min:g} min ...",
          flush=True)
    config = TrainConfig(
        train=str(out / "train.xyz"), valid=str(out / "valid.xyz"), model=model,
        model_kwargs=_demo_model_kwargs(model), cutoff=4.5, batch_size=4,
        # ~4 s per epoch after compilation on a 2-core CPU: size the cosine schedule to the
        # budget so the learning rate has decayed when the budget ends; two padded shapes
        # keep compilation to two traces of the train step.
        epochs=max(5, int(time_budget_min * 10)), max_shapes=2, lr=1e-2,
        time_budget_min=time_budget_min, seed=seed, out=str(out), patience=None,
        keep_incomplete=True,  # the demo validates the model itself below
    )
    result = train(config, resume=False)
    train_summary = {k: result[k] for k in ("best", "stop_reason", "epochs")}
    if not result["best"]:
        print(f"      note: no validation epoch fitted in {time_budget_min:g} min; the model is "
              f"under-trained (a larger --time-budget-min helps)", flush=True)
    potential, params = load_model(out / "model")
    valid = read_extxyz(str(out / "valid.xyz"), cutoff=potential.cutoff)
    metrics = evaluate(potential, params, valid)
    print("      validation:", json.dumps(metrics, default=float))

    print(f"[3/3] NVE molecular dynamics with the trained model ({md_steps} steps of 1 fs) ...",
          flush=True)
    md_summary = _run_md(out, frames[0], md_steps, seed)
    summary = {
        "validation": metrics,
        "training": train_summary,
        "md": md_summary,
        "wall_s": time.perf_counter() - t0,
        "outputs": str(out),
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2, default=float))
    print(
        f"done in {summary['wall_s']:.0f} s: energy MAE {metrics['energy_mae_mev_per_atom']:.2f} "
        f"meV/atom, force MAE {metrics['force_mae_mev_per_a']:.1f} meV/Å, NVE drift "
        f"{md_summary['energy_drift_ev_per_atom_per_ps'] * 1e3:.2e} meV/atom/ps; "
        f"outputs in {out}/"
    )
    return summary


def _check_demo_options(n_frames: int, time_budget_min: float, md_steps: int) -> None:
    if not n_frames >= 2:
        raise ValueError(f"--frames (n_frames) must be at least 2 (one to validate on, the "
                         f"rest to train on), got {n_frames}")
    if not (np.isfinite(time_budget_min) and time_budget_min > 0):
        raise ValueError(f"--time-budget-min must be a positive number of minutes, "
                         f"got {time_budget_min}")
    if not md_steps >= 1:
        raise ValueError(f"--md-steps must be a positive number of steps, got {md_steps}")


def _claim_output_folder(out: Path) -> None:
    """Use ``out`` only if it is new, empty or a previous demo's output; then mark it.

    Raises:
      ValueError: ``out`` is a file, or a folder of other files (naming those the demo would
        overwrite, or a few of the others); nothing in it is touched.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file, not a folder")
    entries = sorted(os.listdir(out)) if out.is_dir() else []
    if entries and MARKER not in entries:
        clash = [name for name in DEMO_OUTPUTS if (out / name).exists()]
        if clash:
            raise ValueError(
                f"--out {str(out)!r} holds files the demo would overwrite ({', '.join(clash)}) "
                f"and is not a previous demo's output; choose a new or empty folder")
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise ValueError(f"--out {str(out)!r} is not empty ({shown}) and is not a previous "
                         f"demo's output; choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by jaxpot demo; the folder may be overwritten by it\n")


def _demo_model_kwargs(model: str) -> dict:
    if model in ("nequip", "mace"):
        return {"num_layers": 2, "l_max": 1, "features": "16x0e+16x1o"}
    return {}


def _run_md(out: Path, atoms, steps: int, seed: int) -> dict:
    from jaxpot import cli, io

    io.write(out / "md_start.xyz", [atoms])
    summary_path = out / "md_summary.json"
    code = cli.main([
        "md", str(out / "model"), str(out / "md_start.xyz"), "--ensemble", "nve",
        "--temperature", "600", "--dt", "1.0", "--steps", str(steps), "--log-every", "20",
        "--log", str(out / "md_log.csv"), "--traj", str(out / "md_traj.xyz"),
        "--summary", str(summary_path), "--seed", str(seed),
    ])
    if code:  # the MD command has printed why; exit 3 is a run that failed, not a bug
        error = cli.RunFailed if code == cli.EXIT_CODES["run failed"] else RuntimeError
        raise error(f"the demo's NVE run failed (jaxpot md exit code {code}, see above)")
    summary = json.loads(summary_path.read_text())
    _plot_md(out)
    return summary


def _plot_md(out: Path) -> None:
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(out / "md_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    t = np.array([float(r["time_fs"]) for r in rows]) / 1000.0
    etot = np.array([float(r["total_energy_ev"]) for r in rows])
    epot = np.array([float(r["potential_energy_ev"]) for r in rows])
    temp = np.array([float(r["temperature_k"]) for r in rows])
    fig, axes = plt.subplots(2, 1, figsize=(6, 5), sharex=True)
    axes[0].plot(t, etot - etot[0], label="total")
    axes[0].plot(t, epot - etot[0], label="potential", alpha=0.6)
    axes[0].set_ylabel("E − E_tot(0) (eV)")
    axes[0].legend()
    axes[1].plot(t, temp)
    axes[1].set_ylabel("T (K)")
    axes[1].set_xlabel("time (ps)")
    fig.suptitle("NVE with the trained potential")
    fig.tight_layout()
    (out / "plots").mkdir(exist_ok=True)
    fig.savefig(out / "plots" / "md_energy.png", dpi=120)
    plt.close(fig)


def register(subparsers) -> None:
    """Add ``jaxpot demo`` to the CLI."""
    p = subparsers.add_parser(
        "demo", help="label Cu with EMT, train a small model, run NVE MD, report errors",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", default="jaxpot-demo", help="output folder (default: jaxpot-demo)")
    p.add_argument("--frames", type=int, default=240, help="EMT frames to label (default 240)")
    p.add_argument("--time-budget-min", type=float, default=4.0,
                   help="training wall-time budget in minutes (default 4)")
    p.add_argument("--md-steps", type=int, default=2000, help="NVE steps of 1 fs (default 2000)")
    p.add_argument("--model", default="nequip", help="model family (default nequip)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: run_demo(
        a.out, n_frames=a.frames, time_budget_min=a.time_budget_min, md_steps=a.md_steps,
        seed=a.seed, model=a.model) and 0)

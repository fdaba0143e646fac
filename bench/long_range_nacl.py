"""NaCl (Born–Mayer–Huggins + Ewald): a learned short-range model with and without Coulomb.

Trains two models with ``jaxpot train`` at the same time (so both see the same machine load),
each under the same wall-time budget, on ``../shared/data/nacl_bmh``:

- ``nequip``: NequIP at 5 Å alone;
- ``hybrid``: the same NequIP plus the Ewald energy of fixed formal charges
  (``--long-range fixed-charges --charges Na=1,Cl=-1``),

then evaluates both on the validation file, overall and per ``config_type`` (``jaxpot eval`` on
one file per type), and prints a table of energy (meV/atom) and force (meV/Å) MAEs.

Usage::

    python bench/long_range_nacl.py --data ../shared/data/nacl_bmh --out runs/nacl \\
        --budget-min 15            # train both (concurrently), then evaluate
    python bench/long_range_nacl.py --data ... --out runs/nacl --eval-only
    python bench/long_range_nacl.py --data ... --out runs/nacl --runs hybrid=...,qeq=...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

RUNS = {
    "nequip": [],
    "hybrid": ["--long-range", "fixed-charges", "--charges", "Na=1,Cl=-1"],
    "qeq": ["--long-range", "qeq"],
}


def train_all(data: str, out: str, budget: float, names: list[str], seed: int,
              max_shapes: int) -> dict:
    """Start one ``jaxpot train`` per name at once; wait for all; return their summaries."""
    procs = {}
    config = os.path.join(out, "common.yaml")  # one padded batch shape: one compilation each
    with open(config, "w") as f:
        f.write(f"max_shapes: {max_shapes}\n")
    for name in names:
        cmd = [sys.executable, "-m", "jaxpot", "train", config, "--train", f"{data}/train.xyz",
               "--valid", f"{data}/valid.xyz", "--model", "nequip", "--cutoff", "5",
               "--time-budget-min", str(budget), "--seed", str(seed),
               "--out", os.path.join(out, name), "--restart", *RUNS[name]]
        print("$", " ".join(cmd), flush=True)
        log = open(os.path.join(out, f"{name}.log"), "w")  # noqa: SIM115 (closed below)
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), log)
    t0 = time.monotonic()
    codes = {}
    for name, (p, log) in procs.items():
        codes[name] = p.wait()
        log.close()
    print(f"trainings done in {time.monotonic() - t0:.0f} s: exit codes {codes}", flush=True)
    return codes


def split_by_type(path: str, out: str) -> dict[str, str]:
    """One extxyz file per ``config_type`` of ``path`` (in ``out``); {type: file}."""
    import ase.io

    frames = ase.io.read(path, ":")
    groups: dict[str, list] = {}
    for atoms in frames:
        groups.setdefault(str(atoms.info.get("config_type", "unknown")), []).append(atoms)
    files = {"all": path}
    for kind, group in sorted(groups.items()):
        f = os.path.join(out, f"valid_{kind}.xyz")
        if not os.path.exists(f):
            ase.io.write(f, group, format="extxyz")
        files[kind] = f
    return files


def evaluate_all(data: str, out: str, names: list[str]) -> dict:
    """``{run: {config_type: metrics}}`` for every run whose model exists."""
    from jaxpot.train.commands import evaluate_files

    files = split_by_type(f"{data}/valid.xyz", out)
    table = {}
    for name in names:
        model = os.path.join(out, name, "model")
        if not os.path.exists(model):
            print(f"{name}: no model ({model})")
            continue
        table[name] = {k: evaluate_files(model, f, batch_size=8) for k, f in files.items()}
    return table


def _row(m: dict) -> str:
    e = m.get("energy_mae_mev_per_atom", float("nan"))
    f = m.get("force_mae_mev_per_a", float("nan"))
    return f"{e:8.3f} {f:8.2f}"


def report(table: dict) -> None:
    kinds = sorted({k for t in table.values() for k in t}, key=lambda k: (k != "all", k))
    print(f"{'config_type':>12} " + " ".join(f"{n + ' E, F':>17}" for n in table))
    for k in kinds:
        print(f"{k:>12} " + " ".join(_row(table[n].get(k, {})) for n in table))
    if "nequip" in table:
        for n in table:
            if n != "nequip":
                ratio = (table[n]["all"]["force_mae_mev_per_a"]
                         / table["nequip"]["all"]["force_mae_mev_per_a"])
                print(f"force MAE ratio {n}/nequip: {ratio:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/nacl_bmh")
    ap.add_argument("--out", default="runs/long_range_nacl")
    ap.add_argument("--budget-min", type=float, default=15.0)
    ap.add_argument("--runs", default="nequip,hybrid", help="comma-separated: nequip,hybrid,qeq")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-shapes", type=int, default=1,
                    help="padded batch shapes per run (each one compiles; default 1)")
    ap.add_argument("--eval-only", action="store_true")
    args = ap.parse_args(argv)
    names = args.runs.split(",")
    os.makedirs(args.out, exist_ok=True)
    if not args.eval_only:
        train_all(args.data, args.out, args.budget_min, names, args.seed, args.max_shapes)
    table = evaluate_all(args.data, args.out, names)
    with open(os.path.join(args.out, "eval.json"), "w") as f:
        json.dump(table, f, indent=2)
    report(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

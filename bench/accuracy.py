"""Accuracy per core-minute: jaxpot and InstaDeep's ``mlip`` trained side by side on equal terms,
tested on frames from trajectories neither code saw.

Equal terms means:

- each training run is a separate process pinned to its own core (``taskset -c K``, one core
  each by default), the two codes running at the same time so they share the machine alike;
- the same wall-clock budget for the whole process: reading the data, building neighbour lists,
  compiling and training (jaxpot: ``--time-budget-min``, which covers the whole run; mlip:
  ``bench/mlip_train.py --minutes``, whose clock starts at the top of the script). The peer
  gets ``--jit-init``: its model set-up compiled (5–17 s) instead of mlip's op-by-op default
  (27–67 s), the same parameters either way, so no budget is lost to it;
- every compile is paid inside the budget (jaxpot runs with ``--no-compile-cache``, as on a
  first run; mlip keeps no compile cache);
- the same training and validation files (``../shared/data/<set>/{train,valid}.xyz``) and the
  same cutoff (5 Å);
- jaxpot is driven through its command line with flags only: :data:`RECIPES` holds the flags of
  the recommendation documented in ``docs/training.md`` for each kind of data;
- both are evaluated after the budget, on the same test files made by
  ``bench/accuracy_testsets.py`` from new trajectories of the same reference calculators:
  ``same.xyz`` (the training conditions, new seeds) and ``harder.xyz`` (hotter, larger cells,
  stronger strain, defects and surfaces not in training).

Every run is queued on a pool of cores: with ``--cores 0 1`` jaxpot's run of a data set and the
first peer family start together, and further peer families follow on whichever core is free.
The report gives force MAE (meV/Å, mean |ΔF| over components) and energy MAE (meV/atom) per test
file and per config type for each code, the ratio jaxpot / best peer, and both codes' learning
curves on the validation file against wall time (jaxpot: its ``metrics.csv``; mlip: parameter
snapshots taken during the run and evaluated afterwards).

Usage (first ``bash bench/mlip_env.sh`` and ``python bench/accuracy_testsets.py``)::

    python bench/accuracy.py                                   # all three sets, both families
    python bench/accuracy.py --data ethanol_xtb --families mace
    python bench/accuracy.py --data cu_emt --minutes 5 --out bench/results/acc_quick
    python bench/accuracy.py --report bench/results/accuracy   # re-print a finished run

Results: ``<out>/<set>/{jaxpot,mlip_<family>}/`` and ``<out>/summary.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
JAXPOT = [sys.executable, "-m", "jaxpot"]
MLIP = [str(ROOT / ".venv-mlip" / "bin" / "python"), str(ROOT / "bench" / "mlip_train.py")]

BUDGET_MIN = {"cu_emt": 30.0, "ethanol_xtb": 15.0, "nacl_bmh": 15.0}
"""The issue's budgets: minutes of wall time per training run, on one core."""

RECIPES = {
    "cu_emt": ["--model", "nequip"],
    "ethanol_xtb": ["--model", "mace"],
    "nacl_bmh": ["--model", "nequip", "--long-range", "fixed-charges",
                 "--charges", "Na=1,Cl=-1"],
}
"""jaxpot flags per data set: the per-kind recommendation of docs/training.md (metals: the
default NequIP; small molecules: MACE; ionic solids: the short-range model plus Ewald of
fixed formal charges)."""


def _jaxpot_job(name: str, minutes: float, out: Path, extra: list) -> list:
    d = DATA / name
    return [*JAXPOT, "train", "--train", str(d / "train.xyz"), "--valid", str(d / "valid.xyz"),
            "--cutoff", "5", "--time-budget-min", str(minutes), "--out", str(out),
            "--restart", "--no-compile-cache", *RECIPES[name], *extra]


def _mlip_job(name: str, family: str, minutes: float, out: Path, tests: list) -> list:
    d = DATA / name
    return [*MLIP, "--family", family, "--train", str(d / "train.xyz"),
            "--valid", str(d / "valid.xyz"), "--cutoff", "5", "--minutes", str(minutes),
            "--test", *map(str, tests), "--json", str(out / "result.json"), "--jit-init",
            "--curve-points", "6"]


class CorePool:
    """Runs queued commands, each pinned to one free core set, at most one per core set."""

    def __init__(self, cores: list):
        self.free = list(cores)
        self.cv = threading.Condition()
        self.threads = []

    def submit(self, cmd: list, log: Path) -> None:
        with self.cv:
            self.cv.wait_for(lambda: self.free)
            core = self.free.pop(0)
        t = threading.Thread(target=self._run, args=(cmd, log, core))
        t.start()
        self.threads.append(t)

    def _run(self, cmd, log, core) -> None:
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(log, "w") as fh:
            rc = subprocess.call(["taskset", "-c", str(core), *cmd], stdout=fh,
                                 stderr=subprocess.STDOUT, cwd=ROOT)
        wall = time.monotonic() - t0
        (log.parent / "wall.json").write_text(json.dumps({"rc": rc, "wall_s": wall,
                                                          "core": core}))
        print(f"  [core {core}] rc {rc}, {wall / 60:.1f} min: {' '.join(cmd[1:4])} ... "
              f"-> {log.parent}", flush=True)
        with self.cv:
            self.free.append(core)
            self.cv.notify_all()

    def join(self) -> None:
        for t in self.threads:
            t.join()


# ---------------------------------------------------------------------------------------------
# evaluation and aggregation


def _config_types(path: Path) -> list:
    from ase.io import read

    return [a.info.get("config_type", "?") for a in read(path, ":")]


def _group(types: list, n_atoms: list, e_err: list, f_mae: list) -> dict:
    """Per config type (and ``all``): energy MAE per atom and force MAE over components."""
    types, n = np.asarray(types), np.asarray(n_atoms, float)
    e, f = np.abs(np.asarray(e_err, float)), np.asarray(f_mae, float)
    out = {}
    for key in ["all", *sorted(set(types.tolist()))]:
        m = np.ones(len(types), bool) if key == "all" else types == key
        out[key] = {"n_frames": int(m.sum()), "energy_mae_mev_per_atom": float(e[m].mean()),
                    "force_mae_mev_per_a": float(np.sum(f[m] * n[m]) / np.sum(n[m]))}
    return out


def eval_jaxpot(run: Path, tests: list, core: int) -> dict:
    """``jaxpot eval --per-structure`` of the run's model on each test file, grouped."""
    out = {}
    for test in tests:
        csv_path = run / f"eval_{test.stem}.csv"
        cmd = ["taskset", "-c", str(core), *JAXPOT, "eval", str(run / "model"), str(test),
               "--per-structure", str(csv_path)]
        subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
        with open(csv_path) as fh:
            rows = list(csv.DictReader(fh))
        rows.sort(key=lambda r: int(r["index"]))
        out[test.stem] = _group(_config_types(test), [int(r["n_atoms"]) for r in rows],
                                [float(r["energy_error_mev_per_atom"]) for r in rows],
                                [float(r["force_mae_mev_per_a"]) for r in rows])
    return out


def jaxpot_curve(run: Path) -> list:
    """Validation learning curve of a jaxpot run: (seconds since start, steps, E, F MAE)."""
    with open(run / "metrics.csv") as fh:
        return [{"elapsed_s": float(r["time_s"]), "steps": int(r["step"]),
                 "energy_mae": float(r["energy_mae_mev_per_atom"]),
                 "force_mae": float(r["force_mae_mev_per_a"])} for r in csv.DictReader(fh)]


def mlip_results(run: Path) -> dict:
    """The test results and learning curve written by ``bench/mlip_train.py --json``."""
    res = json.loads((run / "result.json").read_text())
    tests = {}
    for name, r in res["test"].items():
        stem = Path(name).stem
        groups = {"all": r["all"], **r["by_config_type"]}
        tests[stem] = {k: {"n_frames": v["n_structures"],
                           "energy_mae_mev_per_atom": v["energy_mae_mev_per_atom"],
                           "force_mae_mev_per_a": v["force_mae_mev_per_a"]}
                       for k, v in groups.items()}
    curve = [{"elapsed_s": c["elapsed_s"], "steps": c["steps"],
              "energy_mae": c["energy_mae_mev_per_atom"], "force_mae": c["force_mae_mev_per_a"]}
             for c in res.get("learning_curve", [])]
    return {"tests": tests, "curve": curve, "steps": res.get("steps"),
            "n_params": res.get("n_params")}


# ---------------------------------------------------------------------------------------------
# the run


def run_all(args) -> None:
    pool = CorePool([str(c) for c in args.cores])
    out = Path(args.out)
    for name in args.data:
        minutes = args.minutes or BUDGET_MIN[name]
        tests = _tests(name, args.testsets)
        print(f"{name}: {minutes:g} min per run, tests {[t.name for t in tests]}", flush=True)
        jrun = out / name / "jaxpot"
        pool.submit(_jaxpot_job(name, minutes, jrun, args.jaxpot_flags), jrun / "log.txt")
        for fam in args.families:
            mrun = out / name / f"mlip_{fam}"
            mrun.mkdir(parents=True, exist_ok=True)
            pool.submit(_mlip_job(name, fam, minutes, mrun, tests), mrun / "log.txt")
    pool.join()
    for name in args.data:
        jrun = out / name / "jaxpot"
        if (jrun / "model").exists():
            res = eval_jaxpot(jrun, _tests(name, args.testsets), args.cores[0])
            (jrun / "tests.json").write_text(json.dumps(res, indent=1))


def _tests(name: str, root: str) -> list:
    tests = [Path(root) / name / f"{s}.xyz" for s in ("same", "harder")]
    missing = [str(t) for t in tests if not t.exists()]
    if missing:
        raise SystemExit(f"missing test sets {missing}: run bench/accuracy_testsets.py first")
    return tests


# ---------------------------------------------------------------------------------------------
# the report


def collect(out: Path, name: str) -> dict:
    """Every finished run of one data set: ``{code: {"tests", "curve", "steps", "wall_s"}}``."""
    codes = {}
    for run in sorted((out / name).glob("*")):
        wall = json.loads((run / "wall.json").read_text()) if (run / "wall.json").exists() \
            else {}
        if run.name == "jaxpot" and (run / "tests.json").exists():
            curve = jaxpot_curve(run)
            codes["jaxpot"] = {"tests": json.loads((run / "tests.json").read_text()),
                               "curve": curve, "steps": curve[-1]["steps"] if curve else None}
        elif run.name.startswith("mlip_") and (run / "result.json").exists():
            codes[run.name] = mlip_results(run)
        if run.name in codes:
            codes[run.name]["wall_s"] = wall.get("wall_s")
    return codes


def _best_peer(codes: dict, test: str, key: str = "all") -> tuple:
    peers = [(c["tests"][test][key]["force_mae_mev_per_a"], n) for n, c in codes.items()
             if n != "jaxpot" and key in c["tests"].get(test, {})]
    return min(peers) if peers else (None, None)


def report(out: Path, names: list) -> dict:
    summary = {}
    for name in names:
        codes = collect(out, name)
        if "jaxpot" not in codes:
            print(f"\n## {name}: no finished jaxpot run in {out / name}")
            continue
        summary[name] = codes
        print(f"\n## {name}  (force MAE meV/Å / energy MAE meV/atom; ratio = jaxpot / best peer)")
        print("| test | config type | frames | " + " | ".join(codes) + " | ratio F |")
        print("| --- | --- | ---: | " + " | ".join("---:" for _ in codes) + " | ---: |")
        for test in codes["jaxpot"]["tests"]:
            for key, row in codes["jaxpot"]["tests"][test].items():
                cells = []
                for c in codes.values():
                    r = c["tests"].get(test, {}).get(key)
                    cells.append("–" if r is None else f"{r['force_mae_mev_per_a']:.1f} / "
                                 f"{r['energy_mae_mev_per_atom']:.2f}")
                best, _ = _best_peer(codes, test, key)
                ratio = "–" if not best else f"{row['force_mae_mev_per_a'] / best:.2f}"
                label = f"**{key}**" if key == "all" else key
                print(f"| {test} | {label} | {row['n_frames']} | " + " | ".join(cells)
                      + f" | {ratio} |")
        _print_curves(codes)
    return summary


def _print_curves(codes: dict) -> None:
    print("\nlearning curves on valid (elapsed min: force MAE meV/Å):")
    for n, c in codes.items():
        pts = c.get("curve") or []
        step = max(1, len(pts) // 10)
        text = ", ".join(f"{p['elapsed_s'] / 60:.1f}: {p['force_mae']:.1f}" for p in pts[::step])
        print(f"  {n} ({c.get('steps')} steps): {text}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", nargs="+", default=list(BUDGET_MIN), choices=list(BUDGET_MIN))
    p.add_argument("--families", nargs="*", default=["nequip", "mace"],
                   help="mlip families trained beside jaxpot (none: jaxpot only)")
    p.add_argument("--minutes", type=float, help="budget per run (default: BUDGET_MIN)")
    p.add_argument("--cores", nargs="+", default=["0", "1"],
                   help="one taskset core list per concurrent run (e.g. 0 1, or 0,1 2,3)")
    p.add_argument("--jaxpot-flags", nargs=argparse.REMAINDER, default=[],
                   help="extra jaxpot train flags (last on the command line)")
    p.add_argument("--testsets", default=str(ROOT / "bench" / "results" / "testsets"))
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "accuracy"))
    p.add_argument("--report", metavar="DIR", help="only print the report of a finished run")
    args = p.parse_args(argv)
    if args.report:
        report(Path(args.report), args.data)
        return
    if args.families and not Path(MLIP[0]).exists():
        raise SystemExit("the peer needs .venv-mlip: run `bash bench/mlip_env.sh` "
                         "(or pass --families with no value for jaxpot only)")
    t0 = time.monotonic()
    run_all(args)
    summary = report(Path(args.out), args.data)
    summary["_meta"] = {"cores": args.cores, "wall_min": (time.monotonic() - t0) / 60,
                        "load_average": os.getloadavg(),
                        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    tmp = Path(args.out) / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=1))
    os.replace(tmp, Path(args.out) / "summary.json")


if __name__ == "__main__":
    main()

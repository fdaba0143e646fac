"""NequIP / MACE throughput: jaxpot vs InstaDeep's ``mlip`` (same hyperparameters, same run).

What is timed, after compilation, as medians over interleaved rounds (jaxpot round, mlip round,
jaxpot round, ...) so that both codes see the same machine load:

(a) energy + forces of one 108-atom fcc Cu cell (3x3x3 conventional, a = 3.61 Å, rattled
    by 0.05 Å), jitted, float32;
(b) one training step (MSE energy + force loss, ``optax.adam``, parameter EMA 0.99) on a
    batch of 8 such cells (different rattles, EMT labels), each code with its own train step:
    ``jaxpot.train.step.make_train_step`` (vmap over a padded batch) and
    ``mlip.training.training_step.make_train_step`` (one concatenated, padded graph);
(c) jaxpot only: ``jaxpot.md.simulate`` NVE steps/s with the NequIP model on the 108-atom
    cell, against the bare jitted energy+forces rate on the same cell and on the MD's own
    Verlet-list graph (cutoff + skin edges), as a loop-overhead percentage.

Hyperparameters (identical on both sides): 2 layers, hidden irreps 32x0e+32x1o+32x2e
(MACE: 32 channels, l_max 2, correlation 3), l_max 2 spherical harmonics, 8 Bessel radial
functions, polynomial envelope, radial MLP 64-64, r_c = 5 Å, avg_num_neighbors measured on the
cells (same value passed to both), readout 16x0e -> 1, one species (Cu).

mlip runs in its own virtual environment (``bench/mlip_env.sh`` makes ``.venv-mlip``) through
``bench/mlip_worker.py`` in a subprocess that compiles once and then answers timing commands,
so its rounds interleave with jaxpot's.

Usage::

    bash bench/mlip_env.sh                      # once: .venv-mlip with mlip==0.2.5
    python bench/mlip_throughput.py             # both models, E+F, train step, MD overhead
    python bench/mlip_throughput.py --quick     # fewer rounds/steps (a smoke test, minutes)
    python bench/mlip_throughput.py --models nequip --rounds 7 --json out.json
    python bench/mlip_throughput.py --md-only   # only (c), jaxpot alone
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", False)

import ase.io  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from ase.build import bulk  # noqa: E402
from ase.calculators.emt import EMT  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402

import jaxpot  # noqa: E402
from jaxpot import data, md, models  # noqa: E402
from jaxpot.potential import energy_and_forces  # noqa: E402
from jaxpot.train.loss import LossWeights  # noqa: E402
from jaxpot.train.state import TrainState  # noqa: E402
from jaxpot.train.step import make_train_step  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MLIP_PYTHON = ROOT / ".venv-mlip" / "bin" / "python"
WORKER = ROOT / "bench" / "mlip_worker.py"

CUTOFF = 5.0
HYPER = {
    "num_layers": 2,
    "features": "32x0e+32x1o+32x2e",
    "channels": 32,
    "l_max": 2,
    "correlation": 3,
    "num_bessel": 8,
    "radial_hidden": (64, 64),
    "readout_hidden": 16,
}


def make_cells(n: int, seed0: int = 0) -> list:
    """``n`` rattled 108-atom fcc Cu cells with EMT energy/force labels."""
    images = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
        atoms.rattle(stdev=0.05, seed=seed0 + k)
        atoms.calc = EMT()
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
        images.append(atoms)
    return images


def n_params(tree) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(tree)))


def timed(fn, number: int) -> float:
    t0 = time.perf_counter()
    for _ in range(number):
        jax.block_until_ready(fn())
    return (time.perf_counter() - t0) / number


# ---------------------------------------------------------------------------------------------
# jaxpot side
# ---------------------------------------------------------------------------------------------


def jaxpot_model(name: str, avg_num_neighbors: float):
    common = dict(species=["Cu"], cutoff=CUTOFF, num_layers=HYPER["num_layers"],
                  features=HYPER["features"], l_max=HYPER["l_max"],
                  num_bessel=HYPER["num_bessel"], radial_hidden=HYPER["radial_hidden"],
                  readout_hidden=HYPER["readout_hidden"], avg_num_neighbors=avg_num_neighbors)
    if name == "mace":
        return models.mace(correlation=HYPER["correlation"], **common)
    return models.nequip(**common)


class JaxpotBench:
    """Compiled jaxpot E+F and train step for one model."""

    def __init__(self, name: str, images: list, avg_num_neighbors: float, *,
                 train: bool = True):
        self.pot = jaxpot_model(name, avg_num_neighbors)
        self.system = jaxpot.System.from_ase(images[0], cutoff=CUTOFF)
        self.params = self.pot.init(jax.random.key(0), self.system)
        self.n_params = n_params(self.params)
        self.ef = jax.jit(energy_and_forces(self.pot))
        t0 = time.perf_counter()
        e, f = jax.block_until_ready(self.ef(self.params, self.system))
        self.ef_compile_s = time.perf_counter() - t0
        self.energy, self.max_force = float(e), float(np.abs(np.asarray(f)).max())
        if train:
            self._init_train(images)

    def _init_train(self, images: list) -> None:
        ds = data.from_atoms(images, cutoff=CUTOFF)
        structures = [ds[i] for i in range(len(ds))]
        n_at = max(s.n_atoms for s in structures)
        n_ed = max(s.n_edges for s in structures)
        self.batch = data.collate(structures, len(structures), n_at, n_ed, dtype=np.float32)
        opt = optax.adam(1e-3)
        self.step = make_train_step(self.pot, opt, LossWeights(energy=1.0, forces=25.0,
                                                               stress=0.0))
        self.state = TrainState.create(self.params, opt)
        t0 = time.perf_counter()
        self.state, m = jax.block_until_ready(self.step(self.state, self.batch))
        self.train_compile_s = time.perf_counter() - t0
        self.train_loss0 = float(m["loss"])

    def time_ef(self, number: int) -> float:
        return timed(lambda: self.ef(self.params, self.system), number)

    def time_train(self, number: int) -> float:
        def one():
            self.state, m = self.step(self.state, self.batch)
            return m["loss"]

        return timed(one, number)


# ---------------------------------------------------------------------------------------------
# mlip side (subprocess in .venv-mlip)
# ---------------------------------------------------------------------------------------------


class MlipWorker:
    """``bench/mlip_worker.py --serve`` in the mlip venv; compiles, then times on request."""

    def __init__(self, name: str, xyz: str, avg_num_neighbors: float):
        if not MLIP_PYTHON.exists():
            raise SystemExit(f"{MLIP_PYTHON} not found: run `bash bench/mlip_env.sh` first")
        cmd = [str(MLIP_PYTHON), str(WORKER), "--serve", "--model", name, "--input", xyz,
               "--cutoff", str(CUTOFF), "--num-layers", str(HYPER["num_layers"]),
               "--features", HYPER["features"].replace("+", " + "),
               "--channels", str(HYPER["channels"]), "--l-max", str(HYPER["l_max"]),
               "--correlation", str(HYPER["correlation"]),
               "--num-bessel", str(HYPER["num_bessel"]),
               "--radial-hidden", ",".join(map(str, HYPER["radial_hidden"])),
               "--readout-hidden", str(HYPER["readout_hidden"]),
               "--avg-num-neighbors", repr(avg_num_neighbors)]
        env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env, cwd=str(ROOT))
        self.info = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"mlip worker exited with code {self.proc.wait()}")
        return json.loads(line)

    def time(self, phase: str, number: int) -> float:
        self.proc.stdin.write(f"{phase} {number}\n")
        self.proc.stdin.flush()
        answer = self._read()
        self.jit_cache_sizes = answer.get("jit_cache_sizes")
        return float(answer["s"])

    def close(self):
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        self.proc.wait(timeout=60)


# ---------------------------------------------------------------------------------------------
# MD loop overhead (jaxpot only)
# ---------------------------------------------------------------------------------------------


def md_overhead(jb: JaxpotBench, steps: int, repeats: int, number_ef: int) -> dict:
    """NVE steps/s from ``md.simulate`` vs bare jitted E+F calls/s (same model, same cell).

    The bare E+F is timed right before and right after each MD run, with ``number_ef`` calls
    each, so that both see about the same machine load.
    """
    md_rates, ef_rates, ef_skin_rates = [], [], []
    final = None
    for _ in range(repeats):
        before = jb.time_ef(number_ef)
        res = md.simulate(jb.pot, jb.params, jb.system, ensemble="nve", dt_fs=2.0,
                          temperature_kelvin=300.0, steps=steps, log_every=min(50, steps))
        md_rates.append(steps / res.wall_s)
        after = jb.time_ef(number_ef)
        ef_rates.append(2.0 / (before + after))
        if final is None:
            # The MD's own graph: Verlet list with cutoff + skin edges (another shape: compile
            # it here, outside the timing).
            final = res.final_system
            jax.block_until_ready(jb.ef(jb.params, final))
        ef_skin_rates.append(1.0 / timed(lambda: jb.ef(jb.params, final), number_ef))
    md_rate = statistics.median(md_rates)
    ef_rate = statistics.median(ef_rates)
    ef_skin = statistics.median(ef_skin_rates)
    return {
        "md_steps_per_s": md_rate,
        "ef_calls_per_s": ef_rate,
        "ef_calls_per_s_md_graph": ef_skin,
        "overhead_pct": 100.0 * (ef_rate / md_rate - 1.0),
        "overhead_pct_vs_md_graph": 100.0 * (ef_skin / md_rate - 1.0),
        "n_edges_bare": int(jb.system.n_edges),
        "n_edges_md_graph": int(final.n_edges),
        "md_steps_per_s_all": md_rates,
        "ef_calls_per_s_all": ef_rates,
    }


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="nequip,mace")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    p.add_argument("--number-ef", type=int, default=3, help="E+F calls per round")
    p.add_argument("--number-train", type=int, default=1, help="train steps per round")
    p.add_argument("--md-steps", type=int, default=100)
    p.add_argument("--md-repeats", type=int, default=2)
    p.add_argument("--no-md", action="store_true")
    p.add_argument("--md-only", action="store_true",
                   help="only the jaxpot MD-overhead measurement (NequIP; mlip not run)")
    p.add_argument("--quick", action="store_true", help="2 rounds, fewer calls, 20 MD steps")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.number_ef, args.number_train = 2, 2, 1
        args.md_steps, args.md_repeats = 20, 1

    images = make_cells(8)
    systems = [jaxpot.System.from_ase(a, cutoff=CUTOFF) for a in images]
    avg_nn = float(models.average_num_neighbors(systems, CUTOFF))
    import e3nn_jax
    import flax

    results = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
               "jax": jax.__version__, "flax": flax.__version__,
               "e3nn_jax": e3nn_jax.__version__, "device": str(jax.devices()[0]),
               "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
               "hyperparameters": dict(HYPER, cutoff=CUTOFF, avg_num_neighbors=avg_nn),
               "models": {}}
    print(f"cells: 8 x 108-atom rattled fcc Cu; avg_num_neighbors(r_c={CUTOFF}) = {avg_nn:.3f}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    if args.md_only:
        jb = JaxpotBench("nequip", images, avg_nn, train=False)
        d = results["md"] = md_overhead(jb, args.md_steps, args.md_repeats,
                                        max(args.number_ef, args.md_steps // 4))
        report_md(d)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return results

    with tempfile.TemporaryDirectory() as tmp:
        xyz = os.path.join(tmp, "cells.xyz")
        ase.io.write(xyz, images, format="extxyz")
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            print(f"\n=== {name} ===  (compiling both sides...)", flush=True)
            worker = MlipWorker(name, xyz, avg_nn)
            jb = JaxpotBench(name, images, avg_nn)
            info = worker.info
            r = {"jaxpot": {"n_params": jb.n_params, "energy": jb.energy,
                            "max_force": jb.max_force, "ef_compile_s": jb.ef_compile_s,
                            "train_compile_s": jb.train_compile_s, "ef_s": [], "train_s": []},
                 "mlip": {"n_params": info["n_params"], "energy": info.get("energy"),
                          "max_force": info.get("max_force"),
                          "ef_compile_s": info.get("ef_compile_s"),
                          "train_compile_s": info.get("train_compile_s"),
                          "version": info["mlip_version"], "config": info["config"],
                          "ef_s": [], "train_s": []}}
            for k in range(args.rounds):
                order = [("jaxpot", jb), ("mlip", worker)]
                if k % 2:
                    order.reverse()
                for who, _ in order:
                    if who == "jaxpot":
                        r[who]["ef_s"].append(jb.time_ef(args.number_ef))
                    else:
                        r[who]["ef_s"].append(worker.time("ef", args.number_ef))
                for who, _ in order:
                    if who == "jaxpot":
                        r[who]["train_s"].append(jb.time_train(args.number_train))
                    else:
                        r[who]["train_s"].append(worker.time("train", args.number_train))
                print(f"  round {k + 1}/{args.rounds}: E+F jaxpot {r['jaxpot']['ef_s'][-1]*1e3:.1f}"
                      f" ms, mlip {r['mlip']['ef_s'][-1]*1e3:.1f} ms; train jaxpot "
                      f"{r['jaxpot']['train_s'][-1]*1e3:.0f} ms, mlip "
                      f"{r['mlip']['train_s'][-1]*1e3:.0f} ms", flush=True)
            worker.close()
            # 1 compiled version each = nothing was retraced during the timed rounds
            r["mlip"]["jit_cache_sizes"] = worker.jit_cache_sizes
            r["jaxpot"]["jit_cache_sizes"] = {"ef": jb.ef._cache_size(),
                                              "train": jb.step.n_traces}
            for who in ("jaxpot", "mlip"):
                r[who]["ef_median_s"] = statistics.median(r[who]["ef_s"])
                r[who]["train_median_s"] = statistics.median(r[who]["train_s"])
            r["ef_speedup"] = r["mlip"]["ef_median_s"] / r["jaxpot"]["ef_median_s"]
            r["train_speedup"] = r["mlip"]["train_median_s"] / r["jaxpot"]["train_median_s"]
            if not args.no_md and name == "nequip":
                print("  MD loop overhead (jaxpot md.simulate NVE)...", flush=True)
                r["md"] = md_overhead(jb, args.md_steps, args.md_repeats,
                                      max(args.number_ef, args.md_steps // 4))
            results["models"][name] = r
            report(name, r)
    results["loadavg_end"] = os.getloadavg()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


def report(name: str, r: dict) -> None:
    j, m = r["jaxpot"], r["mlip"]
    print(f"\n{name}: parameters jaxpot {j['n_params']:,}, mlip {m['n_params']:,} "
          f"(ratio {j['n_params'] / m['n_params']:.3f})")
    print(f"  {'':28s}{'jaxpot':>12s}{'mlip ' + m['version']:>14s}{'mlip/jaxpot':>13s}")
    print(f"  {'E+F, 108 atoms (ms)':28s}{j['ef_median_s']*1e3:12.1f}{m['ef_median_s']*1e3:14.1f}"
          f"{r['ef_speedup']:13.2f}")
    print(f"  {'train step, 8x108 (ms)':28s}{j['train_median_s']*1e3:12.1f}"
          f"{m['train_median_s']*1e3:14.1f}{r['train_speedup']:13.2f}")
    print(f"  {'compile E+F / train (s)':28s}{j['ef_compile_s']:6.1f}/{j['train_compile_s']:5.1f}"
          f"{m['ef_compile_s']:8.1f}/{m['train_compile_s']:5.1f}")
    print(f"  compiled versions after timing (1 = no retrace): jaxpot "
          f"{j.get('jit_cache_sizes')}, mlip {m.get('jit_cache_sizes')}")
    if "md" in r:
        report_md(r["md"])


def report_md(d: dict) -> None:
    print(f"  MD (jaxpot md.simulate NVE, 2 fs, 300 K): {d['md_steps_per_s']:.2f} steps/s; bare "
          f"jitted E+F {d['ef_calls_per_s']:.2f} calls/s on the r_c graph "
          f"({d['n_edges_bare']} edges), {d['ef_calls_per_s_md_graph']:.2f} calls/s on the MD's "
          f"Verlet graph ({d['n_edges_md_graph']} edge slots)")
    print(f"  MD loop overhead: {d['overhead_pct']:+.1f}% vs bare E+F on the r_c graph, "
          f"{d['overhead_pct_vs_md_graph']:+.1f}% vs E+F on the same Verlet graph "
          "(negative: an MD step costs less than a bare call)")


if __name__ == "__main__":
    main(sys.argv[1:])

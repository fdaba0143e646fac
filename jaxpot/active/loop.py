"""The on-the-fly active-learning loop.

::

    fit → MD walkers (uncertainty checked inside the jitted loop) → first frame over the threshold
        → oracle labels it (and a few diverse frames before it) → data file → refit → repeat

Every iteration runs one MD segment of one walker (walkers take turns: one per temperature ×
strain). A segment stops at the first block whose largest per-atom force spread exceeds the
threshold (absolute, eV/Å, or ``threshold_factor`` × the ``threshold_percentile`` of the
largest spread over the initial training frames, under the first model); the walker then
continues from its last trusted frame with the refitted model.

Files in ``out`` (each written atomically, in this order, so a kill at any point loses nothing):
``data.xyz`` (labelled frames; ``info["al_source"]`` is ``initial`` or ``active``), ``model``
(:func:`jaxpot.save_model`, metadata ``n_data``), ``state.json`` (walkers, threshold,
history), then ``iterations.csv`` and ``report.png``. On restart a model older than the data is
refitted; the walkers continue from ``state.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from jaxpot.active.criteria import StoppingCriteria, block_standard_error, check
from jaxpot.active.oracle import Oracle, labelled, make_oracle
from jaxpot.active.walkers import (
    Walker,
    force_errors,
    new_walker,
    run_segment,
    select_frames,
    spread_levels,
)

__all__ = ["ActiveConfig", "ActiveResult", "run_active", "FIELDS"]

FIELDS = ("iteration", "walker", "temperature_k", "strain", "steps", "full", "triggered",
          "trigger_step", "max_spread", "mean_spread", "threshold", "coverage_frames",
          "trusted_frames", "sem_ev", "labelled", "oracle_calls", "n_data", "test_force_rmse",
          "test_energy_rmse", "quiet", "coverage", "sem_max_ev", "plateau_change", "md_s",
          "fit_s", "stop_reason")
"""Columns of ``iterations.csv``."""


@dataclasses.dataclass(frozen=True)
class ActiveConfig:
    """Options of :func:`run_active`.

    Attributes:
      temperatures: walker bath temperatures, K.
      strains: isotropic strains of the walkers' cells (each walker is one temperature × strain).
      dt_fs, steps_per_walker, log_every, block_steps, friction_per_fs: Langevin MD of a
        segment (the spread is checked at every log point, the stop after every block).
      threshold: absolute trigger, eV/Å (None: relative).
      threshold_factor, threshold_percentile: relative trigger: this multiple of this
        percentile of the largest per-atom spread over the initial training frames (measured
        once, with the first model, and kept).
      n_select: frames labelled per trigger (the trigger, then farthest-point picks among the
        ``window`` logged frames before it).
      seed: MD seeds.
      criteria: the :class:`StoppingCriteria`.
    """

    temperatures: Sequence[float] = (300.0, 600.0, 900.0)
    strains: Sequence[float] = (0.0,)
    dt_fs: float = 2.0
    steps_per_walker: int = 1000
    log_every: int = 10
    block_steps: int = 50
    friction_per_fs: float = 0.01
    threshold: float | None = None
    threshold_factor: float = 3.0
    threshold_percentile: float = 95.0
    n_select: int = 1
    window: int = 20
    seed: int = 0
    criteria: StoppingCriteria = StoppingCriteria()

    def validated(self) -> ActiveConfig:
        if not self.temperatures or min(self.temperatures) <= 0:
            raise ValueError(f"temperatures must be > 0 K, got {list(self.temperatures)}")
        if self.steps_per_walker < self.log_every or self.log_every < 1:
            raise ValueError("steps_per_walker must be >= log_every >= 1")
        if self.threshold is not None and not self.threshold > 0:
            raise ValueError(f"threshold must be > 0 eV/Å, got {self.threshold}")
        if self.n_select < 1:
            raise ValueError(f"n_select must be >= 1, got {self.n_select}")
        return dataclasses.replace(self, criteria=self.criteria.validated())


@dataclasses.dataclass
class ActiveResult:
    """What :func:`run_active` returns: the final model, the history rows (dicts of
    :data:`FIELDS`), why it stopped, the labelled frames and the output directory."""

    potential: object
    params: object
    history: list
    stop_reason: str
    frames: list
    out: str


# ------------------------------------------------------------------------------ files


def _paths(out: str) -> dict:
    return {k: os.path.join(out, f) for k, f in (
        ("data", "data.xyz"), ("model", "model"), ("state", "state.json"),
        ("csv", "iterations.csv"), ("png", "report.png"), ("pool", "pool.xyz"))}


def _write_data(path: str, frames: list) -> None:
    from ase.io import write

    from jaxpot.files import atomic_write

    with atomic_write(path, "w") as f:
        write(f, frames, format="extxyz")


def _read_data(path: str) -> list:
    from ase.io import read

    return list(read(path, ":", format="extxyz"))


def _save_model(path, potential, params, n_data: int) -> None:
    from jaxpot.serialization import save_model

    save_model(path, potential, params, metadata={"active_learning": {"n_data": n_data}})


def _load_model(path, n_data: int):
    """The saved model if it was fitted on ``n_data`` frames, else None."""
    import jax

    from jaxpot.serialization import load_model, read_model_info

    if not os.path.exists(path):
        return None
    meta = read_model_info(path).get("metadata", {}).get("active_learning", {})
    if meta.get("n_data") != n_data:
        return None
    with jax.enable_x64(True):
        potential, params = load_model(path)
        return potential, jax.device_get(params)


def _write_state(paths: dict, state: dict, history: list) -> None:
    from jaxpot.files import atomic_write_text, write_csv

    atomic_write_text(paths["state"], json.dumps(state, indent=1, default=_plain))
    write_csv(paths["csv"], FIELDS, [[row.get(k) for k in FIELDS] for row in history])
    try:
        plot_report(history, paths["png"])
    except Exception as err:  # noqa: BLE001 - a plot must never end the run
        print(f"jaxpot active: could not write {paths['png']}: {err}", file=sys.stderr)


def _plain(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# ------------------------------------------------------------------------------ the loop


class _Run:
    """The loop's mutable state: data, model, walkers, threshold, history."""

    def __init__(self, out, oracle: Oracle, fit, config: ActiveConfig, test_frames, callback,
                 keep_pool: bool, verbose: bool):
        self.paths, self.oracle, self.fit, self.cfg = _paths(out), oracle, fit, config
        self.test, self.callback, self.keep_pool = test_frames, callback, keep_pool
        self.verbose = verbose
        self.history: list = []
        self.walkers: list[Walker] = []
        self.data: list = []
        self.threshold = float("nan")
        self.level = float("nan")
        self.iteration = 0
        self.model = None

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"jaxpot active: {msg}", file=sys.stderr, flush=True)

    def event(self, name: str, **info) -> None:
        if self.callback is not None:
            self.callback(name, {"iteration": self.iteration, **info})

    @property
    def oracle_calls(self) -> int:
        return sum(a.info.get("al_source") == "active" for a in self.data)

    def start(self, initial: list, start_structure) -> None:
        """A new run (labelling unlabelled initial frames) or the continuation of one."""
        if os.path.exists(self.paths["state"]) and os.path.exists(self.paths["data"]):
            with open(self.paths["state"], encoding="utf-8") as f:
                state = json.load(f)
            self.walkers = [Walker(**w) for w in state["walkers"]]
            self.history, self.iteration = state["history"], int(state["iteration"])
            self.level = float(state.get("training_level") or "nan")
            self.data = _read_data(self.paths["data"])
            self.log(f"resuming at iteration {self.iteration} with {len(self.data)} frames")
        else:
            frames = []
            for atoms in initial:
                a = atoms if labelled(atoms) else self.oracle(atoms)
                a.info["al_source"], a.info["al_iteration"] = "initial", 0
                frames.append(a)
            if not frames:
                raise ValueError("active learning needs at least one initial frame")
            self.data = frames
            _write_data(self.paths["data"], self.data)
            start = start_structure if start_structure is not None else frames[0]
            self.walkers = [new_walker(start, t, s) for s in self.cfg.strains
                            for t in self.cfg.temperatures]
        self.model = _load_model(self.paths["model"], len(self.data))
        if self.model is None:
            self.refit()
        else:
            self.set_threshold()

    def refit(self) -> float:
        t0 = time.perf_counter()
        potential, params = self.fit(self.data)
        _save_model(self.paths["model"], potential, params, len(self.data))
        self.model = (potential, params)
        self.set_threshold()
        self.event("fitted", n_data=len(self.data))
        return time.perf_counter() - t0

    def set_threshold(self) -> None:
        """The trigger: absolute, or relative to the spread level of the model fitted on the
        initial frames (kept fixed afterwards, so labelling hard frames cannot raise it)."""
        if self.cfg.threshold is not None:
            self.threshold = float(self.cfg.threshold)
            return
        if not np.isfinite(self.level):
            potential, params = self.model
            levels = spread_levels(potential, params, self.data)
            self.level = float(np.percentile(levels, self.cfg.threshold_percentile))
        self.threshold = self.cfg.threshold_factor * self.level

    def label(self, seg, walker: Walker) -> int:
        picks = select_frames(seg.frames, seg.trigger, self.cfg.n_select, self.cfg.window)
        new = []
        for i in picks:
            atoms = seg.frames[i].copy()
            atoms.arrays.pop("momenta", None)
            lab = self.oracle(atoms)
            lab.info.clear()
            lab.info.update(al_source="active", al_iteration=self.iteration + 1,
                            al_temperature_k=walker.temperature, al_strain=walker.strain)
            new.append(lab)
        self.data = self.data + new
        _write_data(self.paths["data"], self.data)
        self.event("labelled", n_data=len(self.data), n_new=len(new))
        return len(new)

    def step(self) -> dict:
        """One MD segment of the next walker (and, if it triggered, labelling and a refit)."""
        c = self.cfg
        w_index = self.iteration % len(self.walkers)
        walker = self.walkers[w_index]
        potential, params = self.model
        t0 = time.perf_counter()
        seg = run_segment(potential, params, walker, steps=c.steps_per_walker,
                          threshold=self.threshold, dt_fs=c.dt_fs, log_every=c.log_every,
                          block_steps=c.block_steps, friction_per_fs=c.friction_per_fs,
                          seed=c.seed + 7919 * self.iteration + w_index)
        md_s = time.perf_counter() - t0
        walker.runs += 1
        if self.keep_pool and seg.frames:
            from ase.io import write

            write(self.paths["pool"], seg.frames, format="extxyz", append=True)
        n_new, fit_s, threshold = 0, 0.0, self.threshold
        if seg.trigger is not None:
            n_new = self.label(seg, walker)
            fit_s = self.refit()
        if seg.frames:
            r = seg.frames[seg.restart]
            walker.move_to(r.get_positions(), r.get_momenta(), r.get_cell())
        elif seg.unstable:
            self.log(f"walker {w_index} blew up; restarting it from its last frame: "
                     f"{seg.unstable[:200]}")
            walker.momenta = None
        return self.row(w_index, walker, seg, n_new, md_s, fit_s, threshold)

    def row(self, w_index, walker, seg, n_new, md_s, fit_s, threshold) -> dict:
        end = seg.trigger if seg.trigger is not None else len(seg.spreads)
        body = seg.energies[max(1, end // 5):end]
        n_cov = len(seg.spreads)
        row = {"iteration": self.iteration + 1, "walker": w_index,
               "temperature_k": walker.temperature, "strain": walker.strain,
               "steps": seg.steps, "full": bool(seg.full and not seg.unstable),
               "triggered": seg.trigger is not None or bool(seg.unstable),
               "trigger_step": (seg.trigger * self.cfg.log_every
                                if seg.trigger is not None else None),
               "max_spread": float(np.max(seg.spreads)) if n_cov else float("nan"),
               "mean_spread": float(np.mean(seg.spreads)) if n_cov else float("nan"),
               "threshold": threshold, "coverage_frames": n_cov,
               "trusted_frames": int(np.sum(seg.spreads <= threshold)),
               "sem_ev": block_standard_error(body), "labelled": n_new,
               "oracle_calls": self.oracle_calls, "n_data": len(self.data),
               "md_s": md_s, "fit_s": fit_s}
        if self.test:
            err = force_errors(*self.model, self.test)
            row.update(test_force_rmse=err["force_rmse"], test_energy_rmse=err["energy_rmse"])
        return row


def run_active(initial, oracle, fit: Callable, out: str, config: ActiveConfig | None = None,
               *, start=None, test_frames: list | None = None,
               callback: Callable[[str, dict], None] | None = None, keep_pool: bool = False,
               verbose: bool = True) -> ActiveResult:
    """Run (or resume) on-the-fly active learning in ``out``.

    Args:
      initial: the starting frames (``ase.Atoms``); unlabelled ones are labelled by the oracle.
        Ignored when ``out`` already holds a run (it is resumed).
      oracle: an oracle spec (:func:`jaxpot.active.make_oracle`), e.g.
        ``"ase.calculators.emt:EMT"``.
      fit: ``fit(frames) -> (potential, params)`` for a model that states an uncertainty
        (:func:`jaxpot.active.gap_fitter`, :func:`jaxpot.active.ensemble_fitter`).
      out: output directory (created if missing).
      config: the :class:`ActiveConfig`.
      start: the structure the walkers start from (default: the first initial frame).
      test_frames: labelled held-back frames; their force and energy RMSE is reported at
        every iteration.
      callback: ``callback(event, info)`` after ``"labelled"`` (data written), ``"fitted"``
        (model written) and ``"iteration"`` (state written); an exception from it ends the
        run like a kill would (the files stay consistent; call again to resume).
      keep_pool: append every logged MD frame to ``out/pool.xyz``.
      verbose: progress lines on stderr.

    Returns:
      An :class:`ActiveResult`.
    """
    cfg = (config or ActiveConfig()).validated()
    oracle = make_oracle(oracle)
    os.makedirs(out, exist_ok=True)
    run = _Run(out, oracle, fit, cfg, list(test_frames or []), callback, keep_pool, verbose)
    run.start(list(initial), start)
    reason = ""
    while not reason:
        row = run.step()
        run.iteration += 1
        values, reasons = check(run.history + [row], len(run.walkers), run.oracle_calls,
                                cfg.criteria)
        reason = "; ".join(reasons)
        row.update(quiet=values["quiet"], coverage=values["coverage"],
                   sem_max_ev=values["sem_ev"], plateau_change=values["plateau_change"],
                   stop_reason=reason or None)
        run.history.append(row)
        state = {"version": 1, "iteration": run.iteration, "n_data": len(run.data),
                 "threshold": run.threshold, "training_level": run.level,
                 "oracle": oracle.name, "walkers": [dataclasses.asdict(w) for w in run.walkers],
                 "history": run.history, "stop_reason": reason or None}
        _write_state(run.paths, state, run.history)
        run.log(_summary(row))
        run.event("iteration", row=row)
    run.log(f"stopped: {reason}")
    return ActiveResult(run.model[0], run.model[1], run.history, reason, run.data, out)


def _summary(row: dict) -> str:
    test = (f", held-back force RMSE {row['test_force_rmse'] * 1e3:.1f} meV/Å"
            if row.get("test_force_rmse") is not None else "")
    what = (f"trigger at step {row['trigger_step']}" if row["trigger_step"] is not None
            else "no trigger")
    return (f"iteration {row['iteration']}: walker {row['walker']} "
            f"({row['temperature_k']:g} K, strain {row['strain']:g}) {row['steps']} steps, "
            f"{what}, max spread {row['max_spread']:.3g} / {row['threshold']:.3g} eV/Å, "
            f"oracle calls {row['oracle_calls']}, coverage {row['coverage']:.3f}{test}")


def plot_report(history: list, path: str) -> None:
    """A PNG of the run: spreads and threshold per iteration (triggers marked), held-back
    force error against oracle calls, and oracle calls per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jaxpot.files import atomic_write

    it = np.array([r["iteration"] for r in history])
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].semilogy(it, [r["max_spread"] for r in history], ".-", label="max spread")
    ax[0].semilogy(it, [r["threshold"] for r in history], "k--", label="threshold")
    trig = [r for r in history if r["triggered"]]
    ax[0].semilogy([r["iteration"] for r in trig], [r["max_spread"] for r in trig], "rv",
                   label="trigger")
    ax[0].set(xlabel="iteration", ylabel="force spread (eV/Å)")
    ax[0].legend(fontsize=7)
    calls = [r["oracle_calls"] for r in history]
    if any(r.get("test_force_rmse") is not None for r in history):
        ax[1].plot(calls, [1e3 * (r.get("test_force_rmse") or np.nan) for r in history], "o-")
    ax[1].set(xlabel="oracle calls", ylabel="held-back force RMSE (meV/Å)")
    ax[2].step(it, calls, where="post")
    ax[2].set(xlabel="iteration", ylabel="oracle calls")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)

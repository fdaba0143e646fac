"""The ``jaxpot`` command line.

::

    jaxpot md MODEL STRUCTURE --ensemble nve --temperature 40 --dt 5 --steps 2000 \\
        --log-every 20 --log md.csv --traj md.xyz --summary md.json
    jaxpot info MODEL
    jaxpot train ... / jaxpot eval ... / jaxpot demo ...   (when those modules are installed)

Subcommands register themselves: each module in :data:`PLUGINS` that imports defines
``register(subparsers)``, which adds a parser whose ``func(args)`` returns an exit code.

Exit codes (:data:`EXIT_CODES`):

- 0: success;
- 1: an unexpected error (a jaxpot bug): one line, and the traceback with ``--debug`` or
  ``JAXPOT_DEBUG=1``;
- 2: bad input: a missing or unreadable file, a corrupt model file, NaN positions, an element
  the model does not know, an invalid option, an output that would overwrite an input, an
  unwritable output path (also argparse's usage errors);
- 3: the run failed on valid input: an MD run that blew up, a training run that diverged;
- 130: interrupted (Ctrl-C).

Errors are one line on stderr, ``jaxpot <command>: error: <message>``, never a traceback
(unless ``--debug``).

Every command uses JAX's persistent compilation cache, so a second run of the same model on the
same shapes skips XLA compilation: the cache lives in ``$JAXPOT_COMPILE_CACHE_DIR``, else
``$XDG_CACHE_HOME/jaxpot/jax``, else ``~/.cache/jaxpot/jax``. Turn it off with
``--no-compile-cache`` or ``JAXPOT_COMPILE_CACHE=0``; a cache directory configured for JAX
itself (``JAX_COMPILATION_CACHE_DIR``) is left as it is.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import time

__all__ = ["main", "build_parser", "PLUGINS", "LOG_COLUMNS", "EXIT_CODES", "RunFailed",
           "md_summary", "enable_compile_cache", "compile_cache_dir"]

PLUGINS = ("jaxpot.train.commands", "jaxpot.md.commands", "jaxpot.analysis.commands",
           "jaxpot.parallel.commands", "jaxpot.lammps.commands", "jaxpot.active.commands",
           "jaxpot.demo")
"""Optional modules whose ``register(subparsers)`` adds subcommands (train, eval, relax,
properties, export, lammps, active, demo); a module that is absent is skipped."""

LOG_COLUMNS = ("step", "time_fs", "potential_energy_ev", "kinetic_energy_ev", "total_energy_ev",
               "temperature_k")
"""Columns of the ``jaxpot md`` log CSV; ``pressure_gpa`` follows for periodic cells."""

EXIT_CODES = {"ok": 0, "internal error": 1, "bad input": 2, "run failed": 3, "interrupted": 130}
"""What each exit code of ``jaxpot`` means (see the module docstring)."""


class RunFailed(RuntimeError):
    """A run on valid input failed (MD blew up, training diverged): exit code 3."""


_NVE_MAX_CHANGE_KT = 0.2
"""An NVE run whose total energy moves further than this many kB·T per atom from its start is
reported as unstable (exit code 3). A sound time step stays far below it: argon (LJ) at 40 K
with 5 fs steps moves 5e-4 kT per atom in 1000 steps, while 100 fs steps pass 0.2 kT within 30
steps and give NaN ~300 steps later (see :func:`_md_failure`)."""


# ---------------------------------------------------------------------------------------------
# jaxpot info
# ---------------------------------------------------------------------------------------------


def _cmd_info(args) -> int:
    """Print the header; then rebuild the model and check its params (exit 2 if they do not
    fit, after printing what the file holds)."""
    from jaxpot.serialization import load_model, read_model_info

    info = read_model_info(args.model)
    if args.params:
        out = info
    else:
        out = {k: v for k, v in info.items() if k != "params_shapes"}
    try:
        load_model(args.model)
        problem = None
    except ValueError as err:
        problem = _one_line(err)
    out["check"] = "ok" if problem is None else problem
    print(json.dumps(out, indent=2, sort_keys=True))
    if problem is not None:
        raise ValueError(problem)
    return 0


def _add_info(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="print a model file's config as JSON and check that it loads",
        description="Print a model file's config (and versions) as JSON, then rebuild the "
                    "model and check its parameter arrays against it (\"check\": \"ok\", "
                    "or the problem and exit code 2).")
    p.add_argument("model", metavar="MODEL", help="model file written by jaxpot.save_model")
    p.add_argument("--params", action="store_true",
                   help="also list the parameter arrays' dtypes and shapes")
    p.set_defaults(func=_cmd_info)


# ---------------------------------------------------------------------------------------------
# jaxpot md
# ---------------------------------------------------------------------------------------------


def _finite_or_none(x):
    x = float(x)
    return x if math.isfinite(x) else None


def md_summary(log: dict, *, n_atoms: int, ensemble: str) -> dict:
    """Summary statistics of an MD log (see :func:`jaxpot.md.simulate`).

    Args:
      log: dict of ``[n_log]`` arrays with ``time_fs``, ``total_energy_ev``, ``temperature_k``.
      n_atoms: number of real atoms.
      ensemble: ``"nve"`` gets an energy drift; thermostatted runs get ``None``.

    Returns:
      ``mean_temperature_k`` (K, over log points after step 0),
      ``energy_drift_ev_per_atom_per_ps`` (slope of a least-squares line through total
      energy / atom versus time in ps; NVE only), ``max_abs_energy_change_ev_per_atom``
      (max |E(t) − E(0)| / N) and ``final_*`` energies in eV.
    """
    import numpy as np

    t_ps = np.asarray(log["time_fs"], np.float64) / 1000.0
    e_tot = np.asarray(log["total_energy_ev"], np.float64) / n_atoms
    temps = np.asarray(log["temperature_k"], np.float64)
    after = temps[1:] if temps.size > 1 else temps
    drift = None
    if ensemble == "nve" and t_ps.size >= 2 and np.ptp(t_ps) > 0:
        drift = _finite_or_none(np.polyfit(t_ps, e_tot, 1)[0])
    out = {
        "mean_temperature_k": _finite_or_none(np.mean(after)),
        "energy_drift_ev_per_atom_per_ps": drift,
        "max_abs_energy_change_ev_per_atom": _finite_or_none(np.max(np.abs(e_tot - e_tot[0]))),
        "final_potential_energy_ev": _finite_or_none(log["potential_energy_ev"][-1]),
        "final_total_energy_ev": _finite_or_none(log["total_energy_ev"][-1]),
    }
    if "pressure_gpa" in log:
        out["mean_pressure_gpa"] = _finite_or_none(np.mean(np.asarray(log["pressure_gpa"])[1:]
                                                           if len(log["pressure_gpa"]) > 1
                                                           else log["pressure_gpa"]))
    return out


NPT_LOG_COLUMNS = ("volume_a3", "cell_a", "cell_b", "cell_c", "density_g_cm3")


def _write_log_csv(path: str, log: dict) -> None:
    from jaxpot.files import write_csv

    columns = list(LOG_COLUMNS) + (["pressure_gpa"] if "pressure_gpa" in log else [])
    columns += [c for c in NPT_LOG_COLUMNS if c in log]
    missing = [c for c in columns if c not in log]
    if missing:
        raise RuntimeError(f"the MD log lacks columns {missing}")  # a jaxpot bug, not input
    rows = ([int(log[c][i]) if c == "step" else float(log[c][i]) for c in columns]
            for i in range(len(log["step"])))
    write_csv(path, columns, rows)


def _progress_wanted() -> bool:
    return sys.stdout.isatty() and not os.environ.get("CI")


def _check_md_options(args) -> None:
    """Refuse invalid ``jaxpot md`` options, naming each, before any file is read."""
    positive = [("--dt", args.dt), ("--tau", args.tau), ("--steps", args.steps),
                ("--log-every", args.log_every)]
    if args.traj_every is not None:
        positive.append(("--traj-every", args.traj_every))
    for name, value in positive:
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value}")
    for name, value, unit in (("--temperature", args.temperature, "kelvin"),
                              ("--friction", args.friction, "1/fs")):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a non-negative number of {unit}, got {value}")
    if not 0 <= args.seed < 2**32:
        raise ValueError(f"--seed must be an integer from 0 to {2**32 - 1}, got {args.seed}")
    _check_npt_cli(args)
    if args.traj_every is not None and args.traj_every % args.log_every:
        raise ValueError(f"--traj-every ({args.traj_every}) must be a multiple of --log-every "
                         f"({args.log_every})")
    _check_output_paths({"--log": args.log, "--traj": args.traj, "--summary": args.summary,
                         "--final-state": args.final_state},
                        {"MODEL": args.model, "STRUCTURE": args.structure,
                         "--restart-from": args.restart_from})


def _cell_mask_arg(text: str) -> tuple[bool, bool, bool]:
    """``--cell-mask`` such as ``1,1,0`` (x and y move, z fixed)."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3 or any(p not in ("0", "1") for p in parts):
        raise ValueError(f"--cell-mask must be three 0/1 flags such as 1,1,0, got {text!r}")
    return tuple(p == "1" for p in parts)


def _check_npt_cli(args) -> None:
    """NPT options of ``jaxpot md`` (units and signs; the library checks the rest)."""
    _cell_mask_arg(args.cell_mask)
    for name, value in (("--tau-p", args.tau_p), ("--compressibility", args.compressibility)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value}")
    if not (math.isfinite(args.thermalize_ps) and args.thermalize_ps >= 0):
        raise ValueError(f"--thermalize-ps must be a time >= 0 ps, got {args.thermalize_ps}")
    if not math.isfinite(args.pressure_gpa):
        raise ValueError(f"--pressure-gpa must be finite, got {args.pressure_gpa}")
    if args.restart_from is not None and not os.path.isfile(args.restart_from):
        raise ValueError(f"--restart-from: no such file {args.restart_from!r}")


def _check_output_paths(outputs: dict, inputs: dict) -> None:
    """Outputs go to existing, writable directories, are not directories, and overwrite no
    input and no other output (:func:`jaxpot.files.check_outputs`)."""
    from jaxpot.files import check_outputs

    for name, path in outputs.items():
        if path is None:
            continue
        if os.path.isdir(path):
            raise ValueError(f"{name} {path!r} is a directory; give a file name")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"{name}: output directory {directory!r} does not exist")
        try:  # a real probe: os.access says yes to root on read-only file systems
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as err:
            raise PermissionError(f"{name}: cannot write in directory {directory!r} "
                                  f"({err.strerror or err})") from None
    check_outputs(outputs, inputs)


def _load_md_inputs(args):
    """Model, structure and System, each checked on the host before any jitted call."""
    import numpy as np

    from jaxpot.io import read_structure
    from jaxpot.models.cells import CELL_MARGIN, fit_cells
    from jaxpot.potential import check_species
    from jaxpot.serialization import load_model, nonfinite_params
    from jaxpot.system import System

    potential, params = load_model(args.model)
    bad = nonfinite_params(params)
    if bad:
        raise ValueError(f"model {args.model!r}: parameter(s) {', '.join(bad[:5])} hold NaN or "
                         f"infinity; the model cannot run (was its training diverging?)")
    atoms = read_structure(args.structure)
    where = f"structure {args.structure!r} ({atoms.get_chemical_formula()})"
    masses = np.asarray(atoms.get_masses(), np.float64)
    wrong = np.flatnonzero(~(np.isfinite(masses) & (masses > 0)))
    if wrong.size:
        i = int(wrong[0])
        raise ValueError(f"{where}: atom {i} ({atoms[i].symbol}) has mass {masses[i]} amu; "
                         f"masses must be positive ({wrong.size} atom(s) affected)")
    check_species(potential, atoms.get_atomic_numbers(), where=where)
    if atoms.pbc.any():  # lattice sums sized for the cell, with room for a barostat
        potential = fit_cells(potential, [CELL_MARGIN * atoms.cell.array])
    cutoff = float(potential.cutoff) if potential.cutoff and potential.cutoff > 0 else None
    try:  # with the cutoff: overlapping atoms and degenerate cells are refused here, by name
        system = System.from_ase(atoms, cutoff=cutoff, where=where)
    except ValueError as err:
        if where in str(err):
            raise
        raise ValueError(f"{where}: {err}") from None
    return potential, params, atoms, system


def _typical_dt_fs(masses) -> float:
    """A time step that is usually stable, fs: 0.5 fs × sqrt(lightest mass / amu)
    (0.5 fs for hydrogen, 1.7 fs for carbon, 3.2 fs for argon)."""
    return 0.5 * math.sqrt(float(min(masses)))


def _md_failure(log: dict, args, atoms) -> str | None:
    """Why an MD run is not trustworthy, or None.

    Non-finite energies; in NVE, a total energy that moved further from its start than
    ``_NVE_MAX_CHANGE_KT`` × kB·T per atom, with T the larger of the target and the median
    logged temperature (at least 10 K), i.e. about 13 % of the kinetic energy; in a
    thermostatted run, a temperature above 10 × max(target, 300 K).
    """
    import numpy as np

    from jaxpot.units import kB

    e_tot = np.asarray(log["total_energy_ev"], np.float64)
    temps = np.asarray(log["temperature_k"], np.float64)
    steps, n = np.asarray(log["step"]), len(atoms)
    if not np.all(np.isfinite(e_tot)):
        k = int(np.argmin(np.isfinite(e_tot)))
        return f"non-finite energy at step {int(steps[k])}"
    if args.ensemble == "nve":
        t_ref = max(args.temperature, float(np.median(temps)), 10.0)
        limit = _NVE_MAX_CHANGE_KT * kB * t_ref
        change = np.abs(e_tot - e_tot[0]) / n
        if change.max() > limit:
            k = int(np.argmax(change > limit))
            return (f"the total energy of this NVE run went from {e_tot[0]:.4g} eV to "
                    f"{e_tot[k]:.4g} eV by step {int(steps[k])} ({change[k]:.3g} eV/atom, more "
                    f"than {_NVE_MAX_CHANGE_KT:g} kT = {limit:.2g} eV/atom at {t_ref:.3g} K; "
                    f"max temperature {np.max(temps):.3g} K)")
        return None
    limit = 10.0 * max(args.temperature, 300.0)
    if np.max(temps) > limit:
        k = int(np.argmax(temps > limit))
        return (f"the temperature ran away to {temps[k]:.3g} K by step {int(steps[k])} "
                f"(thermostat at {args.temperature:g} K)")
    return None


def _raise_md_failure(reason: str, args, atoms) -> None:
    import numpy as np

    typical = _typical_dt_fs(atoms.get_masses())
    light = atoms[int(np.argmin(atoms.get_masses()))].symbol if len(atoms) else "?"
    if args.dt > 2.0 * typical:
        hint = (f"--dt {args.dt:g} fs is large for {light} (about {typical:.2g} fs is usually "
                f"stable): try a smaller --dt")
    else:
        hint = (f"--dt {args.dt:g} fs is not large for {light}, so the time step is an unlikely "
                f"cause: check the starting structure (atoms too close?) and whether the model "
                f"was trained on configurations like these")
    raise RunFailed(f"the simulation is unstable: {reason}; {hint}")


def _cmd_md(args) -> int:
    import numpy as np

    from jaxpot.serialization import stores_float64

    _check_md_options(args)
    if args.float64 or stores_float64(args.model):  # a float64 model (GAP) runs in float64
        import jax

        jax.config.update("jax_enable_x64", True)
    potential, params, atoms, system = _load_md_inputs(args)
    from jaxpot import md  # imported after the input is validated: jax_md is slow to import

    result = md.simulate(
        potential, params, system,
        ensemble=args.ensemble, dt_fs=args.dt, temperature_kelvin=args.temperature,
        steps=args.steps, log_every=args.log_every, seed=args.seed,
        friction_per_fs=args.friction, tau_fs=args.tau,
        trajectory_every=(args.traj_every or args.log_every) if args.traj else None,
        progress=_progress_wanted(), pressure_gpa=args.pressure_gpa, barostat=args.barostat,
        cell_dof=args.cell_dof, cell_mask=_cell_mask_arg(args.cell_mask), tau_p_fs=args.tau_p,
        compressibility_per_gpa=args.compressibility, thermalize_ps=args.thermalize_ps,
        restart=args.restart_from, trajectory_file=args.traj,
    )
    if args.final_state is not None:
        md.save_state(args.final_state, result.final_state, ensemble=args.ensemble,
                      step=result.steps_done)
    log = {k: np.asarray(v) for k, v in result.log.items()}
    reason = _md_failure(log, args, atoms)
    summary = _md_run_summary(args, result, log, potential, len(atoms))
    summary["unstable"] = reason
    _write_md_outputs(args, log, result, summary)  # kept, so the user can see what happened
    if reason is not None:
        _raise_md_failure(reason, args, atoms)
    drift = summary["energy_drift_ev_per_atom_per_ps"]
    print(
        f"jaxpot md: {len(atoms)} atoms, {args.steps} {args.ensemble} steps of {args.dt} fs; "
        f"<T> = {summary['mean_temperature_k']:.1f} K; "
        + (f"drift {drift:.3e} eV/atom/ps; " if drift is not None else "")
        + f"{summary['atom_steps_per_s']:.3g} atom-steps/s, {summary['ns_per_day']:.3g} ns/day "
        f"(compile {summary['compile_s']:.1f} s, run {summary['wall_s']:.1f} s)"
    )
    return 0


def _md_run_summary(args, result, log: dict, potential, n_atoms: int) -> dict:
    return {
        "n_atoms": n_atoms,
        "steps": int(args.steps),
        "ensemble": args.ensemble,
        "dt_fs": float(args.dt),
        "temperature_kelvin": float(args.temperature),
        "compile_s": float(result.compile_s),
        "wall_s": float(result.wall_s),
        "atom_steps_per_s": _finite_or_none(result.atom_steps_per_s),
        "ns_per_day": _finite_or_none(result.ns_per_day),
        **md_summary(log, n_atoms=n_atoms, ensemble=args.ensemble),
        "n_reallocations": int(getattr(result, "n_reallocations", 0)),
        "model": os.path.abspath(args.model),
        "model_config": potential.config,
        "structure": os.path.abspath(args.structure),
        "device": _device(),
        "float64": bool(_x64()),
        "jaxpot_version": _version(),
    }


def _write_md_outputs(args, log: dict, result, summary: dict) -> None:
    from jaxpot.files import atomic_write_text

    if args.log is not None:
        _write_log_csv(args.log, log)
    if args.summary is not None:
        atomic_write_text(args.summary, json.dumps(summary, indent=2, allow_nan=False) + "\n")


def _device() -> str:
    import jax

    d = jax.devices()[0]
    return f"{d.platform}:{getattr(d, 'device_kind', '')}"


def _x64() -> bool:
    import jax

    return bool(jax.config.read("jax_enable_x64"))


def _version() -> str:
    from jaxpot import __version__

    return __version__


def _add_md(subparsers) -> None:
    p = subparsers.add_parser(
        "md", help="run molecular dynamics with a model file",
        description="Run jitted molecular dynamics on the last frame of STRUCTURE with the "
                    "potential in MODEL; write a CSV log, an extxyz trajectory and a JSON "
                    "summary (speed, mean temperature, NVE energy drift).")
    p.add_argument("model", metavar="MODEL", help="model file written by jaxpot.save_model")
    p.add_argument("structure", metavar="STRUCTURE",
                   help="any file ASE reads (extxyz, POSCAR, cif, ...); the last frame is used")
    p.add_argument("--ensemble", choices=("nve", "langevin", "nose-hoover", "npt"),
                   default="nve")
    p.add_argument("--temperature", type=float, default=300.0, metavar="K",
                   help="initial (and thermostat) temperature in kelvin (default 300)")
    p.add_argument("--dt", type=float, default=1.0, metavar="FS", help="time step, fs (default 1)")
    p.add_argument("--steps", type=int, default=1000, metavar="N", help="time steps (default 1000)")
    p.add_argument("--log-every", type=int, default=10, metavar="K",
                   help="steps between log rows (default 10)")
    p.add_argument("--log", metavar="LOG.csv", help="write the log as CSV")
    p.add_argument("--traj", metavar="TRAJ.xyz",
                   help="write the trajectory while the run goes (extxyz; H5MD for .h5/.h5md); "
                        "with --restart-from it is continued")
    p.add_argument("--traj-every", type=int, default=None, metavar="K",
                   help="steps between trajectory frames, a multiple of --log-every "
                        "(default: --log-every)")
    p.add_argument("--summary", metavar="SUMMARY.json", help="write a JSON summary")
    p.add_argument("--seed", type=int, default=0, help="seed of velocities and thermostat noise")
    p.add_argument("--friction", type=float, default=0.01, metavar="PER_FS",
                   help="Langevin friction, 1/fs (default 0.01)")
    p.add_argument("--tau", type=float, default=100.0, metavar="FS",
                   help="Nose-Hoover period, fs (default 100)")
    p.add_argument("--float64", action="store_true",
                   help="run in double precision (automatic for models stored in float64)")
    _add_npt_options(p)
    p.set_defaults(func=_cmd_md)


def _add_npt_options(p) -> None:
    g = p.add_argument_group("NPT and start-up")
    g.add_argument("--pressure-gpa", type=float, default=0.0, metavar="P",
                   help="NPT target pressure, GPa (default 0)")
    g.add_argument("--barostat", choices=("c-rescale", "mtk"), default="c-rescale",
                   help="stochastic cell rescaling with Langevin (default) or isotropic "
                        "Martyna-Tobias-Klein with Nose-Hoover chains (--tau, --tau-p)")
    g.add_argument("--cell-dof", choices=("iso", "aniso", "full"), default="iso",
                   help="which cell shape changes the barostat may make (default iso)")
    g.add_argument("--cell-mask", default="1,1,1", metavar="X,Y,Z",
                   help="lattice directions allowed to move, e.g. 1,1,0 keeps a slab's vacuum")
    g.add_argument("--tau-p", type=float, default=1000.0, metavar="FS",
                   help="barostat relaxation time, fs (default 1000)")
    g.add_argument("--compressibility", type=float, default=0.1, metavar="PER_GPA",
                   help="compressibility guess, 1/GPa (sets the barostat speed; default 0.1)")
    g.add_argument("--thermalize-ps", type=float, default=0.0, metavar="PS",
                   help="run Langevin at --temperature this long first (default 0)")
    g.add_argument("--restart-from", metavar="STATE.npz",
                   help="continue from a --final-state file of a previous run")
    g.add_argument("--final-state", metavar="STATE.npz",
                   help="write the final state (positions, momenta, cell, bath) for a restart")


# ---------------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------------


def _load_plugin(name: str):
    """Import an optional subcommand module; None only if that module (or a parent) is absent."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        missing = err.name or ""
        if missing and (name == missing or name.startswith(missing + ".")):
            return None
        raise


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """``--debug`` and ``--no-compile-cache``, accepted before or after the subcommand."""
    default = {} if top else {"default": argparse.SUPPRESS}
    existing = parser._option_string_actions  # plugins may define their own; keep theirs
    if "--debug" not in existing:
        parser.add_argument("--debug", action="store_true", **default,
                            help="show the full traceback of any error (or JAXPOT_DEBUG=1)")
    if "--no-compile-cache" not in existing:
        parser.add_argument("--no-compile-cache", action="store_true", **default,
                            help="do not use JAX's persistent compilation cache (or "
                                 "JAXPOT_COMPILE_CACHE=0)")


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxpot`` argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="jaxpot",
        description="Machine-learned interatomic potentials and jit-compiled MD in JAX.",
        epilog="Exit codes: 0 success, 1 unexpected error (a bug: rerun with --debug), 2 bad "
               "input or options, 3 a run that failed on valid input (MD blew up, training "
               "diverged), 130 interrupted. Compiled functions are cached in "
               "$JAXPOT_COMPILE_CACHE_DIR, $XDG_CACHE_HOME/jaxpot/jax or ~/.cache/jaxpot/jax "
               "(off: --no-compile-cache or JAXPOT_COMPILE_CACHE=0).")
    parser.add_argument("--version", action="version", version=f"jaxpot {_version()}")
    _global_options(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_md(subparsers)
    _add_info(subparsers)
    for name in PLUGINS:
        module = _load_plugin(name)
        if module is not None:
            module.register(subparsers)
    for sub in subparsers.choices.values():
        _global_options(sub, top=False)
    return parser


def _env_off(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("0", "false", "no", "off")


def _env_on(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def compile_cache_dir() -> str:
    """Where the CLI keeps JAX's persistent compilation cache (see the module docstring)."""
    if os.environ.get("JAXPOT_COMPILE_CACHE_DIR"):
        return os.path.abspath(os.environ["JAXPOT_COMPILE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "jaxpot", "jax")


def enable_compile_cache(enabled: bool | None = None) -> str | None:
    """Turn on JAX's persistent compilation cache for this process.

    Every compile is stored, however short: JAX's default threshold (1 s) skips the many short
    compiles (eager operations, small blocks) that together take seconds, and with any
    threshold, compiles near it are stored or not depending on the machine's load, so a second
    identical run would still compile. Measured on a loaded 2-core CPU, ``jaxpot md`` with a
    small NequIP model (32 Cu atoms, 200 steps) spends 3.5-4.6 s compiling with a warm cache
    against 19-21 s without one (wall time 12-17 s against 38-39 s). When the
    ``filelock`` package is installed the cache is capped at 2 GiB (least recently used entries
    go first; JAX needs ``filelock`` for that).

    Args:
      enabled: False to leave the cache off; None reads ``JAXPOT_COMPILE_CACHE`` (``0`` = off).

    Returns:
      The cache directory in use, or None when the cache is off. A directory configured for
      JAX itself (``JAX_COMPILATION_CACHE_DIR``) is kept, with its settings.
    """
    import jax

    if enabled is None:
        enabled = not _env_off("JAXPOT_COMPILE_CACHE")
    if not enabled:
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    directory = compile_cache_dir()
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        print(f"jaxpot: note: compilation cache off ({_one_line(err)})", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if importlib.util.find_spec("filelock") is not None:  # JAX needs it to evict old entries
        jax.config.update("jax_compilation_cache_max_size", 2 * 1024**3)
    return directory


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        msg = f"{err.strerror}: {os.fspath(err.filename)!r}"
    elif isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        key = err.args[0]
        msg = key if " " in key else f"missing key {key!r}"
    else:
        msg = str(err) or type(err).__name__
    return " ".join(msg.split())


_RUN_FAILURES = {"SimulationUnstable", "IncompleteTraining"}
"""Class names that mean "the run failed" (exit 3) for errors without an ``exit_code``, e.g.
from plugins; jaxpot's own classes carry ``exit_code = 3``."""


def _exit_code(err: BaseException) -> int:
    """The error's own positive ``exit_code`` attribute if it has one (lower layers mark a run
    that failed on valid input with 3: ``md.SimulationUnstable``, ``train.IncompleteTraining``);
    else 3 for ``RunFailed``/divergence, 2 for bad input, 1 for anything else (a bug)."""
    explicit = getattr(err, "exit_code", None)
    if isinstance(explicit, int) and not isinstance(explicit, bool) and explicit > 0:
        return explicit
    names = {cls.__name__ for cls in type(err).__mro__}
    if isinstance(err, RunFailed | FloatingPointError) or names & _RUN_FAILURES:
        return 3
    if isinstance(err, ValueError | OSError | KeyError):
        return 2
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run the ``jaxpot`` command line.

    Args:
      argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
      The exit code (:data:`EXIT_CODES`): 0 on success, 2 for bad input, 3 for a run that
      failed on valid input, 1 for an unexpected error, each after one
      ``jaxpot <command>: error: ...`` line on stderr (``--debug`` or ``JAXPOT_DEBUG=1``
      re-raises instead, with the traceback). ``argparse`` usage errors exit with code 2
      through ``SystemExit``.
    """
    try:
        parser = build_parser()
    except Exception as err:  # a broken subcommand module: a bug, still one line
        raw = sys.argv[1:] if argv is None else argv
        if "--debug" in raw or _env_on("JAXPOT_DEBUG"):
            raise
        print(f"jaxpot: internal error: a subcommand module does not import: "
              f"{type(err).__name__}: {_one_line(err)} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1
    args = parser.parse_args(argv)
    args.t_start = time.monotonic()  # time budgets start here (also for in-process calls)
    debug = bool(getattr(args, "debug", False)) or _env_on("JAXPOT_DEBUG")
    command = f"jaxpot {args.command}"
    try:
        enable_compile_cache(False if getattr(args, "no_compile_cache", False) else None)
        code = args.func(args)
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if debug:
            raise
        code = _exit_code(err)
        if code == 1:
            print(f"{command}: internal error: {type(err).__name__}: {_one_line(err)} (a jaxpot "
                  f"bug? rerun with --debug for the traceback)", file=sys.stderr)
        else:
            print(f"{command}: error: {_one_line(err)}", file=sys.stderr)
        return code
    return 0 if code is None else int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

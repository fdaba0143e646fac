"""The ``jaxpot`` command line.

::

    jaxpot md MODEL STRUCTURE --ensemble nve --temperature 40 --dt 5 --steps 2000 \\
        --log-every 20 --log md.csv --traj md.xyz --summary md.json
    jaxpot info MODEL
    jaxpot train ... / jaxpot eval ... / jaxpot demo ...   (when those modules are installed)

Subcommands register themselves: each module in :data:`PLUGINS` that imports defines
``register(subparsers)``, which adds a parser whose ``func(args)`` returns an exit code.
Bad input (missing or unreadable files, NaN positions, unknown elements, invalid options)
ends with one line ``jaxpot: error: <message>`` on stderr and exit code 2, not a traceback.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import sys

__all__ = ["main", "build_parser", "PLUGINS", "LOG_COLUMNS", "md_summary"]

PLUGINS = ("jaxpot.train.commands", "jaxpot.demo")
"""Optional modules whose ``register(subparsers)`` adds subcommands (train, eval, demo)."""

LOG_COLUMNS = ("step", "time_fs", "potential_energy_ev", "kinetic_energy_ev", "total_energy_ev",
               "temperature_k")
"""Columns of the ``jaxpot md`` log CSV; ``pressure_gpa`` follows for periodic cells."""


# ---------------------------------------------------------------------------------------------
# jaxpot info
# ---------------------------------------------------------------------------------------------


def _cmd_info(args) -> int:
    from jaxpot.serialization import read_model_info

    info = read_model_info(args.model)
    if args.params:
        out = info
    else:
        out = {k: v for k, v in info.items() if k != "params_shapes"}
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0


def _add_info(subparsers) -> None:
    p = subparsers.add_parser("info", help="print a model file's config as JSON",
                              description="Print a model file's config (and versions) as JSON.")
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


def _write_log_csv(path: str, log: dict) -> None:
    from jaxpot.serialization import atomic_write

    columns = list(LOG_COLUMNS) + (["pressure_gpa"] if "pressure_gpa" in log else [])
    missing = [c for c in columns if c not in log]
    if missing:
        raise RuntimeError(f"the MD log lacks columns {missing}")  # a jaxpot bug, not input
    n = len(log["step"])
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for i in range(n):
            row = []
            for c in columns:
                v = log[c][i]
                row.append(int(v) if c == "step" else repr(float(v)))
            writer.writerow(row)


def _progress_wanted() -> bool:
    return sys.stdout.isatty() and not os.environ.get("CI")


def _cmd_md(args) -> int:
    import numpy as np

    if args.float64:
        import jax

        jax.config.update("jax_enable_x64", True)
    from jaxpot.io import read_structure, write
    from jaxpot.serialization import load_model
    from jaxpot.system import System

    for name, value in (("--dt", args.dt), ("--steps", args.steps),
                        ("--log-every", args.log_every)):
        if not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
    if args.temperature < 0 or not math.isfinite(args.temperature):
        raise ValueError(f"--temperature must be a non-negative number of kelvin, "
                         f"got {args.temperature}")
    for path in (args.log, args.traj, args.summary):
        if path is not None:
            directory = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(directory):
                raise FileNotFoundError(f"output directory {directory!r} does not exist")

    potential, params = load_model(args.model)
    atoms = read_structure(args.structure)
    system = System.from_ase(atoms, where=f"structure {args.structure!r} "
                                          f"({atoms.get_chemical_formula()})")
    from jaxpot import md  # imported after the input is validated: jax_md is slow to import

    traj_every = None
    if args.traj is not None:
        traj_every = args.traj_every or args.log_every
    result = md.simulate(
        potential, params, system,
        ensemble=args.ensemble, dt_fs=args.dt, temperature_kelvin=args.temperature,
        steps=args.steps, log_every=args.log_every, seed=args.seed,
        friction_per_fs=args.friction, tau_fs=args.tau, trajectory_every=traj_every,
        progress=_progress_wanted(),
    )
    log = {k: np.asarray(v) for k, v in result.log.items()}
    if not np.all(np.isfinite(log["total_energy_ev"])):
        first = int(np.argmin(np.isfinite(log["total_energy_ev"])))
        raise ValueError(f"the simulation blew up: non-finite energy at step "
                         f"{int(log['step'][first])} (try a smaller --dt)")
    n_atoms = len(atoms)
    summary = {
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
    if args.log is not None:
        _write_log_csv(args.log, log)
    if args.traj is not None:
        write(args.traj, result.frames)
    if args.summary is not None:
        from jaxpot.serialization import atomic_write

        with atomic_write(args.summary, "w") as f:
            json.dump(summary, f, indent=2, allow_nan=False)
            f.write("\n")
    drift = summary["energy_drift_ev_per_atom_per_ps"]
    print(
        f"jaxpot md: {n_atoms} atoms, {args.steps} {args.ensemble} steps of {args.dt} fs; "
        f"<T> = {summary['mean_temperature_k']:.1f} K; "
        + (f"drift {drift:.3e} eV/atom/ps; " if drift is not None else "")
        + f"{summary['atom_steps_per_s']:.3g} atom-steps/s, {summary['ns_per_day']:.3g} ns/day "
        f"(compile {summary['compile_s']:.1f} s, run {summary['wall_s']:.1f} s)"
    )
    return 0


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
    p.add_argument("--ensemble", choices=("nve", "langevin", "nose-hoover"), default="nve")
    p.add_argument("--temperature", type=float, default=300.0, metavar="K",
                   help="initial (and thermostat) temperature in kelvin (default 300)")
    p.add_argument("--dt", type=float, default=1.0, metavar="FS", help="time step, fs (default 1)")
    p.add_argument("--steps", type=int, default=1000, metavar="N", help="time steps (default 1000)")
    p.add_argument("--log-every", type=int, default=10, metavar="K",
                   help="steps between log rows (default 10)")
    p.add_argument("--log", metavar="LOG.csv", help="write the log as CSV")
    p.add_argument("--traj", metavar="TRAJ.xyz", help="write an extxyz trajectory")
    p.add_argument("--traj-every", type=int, default=None, metavar="K",
                   help="steps between trajectory frames, a multiple of --log-every "
                        "(default: --log-every)")
    p.add_argument("--summary", metavar="SUMMARY.json", help="write a JSON summary")
    p.add_argument("--seed", type=int, default=0, help="seed of velocities and thermostat noise")
    p.add_argument("--friction", type=float, default=0.01, metavar="PER_FS",
                   help="Langevin friction, 1/fs (default 0.01)")
    p.add_argument("--tau", type=float, default=100.0, metavar="FS",
                   help="Nose-Hoover period, fs (default 100)")
    p.add_argument("--float64", action="store_true", help="run in double precision")
    p.set_defaults(func=_cmd_md)


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


def build_parser() -> argparse.ArgumentParser:
    """The ``jaxpot`` argument parser with every available subcommand."""
    parser = argparse.ArgumentParser(
        prog="jaxpot",
        description="Machine-learned interatomic potentials and jit-compiled MD in JAX.")
    parser.add_argument("--version", action="version", version=f"jaxpot {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    _add_md(subparsers)
    _add_info(subparsers)
    for name in PLUGINS:
        module = _load_plugin(name)
        if module is not None:
            module.register(subparsers)
    return parser


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        msg = f"{err.strerror}: {os.fspath(err.filename)!r}"
    else:
        msg = str(err) or type(err).__name__
    return " ".join(msg.split())


def main(argv: list[str] | None = None) -> int:
    """Run the ``jaxpot`` command line.

    Args:
      argv: arguments without the program name (default ``sys.argv[1:]``).

    Returns:
      The exit code: 0 on success, 2 for bad input (after one ``jaxpot: error:`` line on
      stderr). ``argparse`` usage errors exit with code 2 through ``SystemExit``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except (ValueError, OSError) as err:
        print(f"jaxpot: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jaxpot: interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

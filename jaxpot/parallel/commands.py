"""``jaxpot export MODEL OUT``: a model file as a portable ``jax.export`` bundle."""

from __future__ import annotations

import json
import sys

__all__ = ["register"]


def _cmd_export(args) -> int:
    import jax

    from jaxpot.parallel.export import export_model
    from jaxpot.serialization import load_model, stores_float64

    dtype = args.dtype or ("float64" if stores_float64(args.model) else "float32")
    if dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    potential, params = load_model(args.model)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    path = export_model(potential, params, args.out, dtype=dtype, platforms=platforms)
    header = json.loads((path / "header.json").read_text())
    summary = {k: header[k] for k in ("format", "dtype", "platforms", "cutoff_angstrom",
                                      "ghost_shell_angstrom", "species")}
    print(json.dumps({"bundle": str(path), **summary}), file=sys.stdout)
    return 0


def register(subparsers) -> None:
    """Add the ``export`` subcommand."""
    p = subparsers.add_parser(
        "export", help="write a model as a jax.export (StableHLO) bundle",
        description="Write MODEL as a folder OUT holding the serialized jax.export program "
                    "(symbolic atom and edge counts), its parameters (params.npz) and a JSON "
                    "header; it runs with jax and numpy alone (jaxpot.parallel.export."
                    "load_bundle shows how).")
    p.add_argument("model", metavar="MODEL", help="model file written by jaxpot train")
    p.add_argument("out", metavar="OUT", help="bundle folder to create (must not exist)")
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="precision of the program (default: that of the stored parameters)")
    p.add_argument("--platforms", default="cpu", metavar="P[,P]",
                   help="platforms to lower for: cpu, cuda, rocm, tpu (default cpu)")
    p.set_defaults(func=_cmd_export)

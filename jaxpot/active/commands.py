"""``jaxpot active``: on-the-fly active learning from the command line (registered into
:mod:`jaxpot.cli`).

::

    jaxpot active --init START.xyz --oracle ase.calculators.emt:EMT --model gap \\
        --temperatures 300,600,900 --out DIR --max-oracle-calls 30 --threshold-factor 3

``START.xyz``: labelled frames become the initial training set; if its frames carry no labels,
``--n-initial`` rattled copies of the first frame are labelled by the oracle. Running the same
command again resumes the run in ``DIR``.
"""

from __future__ import annotations

import os

__all__ = ["register"]


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"{option}: no values in {text!r}")
    return values


def _initial_frames(path: str, n_initial: int, rattle: float, seed: int) -> list:
    import numpy as np

    from jaxpot.active.oracle import labelled
    from jaxpot.io import read_frames

    if not os.path.isfile(path):
        raise ValueError(f"--init: {path}: no such file")
    frames = list(read_frames(path, ":"))
    if not frames:
        raise ValueError(f"--init: {path}: no frames")
    if all(labelled(a) for a in frames):
        return frames
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_initial):
        a = frames[0].copy()
        a.calc = None
        a.rattle(rattle, seed=int(rng.integers(1 << 30)))
        out.append(a)
    return out


def _fitter(args):
    from jaxpot.active.fitters import ensemble_fitter, gap_fitter

    if args.model == "gap":
        opts = {} if args.n_sparse is None else {"n_sparse": args.n_sparse}
        if args.cutoff is not None:
            opts["cutoff"] = args.cutoff
        return gap_fitter(**opts)
    k = args.ensemble or 4
    extra = {"cutoff": args.cutoff} if args.cutoff is not None else {}
    if args.epochs is not None:
        extra["epochs"] = args.epochs
    return ensemble_fitter(args.model, k, work_dir=os.path.join(args.out, "train"), **extra)


def _cmd_active(args) -> int:
    from jaxpot.active.criteria import StoppingCriteria
    from jaxpot.active.loop import ActiveConfig, run_active
    from jaxpot.active.oracle import make_oracle
    from jaxpot.io import read_frames

    oracle = make_oracle(args.oracle)  # bad specs fail before anything is written
    if args.model == "gap" and args.ensemble:
        raise ValueError("--ensemble is for gradient-trained models (e.g. --model nequip); GAP "
                         "states its own variance")
    criteria = StoppingCriteria(
        require=tuple(c for c in args.require.split(",") if c),
        coverage=args.coverage, sem_ev=args.sem_mev * 1e-3,
        max_oracle_calls=args.max_oracle_calls, max_iterations=args.max_iterations)
    config = ActiveConfig(
        temperatures=_floats(args.temperatures, "--temperatures"),
        strains=_floats(args.strains, "--strains"), dt_fs=args.dt,
        steps_per_walker=args.steps, log_every=args.log_every, threshold=args.threshold,
        threshold_factor=args.threshold_factor, n_select=args.n_select, seed=args.seed,
        criteria=criteria).validated()
    initial = _initial_frames(args.init, args.n_initial, args.rattle, args.seed)
    test = None
    if args.test:
        if not os.path.isfile(args.test):
            raise ValueError(f"--test: {args.test}: no such file")
        test = list(read_frames(args.test, ":"))
    result = run_active(initial, oracle, _fitter(args), args.out, config, test_frames=test,
                        keep_pool=args.keep_pool)
    last = result.history[-1] if result.history else {}
    print(f"jaxpot active: stopped after {len(result.history)} iterations, "
          f"{last.get('oracle_calls', 0)} oracle calls, {len(result.frames)} frames: "
          f"{result.stop_reason}")
    print(f"jaxpot active: wrote {os.path.join(args.out, 'data.xyz')}, "
          f"{os.path.join(args.out, 'model')}, {os.path.join(args.out, 'iterations.csv')}, "
          f"{os.path.join(args.out, 'report.png')}")
    return 0


def register(subparsers) -> None:
    """Add the ``active`` subcommand to an argparse ``subparsers`` object."""
    p = subparsers.add_parser(
        "active", help="on-the-fly active learning with an ASE calculator as oracle",
        description="Fit a model, run MD walkers, label the first frame whose per-atom force "
                    "spread passes the threshold with the oracle, refit, repeat until the "
                    "stopping criteria hold. Rerun the same command to resume.")
    p.add_argument("--init", required=True, metavar="START.xyz",
                   help="labelled initial frames, or a structure to rattle and label")
    p.add_argument("--oracle", default="ase.calculators.emt:EMT", metavar="MODULE:NAME",
                   help="ASE calculator class or factory (default ase.calculators.emt:EMT)")
    p.add_argument("--model", default="gap", help="gap (default), or a registered neural "
                   "model trained as an ensemble (nequip, mace, bpnn)")
    p.add_argument("--ensemble", type=int, metavar="K", help="committee size (neural models)")
    p.add_argument("--epochs", type=int, help="training epochs per refit (neural models)")
    p.add_argument("--cutoff", type=float, metavar="Å", help="model cutoff")
    p.add_argument("--n-sparse", type=int, help="GAP sparse environments (default 100)")
    p.add_argument("--temperatures", default="300,600,900", metavar="K,K,...")
    p.add_argument("--strains", default="0", metavar="S,S,...",
                   help="isotropic cell strains of the walkers, e.g. -0.02,0,0.02")
    p.add_argument("--dt", type=float, default=2.0, metavar="FS", help="time step, fs")
    p.add_argument("--steps", type=int, default=1000, help="MD steps per walker segment")
    p.add_argument("--log-every", type=int, default=10, help="steps between spread checks")
    p.add_argument("--threshold", type=float, metavar="EV/Å",
                   help="absolute trigger on the largest per-atom force spread")
    p.add_argument("--threshold-factor", type=float, default=3.0,
                   help="relative trigger: multiple of the 95th percentile of the initial "
                        "training set's largest spread (default 3; ignored with --threshold)")
    p.add_argument("--n-select", type=int, default=1,
                   help="frames labelled per trigger (trigger + farthest-point picks)")
    p.add_argument("--n-initial", type=int, default=20,
                   help="rattled frames labelled when START.xyz has no labels")
    p.add_argument("--rattle", type=float, default=0.05, metavar="Å")
    p.add_argument("--max-oracle-calls", type=int, default=50)
    p.add_argument("--max-iterations", type=int, default=200)
    p.add_argument("--require", default="quiet,coverage,sem",
                   help="criteria that must all hold to stop: quiet, plateau, sem, coverage")
    p.add_argument("--coverage", type=float, default=0.98,
                   help="trust coverage needed (fraction of frames under the threshold)")
    p.add_argument("--sem-mev", type=float, default=2.0,
                   help="standard error of the mean energy per atom needed, meV/atom")
    p.add_argument("--test", metavar="HELD.xyz", help="labelled held-back frames to score")
    p.add_argument("--keep-pool", action="store_true", help="write every MD frame to pool.xyz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="active", metavar="DIR", help="output directory")
    p.set_defaults(func=_cmd_active)

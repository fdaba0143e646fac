"""Benchmark: jaxpot ACSF and SOAP against dscribe, values and values + position gradients.

Cu fcc cells of 108 (3×3×3) and 1 000 (5×5×10) atoms with small random displacements; ACSF
(r_c = 5 Å, 8 G2 + 16 G4 + 16 G5) and SOAP (r_c = 5 Å, n_max = 8, l_max = 6, σ = 1 Å). Both
libraries run in the same process on the same structures; jaxpot is timed after jit
compilation; each entry is the median of repeats. Gradients: dscribe's ``derivatives`` (ACSF:
numerical, the only method it has; SOAP: numerical, as its analytical derivatives do not support
periodic cells) against jaxpot's forward-mode Jacobians in the same dense layout
``[n_atoms, n_atoms, 3, n_features]``. For 1 000 atoms the dense Jacobian (6 GB for SOAP) is not
built: jaxpot returns per-neighbour derivatives ``[n_atoms, K, 3, F]`` (the same information),
and dscribe's numerical derivatives are timed for 20 of the 1 000 centres only, a lower bound on
its full run (which would take hours here and a 6 GB array), so the printed ratio is a lower
bound too. For SOAP it also prints an estimate of the full run, extrapolated linearly from 10
and 20 centres (dscribe's numerical derivatives cost a fixed amount per centre).

dscribe's SOAP neighbourhood ends with a hard cut at ``r_cut + σ√(2 ln 1000)``; in the 108-atom
cell one periodic image sits 5·10⁻⁵ Å beyond it, inside dscribe's finite-difference step, so one
(centre, atom) pair of its numerical derivatives picks up the jump (relative difference ≈ 1 on
those ~140 entries; every other entry agrees to ~1e-8). The analytic Jacobian is the right one.

If featomic is installed (``pip install -e '.[bench]'``), SOAP is also timed against it; see
:func:`featomic_rows` for how the two set-ups are matched.

Run: ``python bench/descriptors.py [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import jax
import numpy as np

jax.config.update("jax_enable_x64", True)

from ase.build import bulk  # noqa: E402

from jaxpot.descriptors import acsf as jacsf  # noqa: E402
from jaxpot.descriptors import soap as jsoap  # noqa: E402
from jaxpot.descriptors.environment import max_neighbors  # noqa: E402
from jaxpot.system import System  # noqa: E402


def cu_cell(reps: tuple[int, int, int], seed: int = 0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(reps)
    atoms.positions += np.random.default_rng(seed).normal(0.0, 0.05, atoms.positions.shape)
    return atoms


def timeit(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def block(x):
    return jax.block_until_ready(x)


def main(quick: bool = False) -> dict:
    from dscribe.descriptors import ACSF, SOAP

    rc = 5.0
    ap = jacsf.grid(rc, ["Cu"], n_radial=8, n_angular=4, zetas=(1.0, 4.0))
    sp = jsoap.soap_params(rc, 8, 6, ["Cu"], sigma=1.0)
    d_acsf = ACSF(species=["Cu"], r_cut=rc, g2_params=ap.g2, g4_params=ap.g4, g5_params=ap.g5,
                  periodic=True)
    d_soap = SOAP(species=["Cu"], r_cut=rc, n_max=8, l_max=6, sigma=1.0, periodic=True)
    sizes = [(3, 3, 3)] if quick else [(3, 3, 3), (5, 5, 10)]
    repeats = 3 if quick else 5
    results = {}
    print(f"{'case':34s} {'dscribe':>11s} {'jaxpot':>11s} {'speed-up':>9s}")
    for reps in sizes:
        atoms = cu_cell(reps)
        n = len(atoms)
        for name, dd, mod, params in (("ACSF", d_acsf, jacsf, ap), ("SOAP", d_soap, jsoap, sp)):
            cutoff = params.r_cut if name == "ACSF" else params.neighbor_cutoff
            system = System.from_ase(atoms, cutoff=cutoff)
            k = max_neighbors(system, cutoff)
            value_fn = jax.jit(lambda s, k=k, mod=mod, params=params: getattr(
                mod, name.lower())(s, params, max_neighbors=k))
            ref = dd.create(atoms)
            out = np.asarray(block(value_fn(system)))
            err = np.max(np.abs(out - ref)) / np.max(np.abs(ref))
            t_d = timeit(lambda dd=dd, atoms=atoms: dd.create(atoms), repeats)
            t_j = timeit(lambda f=value_fn, s=system: block(f(s)), repeats)
            label = f"{name} values, {n} atoms"
            print(f"{label:34s} {t_d * 1e3:9.1f}ms {t_j * 1e3:9.1f}ms {t_d / t_j:8.1f}x"
                  f"   (max rel. diff {err:.1e})")
            results[(name, n, "values")] = (t_d, t_j)

            jac_fn = getattr(mod, f"{name.lower()}_jacobian")
            dense = n <= 200
            kw = {"attach": False} if name == "SOAP" else {}
            grad_fn = jax.jit(lambda s, k=k, f=jac_fn, params=params, dense=dense, kw=kw: f(
                s, params, max_neighbors=k, dense=dense, **kw)[:2])
            block(grad_fn(system))
            t_j = timeit(lambda f=grad_fn, s=system: block(f(s)), repeats)
            if dense and not (quick and name == "ACSF" and n > 200):
                t0 = time.perf_counter()
                if name == "ACSF":
                    dref, _ = dd.derivatives(atoms, method="numerical", attach=True)
                else:
                    dref, _ = dd.derivatives(atoms, method="numerical")
                t_d = time.perf_counter() - t0  # one run: dscribe takes seconds
                jac = np.asarray(grad_fn(system)[1])
                diff = np.abs(jac - dref) / np.max(np.abs(dref))
                label = f"{name} values+grads, {n} atoms"
                print(f"{label:34s} {t_d * 1e3:9.1f}ms {t_j * 1e3:9.1f}ms {t_d / t_j:8.1f}x"
                      f"   (max rel. diff {diff.max():.1e}; {np.sum(diff > 1e-4)} of "
                      f"{diff.size} entries > 1e-4, dscribe numerical)")
                results[(name, n, "grads")] = (t_d, t_j)
            elif not quick:
                # dscribe's numerical derivatives for all n centres take too long here: time
                # them for a subset of centres, a lower bound on the full run (no scaling: much
                # of the cost of each displaced copy is per system, not per centre).
                def dscribe_centres(n_c, dd=dd, atoms=atoms, name=name):
                    kw = {"attach": True} if name == "ACSF" else {}
                    t0 = time.perf_counter()
                    dd.derivatives(atoms, centers=list(range(n_c)), method="numerical", **kw)
                    return time.perf_counter() - t0

                n_c = 20
                t_d = dscribe_centres(n_c)
                label = f"{name} values+grads, {n} atoms"
                print(f"{label:34s} >{t_d * 1e3:8.0f}ms {t_j * 1e3:9.1f}ms >{t_d / t_j:7.1f}x"
                      f"   (dscribe: only {n_c} of {n} centres, a lower bound; jaxpot: all "
                      "centres, per-neighbour Jacobian)")
                results[(name, n, "grads")] = (t_d, t_j)
                if name == "SOAP":
                    # dscribe's cost grows linearly with the number of centres: estimate the
                    # full run from 10 and 20 centres (ACSF's 20 centres alone take minutes)
                    t_10 = dscribe_centres(10)
                    per = (t_d - t_10) / 10
                    if per > 0:
                        t_est = t_10 + (n - 10) * per
                        print(f"{label:34s} ~{t_est * 1e3:8.0f}ms {t_j * 1e3:9.1f}ms "
                              f"~{t_est / t_j:7.1f}x   (dscribe: linear extrapolation to all "
                              f"{n} centres from 10 and 20, {per * 1e3:.0f} ms per centre)")
                        results[(name, n, "grads-extrapolated")] = (t_est, t_j)
            else:
                label = f"{name} values+grads, {n} atoms"
                print(f"{label:34s} {'skipped':>11s} {t_j * 1e3:9.1f}ms {'':>9s}"
                      "   (per-neighbour Jacobian)")
                results[(name, n, "grads")] = (float("nan"), t_j)
    if importlib.util.find_spec("featomic") is not None:
        results.update(featomic_rows(sizes, repeats))
    else:
        print("featomic not installed (pip install -e '.[bench]'): its rows are skipped")
    return results


def featomic_rows(sizes, repeats: int) -> dict:
    """SOAP against featomic (metatensor's descriptor library), values and analytic gradients.

    featomic's density ends at ``r_cut`` with a smooth (shifted-cosine, 0.5 Å) cutoff, where
    dscribe extends it by ``σ√(2 ln 1000)`` = 3.7 Å; jaxpot is run with the matching
    neighbourhood (``cutoff_padding=0``, smooth cutoff), so both sum over the same ~45
    neighbours. Same n_max, l_max and σ; the radial bases differ (featomic's splined GTOs), so
    only times are compared. featomic keeps all (n, n') pairs (448 features), jaxpot the
    n ≤ n' half (252).
    """
    import featomic
    from featomic.basis import Gto, TensorProduct
    from featomic.cutoff import Cutoff, ShiftedCosine
    from featomic.density import Gaussian

    rc = 5.0
    calc = featomic.SoapPowerSpectrum(
        cutoff=Cutoff(rc, ShiftedCosine(width=0.5)), density=Gaussian(width=1.0),
        basis=TensorProduct(max_angular=6, radial=Gto(max_radial=7)))
    sp = jsoap.soap_params(rc, 8, 6, ["Cu"], sigma=1.0, cutoff_padding=0.0, smooth=True)
    results = {}
    print(f"\n{'case':34s} {'featomic':>11s} {'jaxpot':>11s} {'speed-up':>9s}")
    for reps in sizes:
        atoms = cu_cell(reps)
        n = len(atoms)
        system = System.from_ase(atoms, cutoff=rc)
        k = max_neighbors(system, rc)
        value_fn = jax.jit(lambda s, k=k: jsoap.soap(s, sp, max_neighbors=k))
        grad_fn = jax.jit(lambda s, k=k: jsoap.soap_jacobian(s, sp, max_neighbors=k,
                                                              dense=False)[:2])
        block(value_fn(system))
        block(grad_fn(system))
        calc.compute(atoms)
        for what, f_fn, j_fn in (
                ("values", lambda a=atoms: calc.compute(a),
                 lambda f=value_fn, s=system: block(f(s))),
                ("values+grads", lambda a=atoms: calc.compute(a, gradients=["positions"]),
                 lambda f=grad_fn, s=system: block(f(s)))):
            t_f = timeit(f_fn, repeats)
            t_j = timeit(j_fn, repeats)
            label = f"SOAP {what}, {n} atoms"
            print(f"{label:34s} {t_f * 1e3:9.1f}ms {t_j * 1e3:9.1f}ms {t_f / t_j:8.1f}x"
                  f"   (vs featomic {featomic.__version__}, r_c = 5 Å without padding, "
                  f"K = {k})")
            results[("SOAP-featomic", n, what)] = (t_f, t_j)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="108 atoms only, 3 repeats")
    main(quick=parser.parse_args().quick)

"""Descriptors: dscribe agreement (values, gradients), invariances, chirality, padding, cutoffs."""

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpot.descriptors import acsf as A
from jaxpot.descriptors import chiral as C
from jaxpot.descriptors import cutoff as CUT
from jaxpot.descriptors import soap as S
from jaxpot.descriptors.environment import max_neighbors
from jaxpot.system import System

RC = 4.0
SPECIES3 = [1, 6, 8]


def random_atoms(seed, *, periodic, n=8, length=5.0, numbers=(1, 6, 8), dmin=0.9):
    """Random structure with a minimum distance (minimum image when periodic)."""
    rng = np.random.default_rng(seed)
    while True:
        pos = rng.uniform(0.0, length, (n, 3))
        cell = np.eye(3) * length + rng.uniform(-0.3, 0.3, (3, 3)) if periodic else None
        atoms = ase.Atoms(numbers=rng.choice(numbers, n), positions=pos, cell=cell,
                          pbc=periodic)
        if len(set(atoms.numbers)) < min(len(numbers), 2):
            continue
        d = atoms.get_all_distances(mic=periodic) + 10 * np.eye(n)
        if d.min() > dmin:
            return atoms


def acsf_cfg(species):
    return A.acsf_params(
        RC, species, g2=[[1.0, 0.5], [0.3, 1.5], [2.0, 3.0]], g3=[1.0],
        g4=[[0.2, 2.0, -1.0], [0.1, 1.0, 1.0], [0.05, 2.5, 1.0]],
        g5=[[0.05, 3.0, -1.0], [0.1, 1.0, 1.0]],
    )


def dscribe_acsf(p, periodic):
    from dscribe.descriptors import ACSF

    return ACSF(species=list(p.species), r_cut=p.r_cut, g2_params=p.g2,
                g3_params=[x[0] for x in p.g3], g4_params=p.g4, g5_params=p.g5,
                periodic=periodic)


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300)


def assert_close_rel(out, ref, rtol):
    """Entry-wise relative agreement, with a floor at rtol·max|ref| for tiny entries."""
    out, ref = np.asarray(out), np.asarray(ref)
    assert out.shape == ref.shape
    tol = rtol * np.abs(ref) + rtol * 1e-3 * np.max(np.abs(ref))
    bad = np.abs(out - ref) > tol
    assert not bad.any(), f"{bad.sum()} entries differ; max rel err {rel_err(out, ref):.2e}"


# ------------------------------------------------------------------------------ cutoffs
@pytest.mark.parametrize(
    "fn,order",
    [
        (lambda r: CUT.cosine_cutoff(r, 3.0), 1),
        (lambda r: CUT.polynomial_cutoff(r, 3.0, 1), 1),
        (lambda r: CUT.polynomial_cutoff(r, 3.0, 3), 3),
        (lambda r: CUT.polynomial_envelope(r, 3.0, 6), 2),
    ],
)
def test_cutoff_continuity(fn, order):
    assert float(fn(0.0)) == pytest.approx(1.0)
    assert float(fn(3.0)) == 0.0 and float(fn(4.0)) == 0.0
    g = fn
    for k in range(1, order + 2):
        g = jax.grad(g)
        below, above = float(g(3.0 - 1e-7)), float(g(3.0 + 1e-7))
        assert above == 0.0
        if k <= order:
            assert abs(below) < 1e-5, (k, below)
        else:  # the first non-vanishing derivative jumps: the order is exact
            assert abs(below) > 1e-3, (k, below)
    assert CUT.continuity_order("polynomial", 3) == 3


def test_cutoff_monotone_and_finite_gradients():
    r = jnp.linspace(0.0, 4.0, 401)
    for f in (CUT.cosine_cutoff, CUT.polynomial_cutoff, CUT.polynomial_envelope):
        v = f(r, 3.0)
        assert np.all(np.diff(np.asarray(v)) <= 1e-12)
        assert np.all(np.isfinite(jax.vmap(jax.grad(lambda x, f=f: f(x, 3.0)))(r)))


# ------------------------------------------------------------------------------ dscribe
@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("species", [[1, 8], SPECIES3])
def test_acsf_matches_dscribe(periodic, species):
    pytest.importorskip("dscribe")
    atoms = random_atoms(1, periodic=periodic, numbers=species)
    p = acsf_cfg(species)
    ref = dscribe_acsf(p, periodic).create(atoms)
    out = A.acsf(System.from_ase(atoms, cutoff=RC), p)
    assert ref.shape == (len(atoms), p.n_features)
    assert np.abs(ref[:, -p.n_angular:]).max() > 0  # angular terms really present
    assert_close_rel(out, ref, 1e-5)


@pytest.mark.parametrize("periodic", [False, True])
def test_acsf_gradients_match_dscribe(periodic):
    pytest.importorskip("dscribe")
    atoms = random_atoms(2, periodic=periodic, n=6)
    p = acsf_cfg(SPECIES3)
    dref, ref = dscribe_acsf(p, periodic).derivatives(atoms, method="numerical", attach=True)
    vals, jac = A.acsf_jacobian(System.from_ase(atoms, cutoff=RC), p)
    assert_close_rel(vals, ref, 1e-5)
    assert np.abs(dref).max() > 0
    assert rel_err(jac, dref) < 1e-4


@pytest.mark.parametrize("periodic", [False, True])
@pytest.mark.parametrize("compression", ["off", "crossover", "mu2", "mu1nu1"])
def test_soap_matches_dscribe(periodic, compression):
    pytest.importorskip("dscribe")
    from dscribe.descriptors import SOAP

    atoms = random_atoms(3, periodic=periodic)
    p = S.soap_params(RC, 4, 3, SPECIES3, sigma=0.6, compression=compression)
    ref = SOAP(species=SPECIES3, r_cut=RC, n_max=4, l_max=3, sigma=0.6, periodic=periodic,
               compression={"mode": compression}).create(atoms)
    out = S.soap(System.from_ase(atoms, cutoff=p.neighbor_cutoff), p)
    assert ref.shape == out.shape == (len(atoms), p.n_features)
    assert_close_rel(out, ref, 1e-5)


@pytest.mark.parametrize("periodic", [False, True])
def test_soap_gradients_match_dscribe(periodic):
    pytest.importorskip("dscribe")
    from dscribe.descriptors import SOAP

    atoms = random_atoms(4, periodic=periodic, n=6, numbers=(1, 8))
    p = S.soap_params(RC, 3, 3, [1, 8], sigma=0.6)
    d = SOAP(species=[1, 8], r_cut=RC, n_max=3, l_max=3, sigma=0.6, periodic=periodic)
    # dscribe: analytical derivatives only without periodicity; centres fixed (attach=False)
    dref, ref = d.derivatives(atoms, method="numerical" if periodic else "analytical")
    system = System.from_ase(atoms, cutoff=p.neighbor_cutoff)
    vals, jac = S.soap_jacobian(system, p, attach=False)
    assert_close_rel(vals, ref, 1e-5)
    assert rel_err(jac, dref) < 1e-4
    # plain autodiff of the values (centres attached to their atoms, what forces need) agrees
    # off the diagonal, and its rows sum to zero (translation invariance)
    k = max_neighbors(system, p.neighbor_cutoff)
    full = jax.jit(jax.jacrev(lambda x: S.soap(system, p, max_neighbors=k, positions=x)))(
        system.positions)
    full = np.moveaxis(np.asarray(full), 1, -1)  # [i, j, c, f]
    off = ~np.eye(len(atoms), dtype=bool)
    np.testing.assert_allclose(full[off], np.asarray(jac)[off], atol=1e-10)
    np.testing.assert_allclose(full.sum(axis=1), 0.0, atol=1e-10)


# ------------------------------------------------------------------------------ properties
CHIRAL = C.chiral_params(RC, SPECIES3, n_radial=2)
SOAP_P = S.soap_params(RC, 3, 3, SPECIES3, sigma=0.6)
ACSF_P = acsf_cfg(SPECIES3)
DESCRIPTORS = {
    "acsf": (lambda s, **kw: A.acsf(s, ACSF_P, **kw), RC, +1),
    "soap": (lambda s, **kw: S.soap(s, SOAP_P, **kw), SOAP_P.neighbor_cutoff, +1),
    "chiral": (lambda s, **kw: C.chiral(s, CHIRAL, **kw), RC, -1),
}


def rotation(seed, proper=True):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    return q if proper else -q


def transformed(atoms, rot=None, shift=None, perm=None):
    new = atoms.copy()
    if perm is not None:
        new = new[perm]
    if rot is not None:
        new.positions = new.positions @ rot.T
        new.cell = np.asarray(new.cell) @ rot.T
    if shift is not None:
        new.positions = new.positions + shift
    return new


def evaluate(fn, cut, atoms_list):
    """Evaluate a descriptor on several same-size structures with one jit compilation."""
    systems = [System.from_ase(a, cutoff=cut) for a in atoms_list]
    n_e = max(s.n_edges for s in systems)
    k = max(max_neighbors(s, cut) for s in systems)
    f = jax.jit(lambda s: fn(s, max_neighbors=k))
    return [np.asarray(f(s.pad(s.n_atoms, n_e))) for s in systems]


@pytest.mark.parametrize("name", list(DESCRIPTORS))
@pytest.mark.parametrize("periodic", [False, True])
def test_invariances(name, periodic):
    fn, cut, parity = DESCRIPTORS[name]
    atoms = random_atoms(5, periodic=periodic)
    perm = np.random.default_rng(0).permutation(len(atoms))
    variants = {
        "rotation": (transformed(atoms, rot=rotation(1)), None, 1),
        "reflection": (transformed(atoms, rot=rotation(2, proper=False)), None, parity),
        "translation": (transformed(atoms, shift=np.array([0.3, -1.7, 2.2])), None, 1),
        "permutation": (transformed(atoms, perm=perm), perm, 1),
    }
    outs = evaluate(fn, cut, [atoms] + [v[0] for v in variants.values()])
    base = outs[0]
    assert np.abs(base).max() > 1e-3  # not vacuous (for chiral: the sign flip is not 0 == -0)
    for (case, (_, pm, sign)), out in zip(variants.items(), outs[1:], strict=True):
        expect = base if pm is None else base[pm]
        np.testing.assert_allclose(out, sign * expect, atol=1e-9 * max(1, np.abs(base).max()),
                                   err_msg=f"{name} {case}")


@pytest.mark.parametrize("name", list(DESCRIPTORS))
def test_padding_jit_and_edges_beyond_cutoff(name):
    fn, cut, _ = DESCRIPTORS[name]
    atoms = random_atoms(6, periodic=True)
    system = System.from_ase(atoms, cutoff=cut)
    longer = System.from_ase(atoms, cutoff=cut + 1.5)
    n_e = max(longer.n_edges, system.n_edges + 17)
    padded = system.pad(system.n_atoms + 3, n_e)
    k = max_neighbors(padded, cut)
    f = jax.jit(lambda s: fn(s, max_neighbors=k))
    out = np.asarray(f(padded))
    base = out[: len(atoms)]
    assert np.abs(base).max() > 1e-3
    # padding atoms and edges change nothing (eager on the unpadded system == jit on the
    # padded one); padding rows are exactly 0
    np.testing.assert_allclose(fn(system), base, atol=1e-12)
    assert np.all(out[len(atoms):] == 0.0)
    # longer edges (beyond the cutoff) contribute exactly nothing
    longer = longer.pad(system.n_atoms + 3, n_e)
    np.testing.assert_allclose(np.asarray(f(longer))[: len(atoms)], base, atol=1e-12)
    # gradients finite with padding, exactly 0 on padding atoms
    grad = jax.jit(jax.grad(lambda x: jnp.sum(fn(padded, max_neighbors=k, positions=x) ** 2)))(
        padded.positions)
    assert np.all(np.isfinite(grad)) and np.abs(grad).max() > 0
    assert np.all(np.asarray(grad)[len(atoms):] == 0.0)
    # a too-small capacity is loud (NaN), never silently truncated
    assert np.all(np.isnan(jax.jit(lambda s: fn(s, max_neighbors=max(1, k - 1)))(padded)))


def test_descriptors_smooth_across_cutoff():
    """A dimer scanned across r_c: ACSF and chiral features and their slopes go to 0."""
    p = A.acsf_params(3.0, [1], g2=[[0.5, 0.0]])
    grads = []
    for r in (2.999, 3.0, 3.001):
        atoms = ase.Atoms("H2", positions=[[0, 0, 0], [r, 0, 0]])
        system = System.from_ase(atoms, cutoff=3.5)
        v = A.acsf(system, p, max_neighbors=1)
        g = jax.jacfwd(lambda x, s=system: A.acsf(s, p, max_neighbors=1, positions=x))(
            system.positions)
        assert np.abs(v).max() < 1e-5
        grads.append(np.abs(g).max())
    assert max(grads) < 1e-2


def test_acsf_grid_and_validation():
    p = A.grid(5.0, ["Cu", "O"], n_radial=6, n_angular=3, zetas=(1, 4))
    assert len(p.g2) == 6 and len(p.g4) == len(p.g5) == 12
    assert p.n_features == 2 * 7 + 3 * 24
    with pytest.raises(ValueError, match="λ"):
        A.acsf_params(5.0, [1], g4=[[0.1, 1.0, 0.5]])
    with pytest.raises(ValueError):
        S.soap_params(5.0, 4, 3, [1], compression="bogus")


def chfclbr(mirror=False):
    """CHFClBr (tetrahedral, C–X bond lengths from experiment, Å)."""
    d = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
    bonds = np.array([1.09, 1.36, 1.76, 1.93])[:, None]
    pos = np.vstack([[0.0, 0.0, 0.0], d * bonds])
    if mirror:
        pos[:, 0] *= -1
    return ase.Atoms("CHFClBr", positions=pos)


def test_chirality_separates_enantiomers():
    species = [1, 6, 9, 17, 35]
    left, right = chfclbr(), chfclbr(mirror=True)
    ap = A.grid(5.0, species, n_radial=4, n_angular=2)
    sp = S.soap_params(5.0, 3, 3, species, sigma=0.5)
    cp = C.chiral_params(5.0, species)
    for fn, cut in ((lambda s: A.acsf(s, ap), 5.0),
                    (lambda s: S.soap(s, sp), sp.neighbor_cutoff)):
        a, b = fn(System.from_ase(left, cutoff=cut)), fn(System.from_ase(right, cutoff=cut))
        np.testing.assert_allclose(a, b, atol=1e-10)
    a = np.asarray(C.chiral(System.from_ase(left, cutoff=5.0), cp))
    b = np.asarray(C.chiral(System.from_ase(right, cutoff=5.0), cp))
    np.testing.assert_allclose(a, -b, atol=1e-10)
    assert np.abs(a[0]).max() > 0.1  # the carbon centre sees a chiral environment
    # proper rotation of one enantiomer does not turn it into the other
    rot = transformed(left, rot=rotation(3))
    np.testing.assert_allclose(C.chiral(System.from_ase(rot, cutoff=5.0), cp), a, atol=1e-10)


def test_chiral_matches_brute_force_triplets():
    atoms = random_atoms(7, periodic=False, n=6)
    p = C.chiral_params(RC, SPECIES3, n_radial=2)
    out = np.asarray(C.chiral(System.from_ase(atoms, cutoff=RC), p))
    pos, z = atoms.positions, atoms.numbers
    eta, cen = np.array(p.etas), np.array(p.centers)
    for i in range(len(atoms)):
        vecs, chans = [], []
        for j in range(len(atoms)):
            v = pos[j] - pos[i]
            r = np.linalg.norm(v)
            if j == i or r >= RC:
                continue
            w = np.exp(-eta * (r - cen) ** 2) * 0.5 * (np.cos(np.pi * r / RC) + 1)
            vecs.append(v)
            chans.append(np.kron(np.eye(3)[SPECIES3.index(z[j])], w))  # [n_channels]
        ref = []
        for q, r_, s in p.triplets():
            tot = 0.0
            for a in range(len(vecs)):
                for b in range(len(vecs)):
                    for c in range(len(vecs)):
                        tot += (np.cross(vecs[a], vecs[b]) @ vecs[c]) * chans[a][q] * \
                            chans[b][r_] * chans[c][s]
            ref.append(tot)
        np.testing.assert_allclose(out[i], ref, atol=1e-10)


def test_solid_harmonics_are_an_orthonormal_real_basis():
    """R_lm = r^l Y_lm: homogeneous of degree l, and e3nn's real harmonics in another basis."""
    import e3nn_jax as e3nn

    l_max = 6
    v = np.random.default_rng(3).normal(size=(400, 3)) * 1.7
    mine = np.asarray(S.solid_harmonics(jnp.asarray(v), l_max))
    ref = np.asarray(e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(l_max),
                                              jnp.asarray(v), normalize=False,
                                              normalization="integral").array)
    scaled = np.asarray(S.solid_harmonics(jnp.asarray(1.3 * v), l_max))
    for l in range(l_max + 1):
        sl = slice(l * l, (l + 1) ** 2)
        np.testing.assert_allclose(scaled[:, sl], 1.3**l * mine[:, sl], rtol=1e-9, atol=1e-12)
        q = np.linalg.lstsq(mine[:, sl], ref[:, sl], rcond=None)[0]
        assert rel_err(mine[:, sl] @ q, ref[:, sl]) < 1e-10
        np.testing.assert_allclose(q @ q.T, np.eye(2 * l + 1), atol=1e-10)
    # Y_00 and the l = 1 block are fixed by the normalisation: check them directly
    r = np.linalg.norm(v, axis=1)
    np.testing.assert_allclose(mine[:, 0], 1 / np.sqrt(4 * np.pi))
    np.testing.assert_allclose(np.sum(mine[:, 1:4] ** 2, 1), 3 / (4 * np.pi) * r**2)


@pytest.mark.parametrize("name", ["acsf", "soap", "chiral"])
def test_chunked_atoms_equal_one_vmap(name):
    """``batch_size`` chunks (with a remainder) give the same values and Jacobians."""
    atoms = random_atoms(21, periodic=True, n=11, length=6.0)
    mod, params = {
        "acsf": (A, acsf_cfg(SPECIES3)),
        "soap": (S, S.soap_params(RC, 3, 3, SPECIES3, sigma=0.4)),
        "chiral": (C, C.chiral_params(RC, SPECIES3, n_radial=2)),
    }[name]
    cutoff = params.neighbor_cutoff if name == "soap" else params.r_cut
    s = System.from_ase(atoms, cutoff=cutoff)
    k = max_neighbors(s, cutoff)
    def run(fn, batch_size):  # jit: eager lax.map compiles op by op, far slower
        return jax.jit(lambda s: fn(s, params, max_neighbors=k, batch_size=batch_size))(s)

    values = getattr(mod, name)
    jacobian = getattr(mod, f"{name}_jacobian")
    ref = np.asarray(run(values, None))
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(run(values, 4), ref, rtol=1e-12, atol=1e-14)
    v0, j0 = run(jacobian, None)
    v1, j1 = run(jacobian, 3)
    assert np.abs(np.asarray(j0)).max() > 0
    np.testing.assert_allclose(v1, v0, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(j1, j0, rtol=1e-10, atol=1e-12)


def test_packed_sort_is_a_stable_argsort():
    from jaxpot.descriptors.environment import _stable_argsort

    keys = jnp.asarray(np.random.default_rng(0).integers(0, 7, 500), jnp.int32)
    ref = np.argsort(np.asarray(keys), kind="stable")
    for n_keys in (7, 2**31, 2**60):  # packed int32, packed int64, XLA's two-operand sort
        np.testing.assert_array_equal(_stable_argsort(keys, n_keys), ref)

"""NequIP and MACE: equivariance, physics and plumbing, checked with :mod:`jaxpot.testing`.

Tiny configurations (4 channels, l_max 1-2, one small radial layer) keep the file fast; every
check runs in float64 and asserts that what it compares is non-trivial.
"""

from __future__ import annotations

import json

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

import jaxpot
from jaxpot import System, models, testing
from jaxpot.nn.symmetric_contraction import SymmetricContraction
from jaxpot.nn.tensor_product import channelwise_conv, channelwise_plan, split_channels, to_irreps

CUTOFF = 3.0
TINY = dict(species=["Cu", "Au"], cutoff=CUTOFF, features="4x0e+4x1o", l_max=1,
            num_bessel=4, radial_hidden=[8], avg_num_neighbors=12.0, readout_hidden=4)
FACTORIES = {"nequip": models.nequip, "mace": lambda **kw: models.mace(correlation=2, **kw)}


def _cell() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.symbols[1] = "Au"
    atoms.rattle(0.1, seed=1)
    return atoms


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def model(request):
    jax.config.update("jax_enable_x64", True)
    pot = FACTORIES[request.param](**TINY)
    system = System.from_ase(_cell(), cutoff=CUTOFF)
    params = pot.init(jax.random.key(0), system)
    # Non-trivial per-species scale/shift so that their plumbing is exercised too.
    params = {**params, "atomic_scale": jnp.asarray([1.3, 0.7]),
              "atomic_shift": jnp.asarray([-0.2, 0.4])}
    return request.param, pot, params, system


def test_rotation_reflection(model):
    _, pot, params, system = model
    testing.assert_rotation_reflection_invariance(pot, params, system, seed=3)


def test_translation_and_permutation(model):
    _, pot, params, system = model
    testing.assert_translation_invariance(pot, params, system)
    testing.assert_permutation_invariance(pot, params, system, within_species=True)


def test_forces_and_stress_match_finite_differences(model):
    _, pot, params, system = model
    testing.assert_forces_match_finite_differences(pot, params, system, n_directions=1,
                                                   n_single_atom=1)
    testing.assert_stress_matches_finite_differences(pot, params, system, n_random=0)


def test_padding(model):
    _, pot, params, system = model
    testing.assert_padding_invariance(pot, params, system)


def test_supercell_extensivity(model):
    _, pot, params, system = model
    testing.assert_supercell_extensivity(pot, params, system, reps=(2, 2, 2))


def test_cutoff_smoothness_to_second_order(model):
    _, pot, params, _ = model
    testing.assert_cutoff_smoothness(pot, params, species=(29, 79), orders=(0, 1, 2))


def test_edges_beyond_cutoff_contribute_nothing(model):
    _, pot, params, system = model
    skin = system.with_edges(CUTOFF + 1.5)
    assert skin.n_edges > system.n_edges  # the skin really adds edges
    ef = jax.jit(jaxpot.energy_and_forces(pot))
    e0, f0 = ef(params, system)
    e1, f1 = ef(params, skin)
    np.testing.assert_allclose(e1, e0, rtol=1e-14, atol=0)
    np.testing.assert_allclose(f1, f0, rtol=0, atol=1e-13)
    # ... while the edges inside the cutoff do matter.
    fewer = system.replace(senders=system.senders.at[0].set(system.n_atoms),
                           receivers=system.receivers.at[0].set(system.n_atoms))
    assert abs(float(ef(params, fewer)[0] - e0)) > 1e-6


def test_jit_matches_eager_and_atomic_energies(model):
    name, pot, params, system = model
    e_eager = pot.energy(params, system)
    energy = jax.jit(pot.energy)
    np.testing.assert_allclose(energy(params, system), e_eager, rtol=1e-12)
    atomic = jax.jit(models.atomic_energies(pot))(params, system)
    assert atomic.shape == (system.n_atoms,)
    np.testing.assert_allclose(jnp.sum(atomic), e_eager, rtol=1e-12)
    assert float(jnp.std(atomic)) > 1e-6
    # per-species shift lives in params["atomic_shift"] (order of config species: Cu, Au)
    shifted = {**params, "atomic_shift": params["atomic_shift"] + jnp.asarray([0.5, 0.0])}
    n_cu = int(np.sum(np.asarray(system.species) == 29))
    np.testing.assert_allclose(energy(shifted, system), e_eager + 0.5 * n_cu, rtol=1e-12)
    padded = system.pad(system.n_atoms + 2, system.n_edges + 3)
    atomic_fn = getattr(models, f"{name}_atomic_energies")(pot.config["kwargs"])
    atomic_p = jax.jit(atomic_fn)(params, padded)
    np.testing.assert_array_equal(np.asarray(atomic_p[-2:]), 0.0)
    np.testing.assert_allclose(atomic_p[:-2], atomic, rtol=1e-12)


def test_config_round_trip(model):
    name, pot, params, system = model
    text = json.dumps(pot.config)
    rebuilt = jaxpot.from_config(json.loads(text))
    assert rebuilt.config == pot.config and rebuilt.cutoff == pot.cutoff
    np.testing.assert_array_equal(np.asarray(jax.jit(rebuilt.energy)(params, system)),
                                  np.asarray(jax.jit(pot.energy)(params, system)))
    other = jaxpot.from_config({"name": name, "kwargs": {**pot.config["kwargs"], "num_layers": 1}})
    assert other.config != pot.config


def test_unknown_species(model):
    _, pot, params, _ = model
    atoms = _cell()
    atoms.symbols[2] = "Ag"
    system = System.from_ase(atoms, cutoff=CUTOFF)
    with pytest.raises(ValueError, match="atom 2 is Ag"):
        pot.energy(params, system)
    with pytest.raises(ValueError, match="Ag"):
        pot.init(jax.random.key(0), system)
    assert np.isnan(float(jax.jit(pot.energy)(params, system)))  # traced: NaN, never a number


def _chiral() -> System:
    # Four atoms on a twisted chain (non-planar, all distances different, all within the
    # cutoff): a chiral molecule.
    x = 0.7 * np.array([[0.0, 0.0, 0.0], [1.9, 0.2, 0.1], [2.5, 1.8, 0.3], [2.2, 2.4, 1.9]])
    return System.from_arrays(x, [29, 29, 29, 79], cutoff=CUTOFF)


def test_parity(model):
    name, pot, params, _ = model
    system = _chiral()
    mirror = system.replace(positions=system.positions * jnp.asarray([1.0, 1.0, -1.0]))
    # O(3) (parity=True, the default): a chiral structure and its mirror image have the same
    # energy (test_rotation_reflection checks forces under R = -Q as well).
    energy = jax.jit(pot.energy)
    np.testing.assert_allclose(energy(params, mirror), energy(params, system), rtol=1e-10)
    # SO(3) only (parity=False): rotations still leave E unchanged, but it tells mirror images
    # apart (it can form pseudoscalars such as triple products). NequIP's scalars see a cross
    # product only from the third layer on; MACE's products see one in the second.
    layers = 3 if name == "nequip" else 2
    chiral = FACTORIES[name](**{**TINY, "parity": False, "num_layers": layers})
    assert chiral.config["kwargs"]["parity"] is False
    params = chiral.init(jax.random.key(1), system)
    testing.assert_rotation_reflection_invariance(chiral, params, system, reflect=False)
    chiral_energy = jax.jit(chiral.energy)
    e, e_mirror = (float(chiral_energy(params, s)) for s in (system, mirror))
    # (numerical noise is ~1e-14 eV here; the O(3) model above agrees to 1e-10)
    assert abs(e - e_mirror) > 1e-8 * max(1.0, abs(e))


def test_channelwise_conv_matches_e3nn_tensor_product():
    jax.config.update("jax_enable_x64", True)
    keys = jax.random.split(jax.random.key(2), 4)
    n, n_edges, c = 5, 9, 3
    irreps_x = e3nn.Irreps(f"{c}x0e+{c}x1o+{c}x2e")
    x = e3nn.normal(irreps_x, keys[0], (n,))
    vec = jax.random.normal(keys[1], (n_edges, 3))
    sh = jax.jit(lambda v: e3nn.spherical_harmonics("0e+1o+2e", v, normalize=True,
                                                    normalization="component"))(vec)
    senders = jax.random.randint(keys[2], (n_edges,), 0, n)
    receivers = jax.random.randint(keys[3], (n_edges,), 0, n)
    plan = channelwise_plan("0e+1o+2e", "0e+1o+2e", "0e+1o+2e")
    xs, _ = split_channels(x)
    weights = jnp.ones((n_edges, plan.num_paths * c))
    conv = jax.jit(lambda xs, sh: channelwise_conv(plan, xs, sh, weights, senders, receivers, n))
    ours = to_irreps(plan, conv(xs, sh.array))
    @jax.jit
    def reference(x, sh):
        ref = e3nn.tensor_product(x[senders], sh, filter_ir_out="0e+1o+2e")
        return e3nn.IrrepsArray(ref.irreps, jax.ops.segment_sum(ref.array, receivers, n))

    ref = reference(x, sh)
    for ir in ["0e", "1o", "2e"]:
        a, b = ours.filter(keep=ir), ref.filter(keep=ir)
        assert a.irreps.dim == b.irreps.dim
        # Same span up to a per-path normalisation: compare the Gram matrices of the channels
        # after normalising each output column.
        a = a.array.reshape(n, -1, e3nn.Irrep(ir).dim)
        b = b.array.reshape(n, -1, e3nn.Irrep(ir).dim)
        ua = a / jnp.linalg.norm(a, axis=(0, 2), keepdims=True)
        ub = b / jnp.linalg.norm(b, axis=(0, 2), keepdims=True)
        ga = jnp.einsum("nim,njm->ij", ua, ua)
        gb = jnp.einsum("nim,njm->ij", ub, ub)
        np.testing.assert_allclose(jnp.sort(ga.ravel()), jnp.sort(gb.ravel()), atol=1e-10)


def test_symmetric_contraction_is_equivariant():
    jax.config.update("jax_enable_x64", True)
    irreps = e3nn.Irreps("0e+1o+2e")
    n, c = 3, 2
    a = jax.random.normal(jax.random.key(3), (n, irreps.dim, c))
    species = jnp.asarray([0, 1, 0])
    module = SymmetricContraction("0e+1o+2e", 3, 2)
    params = jax.jit(lambda k, a, z: module.init(k, a, irreps, z))(jax.random.key(4), a, species)
    rot = jnp.asarray(testing.random_rotation(5, reflect=True))
    d = irreps.D_from_matrix(rot)  # [dim, dim]
    apply = jax.jit(lambda a: module.apply(params, a, irreps, species))
    out = apply(a)
    out_rot = apply(jnp.einsum("ij,njc->nic", d, a))
    d_out = out.irreps.D_from_matrix(rot)
    # out is [n, C x irreps] in e3nn's (mul, ir) layout; rotate it block by block.
    expected = jnp.einsum("ij,nj->ni", d_out, out.array)
    np.testing.assert_allclose(out_rot.array, expected, atol=1e-10)
    assert float(jnp.abs(out.filter(keep="0e").array).max()) > 1e-3
    # third-order terms are present: scaling A by t is not a polynomial of degree < 3 in t
    f = [apply(t * a).filter(keep="0e").array for t in (1.0, 2.0, 3.0, 4.0)]
    third = f[3] - 3 * f[2] + 3 * f[1] - f[0]  # third finite difference ∝ cubic coefficient
    assert float(jnp.abs(third).max()) > 1e-6


def test_config_validation():
    with pytest.raises(ValueError, match="unknown NequIPConfig fields"):
        models.nequip(species=["Cu"], bogus=1)
    with pytest.raises(ValueError, match="Xx"):
        models.nequip(species=["Xx"])
    with pytest.raises(ValueError, match="one multiplicity"):
        models.mace(species=["Cu"], features="8x0e+4x1o")
    assert models.nequip().config["kwargs"]["species"][:2] == ["H", "He"]
    # Each family's default features are valid for it (MACE needs one multiplicity).
    assert "0o" in models.nequip(species=["Cu"]).config["kwargs"]["features"]
    assert models.mace(species=["Cu"]).config["kwargs"]["features"] == "32x0e+32x1o+32x2e"


def test_average_num_neighbors():
    system = System.from_ase(bulk("Cu", "fcc", a=3.61, cubic=True), cutoff=CUTOFF)
    assert models.average_num_neighbors([system], CUTOFF) == pytest.approx(12.0)
    skin = system.with_edges(CUTOFF + 1.0)
    assert models.average_num_neighbors([skin], CUTOFF) == pytest.approx(12.0)


def test_nequip_both_parities_all_irreps():
    """Features with both parities and several multiplicities (the mlip reference layout):
    the second layer's inputs include irreps the first produced none of (a zero block in
    e3nn-jax). The model builds, gives non-zero forces and is E(3)-invariant/equivariant."""
    jax.config.update("jax_enable_x64", True)
    kw = {**TINY, "features": "4x0e+4x0o+2x1o+2x1e+2x2e+2x2o", "l_max": 2}
    pot = models.nequip(**kw)
    system = System.from_ase(_cell(), cutoff=CUTOFF)
    params = pot.init(jax.random.key(1), system)
    _, f = jaxpot.energy_and_forces(pot)(params, system)
    assert float(jnp.max(jnp.abs(f))) > 1e-6
    testing.assert_rotation_reflection_invariance(pot, params, system, seed=5)

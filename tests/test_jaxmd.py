"""JAX MD interop: a jaxpot model inside JAX MD's NVE and FIRE, and a JAX MD energy in jaxpot."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk
from jax_md import energy as jmd_energy
from jax_md import minimize, simulate, space

from jaxpot import System, md, potentials, units
from jaxpot.jaxmd import from_jax_md, to_jax_md
from jaxpot.potential import energy_and_forces


def _argon(repeat=2):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=3)
    return System.from_ase(atoms)


POT = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=4.6)


def _min_image(a, b, cell):
    d = (np.asarray(a) - np.asarray(b)) @ np.linalg.inv(cell)
    return np.abs((d - np.round(d)) @ cell).max()


def test_jax_md_nve_with_jaxpot_model_equals_md_simulate():
    system = _argon()
    params = POT.init(None, None)
    fns = to_jax_md(POT, params, system, skin=0.4)
    masses = np.asarray(system.masses)[:, None]
    p = np.random.default_rng(0).normal(size=(32, 3)) * np.sqrt(masses * 40 * units.kB)
    p -= p.sum(0) / 32  # zero total momentum (jaxpot keeps it zero)
    dt_fs, steps = 4.0, 1000
    init, apply = simulate.nve(fns.energy_fn, fns.shift_fn, dt_fs * units.fs)
    nbrs = fns.neighbor_fn.allocate(system.positions)
    state = init(jax.random.key(0), system.positions, 0.0, mass=fns.masses,
                 momenta=jnp.asarray(p), neighbor=nbrs)

    @jax.jit
    def run(state, nbrs):
        def body(_, c):
            st, nb_ = c
            st = apply(st, neighbor=nb_)
            return st, nb_.update(st.position)
        return jax.lax.fori_loop(0, steps, body, (state, nbrs))

    state, nbrs = run(state, nbrs)
    assert not bool(nbrs.did_buffer_overflow)
    ref = md.simulate(POT, params, system, dt_fs=dt_fs, temperature_kelvin=0.0, steps=steps,
                      log_every=steps, momenta=p, trajectory_every=steps)
    cell = np.asarray(system.cell)
    x0, x1 = ref.trajectory.positions[0], ref.trajectory.positions[-1]
    assert np.abs(x1 - x0).max() > 0.2  # moved past half the skin: lists were rebuilt
    # Float64, 1000 steps: the two differ only by summation order (~1e-7 Å after 1000 steps
    # of this chaotic system; a frozen or wrong list would be off by ~0.1 Å).
    assert _min_image(state.position, x1, cell) < 1e-6
    np.testing.assert_allclose(np.asarray(state.momentum), ref.final_state.momenta, atol=1e-6)


def test_jax_md_fire_descent_with_jaxpot_model():
    system = _argon()
    params = POT.init(None, None)
    fns = to_jax_md(POT, params, system, skin=0.4)
    init, apply = minimize.fire_descent(fns.energy_fn, fns.shift_fn, dt_start=0.05, dt_max=0.2)
    nbrs = fns.neighbor_fn.allocate(system.positions)
    state = init(system.positions, neighbor=nbrs)
    e0 = float(fns.energy_fn(system.positions, neighbor=nbrs))

    @jax.jit
    def run(state, nbrs):
        def body(_, c):
            st, nb_ = c
            st = apply(st, neighbor=nb_)
            return st, nb_.update(st.position)
        return jax.lax.fori_loop(0, 200, body, (state, nbrs))

    state, nbrs = run(state, nbrs)
    assert not bool(nbrs.did_buffer_overflow)
    e1 = float(fns.energy_fn(state.position, neighbor=nbrs))
    # Independent check: jaxpot's own host list at the final positions.
    ref = System.from_arrays(np.asarray(state.position), np.asarray(system.species),
                             cell=np.asarray(system.cell), pbc=True, cutoff=POT.cutoff)
    e_ref, f_ref = energy_and_forces(POT)(params, ref)
    assert e1 < e0 - 1e-3
    assert abs(e1 - float(e_ref)) < 1e-10
    assert np.abs(np.asarray(f_ref)).max() < 1e-3


def test_energy_fn_refuses_a_missing_list_and_a_narrow_cell():
    system = _argon()
    fns = to_jax_md(POT, POT.init(None, None), system)
    with pytest.raises(TypeError, match="neighbor"):
        fns.energy_fn(system.positions)
    with pytest.raises(ValueError, match="twice"):
        to_jax_md(POT, None, System.from_ase(bulk("Ar", "fcc", a=5.26, cubic=True)))


def test_jax_md_energy_as_jaxpot_potential():
    system = _argon()
    box = np.asarray(system.cell).T
    displacement, _ = space.periodic_general(box, fractional_coordinates=False)
    e_fn = jmd_energy.lennard_jones_pair(displacement, sigma=3.4, epsilon=0.0104,
                                         r_onset=4.0, r_cutoff=4.6)
    pot = from_jax_md(e_fn, cutoff=4.6)
    x = system.positions
    e, f = energy_and_forces(pot)(None, system)
    assert abs(float(e) - float(e_fn(x))) < 1e-12
    np.testing.assert_allclose(np.asarray(f), -np.asarray(jax.grad(e_fn)(x)), atol=1e-12)
    assert np.abs(np.asarray(f)).max() > 1e-3

"""Bad inputs and runs that go wrong in jaxpot.md: each gives a clear error, never a quiet result.

Pre-checks run on the host before anything is compiled; a counting potential proves it (its
energy function is never traced). Blow-ups with finite energies raise ``md.SimulationUnstable``
whose message says what happened and names the likely cause; "try a smaller dt" appears only
when the time step is the plausible cause.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from ase.build import bulk

from jaxpot import System, md, potentials
from jaxpot.md.blocks import NeighborKeeper, NeighborListError, run_checked
from jaxpot.potential import Potential
from jaxpot.potentials.pair import pair_energy

LJ = potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=7.0)


def argon(repeat: int = 3) -> System:
    return System.from_ase(bulk("Ar", "fcc", a=5.26, cubic=True).repeat(repeat))


def counting(pot: Potential, calls: list) -> Potential:
    """``pot`` whose energy function records every trace or call."""

    def energy(params, system):
        calls.append(1)
        return pot.energy(params, system)

    return pot._replace(energy=energy)


def run(pot=LJ, params=None, system=None, **kw):
    system = argon(2) if system is None else system
    params = pot.init(None, system) if params is None else params
    opts = dict(dt_fs=5.0, temperature_kelvin=40.0, steps=20, log_every=10)
    opts.update(kw)
    return md.simulate(pot, params, system, **opts)


# ------------------------------------------------------------------------- options, no compile


BAD_OPTIONS = [
    ({"dt_fs": 0.0}, "dt_fs"),
    ({"dt_fs": -1.0}, "dt_fs"),
    ({"dt_fs": float("nan")}, "dt_fs"),
    ({"dt_fs": float("inf")}, "dt_fs"),
    ({"dt_fs": "fast"}, "dt_fs"),
    ({"steps": -1}, "steps"),
    ({"steps": 2.5}, "steps"),
    ({"log_every": 0}, "log_every"),
    ({"log_every": -10}, "log_every"),
    ({"log_every": 2.5}, "log_every"),
    ({"trajectory_every": 0}, "trajectory_every"),
    ({"trajectory_every": -10}, "trajectory_every"),
    ({"trajectory_every": 15}, "multiple of log_every"),
    ({"temperature_kelvin": -1.0}, "temperature_kelvin is -1.0 K at step 0"),
    ({"temperature_kelvin": float("nan")}, "temperature_kelvin"),
    ({"temperature_kelvin": "hot"}, "temperature_kelvin"),
    ({"temperature_kelvin": (300.0, -50.0)}, "temperature_kelvin is -15.0 K at step 18"),
    ({"temperature_kelvin": lambda s: 300.0 - 20.0 * s}, "at step 16"),
    ({"ensemble": "nph"}, "unknown ensemble 'nph'"),
    ({"temperature_kelvin": (40.0, 80.0)}, "needs a thermostat"),
    ({"ensemble": "langevin", "friction_per_fs": 0.0}, "friction_per_fs"),
    ({"ensemble": "langevin", "friction_per_fs": -0.01}, "friction_per_fs"),
    ({"ensemble": "langevin", "friction_per_fs": float("nan")}, "friction_per_fs"),
    ({"ensemble": "nose-hoover", "tau_fs": -100.0}, "tau_fs"),
    ({"ensemble": "nose-hoover", "tau_fs": 0.0}, "tau_fs"),
    ({"ensemble": "nose-hoover", "tau_fs": float("nan")}, "tau_fs"),
    ({"momenta": np.zeros((3, 3))}, "momenta have shape"),
    ({"momenta": np.full((32, 3), np.nan)}, "atom 0 has non-finite momentum"),
]


def _option_id(kw: dict) -> str:
    # Stable across processes (pytest-xdist compares test ids): no object addresses.
    return ",".join(f"{k}={'<function>' if callable(v) else v!r}" for k, v in kw.items())


@pytest.mark.parametrize("kw, message", BAD_OPTIONS, ids=[_option_id(k) for k, _ in BAD_OPTIONS])
def test_bad_option_is_refused_before_compiling(kw, message):
    calls: list = []
    pot = counting(LJ, calls)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(pot, **kw)
    assert calls == []  # nothing was traced or evaluated


@pytest.mark.parametrize("temperature", [0.0, (300.0, 0.0)], ids=["0K", "ramp-to-0K"])
def test_nose_hoover_refuses_zero_kelvin(temperature):
    # The chain masses are kT·tau²: at 0 K the thermostat divides 0 by 0 (NaN momenta).
    calls: list = []
    with pytest.raises(ValueError, match="0.0 K at step .*> 0 K for Nosé–Hoover"):
        run(counting(LJ, calls), ensemble="nose-hoover", temperature_kelvin=temperature)
    assert calls == []
    # Langevin and NVE accept 0 K.
    assert run(ensemble="langevin", temperature_kelvin=(300.0, 0.0), steps=10).steps_done == 10


def test_friction_and_tau_only_matter_for_their_ensemble():
    # A bad tau in a Langevin run is unused, so not an error (the CLI passes both).
    res = run(ensemble="langevin", tau_fs=-1.0, steps=10)
    assert res.steps_done == 10


def test_steps_zero_evaluates_the_start_only():
    res = run(steps=0, trajectory_every=10)
    assert res.log["step"].tolist() == [0] and len(res.trajectory) == 1
    assert res.log["potential_energy_ev"][0] < 0


# ------------------------------------------------------------------------- structures, model


@pytest.mark.parametrize("mass, shown", [(0.0, "0.0"), (-4.0, "-4.0"), (np.nan, "nan")])
def test_bad_mass_names_the_atom(mass, shown):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    masses = atoms.get_masses()
    masses[5] = mass
    atoms.set_masses(masses)
    try:  # System.from_ase may refuse already (naming the atom); if not, simulate must
        system = System.from_ase(atoms)
    except ValueError as err:
        assert "5" in str(err)
        system = argon(2)
        system = system.replace(masses=system.masses.at[5].set(mass))
    calls: list = []
    with pytest.raises(ValueError, match=f"atom 5 \\(Z=18\\) has mass {shown}"):
        run(counting(LJ, calls), system=system)
    assert calls == []


def test_bad_mass_in_a_system_built_by_hand():
    system = argon(2)
    system = system.replace(masses=system.masses.at[7].set(-1.0))
    with pytest.raises(ValueError, match=r"atom 7 \(Z=18\) has mass -1.0"):
        run(system=system)


def test_nan_position_names_the_atom():
    system = argon(2)
    system = system.replace(positions=system.positions.at[3, 1].set(jnp.nan))
    with pytest.raises(ValueError, match="atom 3 has non-finite position"):
        run(system=system)


def test_unknown_element_is_named_before_compiling():
    calls: list = []
    pot = counting(LJ._replace(species=(18,)), calls)
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
    atoms.numbers[[4, 9]] = 10  # neon
    with pytest.raises(ValueError, match=r"Ne \(first at atom 4\) unknown to the model"):
        run(pot, system=System.from_ase(atoms))
    with pytest.raises(ValueError, match=r"fire: structure: element\(s\) Ne"):
        md.fire(pot, pot.init(None, None), System.from_ase(atoms))
    assert calls == []


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_parameter_is_named(bad):
    calls: list = []
    pot = counting(LJ, calls)
    params = {"sigma": jnp.asarray(3.4), "epsilon": jnp.asarray(bad)}
    with pytest.raises(ValueError, match=r"parameter \['epsilon'\] has 1 non-finite"):
        run(pot, params=params)
    nested = {"term0": {"sigma": jnp.ones(())}, "term1": {"w": jnp.ones((2, 3)).at[1, 2].set(bad)}}
    with pytest.raises(ValueError, match=r"parameter \['term1'\]\['w'\] has 1 non-finite"):
        md.check_params_finite(nested)
    with pytest.raises(ValueError, match=r"fire: model 'lennard_jones'.*\['epsilon'\]"):
        md.fire(pot, params, argon(2))
    assert calls == []


@pytest.mark.parametrize("kw, message", [({"fmax": 0.0}, "fmax"), ({"fmax": np.nan}, "fmax"),
                                         ({"max_steps": -1}, "max_steps"),
                                         ({"check_every": 0}, "check_every")])
def test_fire_bad_options(kw, message):
    with pytest.raises(ValueError, match=message):
        md.fire(LJ, LJ.init(None, None), argon(2), **kw)


def test_observer_clash_is_refused():
    with pytest.raises(ValueError, match="clashes with a built-in log column"):
        run(observers=lambda s, o: {"temperature_k": s.energy})
    with pytest.raises(TypeError, match="observers must be callables"):
        run(observers=[42])


# ------------------------------------------------------------------------- runs that blow up


def test_nve_blowup_with_finite_energies_raises_with_the_time_step_as_cause():
    """LJ argon at dt = 100 fs (20x too large): the total energy explodes, all finite."""
    with pytest.raises(md.SimulationUnstable) as info:
        run(system=argon(3), dt_fs=100.0, steps=400, log_every=10)
    err = info.value
    msg = str(err)
    print(msg)
    assert isinstance(err, ValueError) and err.dt_suspect
    assert "total energy not conserved" in msg and "nve run at dt = 100 fs" in msg
    assert "time step is too large" in msg and "try a smaller dt" in msg
    assert 0 < err.step_failed <= 400 and err.step < err.step_failed


def test_the_same_run_at_a_sane_time_step_passes():
    res = run(system=argon(3), dt_fs=5.0, steps=400, log_every=10)
    e = res.log["total_energy_ev"]
    assert np.abs(e - e[0]).max() / 108 < 1e-4  # far inside the 5 meV/atom threshold


def test_langevin_blowup_is_caught_by_the_temperature():
    with pytest.raises(md.SimulationUnstable, match="smaller dt") as info:
        run(system=argon(3), ensemble="langevin", friction_per_fs=0.001, dt_fs=100.0,
            steps=400, log_every=10)
    assert info.value.dt_suspect


def _hole_potential(depth: float = 0.3, cutoff: float = 6.0) -> Potential:
    """Attraction with no repulsive wall: −ε (σ/r)⁶, atoms fall into each other."""

    def energy(params, system):
        return pair_energy(lambda r: -depth * (3.4 / r) ** 6, system, cutoff, shift=True)

    return Potential(lambda key, system: {}, energy, cutoff, {"name": "hole"})


@pytest.mark.parametrize("ensemble", ["nve", "langevin"])
def test_collapse_into_a_hole_is_not_blamed_on_the_time_step(ensemble):
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True)  # 4 atoms, periodic: they collapse in pairs
    atoms.rattle(0.1, seed=3)
    with pytest.raises(md.SimulationUnstable) as info:
        run(_hole_potential(), params={}, system=System.from_ase(atoms), dt_fs=1.0,
            steps=20_000, log_every=20, ensemble=ensemble, friction_per_fs=0.01)
    msg = str(info.value)
    print(msg)
    assert not info.value.dt_suspect
    assert "smaller dt" not in msg
    assert "potential energy fell" in msg and "not the time step" in msg


def test_energy_check_can_be_switched_off():
    res = run(system=argon(3), dt_fs=60.0, steps=40, log_every=10,
              max_energy_error_per_atom=float("inf"))
    assert res.steps_done == 40


# ------------------------------------------------------------------------- neighbour lists


def test_run_checked_gives_up_with_a_diagnosis():
    system = argon(2)
    keeper = NeighborKeeper(7.0, 0.5)
    nbrs = keeper.allocate(system)

    class Start:
        def __init__(self, n):
            self.system, self.neighbors = system, n

        def replace(self, neighbors):
            return Start(neighbors)

    def always_overflows(start):  # a list whose count always exceeds its capacity
        n = start.neighbors
        bad = n.replace(overflow=jnp.asarray(True),
                        max_count=jnp.asarray(n.spec.max_neighbors + 1, jnp.int32))
        return (Start(bad), None)

    with pytest.raises(NeighborListError, match="still overflows after 8 reallocations in "
                       "block 7.*an atom had .* neighbours.*collapsing") as info:
        run_checked(always_overflows, Start(nbrs), keeper, where="in block 7")
    assert not info.value.outside
    assert keeper.n_reallocations == 8 and keeper.capacity_multiplier > 1.25 * 1.5**7


def test_regrow_grows_the_capacity_past_what_was_needed():
    system = argon(2)
    keeper = NeighborKeeper(7.0, 0.5)
    nbrs = keeper.allocate(system)
    m = nbrs.spec.max_neighbors
    failed = nbrs.replace(overflow=jnp.asarray(True), max_count=jnp.asarray(2 * m, jnp.int32))
    grown = keeper.regrow(system, failed)
    assert grown.spec.max_neighbors >= 2 * m * 1.25 and not bool(grown.overflow)
    assert keeper.n_reallocations == 1


def test_hot_gas_leaving_an_open_cell_list_box_is_followed():
    """A 64-atom argon droplet at 3000 K on a non-periodic cell list: it flies apart.

    Atoms leave the box the list was allocated for; the run reallocates (box measured again
    from the current extent, blocks split if needed) instead of aborting, and every logged
    energy equals the energy on an exact host list at those positions.
    """
    g = np.arange(4) * 3.8
    pos = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    n = pos.shape[0]
    system = System.from_arrays(pos, np.full(n, 18), cell=np.zeros((3, 3)), pbc=False)
    res = md.simulate(LJ, LJ.init(None, system), system, dt_fs=5.0,
                      temperature_kelvin=3000.0, steps=200, log_every=20, trajectory_every=20,
                      neighbor_method="cell", skin=0.5)
    extent0 = np.ptp(pos, axis=0).max()
    extent = np.ptp(res.trajectory.positions[-1], axis=0).max()
    print(f"extent {extent0:.1f} -> {extent:.1f} Å, reallocations {res.n_reallocations}")
    assert extent > 2 * extent0
    assert res.n_reallocations >= 1
    assert res.final_state.neighbors.spec.method == "cell"
    for k in range(0, len(res.trajectory), 3):
        s = System.from_arrays(res.trajectory.positions[k], np.full(n, 18),
                               cell=np.zeros((3, 3)), pbc=False).with_edges(LJ.cutoff)
        exact = float(LJ.energy(LJ.init(None, s), s))
        assert exact == pytest.approx(res.trajectory.potential_energy_ev[k], rel=1e-9, abs=1e-9)
    e = res.log["total_energy_ev"]
    assert np.abs(e - e[0]).max() / n < 1e-3

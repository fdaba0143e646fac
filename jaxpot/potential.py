"""Potentials: pure functions from parameters and a structure to an energy.

A :class:`Potential` is a pair ``(init, energy)`` plus a cutoff and a JSON-serialisable config::

    pot = jaxpot.potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
    params = pot.init(jax.random.key(0), system)
    e = pot.energy(params, system)                        # scalar, eV
    e, f = jaxpot.energy_and_forces(pot)(params, system)  # forces = -dE/dx, eV/Å

``energy`` sees one unbatched :class:`~jaxpot.System` whose edges were built for at least
``pot.cutoff`` and depends on positions only through the edge vectors, so ``jax.grad``,
``jax.vmap``, ``jax.hessian`` and ``jax.jit`` apply directly. Edges longer than the cutoff
(a Verlet skin) must contribute exactly zero.

Every potential factory registers itself by name (:func:`register`), so
:func:`from_config` can rebuild a potential from ``pot.config`` (this is how model files work).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxpot.system import System

__all__ = [
    "Potential",
    "register",
    "from_config",
    "registered",
    "sum_potentials",
    "energy_and_forces",
    "energy_forces_stress",
    "forces",
    "stress",
    "hessian",
]

Params = Any
EnergyFn = Callable[[Params, System], jax.Array]


class Potential(NamedTuple):
    """A potential energy surface.

    Attributes:
      init: ``(key, system) -> params``.
      energy: ``(params, system) -> scalar`` energy in eV of one unbatched structure.
      cutoff: Å; edges must be built for at least this distance.
      config: JSON-serialisable ``{"name": ..., "kwargs": {...}}`` that :func:`from_config`
        turns back into an equivalent potential.
    """

    init: Callable[[jax.Array, System], Params]
    energy: EnergyFn
    cutoff: float
    config: dict


_REGISTRY: dict[str, Callable[..., Potential]] = {}


def register(name: str):
    """Decorator: make a potential factory rebuildable from ``{"name": name, "kwargs": ...}``."""

    def wrap(factory):
        _REGISTRY[name] = factory
        return factory

    return wrap


def registered() -> list[str]:
    """Names of the potential factories :func:`from_config` knows."""
    return sorted(_REGISTRY)


def from_config(config: dict) -> Potential:
    """Rebuild a potential from its ``config``.

    Raises:
      ValueError: unknown potential name or malformed config.
    """
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"a potential config must be a dict with a 'name', got {config!r}")
    name = config["name"]
    if name not in _REGISTRY:
        # Model families register on import.
        import jaxpot.models  # noqa: F401
        import jaxpot.potentials  # noqa: F401
    if name not in _REGISTRY:
        raise ValueError(f"unknown potential {name!r}; known: {', '.join(registered())}")
    return _REGISTRY[name](**config.get("kwargs", {}))


@register("sum")
def sum_potentials(*terms: Potential, **kw) -> Potential:
    """The sum of several potentials; params are ``{"term0": p0, "term1": p1, ...}``.

    Example:
      >>> from jaxpot import potentials
      >>> pot = sum_potentials(potentials.lennard_jones(1.0, 1.0, 2.5),
      ...                      potentials.morse(1.0, 1.0, 1.2, 2.5))
      >>> pot.config["name"]
      'sum'
    """
    if "terms" in kw:  # rebuilt from a config
        terms = tuple(from_config(c) for c in kw.pop("terms"))
    if kw:
        raise ValueError(f"sum_potentials got unexpected options {sorted(kw)}")
    if not terms:
        raise ValueError("sum_potentials needs at least one term")
    keys = [f"term{i}" for i in range(len(terms))]

    def init(key, system):
        subkeys = jax.random.split(key, len(terms))
        return {k: t.init(sk, system) for k, t, sk in zip(keys, terms, subkeys, strict=True)}

    def energy(params, system):
        return sum(t.energy(params[k], system) for k, t in zip(keys, terms, strict=True))

    return Potential(
        init=init,
        energy=energy,
        cutoff=max(t.cutoff for t in terms),
        config={"name": "sum", "kwargs": {"terms": [t.config for t in terms]}},
    )


def _energy_fn(potential_or_fn) -> EnergyFn:
    return potential_or_fn.energy if isinstance(potential_or_fn, Potential) else potential_or_fn


def energy_and_forces(potential: Potential | EnergyFn):
    """``(params, system) -> (energy [eV], forces [n_atoms, 3] eV/Å)``; forces are −∇E.

    Forces on padding atoms are exactly zero.
    """
    energy = _energy_fn(potential)

    def fn(params, system):
        def e_of_x(x):
            return energy(params, system.replace(positions=x))

        e, g = jax.value_and_grad(e_of_x)(system.positions)
        return e, jnp.where(system.atom_mask[:, None], -g, 0.0)

    return fn


def forces(potential: Potential | EnergyFn):
    """``(params, system) -> forces [n_atoms, 3]`` in eV/Å."""
    ef = energy_and_forces(potential)
    return lambda params, system: ef(params, system)[1]


def _strained(system: System, strain: jax.Array) -> System:
    sym = 0.5 * (strain + strain.T)
    deform = jnp.eye(3, dtype=system.positions.dtype) + sym
    return system.replace(positions=system.positions @ deform, cell=system.cell @ deform)


def energy_forces_stress(potential: Potential | EnergyFn):
    """``(params, system) -> (energy, forces [n, 3], stress [3, 3])`` in one backward pass.

    Stress is the strain derivative ``σ = (1/V) ∂E/∂ε`` at ε = 0 (symmetric ε applied to the
    positions and the cell), in eV/Å³ with ASE's sign: negative under compression,
    ``pressure = -trace(σ)/3``. It is zero for a cell of zero volume.
    """
    energy = _energy_fn(potential)

    def fn(params, system):
        zero = jnp.zeros((3, 3), system.positions.dtype)

        def e_of(x, strain):
            return energy(params, _strained(system.replace(positions=x), strain))

        e, (gx, gs) = jax.value_and_grad(e_of, argnums=(0, 1))(system.positions, zero)
        volume = system.volume
        sigma = jnp.where(volume > 0, gs / jnp.where(volume > 0, volume, 1.0), 0.0)
        return e, jnp.where(system.atom_mask[:, None], -gx, 0.0), sigma

    return fn


def stress(potential: Potential | EnergyFn):
    """``(params, system) -> stress [3, 3]`` eV/Å³ (see :func:`energy_forces_stress`)."""
    efs = energy_forces_stress(potential)
    return lambda params, system: efs(params, system)[2]


def hessian(potential: Potential | EnergyFn):
    """``(params, system) -> ∂²E/∂x∂x`` of shape ``[n_atoms, 3, n_atoms, 3]``, eV/Å²."""
    energy = _energy_fn(potential)

    def fn(params, system):
        return jax.hessian(lambda x: energy(params, system.replace(positions=x)))(
            system.positions
        )

    return fn

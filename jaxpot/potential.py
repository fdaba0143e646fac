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
import numpy as np
from ase.data import chemical_symbols

from jaxpot.registry import factory, from_config, register, registered
from jaxpot.system import System

__all__ = [
    "Potential",
    "atomic_outputs",
    "check_species",
    "factory",
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
    """A potential energy surface, and what else the model can say about each atom.

    The first four fields are all a potential needs; the rest declare optional capabilities
    (the model protocol), so training, MD, uncertainty and long-range code can ask a potential
    what it offers instead of probing attributes.

    Attributes:
      init: ``(key, system) -> params``.
      energy: ``(params, system) -> scalar`` energy in eV of one unbatched structure.
      cutoff: Å; edges must be built for at least this distance ("needs edges up to r"). A term
        that needs no edges (a reciprocal-space sum) has 0.
      config: JSON-serialisable ``{"name": ..., "kwargs": {...}}`` that :func:`from_config`
        turns back into an equivalent potential.
      atomic: optional ``(params, system) -> dict`` of per-atom outputs, each ``[n_atoms, ...]``
        and zero on padding atoms: ``"energy"`` (eV, sums to ``energy`` for a local model) and
        optionally ``"charges"`` (e), ``"features"`` (``[n_atoms, F]`` invariant features, for
        distances in feature space) and ``"variance"`` (eV²).
      outputs: the keys ``atomic`` returns (``()`` when ``atomic`` is None).
      local: True when the energy is a sum of atomic terms that each see only neighbours within
        ``cutoff``; False for long-range terms (Ewald, dispersion tails).
      species: atomic numbers the model was built for, or None when any element is valid.
      prepare: optional ``(params, train_set) -> params``, a data-dependent initialisation run
        once before gradient training (e.g. descriptor standardisation).
      fit: optional closed-form fit used *instead of* gradient training (e.g. GAP); its
        signature is defined by :mod:`jaxpot.train`.
    """

    init: Callable[[jax.Array, System], Params]
    energy: EnergyFn
    cutoff: float
    config: dict
    atomic: Callable[[Params, System], dict] | None = None
    outputs: tuple[str, ...] = ()
    local: bool = True
    species: tuple[int, ...] | None = None
    prepare: Callable[..., Params] | None = None
    fit: Callable[..., Any] | None = None


def _symbol(z: int) -> str:
    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"


def check_species(potential: Potential, numbers, *, where: str = "structure") -> None:
    """Refuse, on the host, elements the model was not built for (before any jitted call).

    Args:
      potential: the potential; nothing is checked when ``potential.species`` is None.
      numbers: atomic numbers of the real atoms (array-like of ints; no padding).
      where: names the structure in the message (file and frame, for example).

    Raises:
      ValueError: naming each unknown element, its first atom, and the elements the model knows.
    """
    if potential.species is None:
        return
    numbers = np.asarray(numbers).reshape(-1)
    known = {int(z) for z in potential.species}
    unknown = sorted({int(z) for z in numbers} - known)
    if unknown:
        listed = ", ".join(
            f"{_symbol(z)} (first at atom {int(np.flatnonzero(numbers == z)[0])})"
            for z in unknown)
        raise ValueError(f"{where}: element(s) {listed} unknown to the model "
                         f"{potential.config.get('name')!r}, which knows only "
                         f"{', '.join(_symbol(z) for z in sorted(known))}")


def atomic_outputs(potential: Potential) -> Callable[[Params, System], dict]:
    """``(params, system) -> {"energy": [n_atoms], ...}``, the model's per-atom outputs.

    Raises:
      ValueError: the potential declares no per-atom outputs.
    """
    if potential.atomic is None:
        raise ValueError(f"potential {potential.config.get('name')!r} has no per-atom outputs")
    return potential.atomic


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
        **_sum_protocol(keys, terms),
    )


def _sum_protocol(keys: list[str], terms: tuple[Potential, ...]) -> dict:
    """The declared capabilities of a sum: per-atom outputs add up; species intersect."""
    known = [set(t.species) for t in terms if t.species is not None]
    species = tuple(sorted(set.intersection(*known))) if known else None
    out = {"local": all(t.local for t in terms), "species": species}
    if not all(t.atomic is not None and "energy" in t.outputs for t in terms):
        return out
    outputs = tuple(dict.fromkeys(k for t in terms for k in t.outputs))

    def atomic(params, system):
        total: dict = {}
        for k, t in zip(keys, terms, strict=True):
            for name, value in t.atomic(params[k], system).items():
                if name == "features":  # features of different terms stack side by side
                    total[name] = (value if name not in total
                                   else jnp.concatenate([total[name], value], axis=-1))
                else:
                    total[name] = total.get(name, 0.0) + value
        return total

    return {**out, "atomic": atomic, "outputs": outputs}


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
    # HIGHEST: on GPUs a float32 matmul defaults to TF32, which would round positions to
    # ~1e-3 relative before any energy is computed.
    hi = jax.lax.Precision.HIGHEST
    return system.replace(positions=jnp.matmul(system.positions, deform, precision=hi),
                          cell=jnp.matmul(system.cell, deform, precision=hi))


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

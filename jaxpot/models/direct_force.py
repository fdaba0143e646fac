"""A non-conservative NequIP: per-atom energies plus a directly predicted force per atom.

The network is NequIP's trunk (:mod:`jaxpot.models.nequip`: species embedding, interaction
blocks, gates) with two heads on the last layer's features:

- the energy head of NequIP (scalars → linear → silu → linear → ``ε_i``), giving the atomic
  energies ``E_i = atomic_scale[z_i]·ε_i + atomic_shift[z_i]`` and the scalar ``energy``;
- a force head: linear → gate (``force_hidden`` sigmoid-gated ``1o`` channels) → linear to one
  ``1x1o`` vector ``v_i``, and ``F_i = atomic_scale[z_i]·v_i`` (eV/Å).

``1o`` is a polar vector, so the direct forces rotate *and* reflect with the structure
(``F(x Rᵀ) = F(x) Rᵀ`` for any orthogonal ``R``) by construction; they depend on positions only
through edge vectors (translation invariant) and are permutation equivariant. With
``parity=False`` the trunk is SO(3) only and the head reads ``1x1e``: forces rotate with proper
rotations but mirror images are not tied to each other.

The forces are **not** ``−∇E``: ``potential.energy`` is the energy head alone, and ``jax.grad``
of it is a different (untrained) field. The direct forces are a per-atom output of the model
protocol, ``potential.atomic(params, system)["direct_forces"]`` ``[n_atoms, 3]`` eV/Å, 0 on
padding atoms; :func:`direct_energy_forces_stress` returns them with the energy (and stress, the
strain derivative of the energy head). Training (:mod:`jaxpot.train.direct`) fits them to the
force labels and penalises a net force ``Σ_i F_i`` and, for isolated structures, a net torque
``Σ_i r_i × F_i``; MD (:mod:`jaxpot.md.direct`) integrates with them.

Net force: nothing in the architecture makes ``Σ_i F_i = 0`` (momentum then drifts in NVE).
With ``remove_net_force=True`` the mean force over the real atoms is subtracted at prediction
time (``F_i ← F_i − (1/N) Σ_j F_j``): total momentum is then conserved to round-off, at the
price of a force that depends on every atom of the structure (not local any more).

References:
  Batzner et al., Nat. Commun. 13, 2453 (2022) (NequIP).
  Bigi, Langer, Ceriotti, "The dark side of the forces: assessing non-conservative force
  models for atomistic machine learning", arXiv:2412.11569 (2024).
"""

from __future__ import annotations

import dataclasses

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxpot.models.nequip import (
    NequIPConfig,
    _make,
    hidden_irreps,
    nequip_trunk,
    scalar_readout_hidden,
)
from jaxpot.nn.atomic import AtomicModel
from jaxpot.nn.embedding import species_index, species_table
from jaxpot.potential import Potential, register
from jaxpot.system import System

__all__ = [
    "DirectForceConfig",
    "DirectForceNet",
    "nequip_direct",
    "has_direct_forces",
    "direct_energy_forces_stress",
]

OUTPUT = "direct_forces"
"""The key of the direct forces in the model protocol's ``atomic`` output."""


@dataclasses.dataclass(frozen=True)
class DirectForceConfig(NequIPConfig):
    """:class:`~jaxpot.models.nequip.NequIPConfig` plus the force head and its loss options.

    Attributes:
      force_hidden: gated vector channels in the force head (``0`` for a plain linear readout
        of the last layer's vectors).
      remove_net_force: subtract the mean force over the real atoms at prediction time, so that
        ``Σ_i F_i = 0`` exactly (see the module docstring).
      net_force_weight: factor λ_F of the net-force penalty in the training loss, relative to
        the force weight (:mod:`jaxpot.train.direct`); 0 switches it off.
      torque_weight: factor λ_τ of the net-torque penalty (non-periodic structures only).
    """

    force_hidden: int = 8
    remove_net_force: bool = False
    net_force_weight: float = 1.0
    torque_weight: float = 1.0

    def validated(self):
        """A normalised copy or ``ValueError`` (the trunk needs vector features)."""
        cfg = super().validated()
        vec = "1o" if cfg.parity else "1e"
        if not any(str(ir) == vec for _, ir in hidden_irreps(cfg.features, cfg.parity)):
            raise ValueError(f"features {cfg.features} need {vec} vectors for the force head")
        if cfg.force_hidden < 0 or cfg.net_force_weight < 0 or cfg.torque_weight < 0:
            raise ValueError("force_hidden, net_force_weight and torque_weight must be >= 0")
        return dataclasses.replace(
            cfg, force_hidden=int(cfg.force_hidden), remove_net_force=bool(cfg.remove_net_force),
            net_force_weight=float(cfg.net_force_weight), torque_weight=float(cfg.torque_weight))


class DirectForceNet(nn.Module):
    """NequIP trunk with an energy head and an equivariant force head, for one structure.

    Returns ``(ε [n_atoms], v [n_atoms, 3])``, both normalised (scaled by ``atomic_scale``
    outside); sows the energy head's hidden activations as ``"features"`` like NequIP.
    """

    sows_features = True
    config: DirectForceConfig

    @nn.compact
    def __call__(self, vectors, edge_mask, species, senders, receivers):
        cfg = self.config
        h = nequip_trunk(cfg, vectors, edge_mask, species, senders, receivers)
        s = scalar_readout_hidden(cfg, h)
        self.sow("intermediates", "features", s.array)
        eps = e3nn.flax.Linear("1x0e", name="readout_out")(s).array[:, 0]
        vec = "1o" if cfg.parity else "1e"
        v = h
        if cfg.force_hidden:
            k = cfg.force_hidden
            v = e3nn.flax.Linear(f"{k}x0e+{k}x{vec}", force_irreps_out=True,
                                 name="force_hidden")(h)
            v = e3nn.gate(v, even_act=jax.nn.silu, odd_act=jax.nn.tanh,
                          even_gate_act=jax.nn.sigmoid, odd_gate_act=jax.nn.tanh)
        v = e3nn.flax.Linear(f"1x{vec}", force_irreps_out=True, name="force_out")(v)
        return eps, v.array


class _DirectModel(AtomicModel):
    """:class:`~jaxpot.nn.atomic.AtomicModel` whose network also returns a vector per atom."""

    def __init__(self, config: DirectForceConfig):
        super().__init__(DirectForceNet(config), species_table(config.species), config.scale,
                         config.shift)
        self.remove_net_force = config.remove_net_force

    def _outputs(self, params, system: System):
        idx, unknown = species_index(self.table, system.species, system.atom_mask)
        (eps, v), state = self._apply(params["net"], system, idx, mutable=["intermediates"])
        mask = system.atom_mask
        scale = params["atomic_scale"][idx]
        e = jnp.where(mask, eps * scale + params["atomic_shift"][idx], 0.0)
        f = jnp.where(mask[:, None], v * scale[:, None], 0.0)
        if self.remove_net_force:
            n = jnp.maximum(jnp.sum(mask), 1).astype(f.dtype)
            f = jnp.where(mask[:, None], f - jnp.sum(f, axis=0) / n, 0.0)
        sown = state["intermediates"]["features"]
        x = jnp.where(mask[:, None], sown[-1] if isinstance(sown, tuple) else sown, 0.0)
        nan = unknown[:, None]
        return (jnp.where(unknown, jnp.nan, e), jnp.where(nan, jnp.nan, f),
                jnp.where(nan, jnp.nan, x))

    def atomic_energies(self, params, system: System) -> jax.Array:
        """``[n_atoms]`` atomic energies in eV (the energy head); 0 on padding."""
        idx, unknown = species_index(self.table, system.species, system.atom_mask)
        eps, _ = self._apply(params["net"], system, idx)
        e = eps * params["atomic_scale"][idx] + params["atomic_shift"][idx]
        return jnp.where(unknown, jnp.nan, jnp.where(system.atom_mask, e, 0.0))

    def _energies_and_features(self, params, system: System):
        e, _, x = self._outputs(params, system)
        return e, x

    def protocol(self) -> dict:
        """``atomic`` returns ``{"energy", "features", "direct_forces"}`` from one pass."""
        base = super().protocol()

        def atomic(params, system):
            e, f, x = self._outputs(params, system)
            return {"energy": e, "features": x, OUTPUT: f}

        return {**base, "atomic": atomic, "outputs": ("energy", "features", OUTPUT)}


@register("nequip_direct", data_options=("cutoff", "avg_num_neighbors", "species"))
def nequip_direct(config: DirectForceConfig | dict | None = None, **overrides) -> Potential:
    """Build a NequIP with a direct (non-conservative) force head.

    Args:
      config: a :class:`DirectForceConfig`, a dict of its fields, or None for the defaults.
      **overrides: fields replacing those of ``config``.

    Returns:
      A :class:`~jaxpot.Potential` whose ``energy`` is the energy head (eV) and whose
      ``atomic(params, system)`` holds ``"energy"`` ``[n_atoms]``, ``"features"`` and
      ``"direct_forces"`` ``[n_atoms, 3]`` eV/Å (0 on padding). Params are NequIP's layout
      ``{"net", "atomic_scale", "atomic_shift"}``.

    Example:
      >>> from ase.build import bulk
      >>> import jax, jaxpot
      >>> pot = nequip_direct(species=["Cu"], features="4x0e+4x1o", cutoff=3.0,
      ...                     radial_hidden=[8])
      >>> system = jaxpot.System.from_ase(bulk("Cu", cubic=True), cutoff=pot.cutoff)
      >>> params = pot.init(jax.random.key(0), system)
      >>> pot.atomic(params, system)["direct_forces"].shape
      (4, 3)
    """
    cfg = _make(config, overrides, DirectForceConfig)
    model = _DirectModel(cfg)
    return Potential(model.init, model.energy, cfg.cutoff,
                     {"name": "nequip_direct", "kwargs": cfg.to_dict()}, **model.protocol())


def has_direct_forces(potential) -> bool:
    """Whether ``potential`` declares ``"direct_forces"`` among its per-atom outputs."""
    return potential.atomic is not None and OUTPUT in tuple(potential.outputs)


def _strained(system: System, strain: jax.Array) -> System:
    deform = jnp.eye(3, dtype=system.positions.dtype) + 0.5 * (strain + strain.T)
    hi = jax.lax.Precision.HIGHEST
    return system.replace(positions=jnp.matmul(system.positions, deform, precision=hi),
                          cell=jnp.matmul(system.cell, deform, precision=hi))


def direct_energy_forces_stress(potential: Potential, *, stress: bool = True):
    """``(params, system) -> (energy, direct forces [n, 3], stress [3, 3] or None)``.

    One forward pass gives the energy (Σ atomic energies of a local model, else
    ``potential.energy``) and the direct forces; with ``stress`` the strain derivative of the
    energy, ``σ = (1/V) ∂E/∂ε`` (eV/Å³, ASE sign, 0 for a zero-volume cell), adds one backward
    pass with respect to the 3×3 strain only. Forces are exactly 0 on padding atoms.

    Raises:
      ValueError: the potential has no ``"direct_forces"`` output.
    """
    if not has_direct_forces(potential):
        raise ValueError(f"potential {potential.config.get('name')!r} predicts no direct forces")

    def outputs(params, system):
        out = potential.atomic(params, system)
        e = jnp.sum(out["energy"]) if potential.local else potential.energy(params, system)
        return e, jnp.where(system.atom_mask[:, None], out[OUTPUT], 0.0)

    def fn(params, system):
        if not stress:
            e, f = outputs(params, system)
            return e, f, None
        zero = jnp.zeros((3, 3), system.positions.dtype)
        (e, f), gs = jax.value_and_grad(
            lambda s: outputs(params, _strained(system, s)), has_aux=True)(zero)
        volume = system.volume
        sigma = jnp.where(volume > 0, gs / jnp.where(volume > 0, volume, 1.0), 0.0)
        return e, f, sigma

    return fn

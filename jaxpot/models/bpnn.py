"""Behler–Parrinello neural-network potential (BPNN) on ACSF or SOAP descriptors.

Architecture (one unbatched :class:`~jaxpot.System`):

1. Per-atom descriptors ``G_i`` (``[n_atoms, F]``): atom-centred symmetry functions
   (:mod:`jaxpot.descriptors.acsf`, default: radial G2 on a shifted grid plus angular G4) or the
   smooth SOAP power spectrum (:mod:`jaxpot.descriptors.soap`, ``descriptor="soap"``).
2. Standardisation per element and feature, ``x_i = (G_i − μ[Z_i]) / s[Z_i]``, with ``μ`` and
   ``s`` fitted on the training structures by :func:`fit_standardisation` (``jaxpot train``
   does this automatically). They live in the params (``descriptor_mean``, ``descriptor_std``)
   behind ``stop_gradient``, so an optimiser never changes them (their gradient is exactly 0).
3. An element-specific multilayer perceptron ``ε_i = NN_{Z_i}(x_i)`` (Behler & Parrinello), or
   with ``shared=True`` a single network on ``[x_i, e_{Z_i}]`` with a learnable species
   embedding ``e_Z``.
4. ``E = Σ_i atomic_scale[Z_i] · ε_i + atomic_shift[Z_i]`` (eV), the same per-species
   scale/shift convention as :mod:`jaxpot.nn.atomic` (the training pipeline sets the shift to
   the element reference energies and the scale to the force RMS).

Param layout::

    {"net": {...}, "atomic_scale": [S], "atomic_shift": [S],
     "descriptor_mean": [S, F], "descriptor_std": [S, F]}

Descriptors need a static per-atom neighbour capacity (``max_neighbors``) under ``jit``; when it
is not given it is chosen from ``avg_num_neighbors`` with a generous margin. An atom with more
neighbours inside the cutoff makes the energy NaN (never silently wrong).

References:
  J. Behler, M. Parrinello, "Generalized neural-network representation of high-dimensional
  potential-energy surfaces", Phys. Rev. Lett. 98, 146401 (2007).
  J. Behler, "Atom-centered symmetry functions for constructing high-dimensional neural
  network potentials", J. Chem. Phys. 134, 074106 (2011).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.descriptors import acsf as _acsf
from jaxpot.descriptors import soap as _soap
from jaxpot.nn.embedding import check_species, normalize_species, species_index, species_table
from jaxpot.potential import Potential, register
from jaxpot.system import System

__all__ = [
    "BPNNConfig",
    "ElementMLP",
    "bpnn",
    "bpnn_atomic_energies",
    "bpnn_descriptors",
    "default_max_neighbors",
    "fit_standardisation",
    "prepare",
]

_ACTIVATIONS = {"tanh": jnp.tanh, "silu": jax.nn.silu, "softplus": jax.nn.softplus,
                "gelu": jax.nn.gelu}


def default_max_neighbors(avg_num_neighbors: float | None) -> int:
    """Static neighbour capacity for an average coordination (``1.4·avg + 12``, multiple of 8).

    Args:
      avg_num_neighbors: mean neighbours within the cutoff per atom (None: 64).
    """
    if avg_num_neighbors is None:
        return 64
    k = 1.4 * float(avg_num_neighbors) + 12.0
    return int(8 * math.ceil(k / 8.0))


@dataclasses.dataclass(frozen=True)
class BPNNConfig:
    """Hyperparameters of :func:`bpnn` (JSON-serialisable).

    Attributes:
      cutoff: descriptor cutoff r_c, Å (cosine cutoff for ACSF; C³ polynomial for SOAP).
      species: elements (symbols or atomic numbers); one network (or embedding row) each.
      descriptor: ``"acsf"`` or ``"soap"``.
      n_radial: G2 functions per neighbour element (ACSF).
      n_angular: angular widths η (ACSF); crossed with ``zetas`` and λ = ±1.
      zetas: angular exponents ζ (ACSF).
      angular: ``"g4"`` or ``"g5"`` (ACSF angular family).
      n_max, l_max, sigma: SOAP radial / angular resolution and Gaussian width (Å).
      hidden: hidden-layer widths of the atomic networks.
      activation: ``tanh`` (Behler's choice), ``silu``, ``softplus`` or ``gelu``.
      shared: one network for all elements with a learnable species embedding.
      embed_dim: species-embedding width when ``shared``.
      max_neighbors: static neighbour capacity per atom (None: from ``avg_num_neighbors``).
      avg_num_neighbors: mean coordination of the data (filled in by ``jaxpot train``).
      scale, shift: initial ``atomic_scale`` / ``atomic_shift`` (eV).
    """

    cutoff: float = 5.0
    species: Sequence[str | int] = ("Cu",)
    descriptor: str = "acsf"
    n_radial: int = 8
    n_angular: int = 4
    zetas: Sequence[float] = (1.0, 4.0)
    angular: str = "g4"
    n_max: int = 4
    l_max: int = 3
    sigma: float = 0.5
    hidden: Sequence[int] = (32, 32)
    activation: str = "tanh"
    shared: bool = False
    embed_dim: int = 8
    max_neighbors: int | None = None
    avg_num_neighbors: float | None = None
    scale: float = 1.0
    shift: float = 0.0

    def validated(self) -> BPNNConfig:
        """A normalised copy (symbols, tuples, plain numbers) or ``ValueError``."""
        if self.cutoff <= 0:
            raise ValueError(f"bpnn: cutoff must be positive, got {self.cutoff}")
        if self.descriptor not in ("acsf", "soap"):
            raise ValueError(f"bpnn: descriptor must be 'acsf' or 'soap', got {self.descriptor!r}")
        if self.angular not in ("g4", "g5"):
            raise ValueError(f"bpnn: angular must be 'g4' or 'g5', got {self.angular!r}")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"bpnn: activation must be one of {sorted(_ACTIVATIONS)}")
        hidden = tuple(int(h) for h in self.hidden)
        if any(h < 1 for h in hidden):
            raise ValueError(f"bpnn: hidden widths must be >= 1, got {hidden}")
        k = self.max_neighbors
        if k is None:
            k = default_max_neighbors(self.avg_num_neighbors)
        return dataclasses.replace(
            self, species=tuple(normalize_species(self.species)), cutoff=float(self.cutoff),
            zetas=tuple(float(z) for z in self.zetas), hidden=hidden, max_neighbors=int(k),
            avg_num_neighbors=(None if self.avg_num_neighbors is None
                               else float(self.avg_num_neighbors)),
            scale=float(self.scale), shift=float(self.shift), n_radial=int(self.n_radial),
            n_angular=int(self.n_angular), n_max=int(self.n_max), l_max=int(self.l_max),
            sigma=float(self.sigma), embed_dim=int(self.embed_dim), shared=bool(self.shared),
        )

    def to_dict(self) -> dict:
        """JSON-serialisable kwargs of :func:`bpnn`."""
        d = dataclasses.asdict(self.validated())
        for k in ("species", "zetas", "hidden"):
            d[k] = list(d[k])
        return d


def descriptor_params(cfg: BPNNConfig):
    """The static descriptor configuration (:class:`ACSFParams` or :class:`SOAPParams`)."""
    if cfg.descriptor == "acsf":
        return _acsf.grid(cfg.cutoff, cfg.species, n_radial=cfg.n_radial,
                          n_angular=cfg.n_angular, zetas=cfg.zetas,
                          g4=cfg.angular == "g4", g5=cfg.angular == "g5")
    return _soap.soap_params(cfg.cutoff, cfg.n_max, cfg.l_max, cfg.species, sigma=cfg.sigma,
                             cutoff_padding=0.0, smooth=True)


class ElementMLP(nn.Module):
    """Per-element (or shared, species-embedded) MLP mapping descriptors to one number per atom.

    Attributes:
      hidden: hidden widths.
      num_species: number of elements S.
      shared: one network for all elements, with a learnable ``[S, embed_dim]`` embedding
        concatenated to the input.
      embed_dim: embedding width.
      activation: name of the activation (see :class:`BPNNConfig`).
    """

    hidden: tuple[int, ...]
    num_species: int
    shared: bool = False
    embed_dim: int = 8
    activation: str = "tanh"

    @nn.compact
    def __call__(self, x: jax.Array, idx: jax.Array) -> jax.Array:
        """Args: ``x [n_atoms, F]`` standardised descriptors, ``idx [n_atoms]`` species index.

        Returns:
          ``[n_atoms]`` normalised atomic outputs.
        """
        act = _ACTIVATIONS[self.activation]
        n_nets = 1 if self.shared else self.num_species
        if self.shared:
            emb = self.param("embedding", nn.initializers.normal(1.0),
                             (self.num_species, self.embed_dim), x.dtype)
            x = jnp.concatenate([x, emb[idx]], axis=-1)
        h = x
        widths = tuple(self.hidden) + (1,)
        for k, width in enumerate(widths):
            fan_in = h.shape[-1]
            w = self.param(f"w{k}", nn.initializers.normal(1.0 / math.sqrt(fan_in)),
                           (n_nets, fan_in, width), x.dtype)
            b = self.param(f"b{k}", nn.initializers.zeros, (n_nets, width), x.dtype)
            if self.shared:
                h = h @ w[0] + b[0]
            else:
                h = jnp.einsum("ni,nio->no", h, w[idx]) + b[idx]
            if k < len(widths) - 1:
                h = act(h)
        return h[:, 0]


def _make(config, overrides) -> BPNNConfig:
    if config is None:
        config = BPNNConfig()
    elif isinstance(config, dict):
        config = BPNNConfig(**config)
    elif not isinstance(config, BPNNConfig):
        raise TypeError(f"config must be a BPNNConfig, a dict or None, got {type(config)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(BPNNConfig)}
    if unknown:
        raise ValueError(f"unknown BPNNConfig fields: {sorted(unknown)}")
    return dataclasses.replace(config, **overrides).validated()


class _BPNN:
    """init / descriptors / atomic energies of one validated config."""

    def __init__(self, cfg: BPNNConfig):
        self.cfg = cfg
        self.dparams = descriptor_params(cfg)
        self.n_features = int(self.dparams.n_features)
        self.table = species_table(cfg.species)
        self.num_species = len(cfg.species)
        self.net = ElementMLP(tuple(cfg.hidden), self.num_species, cfg.shared, cfg.embed_dim,
                              cfg.activation)

    def descriptors(self, system: System) -> jax.Array:
        if self.cfg.descriptor == "acsf":
            return _acsf.acsf(system, self.dparams, max_neighbors=self.cfg.max_neighbors)
        return _soap.soap(system, self.dparams, max_neighbors=self.cfg.max_neighbors)

    def init(self, key: jax.Array, system: System):
        if np.ndim(system.positions) != 2:
            raise ValueError("init expects one unbatched System (take batch[0] for a batch)")
        if not isinstance(system.species, jax.core.Tracer):
            check_species(self.table, system)
        dtype = system.positions.dtype
        x = jnp.zeros((system.n_atoms, self.n_features), dtype)
        idx = jnp.zeros((system.n_atoms,), jnp.int32)
        net = self.net.init(key, x, idx)["params"]
        s, f = self.num_species, self.n_features
        return {
            "net": jax.tree.map(lambda p: jnp.asarray(p, dtype), net),
            "atomic_scale": jnp.full((s,), self.cfg.scale, dtype),
            "atomic_shift": jnp.full((s,), self.cfg.shift, dtype),
            "descriptor_mean": jnp.zeros((s, f), dtype),
            "descriptor_std": jnp.ones((s, f), dtype),
        }

    def _standardised(self, params, system: System, idx) -> jax.Array:
        g = self.descriptors(system)
        mean = jax.lax.stop_gradient(params["descriptor_mean"])[idx]
        std = jax.lax.stop_gradient(params["descriptor_std"])[idx]
        return (g - mean) / std

    def _energies(self, params, system: System, x, idx, unknown) -> jax.Array:
        out = self.net.apply({"params": params["net"]}, x, idx)
        e = out * params["atomic_scale"][idx] + params["atomic_shift"][idx]
        e = jnp.where(system.atom_mask, e, 0.0)
        return jnp.where(unknown, jnp.nan, e)

    def atomic_energies(self, params, system: System) -> jax.Array:
        idx, unknown = species_index(self.table, system.species, system.atom_mask)
        x = self._standardised(params, system, idx)
        return self._energies(params, system, x, idx, unknown)

    def atomic(self, params, system: System) -> dict:
        """Atomic energies ``[n_atoms]`` eV and standardised descriptors ``[n_atoms, F]``."""
        idx, unknown = species_index(self.table, system.species, system.atom_mask)
        x = self._standardised(params, system, idx)
        feats = jnp.where(system.atom_mask[:, None], x, 0.0)
        return {"energy": self._energies(params, system, x, idx, unknown),
                "features": jnp.where(unknown[:, None], jnp.nan, feats)}

    def energy(self, params, system: System) -> jax.Array:
        return jnp.sum(self.atomic_energies(params, system))


def bpnn_atomic_energies(config: BPNNConfig | dict | None = None, **overrides):
    """``(params, system) -> [n_atoms]`` atomic energies (eV) of :func:`bpnn`'s model.

    Same arguments as :func:`bpnn`; padding atoms get 0.
    """
    return _BPNN(_make(config, overrides)).atomic_energies


def bpnn_descriptors(potential: Potential):
    """``system -> [n_atoms, F]`` raw (unstandardised) descriptors of a BPNN potential."""
    return _BPNN(_make(potential.config["kwargs"], {})).descriptors


@register("bpnn", data_options=("cutoff", "avg_num_neighbors", "species"))
def bpnn(config: BPNNConfig | dict | None = None, **overrides) -> Potential:
    """Build a Behler–Parrinello potential (see the module docstring).

    Args:
      config: a :class:`BPNNConfig`, a dict of its fields, or None for the defaults.
      **overrides: fields replacing those of ``config``.

    Returns:
      A :class:`~jaxpot.Potential` whose ``energy(params, system)`` is Σ atomic energies in eV
      (jit/vmap/grad compatible); ``config = {"name": "bpnn", "kwargs": {...}}``. Model
      protocol: ``species`` (atomic numbers), ``atomic(params, system)`` →
      ``{"energy": [n_atoms] eV, "features": [n_atoms, F]}`` (the standardised descriptors
      ``x_i``, 0 on padding atoms; for :mod:`jaxpot.uncertainty.distance`), and
      ``prepare(params, train_set)`` → params with the descriptor standardisation fitted on
      the training structures (:func:`prepare`), which :func:`jaxpot.train.train` runs once
      before gradient training.

    Example:
      >>> from ase.build import bulk
      >>> import jax, jaxpot
      >>> pot = bpnn(species=["Cu"], cutoff=4.0, hidden=[8], max_neighbors=48)
      >>> system = jaxpot.System.from_ase(bulk("Cu", cubic=True), cutoff=pot.cutoff)
      >>> params = pot.init(jax.random.key(0), system)
      >>> pot.energy(params, system).shape
      ()
    """
    cfg = _make(config, overrides)
    model = _BPNN(cfg)
    pot = Potential(model.init, model.energy, cfg.cutoff,
                    {"name": "bpnn", "kwargs": cfg.to_dict()},
                    atomic=model.atomic, outputs=("energy", "features"),
                    species=tuple(int(z) for z in np.flatnonzero(model.table >= 0)))

    def prepare_params(params, train_set):
        """The model protocol's ``prepare``: descriptor standardisation from the data."""
        return prepare(pot, params, train_set)[1]

    return pot._replace(prepare=prepare_params)


def fit_standardisation(potential: Potential, params, systems: Sequence) -> dict:
    """Set ``descriptor_mean`` / ``descriptor_std`` from training structures (host side).

    Means and standard deviations are taken per element over all real atoms of ``systems``;
    features with (near) zero spread keep ``std = 1``; elements absent from the data keep
    mean 0, std 1.

    Args:
      potential: a :func:`bpnn` potential.
      params: its params (other entries are kept).
      systems: unbatched :class:`~jaxpot.System` objects or :class:`jaxpot.data.Structure`
        objects (anything with a ``system()`` method), with edges for ``potential.cutoff``.

    Returns:
      New params.

    Raises:
      ValueError: a descriptor overflowed its neighbour capacity (raise ``max_neighbors``).
    """
    model = _BPNN(_make(potential.config["kwargs"], {}))
    desc = jax.jit(model.descriptors)
    s, f = model.num_species, model.n_features
    n = np.zeros(s)
    total = np.zeros((s, f))
    total2 = np.zeros((s, f))
    systems = _common_shape(systems)
    for k, system in enumerate(systems):
        g = np.asarray(desc(system), np.float64)
        if not np.all(np.isfinite(g)):
            raise ValueError(
                f"bpnn: structure {k} has an atom with more than max_neighbors="
                f"{model.cfg.max_neighbors} neighbours within {model.cfg.cutoff} Å; "
                "raise max_neighbors")
        idx = model.table[np.clip(np.asarray(system.species), 0, 118)]
        mask = np.asarray(system.atom_mask, bool) & (idx >= 0)
        for e in range(s):
            sel = mask & (idx == e)
            n[e] += sel.sum()
            total[e] += g[sel].sum(0)
            total2[e] += (g[sel] ** 2).sum(0)
    safe = np.maximum(n, 1)[:, None]
    mean = total / safe
    var = np.maximum(total2 / safe - mean**2, 0.0)
    std = np.sqrt(var)
    scale = np.maximum(np.abs(mean), 1.0)
    std = np.where(std > 1e-6 * scale, std, 1.0)
    mean = np.where(n[:, None] > 0, mean, 0.0)
    std = np.where(n[:, None] > 0, std, 1.0)
    dtype = jnp.asarray(params["descriptor_mean"]).dtype
    return {**params, "descriptor_mean": jnp.asarray(mean, dtype),
            "descriptor_std": jnp.asarray(std, dtype)}


def _common_shape(items) -> list[System]:
    """Unbatched systems padded to one shape (one compilation); accepts ``Structure`` too."""
    items = list(items)
    if not items:
        return []

    def counts(x):
        if hasattr(x, "system"):
            return x.n_atoms, x.n_edges
        return x.n_atoms, x.n_edges

    n_at = max(counts(x)[0] for x in items)
    n_ed = max(counts(x)[1] for x in items)
    out = []
    for x in items:
        if hasattr(x, "system"):
            out.append(x.system(n_atoms=n_at, n_edges=n_ed))
        elif (x.n_atoms, x.n_edges) != (n_at, n_ed):
            out.append(x.pad(n_at, n_ed))
        else:
            out.append(x)
    return out


def prepare(potential: Potential, params, train_set, *, max_structures: int = 200):
    """Fit the standardisation on (up to ``max_structures`` of) the training structures.

    A :func:`bpnn` potential declares this as its ``prepare`` (the model protocol), which
    :func:`jaxpot.train.train` runs once before gradient training.

    Returns:
      ``(potential, params)``.
    """
    structures = list(train_set)
    if len(structures) > max_structures:
        pick = np.linspace(0, len(structures) - 1, max_structures).round().astype(int)
        structures = [structures[i] for i in pick]
    return potential, fit_standardisation(potential, params, structures)


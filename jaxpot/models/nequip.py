"""NequIP: an E(3)-equivariant message-passing potential.

Architecture (per structure, one unbatched :class:`~jaxpot.System`):

1. Species embedding: a learnable vector per element of ``config.species`` →
   ``C0 x 0e`` node features (``C0`` = multiplicity of ``0e`` in ``config.features``).
2. ``num_layers`` interaction blocks. Each block applies
   :class:`~jaxpot.nn.EdgeConvolution` (linear up; per edge the channel-wise tensor product of
   sender features with the spherical harmonics ``Y^{l ≤ l_max}(r̂)``, weighted by a bias-free
   radial MLP of the Bessel × envelope embedding; ``segment_sum`` over receivers divided by
   ``sqrt(avg_num_neighbors)``), a linear layer, a species-dependent self-connection, and a
   gated nonlinearity (``silu`` on even scalars, ``tanh`` on odd ones, sigmoid gates).
3. Readout of the scalar channels: linear → silu → linear to one normalised number per atom,
   then per-species ``atomic_scale`` and ``atomic_shift`` (params, see :mod:`jaxpot.nn.atomic`).
   The silu activations (``[n_atoms, readout_hidden]``, invariant) are the model's per-atom
   ``"features"`` (``potential.atomic(params, system)["features"]``), used for distances in
   feature space (:mod:`jaxpot.uncertainty.distance`).

Parity: with ``parity=True`` (default) features carry O(3) parities, the spherical harmonics
have parity ``(-1)^l`` and the energy is invariant under rotations *and* reflections. With
``parity=False`` every irrep is treated as even (SO(3) only): the model can form pseudoscalars
(e.g. triple products), its energy is invariant under proper rotations but can differ between
a chiral structure and its mirror image.

References:
  Batzner, Musaelian, Sun, Geiger, Mailoa, Kornbluth, Molinari, Smidt, Kozinsky,
  "E(3)-equivariant graph neural networks for data-efficient and accurate interatomic
  potentials", Nat. Commun. 13, 2453 (2022).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import numpy as np

from jaxpot.nn.atomic import AtomicModel
from jaxpot.nn.embedding import SpeciesEmbedding, normalize_species, species_table
from jaxpot.nn.interaction import EdgeConvolution
from jaxpot.nn.radial import edge_geometry, radial_embedding
from jaxpot.potential import Potential, register

__all__ = ["NequIPConfig", "NequIPNet", "nequip", "nequip_atomic_energies"]


def _all_elements() -> list[str]:
    from ase.data import chemical_symbols

    return list(chemical_symbols[1:119])


@dataclasses.dataclass(frozen=True)
class NequIPConfig:
    """Hyperparameters of :func:`nequip` (all JSON-serialisable).

    Attributes:
      cutoff: r_c in Å; edges at or beyond it contribute exactly 0.
      species: elements the model knows, as symbols or atomic numbers (stored as symbols);
        ``None`` means all 118 elements. Order = index into ``atomic_scale``/``atomic_shift``.
      features: hidden node irreps. The default carries both parities of every degree up to
        2, as InstaDeep ``mlip``'s reference NequIP does; on EMT copper it learned forces about
        twice as fast per epoch as ``"32x0e+32x1o+32x2e"`` (73 k against 51 k parameters).
      num_layers: interaction blocks.
      l_max: largest degree of the edge spherical harmonics.
      parity: O(3) (True) or SO(3) only (False; every irrep treated as even).
      num_bessel: Bessel functions in the radial basis.
      envelope_p: order p of the polynomial envelope (≥ 2).
      radial_hidden: hidden widths of the radial MLP.
      avg_num_neighbors: messages are divided by its square root; set it to the mean number
        of neighbours within ``cutoff`` in the training data
        (:func:`jaxpot.models.average_num_neighbors`).
      readout_hidden: width of the readout's hidden layer.
      scale, shift: initial per-species ``atomic_scale`` / ``atomic_shift`` (eV).
    """

    cutoff: float = 5.0
    species: Sequence[str | int] | None = None
    features: str = "16x0e+16x0o+8x1o+8x1e+4x2e+4x2o"
    num_layers: int = 2
    l_max: int = 2
    parity: bool = True
    num_bessel: int = 8
    envelope_p: int = 6
    radial_hidden: Sequence[int] = (64, 64)
    avg_num_neighbors: float = 16.0
    readout_hidden: int = 16
    scale: float = 1.0
    shift: float = 0.0

    def validated(self):
        """A normalised copy (species as symbols, tuples) or ``ValueError``."""
        species = normalize_species(_all_elements() if self.species is None else self.species)
        if self.cutoff <= 0:
            raise ValueError(f"cutoff must be positive, got {self.cutoff}")
        if self.num_layers < 1 or self.l_max < 0 or self.num_bessel < 1:
            raise ValueError("num_layers and num_bessel must be >= 1 and l_max >= 0")
        if self.avg_num_neighbors <= 0:
            raise ValueError(f"avg_num_neighbors must be positive, got {self.avg_num_neighbors}")
        features = e3nn.Irreps(self.features)
        if not any(ir.l == 0 and ir.p == 1 for _, ir in features):
            raise ValueError(f"features {self.features} need even scalars (0e)")
        return dataclasses.replace(
            self, species=tuple(species), radial_hidden=tuple(int(w) for w in self.radial_hidden),
            cutoff=float(self.cutoff), avg_num_neighbors=float(self.avg_num_neighbors),
            envelope_p=int(self.envelope_p), features=str(features),
            scale=float(self.scale), shift=float(self.shift),
        )

    def to_dict(self) -> dict:
        """JSON-serialisable kwargs."""
        d = dataclasses.asdict(self.validated())
        d["species"] = list(d["species"])
        d["radial_hidden"] = list(d["radial_hidden"])
        return d


def _even(irreps: e3nn.Irreps) -> e3nn.Irreps:
    return e3nn.Irreps([(mul, e3nn.Irrep(ir.l, 1)) for mul, ir in irreps])


def sh_irreps(l_max: int, parity: bool) -> e3nn.Irreps:
    """Irreps labelling the spherical harmonics (all even when ``parity`` is False)."""
    irreps = e3nn.Irreps.spherical_harmonics(l_max, p=-1)
    return irreps if parity else _even(irreps)


def hidden_irreps(features: str, parity: bool) -> e3nn.Irreps:
    """``features`` as irreps, with every parity set to even when ``parity`` is False."""
    irreps = e3nn.Irreps(features)
    return irreps if parity else _even(irreps).simplify()


def spherical_harmonics(l_max: int, vectors) -> jax.Array:
    """``[n_edges, (l_max+1)^2]`` real spherical harmonics of unit(vectors), component norm."""
    return e3nn.spherical_harmonics(e3nn.Irreps.spherical_harmonics(l_max, p=-1), vectors,
                                    normalize=True, normalization="component").array


class NequIPLayer(nn.Module):
    """One interaction block: convolution, linear, self-connection, gate."""

    features: str
    irreps_sh: str
    num_species: int
    channels: int
    radial_hidden: Sequence[int]
    avg_num_neighbors: float

    @nn.compact
    def __call__(self, h, species, sh, radial, senders, receivers):
        target = e3nn.Irreps(self.features)
        scalars = e3nn.Irreps([(m, ir) for m, ir in target if ir.l == 0])
        gated = e3nn.Irreps([(m, ir) for m, ir in target if ir.l > 0])
        gates = e3nn.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else e3nn.Irreps("")
        gate_in = scalars + gates + gated
        filter_out = e3nn.Irreps(sorted({ir for _, ir in gate_in}))
        msg = EdgeConvolution(self.channels, self.irreps_sh, str(filter_out), self.radial_hidden,
                              float(np.sqrt(self.avg_num_neighbors)), name="conv")(
            h, sh, radial, senders, receivers)
        y = e3nn.flax.Linear(gate_in, force_irreps_out=True, name="linear_out")(msg)
        sc = e3nn.flax.Linear(gate_in, num_indexed_weights=self.num_species,
                              force_irreps_out=True, name="self_connection")(species, h)
        return e3nn.gate(y + sc, even_act=jax.nn.silu, odd_act=jax.nn.tanh,
                         even_gate_act=jax.nn.sigmoid, odd_gate_act=jax.nn.tanh)


class NequIPNet(nn.Module):
    """Per-atom normalised outputs of NequIP for one structure.

    Per-atom features: the ``readout_hidden`` silu activations ``[n_atoms, readout_hidden]``
    (invariant last-layer scalars) are sown as ``("intermediates", "features")``; they are the
    ``"features"`` of the model protocol (:mod:`jaxpot.nn.atomic`).

    Attributes:
      config: a validated :class:`NequIPConfig`.
    """

    sows_features = True
    config: NequIPConfig

    @nn.compact
    def __call__(self, vectors, edge_mask, species, senders, receivers):
        """Args: ``vectors [n_edges, 3]`` Å, ``edge_mask [n_edges]``, ``species [n_atoms]``
        int indices, ``senders``/``receivers [n_edges]``. Returns ``[n_atoms]``."""
        h = nequip_trunk(self.config, vectors, edge_mask, species, senders, receivers)
        s = scalar_readout_hidden(self.config, h)
        self.sow("intermediates", "features", s.array)
        return e3nn.flax.Linear("1x0e", name="readout_out")(s).array[:, 0]


def nequip_trunk(cfg, vectors, edge_mask, species, senders, receivers) -> e3nn.IrrepsArray:
    """NequIP's species embedding and interaction layers: the node features after the last
    layer. Call it inside a compact Flax method (its submodules, ``embedding`` and
    ``layer_i``, belong to that module), so other heads can share the trunk."""
    n_species = len(cfg.species)
    feats = hidden_irreps(cfg.features, cfg.parity)
    channels = max(mul for mul, _ in feats)
    c0 = sum(mul for mul, ir in feats if ir == e3nn.Irrep("0e"))
    r, safe, inside = edge_geometry(vectors, edge_mask, cfg.cutoff)
    radial = radial_embedding(r, inside, cutoff=cfg.cutoff, num_basis=cfg.num_bessel,
                              envelope_p=cfg.envelope_p)
    sh = spherical_harmonics(cfg.l_max, safe)
    emb = SpeciesEmbedding(n_species, c0, name="embedding")(species).astype(vectors.dtype)
    h = e3nn.IrrepsArray(f"{c0}x0e", emb)
    for i in range(cfg.num_layers):
        h = NequIPLayer(str(feats), str(sh_irreps(cfg.l_max, cfg.parity)), n_species,
                        channels, tuple(cfg.radial_hidden), cfg.avg_num_neighbors,
                        name=f"layer_{i}")(h, species, sh, radial, senders, receivers)
    return h


def scalar_readout_hidden(cfg, h: e3nn.IrrepsArray) -> e3nn.IrrepsArray:
    """The invariant hidden layer of the energy readout (``readout_hidden``, SiLU): the
    per-atom ``features`` of the model protocol. Call it inside a compact Flax method."""
    s = h.filter(keep="0e")
    s = e3nn.flax.Linear(f"{cfg.readout_hidden}x0e", name="readout_hidden")(s)
    return e3nn.IrrepsArray(s.irreps, jax.nn.silu(s.array))


def _make(config, overrides, cls):
    if config is None:
        config = cls()
    elif isinstance(config, dict):
        config = cls(**config)
    elif not isinstance(config, cls):
        raise TypeError(f"config must be a {cls.__name__}, a dict or None, got {type(config)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    return dataclasses.replace(config, **overrides).validated()


def _model(config: NequIPConfig) -> AtomicModel:
    return AtomicModel(NequIPNet(config), species_table(config.species), config.scale,
                       config.shift)


def nequip_atomic_energies(config: NequIPConfig | dict | None = None, **overrides):
    """``(params, system) -> [n_atoms]`` atomic energies (eV) of :func:`nequip`'s model.

    Takes the same arguments as :func:`nequip`; the params of that potential apply.
    """
    return _model(_make(config, overrides, NequIPConfig)).atomic_energies


@register("nequip", data_options=("cutoff", "avg_num_neighbors", "species"))
def nequip(config: NequIPConfig | dict | None = None, **overrides) -> Potential:
    """Build a NequIP potential.

    Args:
      config: a :class:`NequIPConfig`, a dict of its fields, or None for the defaults.
      **overrides: fields replacing those of ``config``.

    Returns:
      A :class:`~jaxpot.Potential`; ``energy(params, system)`` is Σ atomic energies (eV) of
      one unbatched structure (jit/vmap/grad compatible). Params are
      ``{"net", "atomic_scale", "atomic_shift"}`` (see :mod:`jaxpot.nn.atomic`).
      ``config = {"name": "nequip", "kwargs": {...}}``.

    Raises:
      ValueError: invalid config; an unknown element in a structure (eager evaluation; under
        ``jit`` the energy is NaN instead: check first with
        :func:`jaxpot.potential.check_species`, as the CLI, MD, training and the ASE
        calculator do).

    Example:
      >>> from ase.build import bulk
      >>> import jax, jaxpot
      >>> pot = nequip(species=["Cu"], features="4x0e+4x1o", cutoff=3.0, radial_hidden=[8])
      >>> system = jaxpot.System.from_ase(bulk("Cu", cubic=True), cutoff=pot.cutoff)
      >>> params = pot.init(jax.random.key(0), system)
      >>> pot.energy(params, system).shape
      ()
    """
    cfg = _make(config, overrides, NequIPConfig)
    model = _model(cfg)
    return Potential(model.init, model.energy, cfg.cutoff,
                     {"name": "nequip", "kwargs": cfg.to_dict()}, **model.protocol())

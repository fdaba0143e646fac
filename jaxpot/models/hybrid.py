"""Hybrid models: a learned short-range model plus physical electrostatics (and dispersion).

    E = E_short(ML) + E_charges(q) − Σ_i c_{Z_i} [+ E_dispersion]

- ``E_short`` is any registered model (``nequip``, ``mace``, ``bpnn``, ...), built from its
  config; its parameters are the top level of the hybrid's params, so training sets its
  per-element ``atomic_shift``/``atomic_scale`` exactly as for the model alone.
- ``E_charges`` depends on how the charges are made (``charges=``):

  - ``"fixed"``: a constant charge per element (``charge_values={"Na": 1, "Cl": -1}``);
    ``E_charges = E_C(q)``.
  - ``"predicted"``: a second, small instance of a registered model family (``charge_model``)
    whose per-atom output is read as a charge; the mean excess over the total charge is
    subtracted on the real atoms (``q_i = p_i − (Σ p − Q)/n``), so every structure has the total
    charge ``Q`` exactly. ``E_charges = E_C(q)``.
  - ``"qeq"``: the charge model's per-atom output is the electronegativity ``χ_i`` (eV/e) of
    each atom in its environment; a learned per-element hardness ``J_Z = softplus(·)`` (eV/e²)
    completes charge equilibration (:mod:`jaxpot.potentials.qeq`), and
    ``E_charges = E_QEq(q*) = Σ χ q* + ½ Σ J q*² + E_C(q*)`` at the equilibrated charges
    (the CENT / 4G-HDNNP idea). Forces and parameter gradients go through the solve.

- ``c_Z`` is a per-element constant fitted once, before training, to the electrostatic energy
  of the training structures (the hybrid's ``prepare``): it takes the mean Coulomb energy of each
  element out of the per-element energy references that training fits to the total energies, so
  the short-range model learns only what is left. It is held fixed (no gradient).
- ``E_C`` is an electrostatic energy of the charges (Gaussian-smeared with per-element
  ``widths`` for ``"qeq"`` and optionally otherwise): an Ewald sum for periodic cells, a direct sum
  for clusters, from :mod:`jaxpot.potentials.coulomb` (``coulomb_options``).
- ``dispersion``: the config of any registered potential (a D3 or fitted-C6 term), added.

Per-atom outputs: ``"energy"`` (the short-range atomic energies plus each atom's share
``½ q_i ∂E_C/∂q_i`` of the electrostatics and its ``χ_i q_i + ½ J_i q_i²``; they sum to the total
energy) and ``"charges"`` (e). The model is not local (``local=False``).

Params::

    {**short_params,                      # e.g. "net", "atomic_scale", "atomic_shift"
     "long_range": {"coulomb_shift": [n_species] eV,
                    "charge_model": ...,  # predicted / qeq
                    "hardness": [n_species],   # qeq: J = softplus(hardness) eV/e²
                    "dispersion": ...}}
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.nn.embedding import normalize_species, species_table
from jaxpot.potential import Potential, from_config, register
from jaxpot.potentials import qeq as _qeq
from jaxpot.registry import data_options as _data_options

__all__ = ["hybrid", "CHARGE_MODES", "hybrid_charges"]

CHARGE_MODES = ("fixed", "predicted", "qeq")
LONG = "long_range"
_PREPARE_MAX = 200  # structures used to fit the per-element Coulomb offsets
QEQ_WIDTH = 0.7  # Å, default Gaussian width for QEq (erfc(cutoff/γ) ~ 4e-7 at 5 Å)


def _sub_config(config, data: dict, what: str) -> dict:
    """A sub-model's config with the data options it declares filled in (unless set)."""
    if isinstance(config, Potential):
        config = config.config
    if isinstance(config, str):
        config = {"name": config, "kwargs": {}}
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ValueError(f"hybrid: {what} must be a model name or a config "
                         f"{{'name': ..., 'kwargs': {{...}}}}, got {config!r}")
    kwargs = dict(config.get("kwargs") or {})
    for k in _data_options(config["name"]):
        if data.get(k) is not None:
            kwargs.setdefault(k, data[k])
    return {"name": config["name"], "kwargs": kwargs}


def _charge_table(charge_values, species) -> dict:
    from ase.data import atomic_numbers

    if not isinstance(charge_values, dict) or not charge_values:
        raise ValueError("hybrid: charges='fixed' needs charge_values, a mapping element -> "
                         "charge (e), e.g. {'Na': 1, 'Cl': -1}")
    out = {}
    for el, q in charge_values.items():
        sym = normalize_species([int(el) if str(el).isdigit() else el])[0]
        try:
            out[sym] = float(q)
        except (TypeError, ValueError):
            raise ValueError(f"hybrid: charge of {sym} must be a number, got {q!r}") from None
        if not np.isfinite(out[sym]):
            raise ValueError(f"hybrid: charge of {sym} must be finite, got {q!r}")
    if species is not None:
        missing = [s for s in species if s not in out]
        if missing:
            raise ValueError(f"hybrid: charge_values has no charge for element(s) {missing} "
                             f"of the model's species {list(species)}")
    table = np.zeros(119)
    for sym, q in out.items():
        table[atomic_numbers[sym]] = q
    return {"values": out, "table": table}


def _widths_table(widths, species, default: float | None) -> np.ndarray | None:
    from ase.data import atomic_numbers

    if widths is None:
        return None if default is None else np.full(119, float(default))
    if isinstance(widths, int | float):
        return np.full(119, float(widths))
    table = np.full(119, np.nan)
    for el, w in dict(widths).items():
        w = float(w)
        if not (np.isfinite(w) and w > 0):
            raise ValueError(f"hybrid: Gaussian width of {el} must be positive (Å), got {w}")
        table[atomic_numbers[normalize_species([el])[0]]] = w
    if species is not None:
        missing = [s for s in species if np.isnan(table[atomic_numbers[s]])]
        if missing:
            raise ValueError(f"hybrid: widths has no Gaussian width for element(s) {missing}")
    return table


DEFAULT_COULOMB = {"method": "ewald", "accuracy": 1e-6, "max_lengths": (16.0, 16.0, 32.0)}
"""Electrostatics options of a hybrid unless ``coulomb_options`` overrides them (the real-space
cutoff defaults to the short-range model's, so no longer edges are needed)."""


def _coulomb_fn(options: dict, widths: np.ndarray | None, cutoff: float) -> _qeq.CoulombFn:
    """``(system, charges) -> eV`` from :func:`jaxpot.potentials.coulomb.charge_energy_fn`:
    a lattice sum for periodic structures, the direct sum otherwise (decided per structure
    from ``pbc`` unless ``periodic`` is set)."""
    from jaxpot.potentials import coulomb

    opts = {**DEFAULT_COULOMB, "cutoff": float(cutoff), **options}
    if isinstance(opts.get("max_lengths"), list):
        opts["max_lengths"] = tuple(opts["max_lengths"])
    try:
        settings = coulomb.coulomb_settings(**opts)
    except TypeError as err:
        raise ValueError(f"hybrid: bad coulomb_options {options!r}: {err}") from None
    if widths is None:
        return coulomb.charge_energy_fn(settings)
    table = np.asarray(widths, np.float64)

    def per_atom(system):
        z = jnp.clip(jnp.where(system.atom_mask, system.species, 0), 0, 118)
        return jnp.asarray(table, system.positions.dtype)[z]

    return coulomb.charge_energy_fn(settings, per_atom)


def _species_idx(table, system):
    z = jnp.clip(jnp.where(system.atom_mask, system.species, 0), 0, 118)
    return jnp.maximum(jnp.asarray(table)[z], 0)


class _Parts:
    """The pieces of one hybrid model (host-side configuration, closed over by the functions)."""

    def __init__(self, short, charges, charge_model, table, fixed, widths, coulomb_fn,
                 dispersion, total_charge, qeq_method, hardness0):
        self.short, self.mode, self.charge_model = short, charges, charge_model
        self.table, self.fixed, self.widths = table, fixed, widths
        self.coulomb_fn, self.dispersion = coulomb_fn, dispersion
        self.total_charge, self.qeq_method = float(total_charge), qeq_method
        self.hardness0 = float(hardness0)
        self.n_species = int((table >= 0).sum())

    def init(self, key, system):
        k1, k2, k3 = jax.random.split(key, 3)
        params = self.short.init(k1, system)
        if not isinstance(params, dict) or LONG in params:
            raise ValueError(f"hybrid: the short-range model's params must be a dict without "
                             f"a {LONG!r} key")
        dtype = system.positions.dtype
        lr = {"coulomb_shift": jnp.zeros((self.n_species,), dtype)}
        if self.charge_model is not None:
            lr["charge_model"] = self.charge_model.init(k2, system)
        if self.mode == "qeq":  # softplus⁻¹ of the initial hardness
            lr["hardness"] = jnp.full((self.n_species,), np.log(np.expm1(self.hardness0)), dtype)
        if self.dispersion is not None:
            lr["dispersion"] = self.dispersion.init(k3, system)
        return {**params, LONG: lr}

    def charges(self, params, system):
        """``(charges [n_atoms], χ [n_atoms] | None, J [n_atoms] | None)``."""
        mask = system.atom_mask
        lr = params[LONG]
        if self.mode == "fixed":
            z = jnp.clip(jnp.where(mask, system.species, 0), 0, 118)
            q = jnp.asarray(self.fixed, system.positions.dtype)[z]
            return jnp.where(mask, q, 0.0), None, None
        out = self.charge_model.atomic(lr["charge_model"], system)["energy"]
        if self.mode == "predicted":
            n = jnp.maximum(jnp.sum(mask), 1)
            excess = (jnp.sum(jnp.where(mask, out, 0.0)) - self.total_charge) / n
            return jnp.where(mask, out - excess, 0.0), None, None
        hard = jax.nn.softplus(lr["hardness"])[_species_idx(self.table, system)]
        res = _qeq.solve_qeq(system, out, hard, self.coulomb_fn,
                             total_charge=self.total_charge, method=self.qeq_method)
        return res.charges, out, hard

    def charge_terms(self, params, system):
        """``(per-atom electrostatic energies [n_atoms], charges)``; they sum to E_charges."""
        q, chi, hard = self.charges(params, system)
        phi = jax.grad(lambda c: self.coulomb_fn(system, c))(q)  # ∂E_C/∂q, eV/e
        per_atom = 0.5 * q * phi
        if chi is not None:
            per_atom = per_atom + chi * q + 0.5 * hard * q * q
        shift = jax.lax.stop_gradient(params[LONG]["coulomb_shift"])
        per_atom = per_atom - shift[_species_idx(self.table, system)]
        return jnp.where(system.atom_mask, per_atom, 0.0), q

    def charge_energy(self, params, system):
        q, chi, hard = self.charges(params, system)
        e = self.coulomb_fn(system, q)
        if chi is not None:
            e = e + jnp.sum(jnp.where(system.atom_mask, chi * q + 0.5 * hard * q * q, 0.0))
        shift = jax.lax.stop_gradient(params[LONG]["coulomb_shift"])
        return e - jnp.sum(jnp.where(system.atom_mask,
                                     shift[_species_idx(self.table, system)], 0.0))

    def short_params(self, params):
        return {k: v for k, v in params.items() if k != LONG}

    def energy(self, params, system):
        e = self.short.energy(self.short_params(params), system)
        e = e + self.charge_energy(params, system)
        if self.dispersion is not None:
            e = e + self.dispersion.energy(params[LONG]["dispersion"], system)
        return e

    def atomic(self, params, system):
        out = self.short.atomic(self.short_params(params), system)
        per_atom, q = self.charge_terms(params, system)
        e = out["energy"] + per_atom
        if self.dispersion is not None:
            d = params[LONG]["dispersion"]
            if self.dispersion.atomic is not None and "energy" in self.dispersion.outputs:
                e = e + self.dispersion.atomic(d, system)["energy"]
            else:  # spread evenly over the real atoms
                n = jnp.maximum(jnp.sum(system.atom_mask), 1)
                e = e + jnp.where(system.atom_mask, self.dispersion.energy(d, system) / n, 0.0)
        return {"energy": e, "charges": q}


def _coulomb_offsets(parts: _Parts, params, train_set) -> np.ndarray:
    """Per-species least-squares fit of E_charges over the element counts (eV per atom)."""
    rows, targets = [], []
    fn = jax.jit(parts.charge_energy)
    zeroed = {**params, LONG: {**params[LONG],
                               "coulomb_shift": jnp.zeros_like(params[LONG]["coulomb_shift"])}}
    chosen = list(train_set)[:_PREPARE_MAX]
    n_atoms = max(s.n_atoms for s in chosen)  # one padded shape: one compilation
    n_edges = max(s.n_edges for s in chosen)
    for s in chosen:
        system = s.system(n_atoms=n_atoms, n_edges=n_edges,
                          dtype=np.asarray(params[LONG]["coulomb_shift"]).dtype)
        targets.append(float(fn(zeroed, system)))
        idx = parts.table[np.asarray(s.numbers)]
        rows.append(np.bincount(idx, minlength=parts.n_species))
    a, b = np.asarray(rows, float), np.asarray(targets)
    return np.linalg.lstsq(a, b, rcond=None)[0]


def _check_neutral(parts: _Parts, train_set) -> None:
    """Fixed charges must make every training structure neutral (a wrong --charges)."""
    for i, s in enumerate(train_set):
        total = float(np.sum(parts.fixed[np.asarray(s.numbers)]))
        if abs(total) > 1e-6:
            raise ValueError(f"{s.source or f'training structure {i}'}: the fixed charges give "
                             f"a total charge of {total:g} e, not 0 (check --charges / "
                             "charge_values)")


def _prepare_fn(parts: _Parts):
    def prepare(params, train_set):
        if parts.mode == "fixed":
            _check_neutral(parts, train_set)
        short_prepare = parts.short.prepare
        if short_prepare is not None:
            params = {**short_prepare(parts.short_params(params), train_set), LONG: params[LONG]}
        lr = params[LONG]
        shift = _coulomb_offsets(parts, params, train_set)
        return {**params, LONG: {**lr, "coulomb_shift": jnp.asarray(
            shift, jnp.asarray(lr["coulomb_shift"]).dtype)}}

    return prepare


def _species_of(short: Potential) -> list[str]:
    from ase.data import chemical_symbols

    kw = short.config.get("kwargs", {})
    if isinstance(kw.get("species"), list | tuple):
        return normalize_species(kw["species"])
    if short.species is not None:
        return [chemical_symbols[z] for z in short.species]
    return list(chemical_symbols[1:119])


def _build_parts(short_cfg, charges, charge_values, charge_model, widths, hardness, qeq_method,
                 total_charge, coulomb_options, dispersion, data):
    if charges not in CHARGE_MODES:
        raise ValueError(f"hybrid: charges must be one of {list(CHARGE_MODES)}, got {charges!r}")
    if qeq_method not in _qeq.METHODS:
        raise ValueError(f"hybrid: qeq_method must be one of {list(_qeq.METHODS)}, got "
                         f"{qeq_method!r}")
    if not (isinstance(hardness, int | float) and np.isfinite(hardness) and hardness > 0):
        raise ValueError(f"hybrid: hardness must be a positive number (eV/e²), got {hardness!r}")
    short = from_config(_sub_config(short_cfg, data, "short"))
    species = _species_of(short)
    fixed = None
    if charges == "fixed":
        fixed = _charge_table(charge_values, species)
    cmodel = None
    if charges != "fixed":
        cm_cfg = short.config if charge_model is None else charge_model
        cmodel = from_config(_sub_config(cm_cfg, data, "charge_model"))
        if cmodel.atomic is None or "energy" not in cmodel.outputs:
            raise ValueError(f"hybrid: charge_model {cmodel.config['name']!r} has no per-atom "
                             "outputs to read as charges")
    wtable = _widths_table(widths, species, QEQ_WIDTH if charges == "qeq" else None)
    coulomb_fn = _coulomb_fn(dict(coulomb_options or {}), wtable, short.cutoff)
    if dispersion == "d3bj":  # the --dispersion choice: D3(BJ) with PBE's damping parameters
        # cut at the short-range cutoff so no longer edges are needed (shifted to zero there)
        dispersion = {"name": "d3", "kwargs": {
            "functional": "pbe", "damping": "bj", "species": list(species),
            "cutoff": short.cutoff, "cn_cutoff": short.cutoff}}
    elif dispersion == "fitted":
        dispersion = {"name": "dispersion", "kwargs": {
            "c6": {s: 1.0 for s in species}, "species": list(species), "cutoff": short.cutoff}}
    disp = None if dispersion is None else from_config(_sub_config(dispersion, data, "dispersion"))
    parts = _Parts(short, charges, cmodel, species_table(species),
                   None if fixed is None else fixed["table"], wtable, coulomb_fn, disp,
                   total_charge, qeq_method, hardness)
    return parts, species, fixed


@register("hybrid", data_options=("cutoff", "avg_num_neighbors", "species"))
def hybrid(short="nequip", *, charges: str = "fixed", charge_values: dict | None = None,
           charge_model=None, widths=None, hardness: float = 5.0, qeq_method: str = "exact",
           total_charge: float = 0.0, coulomb_options: dict | None = None, dispersion=None,
           species=None, cutoff: float | None = None,
           avg_num_neighbors: float | None = None) -> Potential:
    """A learned short-range model plus electrostatics (see the module docstring).

    Args:
      short: the short-range model: a registered name, a config ``{"name", "kwargs"}`` or a
        :class:`~jaxpot.Potential`.
      charges: ``"fixed"``, ``"predicted"`` or ``"qeq"``.
      charge_values: ``{element: charge in e}`` for ``"fixed"`` (every species needs one).
      charge_model: the per-atom model read as charges (``"predicted"``) or electronegativities
        (``"qeq"``); default: the same family and options as ``short``.
      widths: Gaussian charge widths σ in Å, one number or ``{element: σ}`` (default: point
        charges, or 0.7 Å for ``"qeq"``, where smearing keeps the solve well posed).
      hardness: initial per-element QEq hardness J (eV/e²), learned.
      qeq_method: ``"exact"`` (dense solve) or ``"cg"`` (matrix-free).
      total_charge: Q in e, for ``"predicted"`` and ``"qeq"`` (fixed charges sum to what they
        sum to).
      coulomb_options: keyword options of
        :func:`jaxpot.potentials.coulomb.coulomb_settings` over :data:`DEFAULT_COULOMB`
        (Ewald at 1e-6, real-space cutoff = the short-range model's, cells up to
        16 × 16 × 32 Å; longer ones give NaN: raise ``max_lengths``, or let
        :func:`jaxpot.models.cells.fit_cells` widen it, as the commands do).
      dispersion: config (or name) of an extra registered potential, e.g. a D3 term.
      species, cutoff, avg_num_neighbors: data options, passed on to the sub-models that
        declare them (training fills them in from the data).

    Returns:
      A non-local :class:`~jaxpot.Potential` with per-atom ``"energy"`` and ``"charges"``.

    Raises:
      ValueError: unknown mode, a missing or non-finite charge, a bad width or hardness, a
        sub-model that cannot be built.
    """
    data = {"species": species, "cutoff": cutoff, "avg_num_neighbors": avg_num_neighbors}
    parts, species, fixed = _build_parts(short, charges, charge_values, charge_model, widths,
                                         hardness, qeq_method, total_charge, coulomb_options,
                                         dispersion, data)
    cut = max([parts.short.cutoff, float(getattr(parts.coulomb_fn, "cutoff", 0.0))]
              + [m.cutoff for m in (parts.charge_model, parts.dispersion) if m is not None])
    config = {"name": "hybrid", "kwargs": {
        "short": parts.short.config, "charges": charges,
        "charge_values": None if fixed is None else fixed["values"],
        "charge_model": None if parts.charge_model is None else parts.charge_model.config,
        "widths": widths if not isinstance(widths, dict) else {str(k): float(v) for k, v
                                                                in widths.items()},
        "hardness": float(hardness), "qeq_method": qeq_method,
        "total_charge": float(total_charge), "coulomb_options": dict(coulomb_options or {}),
        "dispersion": None if parts.dispersion is None else parts.dispersion.config,
        "species": list(species), "cutoff": float(cut),
        "avg_num_neighbors": avg_num_neighbors}}
    from ase.data import atomic_numbers

    return Potential(init=parts.init, energy=parts.energy, cutoff=float(cut), config=config,
                     atomic=parts.atomic, outputs=("energy", "charges"), local=False,
                     species=tuple(sorted(atomic_numbers[s] for s in species)),
                     prepare=_prepare_fn(parts))


def hybrid_charges(potential: Potential):
    """``(params, system) -> charges [n_atoms]`` (e) of a :func:`hybrid` model."""
    if potential.config.get("name") != "hybrid":
        raise ValueError(f"hybrid_charges needs a hybrid model, got "
                         f"{potential.config.get('name')!r}")
    atomic = potential.atomic
    return lambda params, system: atomic(params, system)["charges"]

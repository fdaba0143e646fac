"""A heteroscedastic head: each atom predicts the noise of its own labels (aleatoric uncertainty).

``heteroscedastic(inner)`` wraps any model whose ``atomic`` gives per-atom invariant
``"features"`` (NequIP, MACE, BPNN). Its energy (hence forces, stress, MD) is the inner model's,
unchanged; a small MLP maps each atom's features to two variances::

    σ²_F,i = f_F² + s_F² · softplus(u_i) / log 2     # force noise, per component, eV²/Å²
    σ²_E,i = f_E² + s_E² · softplus(v_i) / log 2     # atomic energy noise, eV²
    σ²_E   = Σ_i σ²_E,i                               # the structure's energy noise, eV²

(``f`` the floors, ``s`` the initial scales; the last layer starts at zero, so every atom starts
at ``σ² = f² + s²``.) ``params = {"model": inner params, "noise": head params}``; the head's
params hold its MLP and a fixed per-feature standardisation (``feature_shift``,
``feature_inv_scale``; identity from ``init``, set from training structures by
:func:`standardize_features`, which training does when it adds the head); the MLP reads
``asinh((x - shift) · inv_scale)``.

The head reads ``jax.lax.stop_gradient(features)``: the variance loss (a Gaussian negative
log-likelihood, :mod:`jaxpot.train.nll`) trains the head only, and cannot bend the shared
representation towards whatever makes residuals easy to explain away (NLL's known failure mode,
where a model "gives up" on hard samples by inflating their variance). The mean is trained
exactly as without the head, so an ensemble of heteroscedastic members has the same epistemic
spread as a plain ensemble, and its predicted noise is the aleatoric part::

    pot = ensemble(heteroscedastic(nequip(species=["Cu"])), 4)
    out = spread_fn(pot)(params, system)  # forces_std: epistemic; force_noise_std: aleatoric

``atomic`` adds, to the inner model's per-atom outputs (all 0 on padding atoms):

- ``"force_noise_std"``: ``[n_atoms]`` σ_F,i in eV/Å, the predicted std of each Cartesian force
  component of atom i in the labels;
- ``"energy_noise_std"``: ``[n_atoms]`` σ_E,i in eV; the structure's energy noise std is
  ``sqrt(Σ_i σ_E,i²)``.

Both are functions of invariant features, hence invariant under rotations, reflections and
translations and permuted with the atoms. The config stores only the inner config and numbers,
so the model loads from a model file without executing code.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.potential import Potential, energy_and_forces, from_config, register
from jaxpot.system import System

__all__ = ["heteroscedastic", "heteroscedastic_parts", "noise_variances", "with_noise_head",
           "energy_forces_noise", "mean_noise_std", "standardize_features",
           "variances_from_features", "NOISE_OUTPUTS"]

NOISE_OUTPUTS = ("force_noise_std", "energy_noise_std")
_STANDARDISATION = ("feature_shift", "feature_inv_scale")


class NoiseHead(nn.Module):
    """Per-atom MLP ``[n_atoms, F] -> [n_atoms, 2]`` raw (pre-softplus) noise parameters."""

    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, features):
        x = features
        for i, width in enumerate(self.hidden):
            x = nn.silu(nn.Dense(width, name=f"dense_{i}")(x))
        return nn.Dense(2, kernel_init=nn.initializers.zeros, name="dense_out")(x)


def heteroscedastic_parts(potential: Potential) -> tuple[Potential, dict] | None:
    """``(inner potential, head options)`` of a :func:`heteroscedastic` model, else None."""
    cfg = potential.config if isinstance(potential.config, dict) else {}
    if cfg.get("name") != "heteroscedastic":
        return None
    kw = dict(cfg["kwargs"])
    return from_config(kw.pop("inner")), kw


def _variances(head: NoiseHead, scales: tuple[float, float, float, float], head_params,
               features, mask):
    """``(σ²_F [n], σ²_E [n])`` from the features (gradient stopped); ``f²`` on padding."""
    f_f, f_e, s_f, s_e = scales
    shift = jax.lax.stop_gradient(head_params["feature_shift"])  # fixed standardisation
    inv_scale = jax.lax.stop_gradient(head_params["feature_inv_scale"])
    # asinh: the standardisation is fitted on the initial model, whose features vary far less
    # than the trained model's (standardised inputs of 100s after training): asinh keeps them
    # ordered and distinct but of order 1-10, where the MLP trains (without it some heads
    # of an ensemble collapsed to one constant variance on EMT copper).
    x = jnp.arcsinh((jax.lax.stop_gradient(features) - shift) * inv_scale)
    x = jnp.where(mask[:, None], x, 0.0)
    mlp = {k: v for k, v in head_params.items() if k not in _STANDARDISATION}
    raw = head.apply({"params": mlp}, x)
    unit = jax.nn.softplus(raw) / math.log(2.0)
    var_f = f_f**2 + s_f**2 * unit[:, 0]
    var_e = f_e**2 + s_e**2 * unit[:, 1]
    return jnp.where(mask, var_f, f_f**2), jnp.where(mask, var_e, f_e**2)


@register("heteroscedastic")
def heteroscedastic(inner: Potential | dict, *, hidden=(32,), force_floor: float = 1e-3,
                    energy_floor: float = 1e-4, force_scale: float = 0.1,
                    energy_scale: float = 0.01) -> Potential:
    """Wrap ``inner`` with a per-atom noise head (see the module docstring).

    Args:
      inner: a potential (or its config) whose ``atomic`` returns ``"features"``.
      hidden: widths of the head's hidden layers.
      force_floor: smallest predicted force noise std, eV/Å (keeps the NLL finite).
      energy_floor: smallest predicted atomic energy noise std, eV.
      force_scale: initial force noise std above the floor, eV/Å.
      energy_scale: initial atomic energy noise std above the floor, eV.

    Returns:
      A :class:`~jaxpot.Potential` with params ``{"model": ..., "noise": ...}``, the inner
      energy, and ``atomic`` outputs extended by ``"force_noise_std"`` and
      ``"energy_noise_std"``.

    Raises:
      ValueError: ``inner`` has no per-atom features, is fitted in closed form (GAP), is an
        ensemble or is already heteroscedastic, or a floor/scale is not positive.
    """
    if isinstance(inner, dict):
        inner = from_config(inner)
    name = inner.config.get("name")
    if name in ("ensemble", "heteroscedastic"):
        raise ValueError(f"heteroscedastic cannot wrap a {name!r} model (wrap the member: "
                         "ensemble(heteroscedastic(model), K))")
    if inner.fit is not None:
        raise ValueError(f"heteroscedastic needs a gradient-trained inner model; {name!r} is "
                         "fitted in closed form (its own variance is in its 'variance' output)")
    if inner.atomic is None or "features" not in inner.outputs:
        raise ValueError(f"heteroscedastic needs per-atom 'features' from the inner model; "
                         f"{name!r} declares only {inner.outputs}")
    scales = tuple(float(v) for v in (force_floor, energy_floor, force_scale, energy_scale))
    if not all(v > 0 for v in scales):
        raise ValueError(f"heteroscedastic floors and scales must be positive, got "
                         f"force_floor={force_floor}, energy_floor={energy_floor}, "
                         f"force_scale={force_scale}, energy_scale={energy_scale}")
    head = NoiseHead(tuple(int(h) for h in hidden))

    def init(key, system):
        k_model, k_head = jax.random.split(key)
        return _init_head(head, inner, inner.init(k_model, system), k_head, system)

    def atomic(params, system):
        out = dict(inner.atomic(params["model"], system))
        var_f, var_e = _variances(head, scales, params["noise"], out["features"],
                                  system.atom_mask)
        mask = system.atom_mask
        out["force_noise_std"] = jnp.where(mask, jnp.sqrt(var_f), 0.0)
        out["energy_noise_std"] = jnp.where(mask, jnp.sqrt(var_e), 0.0)
        return out

    config = {"name": "heteroscedastic",
              "kwargs": {"inner": inner.config, "hidden": list(head.hidden),
                         "force_floor": scales[0], "energy_floor": scales[1],
                         "force_scale": scales[2], "energy_scale": scales[3]}}
    prepare = None
    if inner.prepare is not None:
        def prepare(params, train_set):
            return {**params, "model": inner.prepare(params["model"], train_set)}

    return inner._replace(
        init=init, energy=lambda params, system: inner.energy(params["model"], system),
        config=config, atomic=atomic, prepare=prepare, fit=None,
        outputs=tuple(dict.fromkeys((*inner.outputs, *NOISE_OUTPUTS))))


def _head_of(potential: Potential) -> tuple[Potential, NoiseHead, tuple]:
    parts = heteroscedastic_parts(potential)
    if parts is None:
        raise ValueError(f"expected a heteroscedastic model, got "
                         f"{potential.config.get('name')!r}")
    inner, kw = parts
    scales = (kw["force_floor"], kw["energy_floor"], kw["force_scale"], kw["energy_scale"])
    return inner, NoiseHead(tuple(int(h) for h in kw["hidden"])), scales


def _init_head(head: NoiseHead, inner: Potential, inner_params, key, system: System) -> dict:
    features = jax.eval_shape(inner.atomic, inner_params, system)["features"]  # shape only
    variables = head.init(key, jnp.zeros(features.shape, features.dtype))
    head_params = jax.tree.map(lambda p: jnp.asarray(p, features.dtype), variables["params"])
    width = features.shape[-1]
    head_params["feature_shift"] = jnp.zeros((width,), features.dtype)
    head_params["feature_inv_scale"] = jnp.ones((width,), features.dtype)
    return {"model": inner_params, "noise": head_params}


def standardize_features(potential: Potential, params, systems) -> dict:
    """Params whose head standardises each feature by its mean and std over ``systems``.

    The head's inputs vary little in absolute terms (features of different environments
    often differ by 1e-2), so without this the MLP would need many steps to separate them.
    The shift and scale are constants of the head (their gradient is stopped); training calls
    this once, on training structures, before the first step.

    Args:
      potential: a :func:`heteroscedastic` model.
      params: its params.
      systems: a few structures (:class:`~jaxpot.System` with edges).
    """
    inner = _head_of(potential)[0]
    fn = jax.jit(lambda p, s: inner.atomic(p, s)["features"])
    rows = [np.asarray(fn(params["model"], s))[np.asarray(s.atom_mask)] for s in systems]
    x = np.concatenate(rows).astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std = np.maximum(std, 1e-3 * (np.sqrt(np.mean(x * x)) + 1e-12))
    dtype = params["noise"]["feature_shift"].dtype
    noise = {**params["noise"], "feature_shift": jnp.asarray(mean, dtype),
             "feature_inv_scale": jnp.asarray(1.0 / std, dtype)}
    return {**params, "noise": noise}


def with_noise_head(inner: Potential, inner_params, key: jax.Array, system: System,
                    **options) -> tuple[Potential, dict]:
    """Wrap an already initialised (or trained) model: ``(heteroscedastic potential, params)``.

    The inner params are kept as they are (training uses this after the element references
    were put in); the head is initialised from ``key`` for ``system``'s feature width.
    ``options`` go to :func:`heteroscedastic`.
    """
    pot = heteroscedastic(inner, **options)
    return pot, _init_head(_head_of(pot)[1], inner, inner_params, key, system)


def variances_from_features(potential: Potential, head_params, features, mask):
    """``(σ²_F [n], σ²_E [n])`` from given features ``[n, F]`` and ``mask`` ``[n]`` (traced):
    the head alone, e.g. to fit it on features computed once."""
    _, head, scales = _head_of(potential)
    return _variances(head, scales, head_params, features, mask)


def noise_variances(potential: Potential, params, system: System):
    """``(σ²_F [n_atoms] eV²/Å², σ²_E [n_atoms] eV²)`` of one structure (traced).

    Padding atoms get the floors' squares (finite, so divisions by them are safe; mask them).
    """
    inner, head, scales = _head_of(potential)
    features = inner.atomic(params["model"], system)["features"]
    return _variances(head, scales, params["noise"], features, system.atom_mask)


def mean_noise_std(member: Potential, stacked_params, system: System) -> dict:
    """The aleatoric part of an ensemble of heteroscedastic members (traced).

    The noise of the committee's mixture is the members' mean variance, so
    ``{"force_noise_std": [n_atoms] sqrt(mean_k σ²_F,k) eV/Å (0 on padding),
    "energy_noise_std": [] sqrt(mean_k Σ_i σ²_E,k,i) eV}``. No calibration factor applies:
    the head was fitted by likelihood.
    """
    var_f, var_e = jax.vmap(lambda p: noise_variances(member, p, system))(stacked_params)
    mask = system.atom_mask
    e_var = jnp.sum(jnp.where(mask, var_e, 0.0), axis=-1)
    return {"force_noise_std": jnp.where(mask, jnp.sqrt(jnp.mean(var_f, axis=0)), 0.0),
            "energy_noise_std": jnp.sqrt(jnp.mean(e_var))}


def energy_forces_noise(potential: Potential):
    """``(params, system) -> (energy, forces [n, 3], σ²_F [n], σ²_E [n])`` in one forward pass.

    For a local inner model the energy is the sum of the atomic energies, so the features come
    from the same pass as the forces; otherwise the inner energy and features are computed
    separately.
    """
    inner, head, scales = _head_of(potential)
    if not inner.local:
        ef = energy_and_forces(potential)

        def separate(params, system):
            e, f = ef(params, system)
            return (e, f, *noise_variances(potential, params, system))

        return separate

    def fn(params, system):
        def e_of_x(x):
            out = inner.atomic(params["model"], system.replace(positions=x))
            return jnp.sum(out["energy"]), out["features"]

        (e, features), g = jax.value_and_grad(e_of_x, has_aux=True)(system.positions)
        var_f, var_e = _variances(head, scales, params["noise"], features, system.atom_mask)
        return e, jnp.where(system.atom_mask[:, None], -g, 0.0), var_f, var_e

    return fn

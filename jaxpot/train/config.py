"""Options of a training run: :class:`TrainConfig`, checked up front with messages that name
the option (and its ``jaxpot train`` flag)."""

from __future__ import annotations

import dataclasses
import math

__all__ = ["TrainConfig", "FLAGS"]

FLAGS = {"train": "--train", "valid": "--valid", "model": "--model", "cutoff": "--cutoff",
         "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
         "patience": "--patience", "time_budget_min": "--time-budget-min", "seed": "--seed",
         "dtype": "--dtype", "out": "--out", "model_kwargs": "--model-kwargs",
         "keep_incomplete": "--keep-incomplete",
         "allow_partial_labels": "--allow-partial-labels", "check_units": "--no-unit-check",
         "check_outliers": "--no-outlier-check", "long_range": "--long-range",
         "charges": "--charges", "dispersion": "--dispersion", "devices": "--devices",
         "ensemble": "--ensemble", "init_from": "--init-from", "freeze": "--freeze",
         "noise_head": "--noise-head"}
"""Option name → the ``jaxpot train`` flag that sets it."""


def _name(option: str) -> str:
    flag = FLAGS.get(option)
    return f"training option {option!r}" + (f" ({flag})" if flag else "")


@dataclasses.dataclass
class TrainConfig:
    """Options of a training run (also the fields of a ``jaxpot train`` YAML file).

    Attributes:
      train: training extxyz file.
      valid: validation extxyz file; if None, ``valid_fraction`` of ``train`` is held out.
      valid_fraction: held-out fraction when there is no ``valid`` file.
      energy_key, forces_key, stress_key: label names in the files.
      model: registered potential name (``nequip``, ``mace``, ``morse``, ...).
      model_kwargs: keyword arguments of the model factory.
      cutoff: neighbour cutoff for the edges, Å (also passed to the model if it takes one).
      batch_size: structures per batch.
      eval_batch_size: structures per validation batch (default ``batch_size``).
      epochs: maximum number of epochs (None: until the time budget runs out, or 100 epochs
        without a budget).
      lr: peak learning rate.
      warmup_epochs: linear warm-up length (epochs, may be fractional).
      decay: ``cosine``, ``exponential`` or ``constant`` after warm-up, over whichever runs
        out first, the epochs or the time budget (:class:`~jaxpot.train.BudgetSchedule`).
      final_lr_fraction: final / peak learning rate.
      optimizer: ``adam`` or ``adamw``; weight_decay for adamw.
      clip_norm: global gradient-norm clip (0/None disables).
      ema_decay: parameter EMA decay used for evaluation and the saved model.
      energy_weight, forces_weight, stress_weight: loss weights; None means the default rule of
        :func:`jaxpot.train.default_weights` (forces normalised by their RMS, energies
        balanced against them through ``energy_length``).
      energy_length: ℓ of the default weights, Å: an energy error of δ per atom weighs as much
        as a force-component error of δ/ℓ (None: each term divided by its label variance).
      trainable_refs: train the per-element reference energies too.
      patience: early-stopping patience in epochs without validation-loss improvement (None:
        20 without a time budget, off with one, as the learning rate then decays over the
        whole budget); min_delta: relative improvement that counts.
      time_budget_min: wall-time budget of the whole run in minutes (None: unlimited).
      seed: seed for the split, initialisation and shuffling.
      out: output directory.
      dtype: ``float32`` or ``float64``.
      max_shapes: upper bound on padded batch shapes (= compilations per step function);
        :func:`~jaxpot.train.loop.choose_shapes` takes fewer when they pad little more.
      progress: show a tqdm bar (default: only on a terminal and when ``CI`` is not set).
      plots: write PNG plots.
      keep_incomplete: with a time budget too short for one validation, still write the
        unvalidated model (default: refuse, :class:`~jaxpot.train.IncompleteTraining`).
      allow_partial_labels: accept files where a label (energy, forces, stress) is missing in
        some frames; those frames drop out of that loss term (default: refuse, naming the first
        frame without it).
      check_units: refuse energies and forces whose units disagree (e.g. kcal/mol energies
        with eV/Å forces), judged from the work of the forces between similar frames.
      check_outliers: refuse frames whose energy per atom is wildly off the rest.
      long_range: ``none``, ``fixed-charges``, ``predicted-charges`` or ``qeq``: anything but
        ``none`` trains a :func:`jaxpot.models.hybrid.hybrid` model whose short-range part is
        ``model`` (with ``model_kwargs``); :meth:`validate` rewrites ``model`` to ``"hybrid"`` and
        ``model_kwargs`` to the hybrid's options.
      charges: ``{element: charge in e}`` (or the flag's ``"Na=1,Cl=-1"``), required by
        ``fixed-charges`` and refused by the other modes.
      dispersion: ``none``, ``d3bj`` or ``fitted``: a dispersion term added to the hybrid.
      devices: data-parallel training on this many devices (the first of ``jax.devices()``;
        batch sizes must be multiples of it); None: all devices, as many as divide the batch
        sizes (see :mod:`jaxpot.train.sharding`).
      ensemble: train this many copies of the model together, from seeds ``seed, seed+1, ...``
        (a :func:`jaxpot.models.ensemble`; 1 = a single model). All members train in one
        vmapped step (one compile); each minimises its own loss; the validation metrics and
        the saved model's energy are the committee mean, and its spread is the model's
        uncertainty, calibrated on the validation set after training.
      init_from: a model file to start from (fine-tuning): its family and options replace
        ``model``/``model_kwargs``, its parameters the random initialisation; elements of the
        data it does not know are added (:mod:`jaxpot.train.finetune`).
      freeze: regular expressions; parameters whose path (``net/layer_0/...``) fully matches
        one keep their initial values.
      noise_head: wrap the model (each member of an ensemble) with a
        :func:`~jaxpot.models.heteroscedastic.heteroscedastic` head that predicts per-atom
        force and energy noise (aleatoric uncertainty), trained by a Gaussian NLL
        (:mod:`jaxpot.train.nll`); the model needs per-atom features (NequIP, MACE, BPNN).
    """

    train: str | None = None
    valid: str | None = None
    valid_fraction: float = 0.1
    energy_key: str = "energy"
    forces_key: str | None = "forces"
    stress_key: str | None = "stress"
    model: str = "nequip"
    model_kwargs: dict = dataclasses.field(default_factory=dict)
    cutoff: float = 5.0
    batch_size: int = 4
    eval_batch_size: int | None = None
    epochs: int | None = None
    lr: float = 1e-2
    warmup_epochs: float = 1.0
    decay: str = "cosine"
    final_lr_fraction: float = 0.01
    optimizer: str = "adam"
    weight_decay: float = 0.0
    clip_norm: float | None = 10.0
    ema_decay: float = 0.99
    energy_weight: float | None = None
    forces_weight: float | None = None
    stress_weight: float | None = None
    energy_length: float | None = 1.5
    trainable_refs: bool = False
    patience: int | None = None
    min_delta: float = 0.0
    time_budget_min: float | None = None
    seed: int = 0
    out: str = "run"
    dtype: str = "float32"
    max_shapes: int = 6
    progress: bool | None = None
    plots: bool = True
    keep_incomplete: bool = False
    allow_partial_labels: bool = False
    check_units: bool = True
    check_outliers: bool = True
    long_range: str = "none"
    charges: dict | str | None = None
    dispersion: str = "none"
    devices: int | None = None
    ensemble: int = 1
    init_from: str | None = None
    freeze: list = dataclasses.field(default_factory=list)
    noise_head: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a dict (a parsed YAML file) and :meth:`validate` it.

        Raises:
          ValueError: unknown keys (listed with the known ones), a value of the wrong type or
            out of range (naming the option).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training option(s) {unknown}; known: {sorted(names)}")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        out = {}
        for k, v in d.items():
            base = types[k].replace(" | None", "")
            out[k] = v if v is None or base not in ("float", "int") else _number(k, v, base)
        return cls(**out).validate()

    def validate(self) -> TrainConfig:
        """Check every option; returns ``self``.

        Raises:
          ValueError: naming the first option that is out of range, with its flag.
        """
        for k, lo, hi, lo_open, none_ok in _RANGES:
            _check_range(k, getattr(self, k), lo, hi, lo_open, none_ok)
        for k in ("batch_size", "eval_batch_size", "epochs", "patience", "seed", "max_shapes",
                  "ensemble"):
            v = getattr(self, k)
            if v is not None and (isinstance(v, bool) or int(v) != v):
                raise ValueError(f"{_name(k)} must be an integer, got {v!r}")
        for k, allowed in (("decay", ("cosine", "exponential", "constant")),
                           ("optimizer", ("adam", "adamw")), ("dtype", ("float32", "float64"))):
            if getattr(self, k) not in allowed:
                raise ValueError(f"{_name(k)} must be one of {list(allowed)}, got "
                                 f"{getattr(self, k)!r}")
        for k in ("keep_incomplete", "allow_partial_labels", "check_units", "check_outliers",
                  "noise_head"):
            if not isinstance(getattr(self, k), bool):
                raise ValueError(f"{_name(k)} must be true or false, got {getattr(self, k)!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ValueError(f"{_name('model_kwargs')} must be a mapping, got "
                             f"{self.model_kwargs!r}")
        if isinstance(self.freeze, str):
            self.freeze = [self.freeze]
        if not isinstance(self.freeze, list | tuple) or not all(
                isinstance(f, str) and f for f in self.freeze):
            raise ValueError(f"{_name('freeze')} must be a list of regular expressions, got "
                             f"{self.freeze!r}")
        self.freeze = list(self.freeze)
        if not self.model or not isinstance(self.model, str):
            raise ValueError(f"{_name('model')} must be a model name, got {self.model!r}")
        weights = [self.energy_weight, self.forces_weight, self.stress_weight]
        if all(w is not None for w in weights) and not any(weights):
            raise ValueError("training options 'energy_weight', 'forces_weight' and "
                             "'stress_weight' are all 0: nothing to train on")
        _apply_long_range(self)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# (option, low, high, low bound excluded, None allowed): every number option's valid range.
_RANGES = (
    ("valid_fraction", 0.0, 1.0 - 1e-12, True, False),
    ("cutoff", 0.0, math.inf, True, False),
    ("batch_size", 1, math.inf, False, False),
    ("eval_batch_size", 1, math.inf, False, True),
    ("epochs", 1, math.inf, False, True),
    ("lr", 0.0, math.inf, True, False),
    ("warmup_epochs", 0.0, math.inf, False, False),
    ("final_lr_fraction", 0.0, 1.0, False, False),
    ("weight_decay", 0.0, math.inf, False, False),
    ("clip_norm", 0.0, math.inf, False, True),
    ("ema_decay", 0.0, 1.0 - 1e-12, False, False),
    ("energy_weight", 0.0, math.inf, False, True),
    ("forces_weight", 0.0, math.inf, False, True),
    ("stress_weight", 0.0, math.inf, False, True),
    ("energy_length", 0.0, math.inf, True, True),
    ("patience", 1, math.inf, False, True),
    ("min_delta", 0.0, 1.0, False, False),
    ("time_budget_min", 0.0, math.inf, True, True),
    ("seed", 0, math.inf, False, False),
    ("max_shapes", 1, math.inf, False, False),
    ("devices", 1, math.inf, False, True),
    ("ensemble", 1, 64, False, False),
)


def _number(option: str, value, base: str):
    """A YAML/flag value as a float or int (YAML 1.1 reads ``1e-3`` as a string)."""
    if isinstance(value, bool):
        raise ValueError(f"{_name(option)} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{_name(option)} must be a number, got {value!r}") from None
    if base == "int":
        if not math.isfinite(x) or x != int(x):
            raise ValueError(f"{_name(option)} must be an integer, got {value!r}")
        return int(x)
    return x


def _check_range(option, value, lo, hi, lo_open, none_ok) -> None:
    if value is None:
        if none_ok:
            return
        raise ValueError(f"{_name(option)} must be set")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{_name(option)} must be a number, got {value!r}")
    ok = math.isfinite(value) and (value > lo if lo_open else value >= lo) and value <= hi
    if ok:
        return
    if option == "ema_decay":
        rule = "in [0, 1)"
    elif option == "valid_fraction":
        rule = "in (0, 1)"
    elif hi == math.inf:
        rule = f"> {lo}" if lo_open else f">= {lo}"
    else:
        rule = f"in {'(' if lo_open else '['}{lo}, {hi}]"
    hint = {"epochs": " (leave it unset to train until the time budget or 100 epochs)",
            "time_budget_min": " (leave it unset for no budget)",
            "patience": " (leave it unset to disable early stopping with a budget)",
            "lr": ""}.get(option, "")
    raise ValueError(f"{_name(option)} must be {rule}, got {value!r}{hint}")


LONG_RANGE = {"none": None, "fixed-charges": "fixed", "predicted-charges": "predicted",
              "qeq": "qeq"}
"""``--long-range`` choice → the hybrid model's ``charges`` mode."""

DISPERSION = ("none", "d3bj", "fitted")
"""``--dispersion`` choices."""


def parse_charges(value) -> dict[str, float]:
    """``"Na=1,Cl=-1"`` or ``{"Na": 1, "Cl": -1}`` → ``{"Na": 1.0, "Cl": -1.0}``.

    Raises:
      ValueError: naming the entry that is not ``ELEMENT=NUMBER``, an unknown element, a
        repeated one, or a charge that is not a finite number.
    """
    from ase.data import atomic_numbers

    if isinstance(value, str):
        items = []
        for part in value.split(","):
            if part.count("=") != 1 or not part.split("=")[0].strip():
                raise ValueError(f"{_name('charges')}: {part.strip()!r} is not ELEMENT=CHARGE "
                                 f"(e.g. --charges Na=1,Cl=-1)")
            el, q = part.split("=")
            items.append((el.strip(), q.strip()))
    elif isinstance(value, dict):
        items = list(value.items())
    else:
        raise ValueError(f"{_name('charges')} must be 'Na=1,Cl=-1' or a mapping, got {value!r}")
    out: dict[str, float] = {}
    for el, q in items:
        if not isinstance(el, str) or el not in atomic_numbers or el == "X":
            raise ValueError(f"{_name('charges')}: unknown element {el!r}")
        if el in out:
            raise ValueError(f"{_name('charges')}: element {el} given twice")
        x = _number("charges", q, "float")
        if not math.isfinite(x):
            raise ValueError(f"{_name('charges')}: charge of {el} must be finite, got {q!r}")
        out[el] = x
    if not out:
        raise ValueError(f"{_name('charges')} is empty")
    return out


def _apply_long_range(config: TrainConfig) -> None:
    """Check the long-range options and turn ``model`` into the hybrid that wraps it."""
    if config.long_range not in LONG_RANGE:
        raise ValueError(f"{_name('long_range')} must be one of {list(LONG_RANGE)}, got "
                         f"{config.long_range!r}")
    if config.dispersion not in DISPERSION:
        raise ValueError(f"{_name('dispersion')} must be one of {list(DISPERSION)}, got "
                         f"{config.dispersion!r}")
    mode = LONG_RANGE[config.long_range]
    if mode is None:
        if config.charges is not None:
            raise ValueError(f"{_name('charges')} needs --long-range fixed-charges (the "
                             f"long-range mode is {config.long_range!r})")
        if config.dispersion != "none":
            raise ValueError(f"{_name('dispersion')} {config.dispersion!r} needs a --long-range "
                             "mode (a hybrid model)")
        return
    if mode == "fixed" and config.charges is None:
        raise ValueError(f"--long-range fixed-charges needs {_name('charges')}, e.g. "
                         "--charges Na=1,Cl=-1")
    if mode != "fixed" and config.charges is not None:
        raise ValueError(f"{_name('charges')} applies only to --long-range fixed-charges, not "
                         f"{config.long_range!r} (those charges are learned)")
    if config.charges is not None:
        config.charges = parse_charges(config.charges)
    if config.model == "hybrid":  # already rewritten (validate called again) or set by hand
        return
    kwargs = {"short": {"name": config.model, "kwargs": dict(config.model_kwargs)},
              "charges": mode}
    if mode == "fixed":
        kwargs["charge_values"] = dict(config.charges)
    if config.dispersion != "none":
        kwargs["dispersion"] = config.dispersion
    config.model, config.model_kwargs = "hybrid", kwargs

"""The registry of potential families: names in model files → factories.

A model file stores ``potential.config = {"name": ..., "kwargs": {...}}``; :func:`from_config`
turns it back into a potential by calling the factory registered under ``name``. Families
register themselves with the :func:`register` decorator when their module is imported.

This module sits at the bottom of jaxpot's layers and imports no other jaxpot module. It finds
the module that defines a family it has not seen yet in two places, by name only:

- ``FAMILIES``, the table of jaxpot's own families (``{"nequip": "jaxpot.models.nequip", ...}``);
- the ``jaxpot.potentials`` entry-point group, for families of other packages::

      [project.entry-points."jaxpot.potentials"]
      my_model = "my_package.my_model"

so that any registered name loads from a fresh process, and a low layer never imports a high one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata
from typing import Any

__all__ = ["FAMILIES", "register", "from_config", "registered", "factory", "data_options"]

DATA_OPTIONS = ("cutoff", "avg_num_neighbors", "species")
"""Options a training run can fill in from its data: the edge cutoff (Å), the mean number of
neighbours within it, and the element list."""

FAMILIES: dict[str, str] = {
    "sum": "jaxpot.potential",
    "lennard_jones": "jaxpot.potentials.pair",
    "morse": "jaxpot.potentials.pair",
    "emt": "jaxpot.potentials.emt",
    "d3": "jaxpot.potentials.dispersion",
    "dispersion": "jaxpot.potentials.dispersion",
    "with_element_refs": "jaxpot.potentials.offsets",
    "nequip": "jaxpot.models.nequip",
    "nequip_direct": "jaxpot.models.direct_force",
    "mace": "jaxpot.models.mace",
    "bpnn": "jaxpot.models.bpnn",
    "gap": "jaxpot.models.gap",
    "ensemble": "jaxpot.models.ensemble",
    "heteroscedastic": "jaxpot.models.heteroscedastic",
    "hybrid": "jaxpot.models.hybrid",
    "coulomb": "jaxpot.potentials.coulomb",
    "born_mayer_huggins": "jaxpot.potentials.bmh",
}
"""Family name → the jaxpot module that registers it."""

_REGISTRY: dict[str, Callable[..., Any]] = {}
_DATA: dict[str, tuple[str, ...]] = {}


def register(name: str, *, data_options: tuple[str, ...] = ()):
    """Decorator: make a potential factory rebuildable from ``{"name": name, "kwargs": ...}``.

    Args:
      name: the family name stored in model files.
      data_options: which of :data:`DATA_OPTIONS` the factory accepts as keyword arguments, so
        that training fills them in from the data (``--cutoff``, the measured neighbour count,
        the elements of the training set) unless the user set them.

    Example:
      >>> @register("my_pair")
      ... def my_pair(cutoff=3.0): ...
      >>> "my_pair" in registered()
      True
    """

    unknown = set(data_options) - set(DATA_OPTIONS)
    if unknown:
        raise ValueError(f"register({name!r}): unknown data options {sorted(unknown)}; "
                         f"known: {list(DATA_OPTIONS)}")

    def wrap(factory):
        _REGISTRY[name] = factory
        _DATA[name] = tuple(data_options)
        return factory

    return wrap


def _entry_points() -> dict[str, str]:
    try:
        found = metadata.entry_points(group="jaxpot.potentials")
    except Exception:  # broken metadata of some unrelated package must not break loading
        return {}
    return {ep.name: ep.value.split(":")[0] for ep in found}


def _discover(name: str) -> None:
    module = FAMILIES.get(name) or _entry_points().get(name)
    if module is not None:
        importlib.import_module(module)


def factory(name: str) -> Callable[..., Any]:
    """The factory registered under ``name``, importing its module if needed.

    Raises:
      ValueError: no family of that name is known.
    """
    if name not in _REGISTRY:
        _discover(name)
    if name not in _REGISTRY:
        raise ValueError(f"unknown potential {name!r}; known: {', '.join(registered())}")
    return _REGISTRY[name]


def data_options(name: str) -> tuple[str, ...]:
    """The data-derived options family ``name`` declared at registration (see :func:`register`).

    Raises:
      ValueError: no family of that name is known.
    """
    factory(name)
    return _DATA[name]


def registered() -> list[str]:
    """Names :func:`from_config` can rebuild (jaxpot's own, plugins', and any registered)."""
    return sorted(set(_REGISTRY) | set(FAMILIES) | set(_entry_points()))


def from_config(config: dict):
    """Rebuild a potential from its ``config`` (``{"name": ..., "kwargs": {...}}``).

    Raises:
      ValueError: unknown potential name or malformed config.
    """
    if not isinstance(config, dict) or not isinstance(config.get("name"), str):
        raise ValueError(f"a potential config must be a dict with a 'name', got {config!r}")
    kwargs = config.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise ValueError(f"potential {config['name']!r}: 'kwargs' must be a dict, got {kwargs!r}")
    build = factory(config["name"])
    try:
        return build(**kwargs)
    except TypeError as err:  # missing or unexpected arguments for this family
        raise ValueError(f"potential {config['name']!r}: bad kwargs in its config: {err}"
                         ) from None

"""Model files: a potential's JSON config plus its parameter arrays, in one safe file.

A model file is a msgpack map (no pickle anywhere, so loading a file cannot run code)::

    {"format": "jaxpot-model", "format_version": 1,
     "sha256": <hex digest of payload>, "payload": <bytes>}

where ``payload`` is itself a msgpack map ``{"config": <JSON text of potential.config>,
"jaxpot_version": ..., "metadata": <JSON text>, "params": <tree>}``. Array leaves of the
params tree are stored as ``{"__ndarray__": dtype name, "shape": [...], "data": <raw
little-endian C-order bytes>}``, so dtypes and shapes come back exactly. The checksum catches
truncated and corrupted files before any array is decoded.

Writes are atomic: the bytes go to a temporary file in the destination's directory, which is
flushed, synced and then renamed over the destination, so a crash mid-write leaves the previous
file intact (:func:`atomic_write` lives in :mod:`jaxpot.files` and is re-exported here).

Loading checks the parameter tree against the one the rebuilt potential's ``init`` makes
(structure, shapes, kinds of dtype), so a file with a missing or mis-shaped array is refused with
the parameter's path instead of failing later inside a jitted function.

Example::

    pot = jaxpot.potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
    params = pot.init(jax.random.key(0), None)
    jaxpot.save_model("argon.jaxpot", pot, params)
    pot2, params2 = jaxpot.load_model("argon.jaxpot")

``jaxpot info argon.jaxpot`` prints the config.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import msgpack
import numpy as np

from jaxpot.files import atomic_write
from jaxpot.registry import from_config

__all__ = ["save_model", "load_model", "read_model_info", "read_model_extras", "expected_params",
           "params_mismatches", "nonfinite_params", "stores_float64", "atomic_write", "FORMAT",
           "VERSION"]

FORMAT = "jaxpot-model"
"""Value of the ``format`` field that marks a jaxpot model file."""

VERSION = 1
"""Newest ``format_version`` this jaxpot writes and reads."""

_ARRAY_TAG = "__ndarray__"
_TUPLE_TAG = "__tuple__"


# ---------------------------------------------------------------------------------------------
# Params tree <-> msgpack-able objects
# ---------------------------------------------------------------------------------------------


def _encode_tree(tree: Any, where: str = "params") -> Any:
    if isinstance(tree, dict) or (hasattr(tree, "items") and hasattr(tree, "keys")):
        out = {}
        for k, v in tree.items():
            if not isinstance(k, str):
                raise TypeError(f"{where}: dict keys must be strings, got {k!r}")
            if k in (_ARRAY_TAG, _TUPLE_TAG):
                raise TypeError(f"{where}: the key {k!r} is reserved by the model file format")
            out[k] = _encode_tree(v, f"{where}[{k!r}]")
        return out
    if isinstance(tree, tuple) and not hasattr(tree, "_fields"):
        return {_TUPLE_TAG: [_encode_tree(v, f"{where}[{i}]") for i, v in enumerate(tree)]}
    if isinstance(tree, list):
        return [_encode_tree(v, f"{where}[{i}]") for i, v in enumerate(tree)]
    dtype = getattr(tree, "dtype", None)
    if dtype is None:
        if tree is None or isinstance(tree, bool | int | float | str):
            return tree
        raise TypeError(f"{where}: cannot store a {type(tree).__name__} in a model file")
    if "key<" in str(dtype):
        raise TypeError(f"{where}: PRNG key arrays cannot be stored; store jax.random.key_data")
    array = np.asarray(tree)
    if array.dtype.kind not in "biufc" and array.dtype.name not in ("bfloat16",):
        raise TypeError(f"{where}: arrays of dtype {array.dtype} cannot be stored")
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return {_ARRAY_TAG: array.dtype.name, "shape": list(array.shape),
            "data": np.ascontiguousarray(array).tobytes()}


def _dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        import jax.numpy as jnp  # registers ml_dtypes (bfloat16, float8, ...)

        return np.dtype(jnp.dtype(name))


def _decode_tree(obj: Any, where: str) -> Any:
    if isinstance(obj, dict):
        if _ARRAY_TAG in obj:
            try:
                dtype = _dtype(obj[_ARRAY_TAG])
                shape = tuple(int(s) for s in obj["shape"])
                data = obj["data"]
                if not isinstance(data, bytes) or dtype.kind not in "biufcV":
                    raise ValueError("bad array record")
                return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
            except (TypeError, ValueError, KeyError) as err:
                raise ValueError(f"{where}: malformed array record ({err})") from None
        if _TUPLE_TAG in obj:
            return tuple(_decode_tree(v, f"{where}[{i}]") for i, v in enumerate(obj[_TUPLE_TAG]))
        return {k: _decode_tree(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode_tree(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    return obj


def _to_jax(tree: Any) -> Any:
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda x: jnp.asarray(x) if isinstance(x, np.ndarray) else x, tree)


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def _json_default(obj):
    """NumPy / JAX scalars and arrays in configs and metadata become plain JSON values."""
    if isinstance(obj, np.generic):
        return obj.item()
    if hasattr(obj, "dtype") and hasattr(obj, "shape") and "key<" not in str(obj.dtype):
        return np.asarray(obj).tolist()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def save_model(path: str | os.PathLike, potential, params, *, metadata: dict | None = None,
               extras: dict | None = None) -> None:
    """Write ``potential.config`` and ``params`` to one model file, atomically.

    Args:
      path: destination; an existing file is replaced only once the new one is complete.
      potential: a :class:`~jaxpot.Potential` whose ``config`` is JSON-serialisable and whose
        name is registered (:func:`jaxpot.potential.register`).
      params: nested dicts (lists, tuples) of arrays, e.g. from ``potential.init``; sums use
        ``{"term0": ..., "term1": ...}``.
      metadata: optional JSON-serialisable dict kept in the file (training data, units, notes);
        NumPy/JAX scalars and arrays are converted to numbers and lists, NaN is allowed.
      extras: optional named trees of arrays that are not parameters of the energy but belong
        to the model (a feature-space density, calibration factors), e.g.
        ``{"feature_density": {...}}``; read back with :func:`read_model_extras`.

    Raises:
      ValueError: the config or metadata is not JSON-serialisable, or params hold something
        other than numeric arrays, scalars and containers.
    """
    from jaxpot import __version__

    config = getattr(potential, "config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise ValueError(f"save_model: potential.config must be a dict with a 'name', "
                         f"got {config!r}")
    try:
        config_json = json.dumps(config, sort_keys=True, allow_nan=False, default=_json_default)
        metadata_json = json.dumps(metadata or {}, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as err:
        raise ValueError(f"save_model: config/metadata are not JSON-serialisable: {err}") from None
    try:
        encoded = _encode_tree(params)
        fields = {"config": config_json, "metadata": metadata_json,
                  "jaxpot_version": __version__, "params": encoded}
        if extras:
            fields["extras"] = _encode_tree(dict(extras), "extras")
    except TypeError as err:
        raise ValueError(f"save_model: {err}") from None
    payload = msgpack.packb(fields, use_bin_type=True)
    blob = msgpack.packb(
        {"format": FORMAT, "format_version": VERSION,
         "sha256": hashlib.sha256(payload).hexdigest(), "payload": payload},
        use_bin_type=True,
    )
    with atomic_write(path, "wb") as f:
        f.write(blob)


def _read(path: str | os.PathLike) -> dict:
    path = os.fspath(path)
    with open(path, "rb") as f:  # FileNotFoundError names the path
        blob = f.read()
    bad = f"{path!r} is not a jaxpot model file"
    if not blob:
        raise ValueError(f"{bad}: it is empty")
    try:
        outer = msgpack.unpackb(blob, raw=False, strict_map_key=True)
    except Exception as err:  # msgpack raises several exception types on foreign input
        raise ValueError(f"{bad} (truncated or not msgpack: {type(err).__name__}: {err})"
                         ) from None
    if not isinstance(outer, dict) or outer.get("format") != FORMAT:
        raise ValueError(f"{bad}: no 'format': {FORMAT!r} header")
    version = outer.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise ValueError(f"{path!r}: invalid format_version {version!r}")
    if version > VERSION:
        raise ValueError(f"{path!r} uses model format version {version}, newer than this "
                         f"jaxpot reads ({VERSION}); upgrade jaxpot")
    payload, digest = outer.get("payload"), outer.get("sha256")
    if not isinstance(payload, bytes) or not isinstance(digest, str):
        raise ValueError(f"{path!r}: model file lacks its payload or checksum")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise ValueError(f"{path!r}: checksum mismatch, the model file is corrupted")
    try:
        inner = msgpack.unpackb(payload, raw=False, strict_map_key=True)
        config = json.loads(inner["config"])
        metadata = json.loads(inner.get("metadata", "{}"))
        params = inner["params"]
        extras = inner.get("extras", {})
    except Exception as err:
        raise ValueError(f"{path!r}: malformed model payload ({type(err).__name__}: {err})"
                         ) from None
    return {"format": FORMAT, "format_version": version,
            "jaxpot_version": inner.get("jaxpot_version"), "config": config,
            "metadata": metadata, "params": params, "extras": extras}


def read_model_extras(path: str | os.PathLike) -> dict:
    """The ``extras`` a model file was saved with (:func:`save_model`), as NumPy arrays; ``{}``
    when it has none.

    Raises:
      FileNotFoundError: no such file.
      ValueError: not a valid jaxpot model file.
    """
    info = _read(path)
    return _decode_tree(info["extras"], f"{os.fspath(path)!r}: extras") or {}


def stores_float64(path: str | os.PathLike) -> bool:
    """Whether a model file holds float64 parameters (a GAP model, a float64 training run).

    Such a model should run with 64-bit JAX (``jax.enable_x64``); without it JAX would
    truncate the parameters to float32. Unreadable files give False (loading them reports why).
    """
    try:
        info = _read(path)
    except (OSError, ValueError):
        return False

    def walk(obj) -> bool:
        if isinstance(obj, dict):
            if _ARRAY_TAG in obj:
                return obj[_ARRAY_TAG] == "float64"
            return any(walk(v) for v in obj.values())
        if isinstance(obj, list):
            return any(walk(v) for v in obj)
        return False

    return walk(info["params"])


def read_model_info(path: str | os.PathLike) -> dict:
    """Read a model file's header without building the potential.

    Returns:
      ``{"format", "format_version", "jaxpot_version", "config", "metadata", "params_shapes"}``
      where ``params_shapes`` mirrors the params tree with ``"float32[3, 16]"``-style strings.

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file is not a valid jaxpot model file (message names the path).
    """
    info = _read(path)
    params = _decode_tree(info.pop("params"), f"{os.fspath(path)!r}: params")
    info["extras"] = sorted(info.pop("extras") or {})

    def describe(x):
        if isinstance(x, np.ndarray):
            return f"{x.dtype.name}{list(x.shape)}"
        return x

    import jax

    info["params_shapes"] = jax.tree.map(describe, params)
    return info


def load_model(path: str | os.PathLike, *, check_params: bool = True):
    """Load a model file written by :func:`save_model`.

    The potential is rebuilt with :func:`jaxpot.potential.from_config`, so any registered
    family (including ones other modules register on import) can be loaded.

    Args:
      path: a model file.
      check_params: compare the stored params tree (keys, array shapes, kinds of dtype) with
        the tree the rebuilt potential's ``init`` makes for a tiny structure of the model's
        elements (:func:`expected_params`); skipped for a family whose ``init`` cannot run on
        such a structure.

    Returns:
      ``(potential, params)``; array leaves are JAX arrays with the saved dtypes and shapes
      (64-bit arrays need ``jax_enable_x64``, as anywhere in JAX).

    Raises:
      FileNotFoundError: no such file.
      ValueError: corrupt, truncated or foreign file, a newer format version, a config naming
        a potential that is not registered, or a parameter array that is missing, extra,
        mis-shaped or of the wrong kind of dtype; the message names the path (and the
        parameter, with the expected and the found shape).
    """
    info = _read(path)
    params = _decode_tree(info["params"], f"{os.fspath(path)!r}: params")
    try:
        potential = from_config(info["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{os.fspath(path)!r}: cannot rebuild the potential: {err}") from None
    if check_params:
        expected = expected_params(potential)
        if expected is not None:
            problems = params_mismatches(params, expected)
            if problems:
                shown = "; ".join(problems[:4])
                more = f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""
                raise ValueError(
                    f"{os.fspath(path)!r}: its parameters do not fit the "
                    f"{potential.config.get('name')!r} model its config describes: "
                    f"{shown}{more}")
    return potential, _to_jax(params)


# ---------------------------------------------------------------------------------------------
# Checking a params tree against the model
# ---------------------------------------------------------------------------------------------


def _config_species(config: Any) -> set[int]:
    """Atomic numbers named by any ``species`` field of a (nested) potential config."""
    from ase.data import atomic_numbers

    found: set[int] = set()
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "species" and isinstance(value, list | tuple):
                for s in value:
                    z = atomic_numbers.get(s) if isinstance(s, str) else s
                    if isinstance(z, int) and 0 < z < 119:
                        found.add(z)
            else:
                found |= _config_species(value)
    elif isinstance(config, list | tuple):
        for value in config:
            found |= _config_species(value)
    return found


def _dummy_system(potential):
    """A tiny non-periodic structure with one atom of each element the model knows."""
    from jaxpot.system import System

    species = potential.species
    numbers = sorted(species) if species is not None else sorted(_config_species(
        potential.config))
    numbers = numbers or [18]
    positions = np.zeros((len(numbers), 3))
    positions[:, 0] = 2.0 * np.arange(len(numbers))
    cutoff = float(potential.cutoff) if potential.cutoff and potential.cutoff > 0 else None
    return System.from_arrays(positions, numbers, cutoff=cutoff, where="dummy structure")


def expected_params(potential):
    """The params tree ``potential.init`` makes, as ``jax.ShapeDtypeStruct`` leaves.

    ``init`` is traced abstractly (``jax.eval_shape``, nothing is computed) on a tiny structure
    with one atom of each element the model knows, or with ``system=None`` for families whose
    ``init`` does not look at the structure.

    Returns:
      The tree, or None when ``init`` runs on neither (a family that needs real data).
    """
    import jax

    key = jax.random.key(0)
    try:
        system = _dummy_system(potential)
    except Exception:  # noqa: BLE001 - any failure only means "cannot check"
        system = None
    for candidate in (system, None) if system is not None else (None,):
        try:
            return jax.eval_shape(lambda k, s=candidate: potential.init(k, s), key)
        except Exception:  # noqa: BLE001 - try the next candidate, then give up checking
            continue
    return None


def _kind(dtype) -> str:
    dtype = np.dtype(dtype)
    if dtype.kind == "f" or "float" in dtype.name:
        return "float"
    return {"i": "integer", "u": "integer", "b": "bool", "c": "complex"}.get(dtype.kind,
                                                                           dtype.name)


def _describe(leaf) -> str:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return f"{_kind(leaf.dtype)} array of shape {tuple(leaf.shape)}"
    return type(leaf).__name__


def params_mismatches(found: Any, expected: Any, where: str = "params") -> list[str]:
    """Differences between a stored params tree and the tree a model expects.

    Args:
      found: the stored tree (dicts, lists, tuples of arrays).
      expected: the expected tree, e.g. from :func:`expected_params`.
      where: name of the root in the messages.

    Returns:
      One line per problem: a missing or extra key, a container of the wrong type or length,
      an array of another shape, or of another kind of dtype (float / integer / bool /
      complex; float32 against float64 is not a mismatch). Empty when the trees fit.
    """
    if hasattr(expected, "items") and hasattr(expected, "keys"):
        if not (hasattr(found, "items") and hasattr(found, "keys")):
            return [f"{where} is {_describe(found)}, expected a dict with keys "
                    f"{sorted(expected.keys())}"]
        out = [f"{where}[{k!r}] is missing (expected {_describe(expected[k])})"
               for k in expected if k not in found]
        out += [f"{where}[{k!r}] is not a parameter of this model" for k in found
                if k not in expected]
        for k in expected:
            if k in found:
                out += params_mismatches(found[k], expected[k], f"{where}[{k!r}]")
        return out
    if isinstance(expected, list | tuple):
        if not isinstance(found, list | tuple) or len(found) != len(expected):
            size = f" of length {len(found)}" if isinstance(found, list | tuple) else ""
            return [f"{where} is {_describe(found)}{size}, expected a sequence of "
                    f"{len(expected)}"]
        return [line for i, (f, e) in enumerate(zip(found, expected, strict=True))
                for line in params_mismatches(f, e, f"{where}[{i}]")]
    if not (hasattr(expected, "shape") and hasattr(expected, "dtype")):
        return []  # None or a Python scalar in the model's tree: nothing to compare
    if not hasattr(found, "shape"):
        if isinstance(found, bool | int | float) and expected.shape == ():
            return []
        return [f"{where} is {_describe(found)}, expected {_describe(expected)}"]
    out = []
    if tuple(found.shape) != tuple(expected.shape):
        out.append(f"{where} has shape {tuple(found.shape)}, expected {tuple(expected.shape)}")
    if _kind(found.dtype) != _kind(expected.dtype):
        out.append(f"{where} has dtype {np.dtype(found.dtype).name}, expected a "
                   f"{_kind(expected.dtype)} dtype ({np.dtype(expected.dtype).name})")
    return out


def nonfinite_params(params: Any) -> list[str]:
    """Paths (``params['net']['kernel']``) of float arrays holding NaN or infinity."""
    import jax

    bad = []
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        array = np.asarray(leaf)
        if _kind(array.dtype) in ("float", "complex") and not np.all(
                np.isfinite(array.astype(np.complex128 if array.dtype.kind == "c"
                                         else np.float64))):
            bad.append("params" + jax.tree_util.keystr(key_path))
    return bad

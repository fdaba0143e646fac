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
flushed, synced and then renamed over the destination (:func:`atomic_write`), so a crash
mid-write leaves the previous file intact.

Example::

    pot = jaxpot.potentials.lennard_jones(sigma=3.4, epsilon=0.0104, cutoff=8.5)
    params = pot.init(jax.random.key(0), None)
    jaxpot.save_model("argon.jaxpot", pot, params)
    pot2, params2 = jaxpot.load_model("argon.jaxpot")

``jaxpot info argon.jaxpot`` prints the config.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import Any

import msgpack
import numpy as np

from jaxpot.registry import from_config

__all__ = ["save_model", "load_model", "read_model_info", "atomic_write", "FORMAT", "VERSION"]

FORMAT = "jaxpot-model"
"""Value of the ``format`` field that marks a jaxpot model file."""

VERSION = 1
"""Newest ``format_version`` this jaxpot writes and reads."""

_ARRAY_TAG = "__ndarray__"
_TUPLE_TAG = "__tuple__"


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file next to ``path``; on success rename it over ``path``.

    If the body raises, the temporary file is removed and ``path`` is left as it was.

    Args:
      path: destination file.
      mode: ``"wb"`` or ``"w"`` (text, UTF-8).

    Yields:
      The open temporary file.

    Example::

        with atomic_write("out.csv", "w") as f:
            f.write("a,b\\n")
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"directory {directory!r} does not exist (writing {path!r})")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        kwargs = {"encoding": "utf-8", "newline": ""} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


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


def save_model(path: str | os.PathLike, potential, params, *, metadata: dict | None = None
               ) -> None:
    """Write ``potential.config`` and ``params`` to one model file, atomically.

    Args:
      path: destination; an existing file is replaced only once the new one is complete.
      potential: a :class:`~jaxpot.Potential` whose ``config`` is JSON-serialisable and whose
        name is registered (:func:`jaxpot.potential.register`).
      params: nested dicts (lists, tuples) of arrays, e.g. from ``potential.init``; sums use
        ``{"term0": ..., "term1": ...}``.
      metadata: optional JSON-serialisable dict kept in the file (training data, units, notes);
        NumPy/JAX scalars and arrays are converted to numbers and lists, NaN is allowed.

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
    except TypeError as err:
        raise ValueError(f"save_model: {err}") from None
    payload = msgpack.packb(
        {"config": config_json, "metadata": metadata_json, "jaxpot_version": __version__,
         "params": encoded},
        use_bin_type=True,
    )
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
    except Exception as err:
        raise ValueError(f"{path!r}: malformed model payload ({type(err).__name__}: {err})"
                         ) from None
    return {"format": FORMAT, "format_version": version,
            "jaxpot_version": inner.get("jaxpot_version"), "config": config,
            "metadata": metadata, "params": params}


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

    def describe(x):
        if isinstance(x, np.ndarray):
            return f"{x.dtype.name}{list(x.shape)}"
        return x

    import jax

    info["params_shapes"] = jax.tree.map(describe, params)
    return info


def load_model(path: str | os.PathLike):
    """Load a model file written by :func:`save_model`.

    The potential is rebuilt with :func:`jaxpot.potential.from_config`, so any registered
    family (including ones other modules register on import) can be loaded.

    Args:
      path: a model file.

    Returns:
      ``(potential, params)``; array leaves are JAX arrays with the saved dtypes and shapes
      (64-bit arrays need ``jax_enable_x64``, as anywhere in JAX).

    Raises:
      FileNotFoundError: no such file.
      ValueError: corrupt, truncated or foreign file, a newer format version, or a config
        naming a potential that is not registered; the message names the path.
    """
    info = _read(path)
    params = _decode_tree(info["params"], f"{os.fspath(path)!r}: params")
    try:
        potential = from_config(info["config"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{os.fspath(path)!r}: cannot rebuild the potential: {err}") from None
    return potential, _to_jax(params)

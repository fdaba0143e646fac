"""Training checkpoints: msgpack (flax.serialization), atomic writes, no pickle.

A checkpoint file holds the :class:`~jaxpot.train.TrainState` (params, optimiser state, EMA,
step, PRNG key), the best EMA parameters so far, and a JSON ``meta`` record (epoch and batch
position, history, best metrics, early-stopping counter, the potential's config, the data
shuffle seed). Together with the deterministic per-epoch shuffle of
:class:`~jaxpot.data.BatchLoader` this resumes a run to exactly the state it was in.

Writes go to a temporary file in the same directory which is fsynced and renamed over the
destination, so a kill during a write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from flax import serialization

from jaxpot import files

__all__ = ["Checkpointer", "save_checkpoint", "load_checkpoint", "atomic_write_bytes",
           "fingerprint_differences"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, creating its directory (:mod:`jaxpot.files`)."""
    files.atomic_write_bytes(path, data, make_dirs=True)


def _host(tree):
    return serialization.to_state_dict(tree)


def save_checkpoint(path: str | os.PathLike, state, best_params, meta: dict) -> None:
    """Atomically write a checkpoint.

    Args:
      path: the checkpoint file.
      state: a :class:`~jaxpot.train.TrainState`.
      best_params: best EMA parameters so far (or None).
      meta: JSON-serialisable record (epoch, batch, history, ...).
    """
    payload = {
        "format": "jaxpot-train-checkpoint",
        "version": 1,
        "state": _host(state),
        "has_best": best_params is not None,
        "best_params": _host(best_params) if best_params is not None else {},
        "meta": json.dumps(meta, default=_json_default),
    }
    atomic_write_bytes(path, serialization.msgpack_serialize(payload))


def _json_default(x):
    if isinstance(x, np.generic | np.ndarray):
        return np.asarray(x).tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def load_checkpoint(path: str | os.PathLike, state_template, params_template):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Args:
      path: the checkpoint file.
      state_template: a freshly created TrainState of the same structure (shapes and dtypes).
      params_template: a params tree of the same structure (for the best parameters).

    Returns:
      ``(state, best_params or None, meta)``.

    Raises:
      ValueError: not a jaxpot checkpoint, or its structure does not match the templates.
    """
    with open(path, "rb") as f:
        raw = serialization.msgpack_restore(f.read())
    if not isinstance(raw, dict) or raw.get("format") != "jaxpot-train-checkpoint":
        raise ValueError(f"{path}: not a jaxpot training checkpoint")
    try:
        state = serialization.from_state_dict(state_template, raw["state"])
        best = (serialization.from_state_dict(params_template, raw["best_params"])
                if raw["has_best"] else None)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: checkpoint does not match this model/optimizer ({err}); "
                         "use a fresh output directory or --restart") from err
    return state, best, json.loads(raw["meta"])


def fingerprint_differences(saved: dict | None, current: dict | None) -> list[str]:
    """What differs between two run fingerprints, one phrase per field (empty: same run).

    A fingerprint is a flat JSON dict (model, its options, the data files' content hashes, batch
    size, seed, ...; see :func:`jaxpot.train.runfiles.fingerprint`). A side without one
    (a checkpoint of an older jaxpot) differs from everything.
    """
    if current is None:
        return []
    if saved is None:
        return ["the checkpoint has no run fingerprint (written by an older jaxpot)"]
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if a != b:
            out.append(f"{key}: {a!r} in the checkpoint, {b!r} now")
    return out


class Checkpointer:
    """Where a run checkpoints to, what run it belongs to, and how long a write takes.

    Args:
      path: the checkpoint file (None: checkpointing off; every method is then a no-op).
      fingerprint: identity of the run (config and data hashes); stored in every checkpoint,
        and a checkpoint of a different run is refused on :meth:`load`.
    """

    def __init__(self, path: str | os.PathLike | None, *, fingerprint: dict | None = None):
        self.path = None if path is None else os.fspath(path)
        self.fingerprint = fingerprint
        self.seconds = 0.0  # duration of the last write (the budget reserves it)

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def exists(self) -> bool:
        return self.path is not None and os.path.exists(self.path)

    def save(self, state, best_params, meta: dict) -> None:
        """Write atomically; ``meta`` gets the fingerprint."""
        if self.path is None:
            return
        t0 = time.monotonic()
        save_checkpoint(self.path, state, best_params, {**meta, "fingerprint": self.fingerprint})
        self.seconds = time.monotonic() - t0

    def load(self, state_template, params_template):
        """``(state, best_params, meta)``, refusing a checkpoint of another run.

        Raises:
          ValueError: the checkpoint's fingerprint differs (each difference named), or its
            structure does not match the templates.
        """
        state, best, meta = load_checkpoint(self.path, state_template, params_template)
        diff = fingerprint_differences(meta.get("fingerprint"), self.fingerprint)
        if diff:
            raise ValueError(f"{self.path} belongs to a different run ({'; '.join(diff)}); "
                             "use --restart to start over, or another --out")
        return state, best, meta

"""Data-parallel training over several devices (and processes) with ``jax.sharding``.

A batch of ``B`` padded structures is split along its leading axis over a one-dimensional
device mesh (axis ``"batch"``); parameters, optimiser state and EMA stay replicated. The train
step is the ordinary jitted step: given a sharded batch and replicated parameters, the compiler
partitions the vmapped loss over the devices and inserts the all-reduce of the gradients, so
the update is the same as on one device up to the order of floating-point sums (no ``pmap``,
no hand-written collectives)::

    dp = data_parallel(4, batch_size=8)      # 4 devices, 2 structures on each
    batch = dp.put(numpy_batch)              # each device receives only its rows
    state = dp.replicate(state)

Several processes (``jax.distributed``, one per host or per GPU) see one global mesh; every
process builds the same batches on its host (the loader's order depends only on the seed and
the epoch) and transfers only the rows of its own devices (``jax.make_array_from_callback``), so
no device ever gathers the whole batch. Only process 0 writes files
(:func:`is_writer`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DataParallel", "data_parallel", "resolve_devices", "is_writer"]

AXIS = "batch"


def is_writer() -> bool:
    """True in the process that writes checkpoints, logs and model files (process 0)."""
    return jax.process_index() == 0


def resolve_devices(devices: int | Sequence | None, batch_sizes: Sequence[int]) -> list:
    """The devices a run uses.

    Args:
      devices: a count (the first ``devices`` of ``jax.devices()``), a list of devices, or None
        (all devices, reduced to the largest count that divides every batch size, so a default
        run never fails on an odd batch size).
      batch_sizes: the batch sizes that will be sharded (training, validation).

    Raises:
      ValueError: a count that is not positive, exceeds the devices present, or does not divide
        a batch size.
    """
    available = jax.devices()
    if devices is None:
        n = len(available)
        while any(b % n for b in batch_sizes):
            n -= 1
        return available[:n]
    if isinstance(devices, (int, np.integer)):
        n = int(devices)
        if not 1 <= n <= len(available):
            raise ValueError(f"devices: asked for {n}, this run sees {len(available)} "
                             f"({available[0].platform}); use 1..{len(available)}")
        chosen = available[:n]
    else:
        chosen = list(devices)
        if not chosen:
            raise ValueError("devices: an empty list")
    for b in batch_sizes:
        if b % len(chosen):
            raise ValueError(f"batch size {b} is not a multiple of the {len(chosen)} devices; "
                             f"choose a batch size divisible by {len(chosen)} (each device "
                             "takes an equal share)")
    return chosen


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """A one-axis device mesh with the batch split over it and everything else replicated.

    Attributes:
      mesh: the :class:`jax.sharding.Mesh` (axis ``"batch"``).
    """

    mesh: Mesh

    @property
    def n_devices(self) -> int:
        return int(self.mesh.devices.size)

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def put(self, tree):
        """Place a pytree of host arrays whose leaves all have the batch as leading axis,
        each device receiving only its rows (works across processes)."""
        sharding = self.batch_sharding
        return jax.tree.map(lambda x: _from_host(np.asarray(x), sharding), tree)

    def replicate(self, tree):
        """Place a pytree (parameters, optimiser state) whole on every device of the mesh."""
        sharding = self.replicated
        return jax.tree.map(lambda x: _from_host(np.asarray(jax.device_get(x)), sharding),
                            tree)


def _from_host(x: np.ndarray, sharding: NamedSharding):
    if x.ndim == 0 and sharding.spec != PartitionSpec():
        sharding = NamedSharding(sharding.mesh, PartitionSpec())
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def data_parallel(devices: int | Sequence | None = None, *, batch_sizes: Sequence[int] = (1,)
                  ) -> DataParallel | None:
    """A :class:`DataParallel` over the chosen devices, or None for a single device (the
    ordinary, unsharded path).

    Args:
      devices: see :func:`resolve_devices`.
      batch_sizes: the batch sizes to be split (each must be a multiple of the device count).
    """
    chosen = resolve_devices(devices, batch_sizes)
    if len(chosen) == 1 and jax.process_count() == 1:
        return None
    return DataParallel(Mesh(np.asarray(chosen, dtype=object), (AXIS,)))

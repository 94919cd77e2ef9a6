"""HDF5 files: assembled matrices (written collectively), run state and history (atomic saves).

Schema (all neuron-indexed data in the user's neuron order):
- assembly: datasets ``A``, ``H`` (n x n), ``G`` (n(d+1) x n(d+1), neuron-major), ``F`` (n), ``W``,
  ``b``; attributes ``n``, ``d``, ``ranks``, ``version`` and the domain.
- run state: group ``network`` (``W``, ``b``, ``c``, optional ``c0``, ``removed``), group
  ``history`` (one dataset per recorded quantity), ``result`` attributes, ``config`` (JSON).

Saving never corrupts an existing file: data goes to ``PATH.tmp`` first, which then replaces PATH.
``write_block_rows`` and ``save_state`` are collective; ``load_state`` and ``inspect`` are
rank-local.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import h5py
import numpy as np
from mpi4py import MPI

from distgn import __version__
from distgn.assembly import BlockRows
from distgn.errors import InputError
from distgn.network import Network


def _open_parallel(path: str, comm: MPI.Comm) -> h5py.File:
    """Open ``path`` for writing by all ranks (mpio driver when available)."""
    if comm.size > 1:
        if not h5py.get_config().mpi:
            raise InputError("h5py was built without MPI: parallel HDF5 output is unavailable "
                             "(install python3-h5py-mpi, or run with mpiexec so it is selected)")
        return h5py.File(path, "w", driver="mpio", comm=comm)
    return h5py.File(path, "w")


def _check_writable(path: str, comm: MPI.Comm) -> None:
    """Raise the same InputError on every rank if ``path`` cannot be written. Collective."""
    error = None
    if comm.rank == 0:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            error = f"output.path = {path!r}: folder {folder!r} does not exist or is not writable"
    error = comm.bcast(error)
    if error:
        raise InputError(error)


def _replace(tmp: str, path: str, comm: MPI.Comm) -> None:
    comm.Barrier()
    if comm.rank == 0:
        os.replace(tmp, path)
    comm.Barrier()


def _runs(index: np.ndarray) -> list[tuple[int, int, int]]:
    """Split sorted indices into contiguous runs ``(position, first, length)``."""
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [index.size]])
    return [(int(a), int(index[a]), int(z - a)) for a, z in zip(starts, stops, strict=True)]


def _expand(neurons: np.ndarray, block: int) -> np.ndarray:
    """Scalar indices of the neurons' ``block`` unknowns (neuron-major)."""
    return (neurons[:, None] * block + np.arange(block)[None, :]).ravel()


def write_block_rows(path: str, blocks: BlockRows, comm: MPI.Comm,
                     attrs: Mapping[str, object]) -> None:
    """Write A, H, G, F, W, b in the user's order, each rank its own rows. Collective."""
    _check_writable(path, comm)
    tree, n, d = blocks.tree, blocks.tree.n, blocks.W.shape[1]
    perm, iperm = tree.perm, tree.iperm
    local_users = perm[blocks.start:blocks.stop]
    order = np.argsort(local_users)
    users_sorted = local_users[order]
    F = comm.allgather(blocks.F)
    tmp = path + ".tmp"
    with _open_parallel(tmp, comm) as fh:
        for key, value in attrs.items():
            fh.attrs[key] = value
        fh.attrs.update({"n": n, "d": d, "ranks": comm.size, "version": __version__})
        fh.create_dataset("W", data=blocks.W[iperm])
        fh.create_dataset("b", data=blocks.b[iperm])
        fh.create_dataset("F", data=np.concatenate(F)[iperm])
        for name, rows in blocks.matrices.items():
            k = d + 1 if name == "G" else 1
            dset = fh.create_dataset(name, shape=(n * k, n * k), dtype="f8")
            local = rows[:, _expand(iperm, k)]  # columns in user order
            local = local.reshape(-1, k, n * k)[order].reshape(-1, n * k)
            for pos, first, length in _runs(users_sorted):
                dset[first * k:(first + length) * k] = local[pos * k:(pos + length) * k]
    _replace(tmp, path, comm)


def save_state(path: str, comm: MPI.Comm, network: Network, history: Mapping[str, list],
               result: Mapping[str, object], config: Mapping, removed: np.ndarray | None = None
               ) -> None:
    """Atomically save the network (user order), history and results. Collective (rank 0 writes)."""
    _check_writable(path, comm)
    if comm.rank == 0:
        tmp = path + ".tmp"
        with h5py.File(tmp, "w") as fh:
            fh.attrs["version"] = __version__
            fh.attrs["config"] = json.dumps(config)
            net = fh.create_group("network")
            net.create_dataset("W", data=network.W)
            net.create_dataset("b", data=network.b)
            if network.c is not None:
                net.create_dataset("c", data=network.c)
            if network.c0 is not None:
                net.create_dataset("c0", data=network.c0)
            net.create_dataset("removed", data=np.asarray(
                removed if removed is not None else [], dtype=np.int64))
            hist = fh.create_group("history")
            for key, values in history.items():
                hist.create_dataset(key, data=np.asarray(values, dtype=float))
            res = fh.create_group("result")
            for key, value in result.items():
                res.attrs[key] = value if not isinstance(value, (dict, list)) else json.dumps(value)
        os.replace(tmp, path)
    comm.Barrier()


def load_state(path: str) -> tuple[Network, dict[str, np.ndarray], dict[str, object]]:
    """Network, history and result attributes from a file written by ``save_state``."""
    try:
        with h5py.File(path, "r") as fh:
            if "network" not in fh:
                raise InputError(f"{path!r} is not a distgn run file (no group 'network')")
            net = fh["network"]
            network = Network(
                np.asarray(net["W"]), np.asarray(net["b"]),
                np.asarray(net["c"]) if "c" in net else None,
                float(np.asarray(net["c0"])) if "c0" in net else None,
            )
            history = {k: np.asarray(v) for k, v in fh.get("history", {}).items()}
            result = dict(fh["result"].attrs) if "result" in fh else {}
    except OSError as exc:
        raise InputError(f"cannot read {path!r}: {exc}") from None
    return network, history, result


def inspect(path: str) -> dict[str, object]:
    """A JSON-ready summary of any distgn HDF5 file: attributes, datasets and their shapes."""
    summary: dict[str, object] = {"path": path}
    try:
        with h5py.File(path, "r") as fh:
            summary["attrs"] = {k: _plain(v) for k, v in fh.attrs.items()}
            datasets: dict[str, list[int]] = {}
            fh.visititems(lambda name, obj: datasets.__setitem__(name, list(obj.shape))
                          if isinstance(obj, h5py.Dataset) else None)
            summary["datasets"] = datasets
            if "result" in fh:
                summary["result"] = {k: _plain(v) for k, v in fh["result"].attrs.items()}
    except OSError as exc:
        raise InputError(f"cannot read {path!r}: {exc}") from None
    return summary


def _plain(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value

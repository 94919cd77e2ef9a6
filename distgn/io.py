"""HDF5 files: one versioned schema for every file distgn writes, atomic and durable writes,
verified reads, run state and checkpoints.

Every file (schema version ``SCHEMA_VERSION``) has the root attributes ``schema_version``,
``distgn_version``, ``subcommand`` (``assemble``, ``analyze``, ``solve``, ``train``), ``kind``
(``result`` or ``checkpoint``), ``config`` (the whole configuration as TOML text), ``problem`` (a
hash of domain, target and n: ``config.problem_id``), ``created`` (UTC, ISO 8601), ``ranks`` and,
where known, ``n`` and ``d``; every dataset carries the attribute ``sha256`` (of its bytes in C
order), checked on every read. No group is empty. The run state of ``train`` (checkpoints and the
final result file alike):

- ``network/W`` (n x d), ``network/b``, ``network/c`` (n), ``network/c0`` (scalar, with the output
  bias), ``network/removed`` (indices of removed neurons), in the user's neuron order;
- ``history/<column>``: one float array per recorded quantity, one entry per iteration;
- ``optimizer``: attributes ``method``, ``iteration`` (total) and the method's scalars (SgGN
  ``loss``, ``l2_error``; Adam ``k``; BFGS ``k``, ``loss``, ``previous_loss``; LM ``damping``,
  ``nu``), datasets with the method's arrays (Adam
  ``theta``, ``first``, ``second``; BFGS ``theta``, ``gradient``, ``inverse_hessian``);
- ``rng``: attributes with the seeds (``network.seed``, ``solver.seed``) and ``note``: no random
  generator advances during training (the HSS sketch is drawn from ``solver.seed`` at every
  factorization), so the seeds are the complete random state;
- ``timings``: attributes ``seconds_total`` (all runs), ``seconds_this_run``,
  ``seconds_checkpoints`` (this run's time spent writing checkpoints);
- ``result``: attributes (``stop_reason``, ``iterations`` of this run, ``total_iterations``, loss,
  errors, ...); the root attribute ``finished`` is 1 in a finished run's file, 0 in a checkpoint.

Writes (``write_file``) go to a unique temporary name in the target's folder, are fsync'ed, renamed
over the target and the folder is fsync'ed: a crash or ``kill -9`` at any moment leaves the
previous file intact. ``write_file`` is collective (rank 0 writes, or every rank through the mpio
driver with ``parallel=True``); ``check_output`` is collective; ``read_run``, ``verify`` and
``inspect`` are rank-local.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import h5py
import numpy as np
from mpi4py import MPI

from distgn import __version__
from distgn.assembly import BlockRows
from distgn.config import Config, loads, problem_id, problem_signature, to_toml
from distgn.errors import InputError
from distgn.network import Network
from distgn.parallel import exchange_rows
from distgn.tree import split_offsets

SCHEMA_VERSION = 2
HASH_ROWS = 1 << 16  # rows hashed per read of a large dataset


# ---------------------------------------------------------------------------------------------
# Writing


def stamp(
    config: Config, subcommand: str, comm: MPI.Comm, kind: str = "result", **extra: object
) -> dict[str, object]:
    """The root attributes every file carries (see the module docstring)."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return {
        "schema_version": SCHEMA_VERSION,
        "distgn_version": __version__,
        "subcommand": subcommand,
        "kind": kind,
        "config": to_toml(config),
        "problem": problem_id(config),
        "created": now,
        "ranks": comm.size,
        **extra,
    }


def write_file(
    path: str,
    comm: MPI.Comm,
    attrs: Mapping[str, object],
    fill: Callable[[h5py.File], None],
    parallel: bool = False,
    keep: int = 1,
) -> None:
    """Write ``path`` atomically and durably: ``fill`` the file, checksum every dataset, fsync,
    rename over ``path``, fsync the folder. Collective.

    With ``parallel`` every rank calls ``fill`` on the file opened with the mpio driver; otherwise
    rank 0 alone does. ``keep > 1`` keeps the previous versions as ``path.1`` (newest) ..
    ``path.<keep-1>``. A failure on any rank removes the temporary file and raises on every rank
    (the original exception where it happened, an OSError naming that rank elsewhere); ``path``
    is left as it was.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    if comm.rank == 0:
        tmp = os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")
    # rank 0's name and attributes (``created`` may differ by a second between ranks)
    tmp, attrs = comm.bcast((tmp, dict(attrs)), root=0)
    error: BaseException | None = None
    try:
        if parallel and comm.size > 1:
            if not h5py.get_config().mpi:
                raise InputError(
                    "h5py was built without MPI: parallel HDF5 output is unavailable "
                    "(install python3-h5py-mpi, or run under mpiexec)"
                )
            with h5py.File(tmp, "w", driver="mpio", comm=comm) as fh:
                fh.attrs.update(dict(attrs))
                fill(fh)
        elif comm.rank == 0:
            with h5py.File(tmp, "w") as fh:
                fh.attrs.update(dict(attrs))
                fill(fh)
    except BaseException as exc:  # noqa: BLE001 - every rank must learn of the failure
        error = exc
    failed = comm.allgather(error is not None)
    if not any(failed) and comm.rank == 0:
        try:
            _add_checksums(tmp)
            _commit(tmp, path, keep)
        except BaseException as exc:  # noqa: BLE001
            error = exc
        failed[0] = error is not None
    failed = comm.bcast(failed, root=0)
    if any(failed):
        if comm.rank == 0 and os.path.exists(tmp):
            os.unlink(tmp)
        if error is not None:
            raise error
        raise OSError(f"writing {path!r} failed on rank {failed.index(True)}")


def _add_checksums(path: str) -> None:
    with h5py.File(path, "r+") as fh:
        datasets: list[h5py.Dataset] = []
        fh.visititems(
            lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None
        )
        for dset in datasets:
            dset.attrs["sha256"] = _digest(dset)


def _digest(dset: h5py.Dataset) -> str:
    """sha256 of the dataset's values (native float64/int64 bytes, C order), read in slabs."""
    sha = hashlib.sha256()
    if dset.ndim == 0 or dset.shape[0] <= HASH_ROWS:
        sha.update(np.ascontiguousarray(dset[()]).tobytes())
    else:
        for start in range(0, dset.shape[0], HASH_ROWS):
            sha.update(np.ascontiguousarray(dset[start : start + HASH_ROWS]).tobytes())
    return sha.hexdigest()


def _fsync(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(tmp: str, path: str, keep: int) -> None:
    """fsync ``tmp``, keep older versions, rename over ``path``, fsync the folder. ``path``
    exists (old or new) at every moment."""
    folder = os.path.dirname(os.path.abspath(path))
    _fsync(tmp)
    if keep > 1 and os.path.exists(path):
        for i in range(keep - 1, 1, -1):
            if os.path.exists(f"{path}.{i - 1}"):
                os.replace(f"{path}.{i - 1}", f"{path}.{i}")
        copy = f"{tmp}.previous"
        try:
            os.link(path, copy)
        except OSError:
            shutil.copy2(path, copy)
            _fsync(copy)
        os.replace(copy, f"{path}.1")
    os.replace(tmp, path)
    _fsync(folder, directory=True)


def check_output(
    path: str,
    comm: MPI.Comm,
    subcommand: str,
    config: Config,
    force: bool,
    key: str = "output.path",
) -> None:
    """Before any work: raise the same InputError on every rank unless ``path`` can be written
    and may be replaced. Collective (rank 0 checks, the verdict is broadcast).

    Refused: a folder, a missing or unwritable folder (a real test file is created and removed),
    an existing file that is not a distgn file, or was written by another subcommand or for
    another problem (``force`` allows the last three).
    """
    error = None
    if comm.rank == 0:
        error = _output_problem(path, subcommand, config, force, key)
    error = comm.bcast(error, root=0)
    if error:
        raise InputError(error)


def _output_problem(
    path: str, subcommand: str, config: Config, force: bool, key: str
) -> str | None:
    name = f"{key} = {path!r}" if "." in key else f"{key} {path!r}"
    if os.path.isdir(path):
        return f"{name} is a folder, not a file"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"{name}: folder {folder!r} does not exist"
    probe = os.path.join(folder, f".distgn-probe-{uuid.uuid4().hex[:12]}")
    try:
        with open(probe, "wb") as fh:
            fh.write(b"x")
        os.unlink(probe)
    except OSError as exc:
        return f"{name}: cannot write in folder {folder!r} ({exc.strerror})"
    if not os.path.exists(path) or force:
        return None
    hint = "choose another file (-o) or pass --force to replace it"
    try:
        with h5py.File(path, "r") as fh:
            written_by = fh.attrs.get("subcommand")
            problem = fh.attrs.get("problem")
    except OSError:
        return f"{name} exists and is not a distgn file; {hint}"
    if written_by is None:
        return f"{name} exists and is not a distgn file; {hint}"
    if written_by != subcommand:
        return f"{name} was written by 'distgn {written_by}'; {hint}"
    if problem != problem_id(config):
        return f"{name} holds another problem (domain, target or n differ); {hint}"
    return None


def write_block_rows(
    path: str, blocks: BlockRows, comm: MPI.Comm, attrs: Mapping[str, object]
) -> None:
    """Write A, H, G, F, W, b in the user's order, each rank its own rows (mpio). Collective."""
    tree, n, d = blocks.tree, blocks.tree.n, blocks.W.shape[1]
    perm, iperm = tree.perm, tree.iperm
    local_users = perm[blocks.start : blocks.stop]
    order = np.argsort(local_users)
    users_sorted = local_users[order]
    F = np.concatenate(comm.allgather(blocks.F))[iperm]

    def fill(fh: h5py.File) -> None:
        fh.create_dataset("W", data=blocks.W[iperm])
        fh.create_dataset("b", data=blocks.b[iperm])
        fh.create_dataset("F", data=F)
        for name, rows in blocks.matrices.items():
            k = d + 1 if name == "G" else 1
            dset = fh.create_dataset(name, shape=(n * k, n * k), dtype="f8")
            local = rows[:, _expand(iperm, k)]  # columns in user order
            local = local.reshape(-1, k, n * k)[order].reshape(-1, n * k)
            for pos, first, length in _runs(users_sorted):
                dset[first * k : (first + length) * k] = local[pos * k : (pos + length) * k]

    write_file(path, comm, {**attrs, "n": n, "d": d}, fill, parallel=True)


def _runs(index: np.ndarray) -> list[tuple[int, int, int]]:
    """Split sorted indices into contiguous runs ``(position, first, length)``."""
    breaks = np.flatnonzero(np.diff(index) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [index.size]])
    return [(int(a), int(index[a]), int(z - a)) for a, z in zip(starts, stops, strict=True)]


def _expand(neurons: np.ndarray, block: int) -> np.ndarray:
    """Scalar indices of the neurons' ``block`` unknowns (neuron-major)."""
    return (neurons[:, None] * block + np.arange(block)[None, :]).ravel()


def write_rows(
    group: h5py.Group, comm: MPI.Comm, n: int, users: np.ndarray, rows: Mapping[str, np.ndarray]
) -> None:
    """Datasets ``name`` of shape (n, ...) in the user order, from each rank's ``rows[name]``
    at user indices ``users``. Collective (``group`` of a file opened with the mpio driver, or
    of the only rank's).

    The rows go to the rank that writes their block of the user order (``split_offsets``; one
    ``Alltoallv``, nothing sent when a rank's rows are its block already, as for a 1D network
    split by rank) and every rank writes one contiguous slab of each dataset.
    """
    offsets = split_offsets(n, comm.size)
    names = list(rows)
    tails = [rows[name].shape[1:] for name in names]
    flat = np.hstack(
        [np.asarray(rows[name], dtype=float).reshape(users.size, -1) for name in names]
        + [users[:, None].astype(float)]
    )
    dest = np.searchsorted(offsets, users, side="right") - 1
    got = exchange_rows(comm, flat, dest)
    lo, hi = int(offsets[comm.rank]), int(offsets[comm.rank + 1])
    mine = np.empty_like(got)
    mine[got[:, -1].astype(np.int64) - lo] = got
    column = 0
    for name, tail in zip(names, tails, strict=True):
        size = int(np.prod(tail))
        dset = group.create_dataset(name, shape=(n, *tail), dtype="f8")
        dset[lo:hi] = mine[:, column : column + size].reshape((hi - lo, *tail))
        column += size


def write_network(group: h5py.Group, network: Network, removed: np.ndarray | None = None) -> None:
    """``W``, ``b``, ``c``, ``c0`` (and ``removed`` indices) into ``group``."""
    group.create_dataset("W", data=network.W)
    group.create_dataset("b", data=network.b)
    if network.c is not None:
        group.create_dataset("c", data=network.c)
    if network.c0 is not None:
        group.create_dataset("c0", data=float(network.c0))
    if removed is not None:
        group.create_dataset("removed", data=np.asarray(removed, dtype=np.int64))


def read_network(group: h5py.Group) -> Network:
    """The network stored by ``write_network`` (user order)."""
    return Network(
        np.asarray(group["W"]),
        np.asarray(group["b"]),
        np.asarray(group["c"]) if "c" in group else None,
        float(np.asarray(group["c0"])) if "c0" in group else None,
    )


def write_attrs(group: h5py.Group, values: Mapping[str, object]) -> None:
    """Scalars and strings as attributes; dicts and lists as JSON text."""
    for key, value in values.items():
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, default=_plain)
        elif value is None:
            value = "none"
        group.attrs[key] = value


# ---------------------------------------------------------------------------------------------
# Run state


@dataclass
class RunState:
    """Everything a ``train`` file holds (checkpoint or finished run), verified.

    Attributes
    ----------
    path : str
    config : Config
        The configuration the file was written with.
    attrs : dict
        Root attributes.
    network : Network
    removed : ndarray of bool
    history : dict of str to ndarray
    optimizer : dict
        Scalars and arrays of the optimizer (``method`` among them) and the recorder.
    result : dict
    timings : dict
    """

    path: str
    config: Config
    attrs: dict
    network: Network
    removed: np.ndarray
    history: dict
    optimizer: dict
    result: dict
    timings: dict


def save_run(
    path: str,
    comm: MPI.Comm,
    config: Config,
    kind: str,
    network: Network,
    removed: np.ndarray,
    history: Mapping[str, list],
    optimizer: Mapping[str, object],
    result: Mapping[str, object],
    timings: Mapping[str, float],
    keep: int = 1,
) -> None:
    """Write a ``train`` file (``kind`` "checkpoint" or "result"). Collective (rank 0 writes)."""
    attrs = stamp(
        config,
        "train",
        comm,
        kind,
        n=network.n,
        d=network.dim,
        finished=int(kind == "result"),
        method=config.train.method,
    )
    arrays = {k: v for k, v in optimizer.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in optimizer.items() if not isinstance(v, np.ndarray)}

    def fill(fh: h5py.File) -> None:
        write_network(fh.create_group("network"), network, np.flatnonzero(removed))
        if history:
            hist = fh.create_group("history")
            for key, values in history.items():
                hist.create_dataset(key, data=np.asarray(values, dtype=float))
        opt = fh.create_group("optimizer")
        write_attrs(opt, scalars)
        for key, value in arrays.items():
            opt.create_dataset(key, data=value)
        write_attrs(
            fh.create_group("rng"),
            {
                "network.seed": config.network.seed,
                "solver.seed": config.solver.seed,
                "note": "no generator advances during training; the HSS sketch is drawn from "
                "solver.seed at every factorization",
            },
        )
        write_attrs(fh.create_group("timings"), timings)
        write_attrs(fh.create_group("result"), result)

    write_file(path, comm, attrs, fill, keep=keep)


def verify(path: str, what: str = "file") -> None:
    """Raise InputError (one line naming ``path`` and the problem) unless ``path`` is a readable
    distgn file of this schema version whose datasets match their checksums. Rank-local."""
    with _open(path, what) as fh:
        _check_schema(fh, path, what)
        bad: list[str] = []

        def check(name: str, obj: object) -> None:
            if isinstance(obj, h5py.Dataset) and obj.attrs.get("sha256") != _digest(obj):
                bad.append(name)

        try:
            fh.visititems(check)
        except (OSError, RuntimeError, KeyError) as exc:
            raise InputError(f"{what} {path!r} is damaged (truncated?): {_reason(exc)}") from None
        if bad:
            raise InputError(
                f"{what} {path!r}: checksum of dataset {bad[0]} does not match (damaged file)"
            )


def _open(path: str, what: str) -> h5py.File:
    if os.path.isdir(path):
        raise InputError(f"{what} {path!r} is a folder, not a file")
    if not os.path.exists(path):
        raise InputError(f"{what} {path!r} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        reason = _reason(exc)
        if "truncated" in reason:
            raise InputError(f"{what} {path!r} is truncated ({reason})") from None
        if "signature" in reason or "not an hdf5" in reason.lower():
            raise InputError(f"{what} {path!r} is not an HDF5 file") from None
        raise InputError(f"{what} {path!r} cannot be read: {reason}") from None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        text.replace("Unable to open file ", "")
        .replace("Unable to synchronously open file ", "")
        .strip("() ")
    )


def _check_schema(fh: h5py.File, path: str, what: str) -> None:
    version = fh.attrs.get("schema_version")
    if version is None:
        raise InputError(
            f"{what} {path!r} is not a distgn file of schema version "
            f"{SCHEMA_VERSION} (no attribute schema_version)"
        )
    if int(version) != SCHEMA_VERSION:
        raise InputError(
            f"{what} {path!r} has schema version {int(version)}; this distgn "
            f"({__version__}) reads version {SCHEMA_VERSION}"
        )


def read_run(path: str, what: str = "--restart file") -> RunState:
    """The verified run state of a ``train`` file (checkpoint or finished run). Rank-local."""
    verify(path, what)
    with _open(path, what) as fh:
        if fh.attrs.get("subcommand") != "train" or "optimizer" not in fh:
            raise InputError(
                f"{what} {path!r} was written by 'distgn "
                f"{fh.attrs.get('subcommand')}', not by 'distgn train'"
            )
        config = loads(str(fh.attrs["config"]), f"the config stored in {what} {path!r}")
        net = fh["network"]
        network = read_network(net)
        removed = np.zeros(network.n, dtype=bool)
        removed[np.asarray(net["removed"], dtype=np.int64)] = True
        history = {k: np.asarray(v) for k, v in fh["history"].items()} if "history" in fh else {}
        optimizer = {k: _plain(v) for k, v in fh["optimizer"].attrs.items()}
        optimizer.update({k: np.asarray(v) for k, v in fh["optimizer"].items()})
        result = {k: _plain(v) for k, v in fh["result"].attrs.items()}
        timings = {k: _plain(v) for k, v in fh["timings"].attrs.items()}
        attrs = {k: _plain(v) for k, v in fh.attrs.items()}
    if (
        network.W.ndim != 2
        or network.b.shape != (network.n,)
        or (network.c is not None and network.c.shape != (network.n,))
    ):
        raise InputError(f"{what} {path!r}: network/W, b, c have inconsistent shapes")
    return RunState(path, config, attrs, network, removed, history, optimizer, result, timings)


def check_same_problem(state: RunState, config: Config) -> None:
    """Raise InputError naming the differing key(s) when ``state`` was written for another
    problem than ``config`` (domain, target, n, output bias; n against the file's network, which
    may be any stage's n with ``train.grow_from``)."""
    mine, theirs = problem_signature(config), problem_signature(state.config)
    differ = [key for key in ("domain", "target", "output_bias") if mine[key] != theirs[key]]
    sizes = config.train.stage_sizes(config.network.n)  # staged growth: any stage's n
    if config.network.init != "file" and state.network.n not in sizes:
        differ.append("network.n")
    if state.network.dim != _dim(config):
        differ.append("d")
    if differ:
        detail = {
            "domain": "domain",
            "target": "target.name",
            "output_bias": "network.output_bias",
            "network.n": f"network.n ({state.network.n} in the file, "
            f"{config.network.n} in the config)",
            "d": f"d ({state.network.dim} in the file)",
        }
        raise InputError(
            f"--restart file {state.path!r} is for another problem: "
            f"{', '.join(detail[k] for k in differ)} differ from the config"
        )


def _dim(config: Config) -> int:
    if config.domain.kind == "interval":
        return 1
    if config.domain.kind == "polygon":
        return 2
    return len(config.domain.bounds)


def load_state(path: str) -> tuple[Network, dict[str, np.ndarray], dict[str, object]]:
    """Network, history and result attributes of a verified ``train`` or ``solve`` file."""
    verify(path)
    with _open(path, "file") as fh:
        if "network" not in fh:
            raise InputError(
                f"file {path!r} holds no network (written by 'distgn {fh.attrs.get('subcommand')}')"
            )
        net = fh["network"]
        network = read_network(net)
        history = {k: np.asarray(v) for k, v in fh["history"].items()} if "history" in fh else {}
        result = {k: _plain(v) for k, v in fh["result"].attrs.items()} if "result" in fh else {}
    return network, history, result


# ---------------------------------------------------------------------------------------------
# Inspection


def inspect(path: str) -> dict[str, object]:
    """A JSON-ready tree of any distgn HDF5 file: every group with its attributes, every dataset
    with shape, dtype and whether its checksum matches. Rank-local."""
    with _open(path, "inspect:") as fh:

        def node(group: h5py.Group) -> dict[str, object]:
            out: dict[str, object] = {
                "attrs": {k: _plain(v) for k, v in group.attrs.items()},
                "groups": {},
                "datasets": {},
            }
            for name, obj in group.items():
                if isinstance(obj, h5py.Group):
                    out["groups"][name] = node(obj)
                else:
                    out["datasets"][name] = {
                        "shape": list(obj.shape),
                        "dtype": str(obj.dtype),
                        "checksum": ("ok" if obj.attrs.get("sha256") == _digest(obj) else "bad")
                        if "sha256" in obj.attrs
                        else "none",
                    }
            return out

        return {"path": path, **node(fh)}


def _plain(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value

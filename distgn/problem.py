"""The problem a run solves: domain, target and network, built and validated from the config.

Rank-local: every rank builds the same problem (same file, same seed), except that
``build_problem`` with a communicator splits a 1D network by rank (``Layout``): each rank then
builds and validates only its neurons (collective).
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
from mpi4py import MPI

from distgn import domain as domains
from distgn.config import CHOICES, Config
from distgn.domain import Domain
from distgn.errors import InputError
from distgn.network import Network, initial_network, sort_by_breakpoint, validate
from distgn.parallel import agree
from distgn.targets import Target, make_target
from distgn.tree import split_offsets


@dataclass(frozen=True)
class Layout:
    """A 1D network split by rank: rank p holds the neurons at positions
    ``offsets[p]:offsets[p + 1]`` of the breakpoint order (its block rows of the neuron tree).

    Attributes
    ----------
    offsets : ndarray of int, shape (P + 1,)
        ``tree.split_offsets(n, P)``: the rank ranges of the neuron tree.
    users : ndarray of int
        The user index of each of this rank's neurons.
    """

    offsets: np.ndarray
    users: np.ndarray

    @property
    def n(self) -> int:
        """Number of neurons of the whole network."""
        return int(self.offsets[-1])


@dataclass(frozen=True)
class Problem:
    """What to fit: ``u`` on ``domain`` with ``network``: all neurons in the user order, or with
    ``layout`` this rank's neurons in breakpoint order."""

    domain: Domain
    target: Target
    network: Network
    output_bias: bool = False
    layout: Layout | None = None


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise InputError naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"config key {key} = {value!r} is not one of {', '.join(choices)}")


def build_domain(config: Config) -> Domain:
    """The domain described by ``[domain]``."""
    cfg = config.domain
    check_choice("domain.kind", cfg.kind, CHOICES["domain.kind"])
    try:
        if cfg.kind == "interval":
            if len(cfg.bounds) != 2 or isinstance(cfg.bounds[0], list):
                raise InputError(f"domain.bounds = {cfg.bounds!r} must be [L, R] for an interval")
            return domains.interval(float(cfg.bounds[0]), float(cfg.bounds[1]))
        if cfg.kind == "box":
            return domains.box(cfg.bounds)
        return domains.polygon(cfg.vertices)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"domain {cfg.kind} is malformed: {exc}") from None


def read_parameters(path: str, dim: int, part: tuple[int, int] | None = None) -> Network:
    """Network parameters from HDF5 datasets ``W`` (n x d), ``b`` (n) and optional ``c``, ``c0``,
    all of them or the rows ``part = (p, P)`` of an even split (``split_offsets``) over P readers.

    A training output file is accepted too (datasets under ``network/``).
    """
    try:
        with h5py.File(path, "r") as fh:
            group = fh["network"] if "network" in fh and "W" not in fh else fh
            if "W" not in group or "b" not in group:
                raise InputError(f"network.file = {path!r} has no datasets W and b")
            shape_w, shape_b = group["W"].shape, group["b"].shape
            n = shape_b[0] if len(shape_b) == 1 else -1
            shape_c = group["c"].shape if "c" in group else None
            if (
                len(shape_w) not in (1, 2)
                or shape_w[0] != n
                or (len(shape_w) == 2 and shape_w[1] != dim)
                or (len(shape_w) == 1 and dim != 1)
            ):
                raise InputError(
                    f"network.file = {path!r}: W has shape {shape_w} and b {shape_b}; "
                    f"expected (n, {dim}) and (n,)"
                )
            if shape_c is not None and shape_c != shape_b:
                raise InputError(
                    f"network.file = {path!r}: c has shape {shape_c}, expected {shape_b}"
                )
            rows = slice(None)
            if part is not None:
                if n < part[1]:
                    raise InputError(
                        f"network.n = {n} is smaller than the number of ranks {part[1]}"
                    )
                offsets = split_offsets(n, part[1])
                rows = slice(int(offsets[part[0]]), int(offsets[part[0] + 1]))
            W = np.asarray(group["W"][rows], dtype=float).reshape(-1, dim)
            b = np.asarray(group["b"][rows], dtype=float)
            c = np.asarray(group["c"][rows], dtype=float) if shape_c is not None else None
            c0 = float(np.asarray(group["c0"])) if "c0" in group else None
    except OSError as exc:
        raise InputError(f"network.file = {path!r} cannot be read: {exc}") from None
    return Network(W, b, c, c0)


def check_problem(config: Config) -> tuple[Domain, Target]:
    """The domain and target of the configuration, and its network keys checked without
    building the network (InputError naming the key). Rank-local."""
    domain = build_domain(config)
    cfg = config.network
    check_choice("network.init", cfg.init, CHOICES["network.init"])
    check_choice("network.orientation", cfg.orientation, CHOICES["network.orientation"])
    target = make_target(config.target.name, domain)
    if cfg.init != "file" and cfg.n < 1:
        raise InputError(f"config key network.n = {cfg.n} must be at least 1")
    return domain, target


def build_problem(config: Config, comm: MPI.Comm | None = None) -> Problem:
    """Domain, target and validated network from the configuration.

    With ``comm`` a 1D network is split by rank (``Layout``, collective), O(n / P) per rank: a
    generated network (already in breakpoint order) is built by rows; a network from a file is
    read by rows and sorted across the ranks; each rank validates its part. Other dimensions,
    and calls without ``comm``, build the whole network on every rank (rank-local).
    """
    domain, target = check_problem(config)
    cfg = config.network
    if comm is not None and domain.dim == 1:
        network, layout = _split_network(config, domain, comm)
        return Problem(domain, target, network, cfg.output_bias, layout)
    if cfg.init == "file":
        network = read_parameters(cfg.file, domain.dim)
    else:
        network = initial_network(domain, cfg.n, cfg.init, cfg.seed, cfg.orientation)
    validate(network, domain)
    return Problem(domain, target, network, cfg.output_bias)


def _split_network(config: Config, domain: Domain, comm: MPI.Comm) -> tuple[Network, Layout]:
    """This rank's neurons of a 1D network split by rank, validated (collective).

    A generated network is built by rows. A file is read by rows (an even split of the user
    order) and sorted into breakpoint order across the ranks (``network.sort_by_breakpoint``).
    """
    cfg = config.network
    if cfg.init != "file":
        n = cfg.n
        if n < comm.size:
            raise InputError(f"network.n = {n} is smaller than the number of ranks {comm.size}")
        offsets = split_offsets(n, comm.size)
        start, stop = int(offsets[comm.rank]), int(offsets[comm.rank + 1])
        network = initial_network(
            domain, n, cfg.init, cfg.seed, cfg.orientation, rows=(start, stop)
        )
        users = np.arange(start, stop)
    else:
        error, part = None, None
        try:
            part = read_parameters(cfg.file, domain.dim, (comm.rank, comm.size))
        except InputError as exc:
            error = str(exc)
        agree(comm, error)
        n = comm.allreduce(part.n)
        offsets = split_offsets(n, comm.size)
        users = np.arange(offsets[comm.rank], offsets[comm.rank + 1])
        network, users = sort_by_breakpoint(comm, part, users)
    validate(network, domain, comm, users)
    return network, Layout(offsets, users)

"""Distributed symmetric operators: A, H or G over neurons in tree order.

An ``Operator`` is what every solver accepts. It offers this rank's dense block rows (when stored),
entry extraction ``entries(I, J)`` at any global tree-order indices (rank-local, exact integrals),
and a collective ``matvec`` on block-row-distributed vectors: from the stored rows, or matrix-free
from the 1D fast product (on each rank's own neurons, O(n/P)) or from exact entries computed
tile by tile (O(n) memory per rank). Indices are scalar: for G (block = d+1) index ``k`` is
derivative ``k % block`` of neuron ``k // block``.

``build`` is the one way to make the operator of a problem: it honours ``solver.matrix_free`` and
returns the assembled block rows (right-hand sides unless the 1D value coordinates integrate
their own, matrix rows unless matrix-free) next to the operator. ``nodal_operator`` turns a 1D
operator of A into the well-conditioned least-squares system in value coordinates (distgn.nodal,
docs/large-n.md), which every 1D solve with A uses unless ``solver.basis = "relu"``.
``regularised`` gives the ridge-shifted matrix ``M + delta diag(M)`` of the neuron-basis
least-squares solve (``solver.regularization``, docs/regularization.md); ``shifted`` adds a
general diagonal (the damping of SgGN's step).
Construction is rank-local; ``matvec`` and ``norm_estimate`` are collective.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
from mpi4py import MPI

from distgn.assembly import BlockRows, assemble_block_rows, pair_integrals
from distgn.config import SolverConfig
from distgn.domain import Domain
from distgn.errors import InputError
from distgn.fastmv import fast_matvec_1d
from distgn.network import Network
from distgn.nodal import NeuronSpan, NodalSystem
from distgn.problem import Problem
from distgn.tree import ClusterTree, build_tree, network_tree

TILE_ENTRIES = 1 << 22
DIAGONAL_TILE = 256
ROW_BLOCK = 1024
BASES = ("auto", "relu")


def local_gaussian(seed: int, lo: int, hi: int, width: int) -> np.ndarray:
    """Rows ``lo:hi`` of a seeded standard Gaussian matrix (any number of rows) x ``width``.

    Row block j (``ROW_BLOCK`` rows) is drawn by a counter-based Philox generator keyed by
    ``(seed, j)``, so a rank draws only its own rows and they are the same for every partition
    into ranks. Rank-local.
    """
    out = np.empty((hi - lo, width))
    for j in range(lo // ROW_BLOCK, (hi - 1) // ROW_BLOCK + 1 if hi > lo else 0):
        key = np.array([seed, j], dtype=np.uint64)
        block = np.random.Generator(np.random.Philox(key=key)).standard_normal((ROW_BLOCK, width))
        a, z = max(lo, j * ROW_BLOCK), min(hi, (j + 1) * ROW_BLOCK)
        out[a - lo : z - lo] = block[a - j * ROW_BLOCK : z - j * ROW_BLOCK]
    return out


@dataclass
class KnownNeurons:
    """Parameters ``(w, b)`` of other ranks' neurons that this rank received with skeletons
    (``Operator.learn``), by tree position: a neuron-basis operator of a network split by rank
    evaluates entries from its own neurons and these. Rank-local."""

    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    params: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    def learn(self, ids: np.ndarray, params: np.ndarray) -> None:
        """Keep ``params`` (one row ``(w, b)`` per neuron) of the neurons ``ids``."""
        stacked = params if self.ids.size == 0 else np.vstack([self.params, params])
        self.ids, first = np.unique(np.concatenate([self.ids, ids]), return_index=True)
        self.params = stacked[first]


@dataclass(frozen=True)
class Operator:
    """A symmetric matrix over neurons, distributed by block rows in tree order.

    Attributes
    ----------
    name : {"A", "H", "G"}
        Which matrix.
    comm : MPI.Comm
        The ranks sharing it; rank p owns neurons ``tree.rank_range(p)``.
    tree : ClusterTree
        Ordering and rank map.
    domain : Domain
        Integration domain (for entry extraction).
    W, b : ndarray
        The neurons' parameters in tree order: all of them, or this rank's only (a 1D network
        split by rank, ``problem.Layout``; ``own_neurons``). The entries of the value
        coordinates come from the system; those of the neuron basis then from the rank's own
        neurons and the ones received with skeletons (``known``).
    rows : ndarray or None
        This rank's block rows (m block, n block), or None when matrix-free.
    fast_matvec : callable or None
        1D matrix-free: this rank's rows of ``M x`` from its rows of x (``distgn.fastmv``:
        O(n/P) per product after a sort of the rank's interval ends on the first, a few sums per
        column sent; collective), else None.
    system : NodalSystem or None
        For the 1D least-squares system in value coordinates (``nodal_operator``): its exact
        entries and distributed product; the tree then orders value coordinates, not neurons.
    regularization : float
        delta >= 0: the matrix is ``M + delta diag(M)`` (``regularised``). Stored rows already
        carry the shift; ``entries`` and the matrix-free products add it.
    shift : ndarray or None
        ``delta diag(M)`` on this rank's rows (for the 1D fast product), else None.
    diagonal_shift : ndarray or None
        A general diagonal added to the matrix (``shifted``), shape (N,) in tree order, the same
        on every rank; stored rows already carry it, ``entries`` and the matrix-free products add
        it.
    rank_bound : int or None
        A bound on the rank of every off-diagonal block row ``M(I, I^c)`` of a contiguous index
        range I, when the structure gives one (the 1D value-coordinate system: ``2 band + 2 |N|``,
        ``nodal_operator``), else None. The hss skeletons never exceed it.
    """

    name: str
    comm: MPI.Comm
    tree: ClusterTree
    domain: Domain
    W: np.ndarray
    b: np.ndarray
    rows: np.ndarray | None = None
    fast_matvec: Callable[[np.ndarray], np.ndarray] | None = None
    system: NodalSystem | None = None
    regularization: float = 0.0
    shift: np.ndarray | None = None
    diagonal_shift: np.ndarray | None = None
    rank_bound: int | None = None
    known: KnownNeurons = field(default_factory=KnownNeurons)

    @property
    def block(self) -> int:
        """Scalar unknowns per tree index: d+1 for G in the neuron basis, else 1."""
        return self.domain.dim + 1 if self.name == "G" and self.system is None else 1

    @property
    def size(self) -> int:
        """Global order N of the matrix."""
        return self.tree.n * self.block

    @property
    def basis(self) -> str:
        """``"nodal"`` for the 1D value-coordinate system, ``"relu"`` for the neuron basis."""
        return "relu" if self.system is None else "nodal"

    @property
    def local_range(self) -> tuple[int, int]:
        """This rank's scalar row range ``[start, stop)`` in tree order."""
        start, stop = self.tree.rank_range(self.comm.rank)
        return start * self.block, stop * self.block

    def offsets(self) -> np.ndarray:
        """Scalar row offsets of all ranks, shape (P + 1,)."""
        return self.tree.rank_offsets() * self.block

    def own_neurons(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's neurons ``(W, b)``, its block rows of the neuron tree (neuron-basis
        operators, and the neurons a value-coordinate operator was built from). Rank-local."""
        if self.system is not None or self.W.shape[0] != self.tree.n:
            return self.W, self.b
        lo, hi = self.tree.rank_range(self.comm.rank)
        return self.W[lo:hi], self.b[lo:hi]

    def entries(self, I: np.ndarray, J: np.ndarray) -> np.ndarray:
        """Exact entries ``M[I][:, J]`` at global tree-order scalar indices; for stacked I
        (B, a) and J (B, b), the stack of blocks (B, a, b). Rank-local.

        Only the neurons involved enter the exact integrals, so the cost is
        O(|I| |J| + |I| + |J|) per block, independent of n.
        """
        I, J = np.asarray(I, dtype=np.int64), np.asarray(J, dtype=np.int64)
        if self.system is not None:
            return self.system.entries(I, J)
        if I.ndim > 1:
            out = np.stack([self._exact(i, j) for i, j in zip(I, J, strict=True)])
            out = out.reshape(I.shape + J.shape[-1:])
        else:
            out = self._exact(I, J)
        if self.regularization:
            out = out * np.where(I[..., :, None] == J[..., None, :], 1.0 + self.regularization, 1.0)
        if self.diagonal_shift is not None:
            on_diagonal = I[..., :, None] == J[..., None, :]
            out = out + np.where(on_diagonal, self.diagonal_shift[I][..., :, None], 0.0)
        return out

    def _exact(self, I: np.ndarray, J: np.ndarray) -> np.ndarray:
        """Exact entries ``M[I][:, J]`` of the unshifted neuron-basis matrix (1D index arrays)."""
        k = self.block
        neurons, inverse = np.unique(np.concatenate([I, J]) // k, return_inverse=True)
        li, lj = inverse[: I.size], inverse[I.size :]
        params = self._parameters(neurons)
        part = pair_integrals(self.domain, params[:, :-1], params[:, -1], li, lj, (self.name,))[
            self.name
        ]
        if k == 1:
            return part
        return part[
            np.arange(I.size)[:, None],
            np.arange(J.size)[None, :],
            (I % k)[:, None],
            (J % k)[None, :],
        ]

    def gather(self, x_local: np.ndarray) -> np.ndarray:
        """The full vector (N,) or (N, r) from every rank's rows. Collective."""
        x_local = np.ascontiguousarray(x_local, dtype=float)
        counts = np.diff(self.offsets())
        tail = x_local.shape[1:]
        width = int(np.prod(tail)) if tail else 1
        full = np.empty((self.size,) + tail)
        self.comm.Allgatherv(
            x_local, [full, counts * width, self.offsets()[:-1] * width, MPI.DOUBLE]
        )
        return full

    def skeleton_rows(self, index: np.ndarray) -> object:
        """What another rank needs to evaluate ``entries`` at rows ``index`` of this rank: the
        value-coordinate system's rows of N, ``Ms N`` and band values; for the neuron basis the
        neurons' ``(w, b)`` when the network is split by rank (else None: every rank has them).
        Rank-local."""
        if self.system is not None:
            return self.system.rows_at(index)
        if self.W.shape[0] == self.tree.n:
            return None
        ids = np.unique(np.asarray(index, dtype=np.int64) // self.block)
        return ids, self._parameters(ids)

    def learn(self, rows: object) -> None:
        """Keep rows received from another rank (``skeleton_rows``). Rank-local."""
        if rows is None:
            return
        if self.system is not None:
            self.system.learn(rows)
        else:
            self.known.learn(*rows)

    def _parameters(self, neurons: np.ndarray) -> np.ndarray:
        """``(w, b)`` of the neurons at tree positions ``neurons`` (sorted, unique): this rank's
        own, or received (``learn``). Rank-local."""
        first = 0 if self.W.shape[0] == self.tree.n else self.tree.rank_range(self.comm.rank)[0]
        local = neurons - first
        own = (local >= 0) & (local < self.W.shape[0])
        params = np.empty((neurons.size, self.W.shape[1] + 1))
        params[own] = np.column_stack([self.W[local[own]], self.b[local[own]]])
        if not own.all():
            other = neurons[~own]
            at = np.searchsorted(self.known.ids, other)
            found = at < self.known.ids.size
            found[found] = self.known.ids[at[found]] == other[found]
            if not found.all():
                raise ValueError(
                    f"entries at neurons {other[~found][:5].tolist()} that rank "
                    f"{self.comm.rank} neither holds nor received"
                )
            params[~own] = self.known.params[at]
        return params

    def matvec(self, x_local: np.ndarray) -> np.ndarray:
        """``M x`` on this rank's rows for a block-row-distributed x (m,) or (m, r). Collective.

        The nodal system exchanges only halo rows and a few sums, the 1D fast product a few sums
        per column; stored rows and the tiles of exact entries gather x.
        """
        if self.system is not None and self.rows is None:
            x_local = np.asarray(x_local, dtype=float)
            columns = x_local.reshape(x_local.shape[0], -1)
            return self.system.matvec(columns, self.comm).reshape(x_local.shape)
        start, stop = self.local_range
        if self.fast_matvec is not None:
            y = self.fast_matvec(x_local)
            shape = (-1,) + (1,) * (y.ndim - 1)
            if self.shift is not None:
                y = y + self.shift.reshape(shape) * x_local
            if self.diagonal_shift is not None:
                y = y + self.diagonal_shift[start:stop].reshape(shape) * x_local
            return y
        x = self.gather(x_local)
        if self.rows is not None:
            return self.rows @ x
        rows = np.arange(start, stop)
        y = np.zeros((stop - start,) + x.shape[1:])
        step = max(self.block, TILE_ENTRIES // max(1, stop - start) // self.block * self.block)
        for lo in range(0, self.size, step):
            cols = np.arange(lo, min(lo + step, self.size))
            y += self.entries(rows, cols) @ x[cols]
        return y

    def diagonal(self) -> np.ndarray:
        """Diagonal entries of this rank's rows (from the rows, else exact entries by tiles).
        Rank-local."""
        start, stop = self.local_range
        if self.rows is not None:
            return self.rows[np.arange(stop - start), np.arange(start, stop)].copy()
        tiles = [
            np.arange(lo, min(lo + DIAGONAL_TILE, stop)) for lo in range(start, stop, DIAGONAL_TILE)
        ]
        return np.concatenate([np.diag(self.entries(I, I)) for I in tiles] + [np.zeros(0)])

    def norm_estimate(self, iterations: int = 30, seed: int = 0) -> float:
        """2-norm estimate by power iteration (a lower bound within a few percent). Collective."""
        start, stop = self.local_range
        x = local_gaussian(seed, start, stop, 1)[:, 0]
        value = 0.0
        for _ in range(iterations):
            norm = np.sqrt(self.comm.allreduce(float(x @ x)))
            x = x / norm
            x = self.matvec(x)
            value = np.sqrt(self.comm.allreduce(float(x @ x)))
        return float(value)


@contextmanager
def regularised(operator: Operator, delta: float) -> Iterator[Operator]:
    """The ridge-shifted operator ``M + delta diag(M)`` for the duration of the block. Rank-local.

    Scaling the diagonal by ``1 + delta`` is invariant under the scaling of each neuron: for A the
    penalty ``delta sum_i A_ii c_i^2`` is the sum of the squared L2 norms of the neurons'
    contributions ``c_i phi_i`` (docs/regularization.md). Stored rows are shifted in place and
    their diagonal is restored exactly on exit (no copy); ``delta = 0`` yields ``operator``.
    """
    if delta == 0.0:
        yield operator
        return
    if operator.system is not None:
        raise ValueError("regularised: the value-coordinate system has no ridge shift")
    ridge = replace(operator, regularization=delta, shift=delta * operator.diagonal())
    with _stored_diagonal(operator, ridge, lambda diagonal: diagonal * (1.0 + delta)) as out:
        yield out


@contextmanager
def shifted(operator: Operator, shift: np.ndarray | None) -> Iterator[Operator]:
    """The operator ``M + diag(shift)`` for the duration of the block. Rank-local.

    ``shift`` (N,) in tree order, the same on every rank (None yields ``operator``). Stored rows
    are shifted in place and their diagonal is restored exactly on exit (no copy); the
    matrix-free products and ``entries`` add the shift.
    """
    if shift is None:
        yield operator
        return
    if operator.system is not None or operator.diagonal_shift is not None:
        raise ValueError("shifted: the operator is a value-coordinate system or already shifted")
    moved = replace(operator, diagonal_shift=np.asarray(shift, dtype=float))
    start, stop = operator.local_range
    local = moved.diagonal_shift[start:stop]
    with _stored_diagonal(operator, moved, lambda diagonal: diagonal + local) as out:
        yield out


@contextmanager
def _stored_diagonal(
    operator: Operator, changed: Operator, update: Callable[[np.ndarray], np.ndarray]
) -> Iterator[Operator]:
    """Yield ``changed`` with the diagonal of ``operator``'s stored rows replaced by
    ``update(diagonal)`` for the duration of the block and restored exactly on exit (no copy of
    the rows); without stored rows, just ``changed``. Rank-local."""
    if operator.rows is None:
        yield changed
        return
    start, stop = operator.local_range
    index = (np.arange(stop - start), np.arange(start, stop))
    rows = operator.rows
    diagonal = rows[index].copy()
    rows[index] = update(diagonal)
    try:
        yield changed
    finally:
        rows[index] = diagonal


def operator_from_block_rows(
    blocks: BlockRows, name: str, comm: MPI.Comm, domain: Domain
) -> Operator:
    """The operator of matrix ``name`` stored in ``blocks`` (no copy)."""
    return Operator(name, comm, blocks.tree, domain, blocks.W, blocks.b, blocks.matrices[name])


def uses_nodal(problem: Problem, config: SolverConfig, name: str) -> bool:
    """Whether solves with matrix ``name`` go through the 1D value coordinates (``nodal_operator``):
    A in 1D unless ``solver.basis = "relu"``."""
    if config.basis not in BASES:
        raise InputError(
            f"config key solver.basis = {config.basis!r} is not one of {', '.join(BASES)}"
        )
    return problem.domain.dim == 1 and name == "A" and config.basis == "auto"


def problem_tree(problem: Problem, config: SolverConfig, comm: MPI.Comm) -> ClusterTree:
    """The neuron tree of ``problem`` on ``comm``: the whole tree (``solver.ordering``,
    ``solver.leaf_size``), or this rank's tree of a network split by rank (its neurons are its
    block, already in breakpoint order). Rank-local."""
    layout = problem.layout
    if layout is not None:
        return build_tree(layout.users, comm.size, config.leaf_size, layout.offsets, comm.rank)
    net = problem.network
    return network_tree(problem.domain, net.W, net.b, config.ordering, comm.size, config.leaf_size)


def whole_problem(problem: Problem, comm: MPI.Comm) -> Problem:
    """``problem`` with the whole network on every rank (user order) when it is split by rank
    (one Allgatherv of the neurons: 8 (d + 2) bytes each). Collective when split."""
    layout = problem.layout
    if layout is None:
        return problem
    net = problem.network
    counts = np.diff(layout.offsets)
    columns = [net.W, net.b[:, None], layout.users[:, None].astype(float)]
    if net.c is not None:
        columns.append(net.c[:, None])
    local = np.ascontiguousarray(np.hstack(columns))
    width = local.shape[1]
    full = np.empty((layout.n, width))
    comm.Allgatherv(local, [full, counts * width, layout.offsets[:-1] * width, MPI.DOUBLE])
    user = np.empty(layout.n, dtype=np.int64)
    user[full[:, net.dim + 1].astype(np.int64)] = np.arange(layout.n)
    full = full[user]
    dim = net.dim
    network = Network(
        full[:, :dim], full[:, dim], None if net.c is None else full[:, dim + 2], net.c0
    )
    return replace(problem, network=network, layout=None)


def build(
    problem: Problem,
    config: SolverConfig,
    comm: MPI.Comm,
    name: str,
    tree: ClusterTree | None = None,
) -> tuple[Operator, BlockRows]:
    """Matrix ``name`` of ``problem`` over ``comm``, and this rank's assembled block rows.

    The tree is ``problem_tree`` unless given. With
    ``config.matrix_free`` no matrix rows are stored: 1D gets the exact fast product, other
    dimensions exact entries tile by tile; the block rows then carry only the right-hand sides.
    The neuron-basis rows of A and the target moments are not assembled in 1D when ``uses_nodal``
    (every solve with A then goes through ``nodal_operator``, which integrates its own right-hand
    side). A network split by rank (``problem.layout``) stays split, except that stored
    neuron-basis rows need every neuron: it is gathered first then (``whole_problem``; the tree
    is then the whole tree). Rank-local, except that gathering.
    """
    nodal = uses_nodal(problem, config, name)
    store = not config.matrix_free and not nodal
    if problem.layout is not None and store:
        problem, tree = whole_problem(problem, comm), None
    if tree is None:
        tree = problem_tree(problem, config, comm)
    blocks = assemble_block_rows(problem, tree, comm.rank, (name,) if store else (), not nodal)
    if store:
        return operator_from_block_rows(blocks, name, comm, problem.domain), blocks
    fast = None
    if problem.domain.dim == 1:
        lo, hi = tree.rank_range(comm.rank)
        first = blocks.first
        W, b = blocks.W[lo - first : hi - first], blocks.b[lo - first : hi - first]
        fast = fast_matvec_1d(problem.domain.bounds, W, b, name, comm)
    return Operator(name, comm, tree, problem.domain, blocks.W, blocks.b, None, fast), blocks


def nodal_operator(operator: Operator, config: SolverConfig, bias: bool = False) -> Operator:
    """The 1D least-squares system of ``operator``'s neurons (plus the constant with ``bias``) in
    scaled value coordinates: ``NodalSystem`` over a tree of its own on the same ranks, whose
    rank ranges are the system's value partition.

    Each rank passes only its own neurons (its block rows of the neuron tree, a contiguous block
    of the breakpoint order); the system holds O(n/P) per rank. Rows are stored (dense, for the
    dense back end) unless ``config.matrix_free``. Raises SolverError when the functions are
    linearly dependent. Collective.
    """
    L, R = (float(v) for v in operator.domain.bounds[0])
    W, b = operator.own_neurons()
    span = NeuronSpan(operator.name, L, R, W[:, 0], b, bias, operator.comm)
    system = NodalSystem(span)
    tree = build_tree(np.arange(system.size), operator.comm.size, config.leaf_size, system.offsets)
    # K(I, I^c) = (band coupling at both ends of I) + [N_I, (Ms N)_I] x (2 |N| rows).
    bound = 2 * system.band + 2 * system.span.null.shape[1]
    nodal = Operator(
        operator.name,
        operator.comm,
        tree,
        operator.domain,
        W,
        b,
        None,
        None,
        system,
        rank_bound=bound,
    )
    if config.matrix_free:
        return nodal
    return replace(nodal, rows=system.local_rows())

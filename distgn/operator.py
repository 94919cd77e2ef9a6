"""Distributed symmetric operators: A, H or G over neurons in tree order.

An ``Operator`` is what every solver accepts. It offers this rank's dense block rows (when stored),
entry extraction ``entries(I, J)`` at any global tree-order indices (rank-local, exact integrals),
and a collective ``matvec`` on block-row-distributed vectors: from the stored rows, or matrix-free
from the O(n log n) 1D fast product or from exact entries computed tile by tile (O(n) memory per
rank). Indices are scalar: for G (block = d+1) index ``k`` is derivative ``k % block`` of neuron
``k // block``.

``build`` is the one way to make the operator of a problem: it honours ``solver.matrix_free`` and
returns the assembled block rows (right-hand sides always, matrix rows unless matrix-free) next to
the operator. Construction is rank-local; ``matvec`` and ``norm_estimate`` are collective.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from distgn.assembly import BlockRows, assemble_block_rows, pair_integrals
from distgn.config import SolverConfig
from distgn.domain import Domain
from distgn.fastmv import fast_matvec_1d
from distgn.problem import Problem
from distgn.tree import ClusterTree, network_tree

TILE_ENTRIES = 1 << 22


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
        All neurons' parameters in tree order.
    rows : ndarray or None
        This rank's block rows (m block, n block), or None when matrix-free.
    fast_matvec : callable or None
        Full-vector product ``x -> M x`` in O(n log n) (1D matrix-free), else None.
    """

    name: str
    comm: MPI.Comm
    tree: ClusterTree
    domain: Domain
    W: np.ndarray
    b: np.ndarray
    rows: np.ndarray | None = None
    fast_matvec: Callable[[np.ndarray], np.ndarray] | None = None

    @property
    def block(self) -> int:
        """Scalar unknowns per neuron: d+1 for G, else 1."""
        return self.domain.dim + 1 if self.name == "G" else 1

    @property
    def size(self) -> int:
        """Global order N of the matrix."""
        return self.tree.n * self.block

    @property
    def local_range(self) -> tuple[int, int]:
        """This rank's scalar row range ``[start, stop)`` in tree order."""
        start, stop = self.tree.rank_range(self.comm.rank)
        return start * self.block, stop * self.block

    def offsets(self) -> np.ndarray:
        """Scalar row offsets of all ranks, shape (P + 1,)."""
        return self.tree.rank_offsets() * self.block

    def entries(self, I: np.ndarray, J: np.ndarray) -> np.ndarray:
        """Exact entries ``M[I][:, J]`` at global tree-order scalar indices. Rank-local."""
        I, J = np.asarray(I, dtype=np.int64), np.asarray(J, dtype=np.int64)
        k = self.block
        ni, nj = I // k, J // k
        ui, inv_i = np.unique(ni, return_inverse=True)
        uj, inv_j = np.unique(nj, return_inverse=True)
        part = pair_integrals(self.domain, self.W, self.b, ui, uj, (self.name,))[self.name]
        if k == 1:
            return part[np.ix_(inv_i, inv_j)]
        return part[inv_i[:, None], inv_j[None, :], (I % k)[:, None], (J % k)[None, :]]

    def gather(self, x_local: np.ndarray) -> np.ndarray:
        """The full vector (N,) or (N, r) from every rank's rows. Collective."""
        x_local = np.ascontiguousarray(x_local, dtype=float)
        counts = np.diff(self.offsets())
        tail = x_local.shape[1:]
        width = int(np.prod(tail)) if tail else 1
        full = np.empty((self.size,) + tail)
        self.comm.Allgatherv(x_local, [full, counts * width, self.offsets()[:-1] * width,
                                       MPI.DOUBLE])
        return full

    def matvec(self, x_local: np.ndarray) -> np.ndarray:
        """``M x`` on this rank's rows for a block-row-distributed x (m,) or (m, r). Collective."""
        x = self.gather(x_local)
        start, stop = self.local_range
        if self.rows is not None:
            return self.rows @ x
        if self.fast_matvec is not None:
            return self.fast_matvec(x)[start:stop]
        rows = np.arange(start, stop)
        y = np.zeros((stop - start,) + x.shape[1:])
        step = max(self.block, TILE_ENTRIES // max(1, stop - start) // self.block * self.block)
        for lo in range(0, self.size, step):
            cols = np.arange(lo, min(lo + step, self.size))
            y += self.entries(rows, cols) @ x[cols]
        return y

    def norm_estimate(self, iterations: int = 30, seed: int = 0) -> float:
        """2-norm estimate by power iteration (a lower bound within a few percent). Collective."""
        start, stop = self.local_range
        x = np.random.default_rng(seed).standard_normal(self.size)[start:stop]
        value = 0.0
        for _ in range(iterations):
            norm = np.sqrt(self.comm.allreduce(float(x @ x)))
            x = x / norm
            x = self.matvec(x)
            value = np.sqrt(self.comm.allreduce(float(x @ x)))
        return float(value)


def operator_from_block_rows(blocks: BlockRows, name: str, comm: MPI.Comm,
                             domain: Domain) -> Operator:
    """The operator of matrix ``name`` stored in ``blocks`` (no copy)."""
    return Operator(name, comm, blocks.tree, domain, blocks.W, blocks.b, blocks.matrices[name])


def build(problem: Problem, config: SolverConfig, comm: MPI.Comm, name: str,
          tree: ClusterTree | None = None) -> tuple[Operator, BlockRows]:
    """Matrix ``name`` of ``problem`` over ``comm``, and this rank's assembled block rows.

    The tree comes from ``config`` (ordering, leaf size) unless given. With
    ``config.matrix_free`` no matrix rows are stored: 1D gets the exact fast product, other
    dimensions exact entries tile by tile; the block rows then carry only the right-hand sides.
    Rank-local.
    """
    net = problem.network
    if tree is None:
        tree = network_tree(problem.domain, net.W, net.b, config.ordering, comm.size,
                            config.leaf_size)
    blocks = assemble_block_rows(problem, tree, comm.rank, () if config.matrix_free else (name,))
    if not config.matrix_free:
        return operator_from_block_rows(blocks, name, comm, problem.domain), blocks
    fast = None
    if problem.domain.dim == 1:
        fast = fast_matvec_1d(problem.domain.bounds, blocks.W, blocks.b, name)
    return Operator(name, comm, tree, problem.domain, blocks.W, blocks.b, None, fast), blocks

"""The distributed HSS factorization: local subtrees per rank, merged up the process tree.

Owns the traversal and all MPI of the hierarchical solver. Every rank compresses and factors the
subtree it owns (its block rows) bottom-up, with no communication. Above the rank level, the node
over ranks ``[lo, hi)`` with children over ``[lo, mid)`` and ``[mid, hi)`` is factored by rank
``lo`` (the leader of its left child); the leader of the right child sends it the child's summary
(skeleton indices, ``r x k`` samples, ``r x r`` transfer): with interpolative skeletons the bytes
per level are independent of n. The Schur-compensated scheme also needs the exact coupling
``F_a^T M(I_a, I_b) F_b``: the right child's ranks send their rows of ``F_b`` (r columns, like
skeleton rows: O(n r) bytes) to the left child's ranks, which own the rows of M, and the leader
broadcasts the node's small factor back to the group. Bytes sent are logged per tree level. Block
rows and n x n data never move. The solve sweeps the same tree: vectors of length r go up to the
leaders and back down.

Collective: constructing ``HSSFactorization``, ``solve``, ``logdet`` and ``stats``.
"""

from __future__ import annotations

import pickle
import time
from dataclasses import replace

import numpy as np
from mpi4py import MPI

from distgn.errors import InputError
from distgn.operator import Operator
from distgn.parallel import log
from distgn.solvers.base import Disposable
from distgn.solvers.hss import ulv
from distgn.solvers.hss.compress import (
    ProjectionScheme,
    Scheme,
    SkeletonScheme,
    gaussian_sketch,
    sketch,
)
from distgn.solvers.traffic import CountingComm, counting
from distgn.tree import Node

OVERSAMPLE = 10
DEFAULT_SAMPLES = 24


class HSSFactorization(Disposable):
    """Scaled ULV factorization of an HSS approximation of a distributed SPD operator.

    Parameters
    ----------
    operator : Operator
        The matrix, by block rows (stored or matrix-free) in tree order.
    tol : float
        Compression tolerance: skeletons drop pivots below ``tol * ||M Omega||_F / sqrt(k)``
        (about ``tol ||M||_F``); projections drop directions of a node's scaled sample below
        ``tol`` times its largest.
    samples : int
        Width k of the randomized sketch.
    seed : int
        Seed of the shared Gaussian sketch.
    compensated : bool
        Schur-compensated projections (``ProjectionScheme``, SPD approximation at any tolerance,
        needs stored block rows) instead of interpolative skeletons (``SkeletonScheme``).

    Notes
    -----
    Collective over ``operator.comm``. Use ``factor`` for the adaptive sketch width.
    """

    def __init__(
        self, operator: Operator, tol: float, samples: int, seed: int, compensated: bool = False
    ) -> None:
        start_time = time.perf_counter()
        operator = replace(operator, comm=counting(operator.comm))
        self.operator = operator
        self.comm: CountingComm = operator.comm
        self.counted_since = self.comm.snapshot()
        self.tol = tol
        self.samples = min(samples, operator.size)
        tree = operator.tree
        rank = self.comm.rank
        self.nodes = tree.nodes
        self.factors: dict[int, ulv.NodeFactor] = {}
        self.split: dict[int, int] = {}
        self.ranks: dict[int, int] = {}
        omega = gaussian_sketch(operator, self.samples, seed)
        with self.comm.labelled("sketch"):
            sample = sketch(operator, omega)
        self.compensated = compensated
        scheme: Scheme
        if compensated:
            if operator.rows is None:
                raise InputError(
                    "solver.compensation = 'schur' needs stored block rows "
                    "(solver.matrix_free = false)"
                )
            scheme = ProjectionScheme(operator, sample, omega, tol)
        else:
            # ||M Omega||_F / sqrt(k) estimates ||M||_F.
            with self.comm.labelled("sketch"):
                norm = np.sqrt(self.comm.allreduce(float(np.sum(sample * sample))) / self.samples)
            floor = max(ulv.FLOOR, 0.1 * tol)
            scheme = SkeletonScheme(operator, sample, omega, tol * norm, norm, floor)
        summaries: dict = {}
        for node in reversed(self.nodes):
            if node.is_local and node.rank_lo == rank:
                self._factor_node(scheme, node, summaries)
        for node in reversed(self.nodes):
            if not node.is_local and node.children:
                with self.comm.labelled(("level", node.level)):
                    self._merge_ranks(scheme, node, summaries)
        with self.comm.labelled("setup"):
            self.seconds = self.comm.allreduce(time.perf_counter() - start_time, op=MPI.MAX)
        self.seconds_solve = 0.0

    def _factor_node(
        self, scheme: Scheme, node: Node, summaries: dict, coupling: np.ndarray | None = None
    ) -> None:
        """Factor one node owned (led) by this rank and keep its summary for the parent."""
        root = node.parent < 0
        if node.is_leaf:
            factor, summary = scheme.leaf(node, root)
        else:
            left, right = (summaries.pop(c) for c in node.children)
            self.split[node.id] = left.rank
            extra = {} if coupling is None else {"coupling": coupling}
            factor, summary = scheme.merge(node, left, right, root, **extra)
        self.factors[node.id] = factor
        if summary is not None:
            summaries[node.id] = summary
            self.ranks[node.id] = summary.rank

    def _send(self, obj: object, dest: int, tag: int) -> None:
        """Send a pickled object (counted by the communicator under the current label)."""
        self.comm.send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dest=dest, tag=tag)

    def _recv(self, source: int, tag: int) -> object:
        return pickle.loads(self.comm.recv(source=source, tag=tag))

    def _merge_ranks(self, scheme: Scheme, node: Node, summaries: dict) -> None:
        """Factor a node over several ranks: the right child's leader sends its summary to the
        left child's leader, which factors the node. Every rank calls this, in the same order."""
        rank = self.comm.rank
        left, right = (self.nodes[c] for c in node.children)
        coupling = None
        if isinstance(scheme, ProjectionScheme):
            coupling = self._coupling(scheme, node, left, right)
        if rank == right.rank_lo:
            self._send(summaries.pop(right.id), node.rank_lo, node.id)
        if rank == node.rank_lo:
            summaries[right.id] = self._recv(right.rank_lo, node.id)
            self._factor_node(scheme, node, summaries, coupling)
        if isinstance(scheme, ProjectionScheme) and node.parent >= 0:
            factor = self.comm.bcast(self.factors.get(node.id), root=node.rank_lo)
            if node.rank_lo <= rank < node.rank_hi:
                scheme.extend_map(node, factor)

    def _coupling(
        self, scheme: ProjectionScheme, node: Node, left: Node, right: Node
    ) -> np.ndarray | None:
        """Exact ``C = F_a^T M(I_a, I_b) F_b`` on the node's leader. Collective.

        The ranks of the right child send their rows of ``F_b`` (|I_q| x r) to the ranks of the
        left child, which own the rows ``M(I_a, :)``; their partial products (r x r) go to the
        leader.
        """
        rank = self.comm.rank
        tag = len(self.nodes) + node.id
        if right.rank_lo <= rank < right.rank_hi:
            for dest in range(left.rank_lo, left.rank_hi):
                self._send(scheme.maps[right.id], dest, tag)
        partial = None
        if left.rank_lo <= rank < left.rank_hi:
            Fb = np.vstack([self._recv(q, tag) for q in range(right.rank_lo, right.rank_hi)])
            partial = scheme.partial_coupling(left, right, Fb)
        parts = self.comm.gather(partial, root=node.rank_lo)
        if rank != node.rank_lo:
            return None
        return sum(p for p in parts if p is not None)

    def warn_shift(self) -> None:
        """One warning line (rank 0) when a diagonal shift exceeds the tolerance relative to its
        block's norm: the factorization is then not within ``tol`` of the matrix. Collective."""
        relative = self.comm.allreduce(
            max((f.shift / f.norm for f in self.factors.values() if f.norm > 0), default=0.0),
            op=MPI.MAX,
        )
        if relative > self.tol and self.comm.rank == 0:
            log.warning(
                f"hss: a diagonal shift of {relative:.1e} times its block's norm (above "
                f"the tolerance {self.tol:.0e}) made {self.operator.name} positive "
                f"definite; the factorization is that far from the matrix"
            )

    @property
    def max_rank(self) -> int:
        """Largest skeleton rank on this rank's nodes."""
        return max(self.ranks.values(), default=0)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solution rows of this rank for right-hand-side rows (m,) or (m, k). Collective."""
        with self.comm.labelled("solve"):
            return self._solve(rhs)

    def _solve(self, rhs: np.ndarray) -> np.ndarray:
        start_time = time.perf_counter()
        rhs = np.asarray(rhs, dtype=float)
        b = rhs.reshape(rhs.shape[0], -1)
        rank = self.comm.rank
        offset = self.operator.local_range[0]
        block = self.operator.block
        kept: dict[int, np.ndarray] = {}
        decoupled: dict[int, np.ndarray] = {}
        x = np.empty_like(b)
        for node in reversed(self.nodes):
            if node.rank_lo != rank:
                continue
            if not node.is_local and node.children:
                right = self.nodes[node.children[1]]
                if right.rank_lo != rank:
                    kept[right.id] = self.comm.recv(source=right.rank_lo, tag=node.id)
            if node.is_leaf:
                local = b[node.start * block - offset : node.stop * block - offset]
            else:
                local = np.vstack([kept.pop(c) for c in node.children])
            kept[node.id], decoupled[node.id] = self.factors[node.id].forward(local)
            if node.parent < 0:
                continue
            parent = self.nodes[node.parent]
            if parent.rank_lo != rank:
                self.comm.send(kept.pop(node.id), dest=parent.rank_lo, tag=parent.id)
        for node in self.nodes:
            if node.rank_lo != rank:
                continue
            if node.parent < 0:
                z = kept.pop(node.id)
            else:
                parent = self.nodes[node.parent]
                z = (
                    self.comm.recv(source=parent.rank_lo, tag=node.id)
                    if parent.rank_lo != rank
                    else kept.pop(node.id)
                )
            y = self.factors[node.id].backward(decoupled.pop(node.id), z)
            if node.is_leaf:
                x[node.start * block - offset : node.stop * block - offset] = y
                continue
            left, right = (self.nodes[c] for c in node.children)
            r = self.split[node.id]
            kept[left.id] = y[:r]
            if right.rank_lo != rank:
                self.comm.send(y[r:], dest=right.rank_lo, tag=right.id)
            else:
                kept[right.id] = y[r:]
        self.seconds_solve = time.perf_counter() - start_time
        return x.reshape(rhs.shape)

    def logdet(self) -> float:
        """``log det`` of the approximate (SPD) matrix ``F F^T``. Collective."""
        return float(self.comm.inner.allreduce(sum(f.logdet for f in self.factors.values())))

    def stats(self) -> dict:
        """Ranks, memory, shifts, bytes and messages sent (per tree level above the ranks'
        subtrees, by the sketch and by the last solve: the counts taken at the communicator,
        summed over ranks) and time. Collective."""
        comm = self.comm.inner
        depth = max(nd.level for nd in self.nodes) + 1
        ranks = np.zeros(depth, dtype=np.int64)
        for nid, r in self.ranks.items():
            ranks[self.nodes[nid].level] = max(ranks[self.nodes[nid].level], r)
        comm.Allreduce(MPI.IN_PLACE, ranks, op=MPI.MAX)
        counts = np.zeros((2, depth + 3), dtype=np.int64)
        for column, label in enumerate(
            [("level", lv) for lv in range(depth)] + ["sketch", "setup", "solve"]
        ):
            counts[:, column] = self.comm.since(self.counted_since, label)
        comm.Allreduce(MPI.IN_PLACE, counts, op=MPI.SUM)
        factor_bytes = sum(f.nbytes for f in self.factors.values())
        shifted = sum(f.shift > 0 for f in self.factors.values())
        shift = comm.allreduce(
            max((f.shift for f in self.factors.values()), default=0.0), op=MPI.MAX
        )
        relative = comm.allreduce(
            max((f.shift / f.norm for f in self.factors.values() if f.norm > 0), default=0.0),
            op=MPI.MAX,
        )
        return {
            "kind": "hss",
            "seconds_factor": self.seconds,
            "seconds_solve": comm.allreduce(self.seconds_solve, op=MPI.MAX),
            "factor_bytes": int(comm.allreduce(factor_bytes, op=MPI.MAX)),
            "max_rank": int(ranks.max()),
            "ranks_per_level": ranks.tolist(),
            "bytes_sent_per_level": counts[0, :depth].tolist(),
            "messages_per_level": counts[1, :depth].tolist(),
            "bytes_sent_sketch": int(counts[0, depth]),
            "messages_sketch": int(counts[1, depth]),
            "bytes_sent_setup": int(counts[0, depth + 1]),
            "messages_setup": int(counts[1, depth + 1]),
            "bytes_sent_solve": int(counts[0, depth + 2]),
            "messages_solve": int(counts[1, depth + 2]),
            "factor_bytes_total": int(comm.allreduce(factor_bytes, op=MPI.SUM)),
            "shifted_blocks": int(comm.allreduce(shifted, op=MPI.SUM)),
            "shift_max": float(shift),
            "shift_max_relative": float(relative),
            "samples": self.samples,
            "scheme": "schur" if self.compensated else "skeleton",
        }


def factor(
    operator: Operator, tol: float, samples: int = 0, seed: int = 1, compensated: bool = False
) -> HSSFactorization:
    """Factor ``operator``; with ``samples = 0`` the sketch grows until every rank fits. Collective.

    A node's rank within ``OVERSAMPLE`` of the sketch width means the sketch may have missed part
    of its block row: the construction is repeated with a wider sketch (all ranks agree).
    """
    operator = replace(operator, comm=counting(operator.comm))
    comm: CountingComm = operator.comm
    counted_since = comm.snapshot()
    width = samples or DEFAULT_SAMPLES
    seconds = 0.0
    with comm.labelled("setup"):
        while True:
            result = HSSFactorization(operator, tol, width, seed, compensated)
            seconds += result.seconds
            top = comm.allreduce(result.max_rank, op=MPI.MAX)
            if samples or top + OVERSAMPLE <= result.samples or result.samples >= operator.size:
                result.seconds = seconds
                result.warn_shift()
                result.counted_since = counted_since  # every attempt's traffic is reported
                return result
            width = max(2 * width, top + 2 * OVERSAMPLE)

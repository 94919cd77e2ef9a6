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

With interpolative skeletons a rank's subtree is factored and swept a level at a time, the nodes of
a level with equal shapes together (``compress.Group``: stacked blocks, batched kernels), so the
Python work per level does not grow with the number of nodes; nodes above the ranks and the
compensated scheme's nodes are groups of one.

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
    Group,
    ProjectionScheme,
    Scheme,
    Skeleton,
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
        (about ``tol ||M||_F``; divided by ``sqrt(N)`` when the operator has a ``rank_bound``);
        projections drop directions of a node's scaled sample below ``tol`` times its largest.
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
        self.tree = tree
        self.groups: list[Group] = []  # this rank's factored nodes, children before parents
        self.singles: dict[int, Group] = {}  # nodes factored one at a time, by id
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
            threshold = tol * norm
            if operator.rank_bound is not None:
                # The skeletons cannot outgrow the bound, so a tight threshold costs nothing:
                # tol times the root-mean-square singular value ||M||_F / sqrt(N), within a
                # few of ||M||_2 for the 1D value-coordinate system (eigenvalues in [1/2, 3/2]
                # on the span). Against ||M||_F the dropped pivots grew like sqrt(N) relative
                # to ||M||_2 (backward error 3e-14 at n = 2^21 with random kinks).
                threshold /= np.sqrt(operator.size)
            scheme = SkeletonScheme(operator, sample, omega, threshold, norm, floor)
        summaries: dict = {}
        if isinstance(scheme, SkeletonScheme):
            self._factor_subtree(scheme, tree.rank_root(rank), summaries)
        else:
            for node in reversed(tree.nodes):
                if node.is_local and node.rank_lo == rank:
                    self._factor_node(scheme, node, summaries)
        for node in reversed(tree.nodes):
            if not node.is_local and node.children:
                with self.comm.labelled(("level", node.level)):
                    self._merge_ranks(scheme, node, summaries)
        with self.comm.labelled("setup"):
            self.seconds = self.comm.allreduce(time.perf_counter() - start_time, op=MPI.MAX)
        self.seconds_solve = 0.0

    def _add(self, group: Group, summaries: dict) -> None:
        """Keep a factored group and its nodes' summaries for their parents."""
        self.groups.append(group)
        if group.summaries:  # none at the root
            summaries.update(zip(group.ids.tolist(), group.summaries, strict=True))

    def _factor_subtree(self, scheme: SkeletonScheme, top: Node, summaries: dict) -> None:
        """Factor this rank's subtree (root ``top``) level by level, bottom-up."""
        levels: dict[int, list[Node]] = {}
        stack = [top]
        while stack:
            node = stack.pop()
            levels.setdefault(node.level, []).append(node)
            stack.extend(self.tree.node(c) for c in node.children)
        for level in sorted(levels, reverse=True):
            root = top.parent < 0 and level == top.level
            leaves = [nd for nd in levels[level] if nd.is_leaf]
            parents = [nd for nd in levels[level] if not nd.is_leaf]
            groups = scheme.leaves(leaves, root) if leaves else []
            if parents:
                lefts = [summaries.pop(nd.children[0]) for nd in parents]
                rights = [summaries.pop(nd.children[1]) for nd in parents]
                groups += scheme.parents(parents, lefts, rights, root)
            for group in groups:
                self._add(group, summaries)

    def _factor_node(
        self, scheme: Scheme, node: Node, summaries: dict, coupling: np.ndarray | None = None
    ) -> None:
        """Factor one node owned (led) by this rank and keep its summary for the parent."""
        root = node.parent < 0
        if isinstance(scheme, SkeletonScheme):  # a node above the ranks
            left, right = (summaries.pop(c) for c in node.children)
            (group,) = scheme.parents([node], [left], [right], root)
        else:
            split = 0
            if node.is_leaf:
                factor, summary = scheme.leaf(node, root)
            else:
                left, right = (summaries.pop(c) for c in node.children)
                split = left.rank
                extra = {} if coupling is None else {"coupling": coupling}
                factor, summary = scheme.merge(node, left, right, root, **extra)
            summaries_ = [] if summary is None else [summary]
            group = Group(np.array([node.id]), factor, split, node.level, summaries_)
        self.singles[node.id] = group
        self._add(group, summaries)

    def _send(self, obj: object, dest: int, tag: int) -> None:
        """Send a pickled object (counted by the communicator under the current label)."""
        self.comm.send(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), dest=dest, tag=tag)

    def _recv(self, source: int, tag: int) -> object:
        return pickle.loads(self.comm.recv(source=source, tag=tag))

    def _merge_ranks(self, scheme: Scheme, node: Node, summaries: dict) -> None:
        """Factor a node over several ranks: the right child's leader sends its summary to the
        left child's leader, which factors the node. Every rank calls this, in the same order."""
        rank = self.comm.rank
        left, right = (self.tree.node(c) for c in node.children)
        coupling = None
        if isinstance(scheme, ProjectionScheme):
            coupling = self._coupling(scheme, node, left, right)
        if rank == right.rank_lo:
            summary = summaries.pop(right.id)
            # Interpolative skeletons' couplings are exact entries at the skeleton rows.
            rows = (
                self.operator.skeleton_rows(summary.index)
                if isinstance(summary, Skeleton)
                else None
            )
            self._send((summary, rows), node.rank_lo, node.id)
        if rank == node.rank_lo:
            summary, rows = self._recv(right.rank_lo, node.id)
            self.operator.learn(rows)
            summaries[right.id] = summary
            self._factor_node(scheme, node, summaries, coupling)
        if isinstance(scheme, ProjectionScheme) and node.parent >= 0:
            single = self.singles.get(node.id)
            factor = self.comm.bcast(single and single.factor, root=node.rank_lo)
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
        tag = self.tree.node_count + node.id
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
        relative = self.comm.allreduce(self._relative_shift(), op=MPI.MAX)
        if relative > self.tol and self.comm.rank == 0:
            log.warning(
                f"hss: a diagonal shift of {relative:.1e} times its block's norm (above "
                f"the tolerance {self.tol:.0e}) made {self.operator.name} positive "
                f"definite; the factorization is that far from the matrix"
            )

    def _relative_shift(self) -> float:
        """Largest diagonal shift relative to its block's norm on this rank's nodes."""
        largest = 0.0
        for group in self.groups:
            shift, norm = np.atleast_1d(group.factor.shift), np.atleast_1d(group.factor.norm)
            hit = norm > 0
            if hit.any():
                largest = max(largest, float(np.max(shift[hit] / norm[hit])))
        return largest

    @property
    def max_rank(self) -> int:
        """Largest skeleton rank on this rank's nodes."""
        return max((g.rank for g in self.groups), default=0)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solution rows of this rank for right-hand-side rows (m,) or (m, k). Collective."""
        with self.comm.labelled("solve"):
            return self._solve(rhs)

    def _leaf_rows(self, group: Group) -> np.ndarray:
        """This rank's rows of a group of leaves (of equal size), stacked (B, s)."""
        block = self.operator.block
        first = self.tree.node(int(group.ids[0]))
        starts = np.array([self.tree.node(i).start for i in group.ids.tolist()])
        offset = self.operator.local_range[0]
        return (starts * block - offset)[:, None] + np.arange(first.size * block)

    def _solve(self, rhs: np.ndarray) -> np.ndarray:
        start_time = time.perf_counter()
        rhs = np.asarray(rhs, dtype=float)
        b = rhs.reshape(rhs.shape[0], -1)
        rank = self.comm.rank
        kept: dict[int, np.ndarray] = {}
        stash = []

        def child_part(node: Node, child: int) -> np.ndarray:
            leader = self.tree.node(child).rank_lo
            if leader != rank:
                return self.comm.recv(source=leader, tag=node.id)
            return kept.pop(child)

        for group in self.groups:
            nodes = [self.tree.node(i) for i in group.ids.tolist()]
            if nodes[0].is_leaf:
                local = b[self._leaf_rows(group)]
            else:
                local = np.stack(
                    [np.vstack([child_part(nd, c) for c in nd.children]) for nd in nodes]
                )
            up, down = group.factor.forward(local)
            stash.append(down)
            for node, part in zip(nodes, up, strict=True):
                parent = self.tree.node(node.parent) if node.parent >= 0 else node
                if parent.rank_lo != rank:
                    self.comm.send(part, dest=parent.rank_lo, tag=parent.id)
                else:
                    kept[node.id] = part

        def own_part(node: Node) -> np.ndarray:
            leader = self.tree.node(node.parent).rank_lo if node.parent >= 0 else rank
            if leader != rank:
                return self.comm.recv(source=leader, tag=node.id)
            return kept.pop(node.id)

        x = np.empty_like(b)
        for group, down in zip(reversed(self.groups), reversed(stash), strict=True):
            nodes = [self.tree.node(i) for i in group.ids.tolist()]
            y = group.factor.backward(down, np.stack([own_part(nd) for nd in nodes]))
            if nodes[0].is_leaf:
                x[self._leaf_rows(group)] = y
                continue
            r = group.split
            for node, part in zip(nodes, y, strict=True):
                left, right = node.children
                kept[left] = part[:r]
                leader = self.tree.node(right).rank_lo
                if leader != rank:
                    self.comm.send(part[r:], dest=leader, tag=right)
                else:
                    kept[right] = part[r:]
        self.seconds_solve = time.perf_counter() - start_time
        return x.reshape(rhs.shape)

    def logdet(self) -> float:
        """``log det`` of the approximate (SPD) matrix ``F F^T``. Collective."""
        return float(
            self.comm.inner.allreduce(sum(float(np.sum(g.factor.logdet)) for g in self.groups))
        )

    def stats(self) -> dict:
        """Ranks, memory, shifts, bytes and messages sent (per tree level above the ranks'
        subtrees, by the sketch and by the last solve: the counts taken at the communicator,
        summed over ranks) and time. Collective."""
        comm = self.comm.inner
        depth = self.tree.depth() + 1
        ranks = np.zeros(depth, dtype=np.int64)
        for group in self.groups:
            ranks[group.level] = max(ranks[group.level], group.rank)
        comm.Allreduce(MPI.IN_PLACE, ranks, op=MPI.MAX)
        counts = np.zeros((2, depth + 3), dtype=np.int64)
        for column, label in enumerate(
            [("level", lv) for lv in range(depth)] + ["sketch", "setup", "solve"]
        ):
            counts[:, column] = self.comm.since(self.counted_since, label)
        comm.Allreduce(MPI.IN_PLACE, counts, op=MPI.SUM)
        factor_bytes = sum(g.factor.nbytes for g in self.groups)
        shifts = [np.atleast_1d(g.factor.shift) for g in self.groups]
        shifted = sum(int(np.count_nonzero(s > 0)) for s in shifts)
        shift = comm.allreduce(
            max((float(s.max()) for s in shifts if s.size), default=0.0), op=MPI.MAX
        )
        relative = comm.allreduce(self._relative_shift(), op=MPI.MAX)
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

"""Compression of HSS block rows from a randomized sketch, node by node, with nested bases.

Owns the sketch ``Y = M Omega`` (a seeded Gaussian Omega; each rank draws only its own rows), the
row interpolative decomposition and range bases (pivoted QR from scipy), and the two per-node
schemes that turn a node's sample into its ULV factor (``distgn.solvers.hss.ulv``) and the summary
its parent needs. Ranks are adaptive (decided by the tolerance); the caller grows the sketch when a
rank comes within the oversampling margin of its width.

``SkeletonScheme`` (Martinsson's randomized HSS construction with interpolative skeletons): a
leaf's block-row sample is ``Y(I) - D Omega(I)``; a parent only sees its children's skeleton rows
``J_a + J_b`` and its sample is ``Y(J_a + J_b)`` minus the local part
``M(J_a + J_b, I_p) Omega(I_p)``, assembled from the children's local samples and the sibling
coupling ``B = M(J_a, J_b)`` (exact entries) acting on their reduced sketches
``Omega_hat = U^T Omega``. A child passes up only skeleton-sized data.

``ProjectionScheme`` (Schur-compensated): each node scales its reduced block row by the inverse
Cholesky factor of its diagonal block and keeps an orthonormal range of the scaled sketch; the
couplings are exact products with the stored rows, so the approximation is SPD at any tolerance.

``SkeletonScheme`` works a tree level at a time: the nodes of a level with equal shapes form a
``Group`` whose blocks are stacked and eliminated by batched kernels (``ulv``), in chunks of
``CHUNK`` nodes; only the interpolative decomposition (a pivoted QR of the k x s sample) is a LAPACK
call per node. Rank-local, except ``sketch`` (collective).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import scipy.linalg as sla
import scipy.linalg.lapack as lapack

from distgn.operator import Operator, local_gaussian
from distgn.solvers.hss.ulv import (
    NodeFactor,
    ScaledFactor,
    block_norm,
    coupled_block,
    coupled_block_batch,
    lower_solve,
    orthogonal_eliminate,
    root_factor,
    spd_sqrt,
    upper_solve,
)
from distgn.tree import Node

CHUNK = 2048  # nodes per batched call: bounds the stacked temporaries (64 x 64 blocks: ~35 MB)


@dataclass
class Skeleton:
    """What a node passes to its parent (all skeleton-sized).

    Attributes
    ----------
    index : ndarray of int, shape (r,)
        Global tree-order scalar indices of the skeleton rows J.
    transfer : ndarray, shape (r, r)
        ``T``: the kept coordinates' coupling to the rest is ``T M(J, rest)``.
    diagonal : ndarray, shape (r, r)
        The kept coordinates' diagonal block (Schur complement of the node's elimination).
    sample : ndarray, shape (r, k)
        ``Y(J)``: the global sketch at the skeleton rows.
    local : ndarray, shape (r, k)
        ``M(J, I) Omega(I)`` over the node's own index set I.
    omega : ndarray, shape (r, k)
        ``U^T Omega(I)`` with the node's (nested) interpolation basis U.
    """

    index: np.ndarray
    transfer: np.ndarray
    sample: np.ndarray
    local: np.ndarray
    omega: np.ndarray
    diagonal: np.ndarray

    FIELDS: ClassVar[tuple[str, ...]] = (
        "index",
        "transfer",
        "sample",
        "local",
        "omega",
        "diagonal",
    )

    @property
    def rank(self) -> int:
        """Number of skeleton rows."""
        return int(self.index.size)


@dataclass
class Group:
    """Nodes of one tree level factored together, with what their parents need.

    Attributes
    ----------
    ids : ndarray of int
        Node ids.
    factor : NodeFactor
        The nodes' factors (a batch over ``ids``; ``ScaledFactor``: one node).
    split : int
        Parents: the left child's rank (its kept coordinates come first); leaves: 0.
    level : int
        Tree level of the nodes.
    summaries : list
        Per node, what its parent needs (``Skeleton`` or ``Projection``); empty at the root.
    """

    ids: np.ndarray
    factor: NodeFactor
    split: int
    level: int
    summaries: list = field(default_factory=list)

    @property
    def rank(self) -> int:
        """Kept coordinates per node (0 at the root)."""
        return self.summaries[0].rank if self.summaries else 0


def batches(nodes: Sequence[Node], shape: Sequence) -> Iterator[np.ndarray]:
    """Positions of ``nodes`` grouped by equal ``shape`` entries, in chunks of at most CHUNK."""
    keys: dict = {}
    for i, key in enumerate(shape):
        keys.setdefault(key, []).append(i)
    for members in keys.values():
        for lo in range(0, len(members), CHUNK):
            yield np.array(members[lo : lo + CHUNK], dtype=np.int64)


def gaussian_sketch(operator: Operator, width: int, seed: int) -> np.ndarray:
    """This rank's rows of the seeded Gaussian test matrix Omega (N x width).

    Each rank draws only its rows (``distgn.operator.local_gaussian``: counter-based, keyed by the
    seed and the row block), and they are the same whatever the number of ranks. Rank-local.
    """
    return local_gaussian(seed, *operator.local_range, width)


def sketch(operator: Operator, omega: np.ndarray) -> np.ndarray:
    """This rank's rows of ``Y = M Omega`` from this rank's rows of Omega. Collective."""
    return operator.matvec(omega)


def row_id(
    Z: np.ndarray, threshold: float, bound: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Row interpolative decomposition ``Z ~ U Z[J]`` by pivoted QR of ``Z^T``.

    The rank is the number of pivots ``|R_jj| > threshold``, at most ``bound`` when given (a
    known bound on the rank of what Z samples: pivots past it are noise); ``U`` has the identity
    in rows J.

    Returns
    -------
    J : ndarray of int
        Skeleton row positions (in pivot order).
    U : ndarray, shape (s, r)
        Interpolation matrix.
    """
    s = Z.shape[0]
    if s == 0 or Z.shape[1] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((s, 0))
    R, jpvt, _, _, _ = lapack.dgeqp3(Z.T)
    piv = jpvt.astype(np.int64) - 1
    diag = np.abs(np.diagonal(R))
    r = int(np.count_nonzero(diag > threshold))
    if bound is not None:
        r = min(r, bound)
    U = np.zeros((s, r))
    U[piv[:r], np.arange(r)] = 1.0
    if 0 < r < s:
        U[piv[r:]] = lapack.dtrtrs(R[:r, :r], R[:r, r:])[0].T
    return piv[:r], U


class Scheme:
    """What both schemes share: the operator, the sketch and block access.

    Parameters
    ----------
    operator : Operator
        The matrix (stored rows are used for local blocks when present, exact entries otherwise).
    sample : ndarray
        This rank's rows of ``Y = M Omega``.
    omega : ndarray
        This rank's rows of Omega.
    threshold : float
        Pivot threshold of the rank decisions (absolute for skeletons, relative for projections).
    """

    def __init__(
        self, operator: Operator, sample: np.ndarray, omega: np.ndarray, threshold: float
    ) -> None:
        self.operator = operator
        self.sample = sample
        self.omega = omega
        self.threshold = threshold
        self.local_range = operator.local_range
        self.offset = self.local_range[0]

    def block(self, I: np.ndarray, J: np.ndarray) -> np.ndarray:
        """``M(I, J)``, or a stack of blocks for stacked I (B, a) and J (B, b): from the stored
        rows when this rank has them, else exact entries (of the involved indices only:
        O(|I| |J|) whatever n)."""
        rows = self.operator.rows
        start, stop = self.local_range
        if rows is not None and I.size and I.min() >= start and I.max() < stop:
            return rows[I[..., :, None] - start, J[..., None, :]]
        return self.operator.entries(I, J)

    def diagonal_block(self, node: Node) -> np.ndarray:
        """``M(I, I)`` of a leaf."""
        I = self.scalars(node)
        return self.block(I, I)

    def scalars(self, node: Node) -> np.ndarray:
        """Global scalar indices of a node."""
        k = self.operator.block
        return np.arange(node.start * k, node.stop * k)


class SkeletonScheme(Scheme):
    """Nested interpolative skeletons; couplings are exact entries ``M(J_a, J_b)``.

    Accurate and O(n) (matrix-free capable), eliminated by the orthogonal ULV. Skeleton ranks are
    capped at the operator's ``rank_bound`` when it knows one. The approximation
    itself is not guaranteed SPD at loose tolerance (the ULV then shifts its Cholesky factors), so
    use ``ProjectionScheme`` for preconditioners. ``threshold`` is absolute; ``scale`` estimates
    ``||M||``. Cholesky pivots below ``floor * scale`` are shifted up: with ``floor`` a tenth of
    the tolerance, a perturbation within the compression error, which keeps the solution bounded
    when the approximation is indefinite at that level.
    """

    def __init__(
        self,
        operator: Operator,
        sample: np.ndarray,
        omega: np.ndarray,
        threshold: float,
        scale: float,
        floor: float,
    ) -> None:
        super().__init__(operator, sample, omega, threshold)
        self.scale = scale
        self.floor = floor

    def leaves(self, nodes: Sequence[Node], root: bool = False) -> list[Group]:
        """Factor leaves of one level from their exact diagonal blocks and their sketch."""
        k = self.operator.block
        groups = []
        for sel in batches(nodes, [nd.size for nd in nodes]):
            same = [nodes[i] for i in sel]
            I = np.array([nd.start * k for nd in same])[:, None] + np.arange(same[0].size * k)
            D = self.block(I, I)
            if root:
                return [self._root(same[0], D[0])]
            omega, sample = self.omega[I - self.offset], self.sample[I - self.offset]
            local = D @ omega
            groups += self._eliminate(same, D, I, sample, local, omega)
        return groups

    def parents(
        self,
        nodes: Sequence[Node],
        lefts: Sequence[Skeleton],
        rights: Sequence[Skeleton],
        root: bool = False,
    ) -> list[Group]:
        """Factor parents of one level from their children's skeletons (and the sibling
        couplings)."""
        groups = []
        for sel in batches(nodes, [(a.rank, b.rank) for a, b in zip(lefts, rights, strict=True)]):
            same = [nodes[i] for i in sel]
            left = {f: np.stack([getattr(lefts[i], f) for i in sel]) for f in Skeleton.FIELDS}
            right = {f: np.stack([getattr(rights[i], f) for i in sel]) for f in Skeleton.FIELDS}
            B = self.block(left["index"], right["index"])
            Bt = np.swapaxes(B, 1, 2)
            Ta, Tb = left["transfer"], right["transfer"]
            D = coupled_block_batch(
                Ta @ B @ np.swapaxes(Tb, 1, 2), left["diagonal"], right["diagonal"]
            )
            if root:
                return [self._root(same[0], D[0], Ta.shape[1])]
            local = np.concatenate(
                [left["local"] + B @ right["omega"], right["local"] + Bt @ left["omega"]], axis=1
            )
            groups += self._eliminate(
                same,
                D,
                np.concatenate([left["index"], right["index"]], axis=1),
                np.concatenate([left["sample"], right["sample"]], axis=1),
                local,
                np.concatenate([left["omega"], right["omega"]], axis=1),
                (Ta, Tb),
            )
        return groups

    def _root(self, node: Node, D: np.ndarray, split: int = 0) -> Group:
        """The root: a dense factorization of its whole block (``split``: its left child's
        rank)."""
        factor = root_factor(D, self.scale, self.floor)
        return Group(np.array([node.id]), factor, split, node.level)

    def _eliminate(
        self,
        nodes: Sequence[Node],
        D: np.ndarray,
        index: np.ndarray,
        sample: np.ndarray,
        local: np.ndarray,
        omega: np.ndarray,
        transfers: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> list[Group]:
        """Interpolative decompositions of the nodes' block-row samples ``sample - local``, then
        the batched elimination of the nodes with equal skeleton ranks.

        ``index``, ``sample``, ``local``, ``omega``: stacked (B, s, ...) over the nodes' rows
        (leaves: their indices; parents: the children's skeletons). ``transfers``: the children's
        transfers (parents), which turn an interpolation R into the nested basis
        ``diag(T_a, T_b) R``.
        """
        bound = self.operator.rank_bound
        decompositions = [row_id(z, self.threshold, bound) for z in sample - local]
        groups = []
        for sel in batches(nodes, [J.size for J, _ in decompositions]):
            J = np.stack([decompositions[i][0] for i in sel])
            R = np.stack([decompositions[i][1] for i in sel])
            basis = R
            split = 0
            if transfers is not None:
                Ta, Tb = transfers[0][sel], transfers[1][sel]
                split = Ta.shape[1]
                basis = np.concatenate([Ta @ R[:, :split], Tb @ R[:, split:]], axis=1)
            factor, T, schur = orthogonal_eliminate(D[sel], basis, self.scale, self.floor)
            rows = J[:, :, None]
            skeleton_index = np.take_along_axis(index[sel], J, axis=1)
            skeleton_sample = np.take_along_axis(sample[sel], rows, axis=1)
            skeleton_local = np.take_along_axis(local[sel], rows, axis=1)
            reduced = np.swapaxes(R, 1, 2) @ omega[sel]
            summaries = [
                Skeleton(
                    skeleton_index[i],
                    T[i],
                    skeleton_sample[i],
                    skeleton_local[i],
                    reduced[i],
                    schur[i],
                )
                for i in range(sel.size)
            ]
            ids = np.array([nodes[i].id for i in sel])
            groups.append(Group(ids, factor, split, nodes[sel[0]].level, summaries))
        return groups


@dataclass
class Projection:
    """What a node of the compensated scheme passes to its parent's leader (skeleton-sized).

    Attributes
    ----------
    sample : ndarray, shape (r, k)
        ``F^T Y(I)``: the sketch in the node's kept coordinates.
    omega : ndarray, shape (r, k)
        ``H^T Omega(I)`` with the reconstruction basis H (``F^T H = I``).
    """

    sample: np.ndarray
    omega: np.ndarray

    @property
    def rank(self) -> int:
        """Number of kept coordinates."""
        return int(self.sample.shape[0])


class ProjectionScheme(Scheme):
    """Schur-compensated compression: orthogonal projection of the Cholesky-scaled block rows.

    A node scales its (reduced) block row by ``L^{-1}`` (``L L^T = D``) and keeps the range ``Q``
    of its sketch; the coupling of kept coordinates is computed exactly,
    ``C_ab = F_a^T M(I_a, I_b) F_b`` with the accumulated maps ``F`` (|I| x r, kept on the ranks
    owning the rows), never from skeleton entries. Each step then replaces the scaled matrix
    ``I + O`` by ``(I - P) + P (I + O) P`` for an orthogonal projector P, which is SPD: the
    approximation is SPD at any tolerance and its Schur complements dominate the exact ones (Xia
    and Gu, SIMAX 2010). Needs stored block rows. ``threshold`` is relative to a node's largest
    pivot. Rank-local: the cross-rank couplings are assembled by ``distributed``.
    """

    def __init__(
        self, operator: Operator, sample: np.ndarray, omega: np.ndarray, threshold: float
    ) -> None:
        super().__init__(operator, sample, omega, threshold)
        self.maps: dict[int, np.ndarray] = {}

    def leaf(self, node: Node, root: bool = False) -> tuple[NodeFactor, Projection | None]:
        """Factor a leaf: exact diagonal block, scaled sketch of its block row."""
        I = self.scalars(node)
        D = self.diagonal_block(node)
        if root:
            return root_factor(D), None
        return self._reduce(node, D, self.sample[I - self.offset], self.omega[I - self.offset])

    def merge(
        self,
        node: Node,
        left: Projection,
        right: Projection,
        root: bool = False,
        coupling: np.ndarray | None = None,
    ) -> tuple[NodeFactor, Projection | None]:
        """Factor a parent; ``coupling`` is given for nodes over several ranks."""
        if coupling is None:
            a, b = (self.operator.tree.node(c) for c in node.children)
            coupling = self.partial_coupling(a, b, self.maps[b.id])
        D = coupled_block(coupling)
        if root:
            return root_factor(D), None
        return self._reduce(
            node, D, np.vstack([left.sample, right.sample]), np.vstack([left.omega, right.omega])
        )

    def _reduce(
        self, node: Node, D: np.ndarray, sample: np.ndarray, omega: np.ndarray
    ) -> tuple[NodeFactor, Projection]:
        L, logdet, shift = spd_sqrt(D)
        scaled = lower_solve(L, sample)
        Q = range_basis(scaled - L.T @ omega, self.threshold)
        factor = ScaledFactor(L, Q, logdet, shift, block_norm(D))
        if node.is_local:
            self.extend_map(node, factor)
        return factor, Projection(Q.T @ scaled, (L @ Q).T @ omega)

    def extend_map(self, node: Node, factor: ScaledFactor) -> None:
        """This rank's rows of ``F = blockdiag(F_a, F_b) L^{-T} Q`` (children's maps consumed)."""
        transform = upper_solve(factor.L, factor.Q)
        if node.is_leaf:
            self.maps[node.id] = transform
            return
        a, b = node.children
        parts = []
        if a in self.maps:
            Fa = self.maps.pop(a)
            parts.append(Fa @ transform[: Fa.shape[1]])
        if b in self.maps:
            Fb = self.maps.pop(b)
            parts.append(Fb @ transform[transform.shape[0] - Fb.shape[1] :])
        self.maps[node.id] = np.vstack(parts)

    def partial_coupling(self, a: Node, b: Node, Fb: np.ndarray) -> np.ndarray:
        """``F_a(I_q)^T M(I_q, I_b) F_b`` over the rows I_q of node a on this rank."""
        start, stop = self.operator.local_range
        k = self.operator.block
        lo, hi = max(a.start * k, start), min(a.stop * k, stop)
        Fa = self.maps[a.id]
        rows = self.operator.rows[lo - start : hi - start, b.start * k : b.stop * k]
        return Fa.T @ (rows @ Fb)


def range_basis(Z: np.ndarray, rtol: float) -> np.ndarray:
    """Orthonormal basis of the numerical range of Z (pivots above ``rtol`` times the largest)."""
    if Z.shape[0] == 0 or Z.shape[1] == 0:
        return np.zeros((Z.shape[0], 0))
    Q, R, _ = sla.qr(Z, mode="economic", pivoting=True, check_finite=False)
    diag = np.abs(np.diag(R))
    r = int(np.count_nonzero(diag > rtol * diag[0])) if diag[0] > 0 else 0
    return Q[:, :r]

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

Rank-local, except ``sketch`` (collective).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from distgn.operator import Operator, local_gaussian
from distgn.solvers.hss.ulv import (
    NodeFactor,
    ScaledFactor,
    block_norm,
    coupled_block,
    lower_solve,
    orthogonal_eliminate,
    root_factor,
    spd_sqrt,
    upper_solve,
)
from distgn.tree import Node


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

    @property
    def rank(self) -> int:
        """Number of skeleton rows."""
        return int(self.index.size)


def gaussian_sketch(operator: Operator, width: int, seed: int) -> np.ndarray:
    """This rank's rows of the seeded Gaussian test matrix Omega (N x width).

    Each rank draws only its rows (``distgn.operator.local_gaussian``: counter-based, keyed by the
    seed and the row block), and they are the same whatever the number of ranks. Rank-local.
    """
    return local_gaussian(seed, *operator.local_range, width)


def sketch(operator: Operator, omega: np.ndarray) -> np.ndarray:
    """This rank's rows of ``Y = M Omega`` from this rank's rows of Omega. Collective."""
    return operator.matvec(omega)


def row_id(Z: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Row interpolative decomposition ``Z ~ U Z[J]`` by pivoted QR of ``Z^T``.

    The rank is the number of pivots ``|R_jj| > threshold``; ``U`` has the identity in rows J.

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
    R, piv = sla.qr(Z.T, mode="r", pivoting=True, check_finite=False)
    diag = np.abs(np.diag(R))
    r = int(np.count_nonzero(diag > threshold))
    U = np.zeros((s, r))
    U[piv[:r], np.arange(r)] = 1.0
    if 0 < r < s:
        U[piv[r:]] = sla.solve_triangular(R[:r, :r], R[:r, r:], check_finite=False).T
    return piv[:r].astype(np.int64), U


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
        self.offset = operator.local_range[0]

    def block(self, I: np.ndarray, J: np.ndarray) -> np.ndarray:
        """``M(I, J)``: from the stored rows when this rank has them, else exact entries (of the
        involved indices only: O(|I| |J|) whatever n)."""
        rows = self.operator.rows
        start, stop = self.operator.local_range
        if rows is not None and I.size and I.min() >= start and I.max() < stop:
            return rows[np.ix_(I - start, J)]
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

    Accurate and O(n) (matrix-free capable), eliminated by the orthogonal ULV. The approximation
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

    def leaf(self, node: Node, root: bool = False) -> tuple[NodeFactor, Skeleton | None]:
        """Factor a leaf from its exact diagonal block and its sketch."""
        I = self.scalars(node)
        D = self.diagonal_block(node)
        if root:
            return root_factor(D, self.scale, self.floor), None
        omega = self.omega[I - self.offset]
        local = D @ omega
        sample = self.sample[I - self.offset]
        J, U = row_id(sample - local, self.threshold)
        factor, T, schur = orthogonal_eliminate(D, U, self.scale, self.floor)
        return factor, Skeleton(I[J], T, sample[J], local[J], U.T @ omega, schur)

    def merge(
        self, node: Node, left: Skeleton, right: Skeleton, root: bool = False
    ) -> tuple[NodeFactor, Skeleton | None]:
        """Factor a parent from its children's skeletons (and the sibling coupling)."""
        B = self.block(left.index, right.index)
        D = coupled_block(left.transfer @ B @ right.transfer.T, left.diagonal, right.diagonal)
        if root:
            return root_factor(D, self.scale, self.floor), None
        local = np.vstack([left.local + B @ right.omega, right.local + B.T @ left.omega])
        sample = np.vstack([left.sample, right.sample])
        J, R = row_id(sample - local, self.threshold)
        basis = np.vstack([left.transfer @ R[: left.rank], right.transfer @ R[left.rank :]])
        factor, T, schur = orthogonal_eliminate(D, basis, self.scale, self.floor)
        index = np.concatenate([left.index, right.index])[J]
        omega = R.T @ np.vstack([left.omega, right.omega])
        return factor, Skeleton(index, T, sample[J], local[J], omega, schur)


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
            a, b = (self.operator.tree.nodes[c] for c in node.children)
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

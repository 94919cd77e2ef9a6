"""The exact O(n) 1D solve with A, H or G through a piecewise-polynomial basis (the hat solver).

In 1D, with the breakpoints as mesh nodes, the neuron functions of A (ReLUs), H (Heavisides) and
G (Heavisides times ``(x, 1)``) span spaces with a local basis whose Gram matrix is banded; the
change of basis is sparse and banded too (docs/math.md, "1D change of basis"). ``HatSolver``
applies ``M^{-1}`` in O(n) for any orientations; it is the ``hat`` preconditioner of the Krylov
back end. Construction is rank-local and replicated; ``HatSolver.solve`` is collective.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from distgn.errors import InputError, SolverError
from distgn.operator import Operator
from distgn.solvers.base import Disposable
from distgn.solvers.petsc import PREFIX


@dataclasses.dataclass(frozen=True)
class PiecewiseBasis:
    """The 1D space of a matrix's neuron functions, in an augmented basis with a banded Gram.

    Mesh: ``L = z_0 < z_1 < ... < z_K = R``, the interior nodes the distinct breakpoints inside
    (L, R). Augmented coefficients ``y = [y_1, ..., y_{K-1}, y_glob]``: ``q`` per interior node and
    ``g`` global ones. "Values" are what the Gram is simple in:

    - A (q=1, g=2): ``v = sum_k y_k (x - z_k)_+ + a x + c``; values at the K+1 nodes; P1 mass.
    - H (q=1, g=1): ``v = sum_k y_k [x >= z_k] + c``; values on the K cells; diagonal of lengths.
    - G (q=2, g=2): ``v = sum_k (y_k0 x + y_k1) [x >= z_k] + a x + c``; per cell the
      coefficients (a, c) of ``a (x - mid) + c``, an orthogonal local basis; diagonal mass.

    Values are scaled by the square root of the mass diagonal. ``to_coefficients`` (``T^{-1}``:
    values -> y) is sparse and banded, the Gram of the augmented basis is ``T^T mass T``, so its
    inverse ``T^{-1} mass^{-1} T^{-T}`` costs O(K).
    """

    q: int
    g: int
    nodes: np.ndarray
    to_coefficients: sp.csr_matrix
    mass: sp.csr_matrix


def piecewise_basis(name: str, L: float, R: float, breakpoints: np.ndarray) -> PiecewiseBasis:
    """The augmented basis of matrix ``name`` on [L, R] for neurons with these breakpoints.

    The scaling makes the mass matrix the identity (H, G) or of condition number at most 3 (A, the
    P1 mass matrix). Rank-local.
    """
    nodes = np.unique(breakpoints[(breakpoints > L) & (breakpoints < R)])
    z = np.concatenate([[L], nodes, [R]])
    h, K = np.diff(z), z.size - 1
    jump = sp.diags([-np.ones(K - 1), np.ones(K - 1)], [0, 1], shape=(K - 1, K))
    first = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, K))
    if name == "A":
        slope = sp.diags([-1.0 / h, 1.0 / h], [0, 1], shape=(K, K + 1))
        node0 = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, K + 1))
        to_coefficients = sp.vstack([jump @ slope, first @ slope, node0 - L * (first @ slope)])
        diagonal = np.concatenate([[0.0], h]) / 3 + np.concatenate([h, [0.0]]) / 3
        mass = sp.diags([h / 6, diagonal, h / 6], [-1, 0, 1])
        q, g = 1, 2
    elif name == "H":
        to_coefficients, mass, q, g = sp.vstack([jump, first]), sp.diags(h), 1, 1
    else:
        # Per cell: v = a (x - mid) + c, an orthogonal local basis; coefficients are the jumps of
        # (slope, value at 0) = (a, c - a mid) at the nodes.
        mid = 0.5 * (z[:-1] + z[1:])
        below = np.column_stack([mid, np.zeros(K)]).ravel()[:-1]  # -mid under each 2x2 diagonal
        monomial = sp.identity(2 * K) - sp.diags(below, -1)
        to_coefficients = sp.kron(sp.vstack([jump, first]), sp.identity(2)) @ monomial
        mass = sp.diags(np.column_stack([h**3 / 12, h]).ravel())
        q, g = 2, 2
    unscale = sp.diags(1.0 / np.sqrt(mass.diagonal()))
    return PiecewiseBasis(q, g, nodes, (to_coefficients @ unscale).tocsr(),
                          (unscale @ mass @ unscale).tocsr())


def neuron_rows(name: str, w: np.ndarray, b: np.ndarray, L: float, R: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each neuron's functions in the augmented basis: ``scale_i * basis(node_i) + E_i y_glob``.

    Returns ``node`` (index of the neuron's breakpoint among the interior nodes, -1 if outside
    (L, R)), ``scale`` (A: |w|; H, G: sign w) and ``E`` (n, q, g): the global part, nonzero for
    left-facing neurons and neurons active on all of [L, R] (A: ``w x + b``; H: 1; G: (x, 1));
    zero for neurons inactive on [L, R] (then the matrix is singular).
    A left-facing ReLU is ``|w| (x - t)_+ + (w x + b)``, a left-facing Heaviside ``1 - [x >= t]``.
    """
    t = -b / w
    inside = (t > L) & (t < R)
    node = np.where(inside, np.searchsorted(np.unique(t[inside]), t), -1)
    everywhere = ~inside & ((w > 0) == (t <= L))  # the others outside are zero on [L, R]
    whole = (inside & (w < 0)) | everywhere
    if name == "A":
        scale = np.abs(w)
        E = np.where(whole[:, None], np.column_stack([w, b]), 0.0)[:, None, :]
    elif name == "H":
        scale = np.sign(w)
        E = whole.astype(float)[:, None, None]
    else:
        scale = np.sign(w)
        E = whole[:, None, None] * np.eye(2)[None]
    return node, np.where(inside, scale, 0.0), E


class HatSolver(Disposable):
    """Exact O(n) solve with a 1D A, H or G: the ReLU -> hat transform of MATH.md, generalised.

    In the value coordinates of ``PiecewiseBasis`` (nodal values for A, cell values for H, cell
    polynomials for G) the matrix is ``M = V^T mass V`` with ``mass`` banded and V (m x nq) the
    neuron functions. V has a cheap left inverse B (``B V = I``): a neuron's coefficient is the
    jump of the function at its breakpoint (``to_coefficients`` then ``R^T``, R a right inverse
    of the neurons' augmented rows C); neurons without a breakpoint inside (L, R), and the second
    neuron at a shared breakpoint (eliminated against the first by a unit-triangular row operation
    ``Lrow``), are recovered from the affine remainder (``Ea``, at most g independent rows, else M
    is singular). V has at most g more rows than columns; with N an orthonormal basis of the
    null space of V^T, the splitting
    ``mass^{-1} = V M^{-1} V^T + mass^{-1} N (N^T mass^{-1} N)^{-1} N^T mass^{-1}`` gives

        ``M^{-1} = B (I - N N^T) (mass^{-1} - mass^{-1} N (N^T mass^{-1} N)^{-1} N^T mass^{-1})
        (I - N N^T) B^T``.

    The projections ``I - N N^T`` are exact identities; they keep rounding errors along N, which B
    would amplify (its null space, the affine functions, can be nearly inside the range of V), out
    of the result. One orientation with sorted distinct breakpoints and no nullity is MATH.md's
    ``A^{-1} = T^{-1} M^{-1} T^{-T}``; this form is exact (in exact arithmetic) for every 1D neuron
    set with a nonsingular matrix, any orientations. Rounding grows with the spread of cell lengths
    (nearly coinciding breakpoints) and with mixed orientations; see benchmarks/krylov.md.

    Every rank holds the whole O(n) transform; ``solve`` gathers the right-hand side (O(N) words),
    as a matvec does. Construction is rank-local and replicated; ``solve`` is collective.
    """

    def __init__(self, operator: Operator) -> None:
        if operator.domain.dim != 1:
            raise InputError(f"-{PREFIX}pc_type hat is for 1D domains; this domain is "
                             f"{operator.domain.dim}D (use -{PREFIX}pc_type hss)")
        self.operator = operator
        L, R = (float(v) for v in operator.domain.bounds[0])
        w, b = operator.W[:, 0], operator.b
        basis = piecewise_basis(operator.name, L, R, -b / w)
        node, scale, E = neuron_rows(operator.name, w, b, L, R)
        inside = np.flatnonzero(node >= 0)
        main = inside[np.unique(node[inside], return_index=True)[1]]  # first neuron at a node
        self.eliminated = inside[main[node[inside]] != inside]
        self.owner = main[node[self.eliminated]]
        self.ratio = scale[self.eliminated] / scale[self.owner]
        E_aff = E.copy()
        E_aff[self.eliminated] -= self.ratio[:, None, None] * E[self.owner]
        self.affine = np.concatenate([np.flatnonzero(node < 0), self.eliminated])
        Ea = E_aff[self.affine].reshape(-1, basis.g)
        if Ea.size and np.linalg.matrix_rank(Ea) < Ea.shape[0]:
            raise SolverError(f"hat: {self.affine.size} neurons are affine (or zero) on the "
                              f"domain or share a breakpoint: their functions are linearly "
                              f"dependent, so {operator.name} is singular")
        self.main, self.main_scale, self.main_E = main, scale[main], E[main]
        self.Ea_pinv = np.linalg.pinv(Ea) if Ea.size else np.zeros((basis.g, 0))
        Z = sla.null_space(Ea) if Ea.size else np.eye(basis.g)
        self.basis = basis
        self.mass_lu = spla.splu(basis.mass.tocsc(), permc_spec="NATURAL")
        N = np.vstack([(-np.einsum("kqg,gp->kqp", self.main_E, Z)
                        / self.main_scale[:, None, None]).reshape(main.size * basis.q, -1), Z])
        # N spans the null space of V^T: the null space of C mapped to value coordinates.
        self.null = np.linalg.qr(basis.to_coefficients.T @ N)[0]
        self.mass_null = self.mass_lu.solve(self.null)
        self.null_gram = sla.cho_factor(self.null.T @ self.mass_null) if Z.shape[1] else None

    def _projected_mass_inverse(self, u: np.ndarray) -> np.ndarray:
        """The middle of the class docstring's formula between ``to_coefficients`` maps: from
        augmented coefficients ``u = R Lrow f`` to ``to_coefficients @ (...) (B^T f)``. O(K)."""
        T = self.basis.to_coefficients
        x = T.T @ u
        x -= self.null @ (self.null.T @ x)
        a = self.mass_lu.solve(x)
        if self.null_gram is not None:
            a -= self.mass_null @ sla.cho_solve(self.null_gram, self.mass_null.T @ x)
            a -= self.null @ (self.null.T @ a)
        return T @ a

    def apply(self, f: np.ndarray) -> np.ndarray:
        """``M^{-1} f`` for full vectors f (N, k), tree order. Rank-local."""
        q, k = self.basis.q, f.shape[1]
        f = f.reshape(-1, q, k).copy()
        f[self.eliminated] -= self.ratio[:, None, None] * f[self.owner]
        # u = R f: global coefficients from the affine rows, then each node's own coefficient.
        y_glob = self.Ea_pinv @ f[self.affine].reshape(-1, k)
        y_node = ((f[self.main] - np.einsum("kqg,gc->kqc", self.main_E, y_glob))
                  / self.main_scale[:, None, None])
        u = np.vstack([y_node.reshape(-1, k), y_glob])
        a = self._projected_mass_inverse(u)
        # x = R^T a, then Lrow^T.
        a_node = a[:-self.basis.g].reshape(-1, q, k) / self.main_scale[:, None, None]
        a_glob = a[-self.basis.g:] - np.einsum("kqg,kqc->gc", self.main_E, a_node)
        x = np.zeros_like(f)
        x[self.main] = a_node
        x[self.affine] = (self.Ea_pinv.T @ a_glob).reshape(-1, q, k)
        np.add.at(x, self.owner, -self.ratio[:, None, None] * x[self.eliminated])
        return x.reshape(-1, k)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solution rows of this rank for local right-hand-side rows (m,) or (m, k). Collective."""
        full = self.operator.gather(rhs)
        start, stop = self.operator.local_range
        return self.apply(full.reshape(full.shape[0], -1))[start:stop].reshape(rhs.shape)

    def logdet(self) -> float:
        """Not provided (the hat transform is used as a preconditioner)."""
        raise SolverError("the hat preconditioner has no log-determinant; use solver.kind = "
                          "\"dense\" or \"hss\"")

    def nbytes(self) -> int:
        """Bytes held by the transform on this rank."""
        sparse = (self.basis.to_coefficients, self.basis.mass)
        return int(sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in sparse)
                   + self.null.nbytes + self.mass_null.nbytes)

    def stats(self) -> dict:
        """Sizes of the transform."""
        return {"type": "hat", "factor_bytes": self.nbytes(),
                "interior_nodes": int(self.basis.nodes.size),
                "affine_rows": int(self.affine.size), "nullity": int(self.null.shape[1])}

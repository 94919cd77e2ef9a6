"""The 1D change of basis: neuron coefficients <-> piecewise-polynomial values (docs/large-n.md).

In 1D, with the distinct breakpoints as mesh nodes, the functions of the neurons of A (ReLUs), H
(Heavisides) or G (Heavisides times ``(x, 1)``), plus an optional constant (the output bias), span
a subspace of a piecewise-polynomial space that has a local basis with a banded, well-conditioned
Gram matrix (the P1 mass matrix for A, the identity for H and G after diagonal scaling).

- ``PiecewiseBasis`` / ``piecewise_basis``: the mesh, the scaled value coordinates and the banded
  map ``T`` from values to "augmented coefficients" (slope jumps plus a global affine part).
- ``NeuronSpan``: where the neurons sit in that space: ``values_transpose`` (``B^T``, neuron space
  to value coordinates) and ``coefficients`` (``B``, values to neuron coefficients, a differencing),
  with ``B V = I`` on the span, and an orthonormal basis ``null`` of the value directions orthogonal
  to the span (at most a few columns).
- ``NodalSystem``: the least-squares problem in value coordinates, ``K y = f`` with
  ``K = P Ms P + N N^T`` (``Ms`` the scaled mass matrix, ``N = null``, ``P = I - N N^T``); its
  condition number is that of ``Ms`` restricted to the span (at most 3 for A), whatever n and the
  spread of the cells. It offers exact entries, a distributed product (halo exchange of
  ``band`` values with the neighbouring ranks plus one reduction of ``2 |N|`` numbers), the exact
  O(n) inverse, the right-hand side from quadrature and the fit error from the nodal values.

Everything here is rank-local except ``NodalSystem.matvec``, ``right_hand_side`` and ``l2_error``
(collective over the communicator given).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from mpi4py import MPI

from distgn.assembly.exact1d import quadrature_nodes
from distgn.assembly.quadrature import gauss_legendre
from distgn.errors import SolverError
from distgn.targets import Target

GAUSS_POINTS = 20
CHUNK_CELLS = 1 << 15


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

    Values are scaled by the square root of the mass diagonal. ``to_coefficients`` (``T``:
    values -> y) is sparse and banded, the Gram of the value coordinates is ``mass``, whose
    diagonals are ``mass_bands`` (``mass_bands[d, k] = mass[k, k + d]``, zero-padded at the end).
    """

    q: int
    g: int
    z: np.ndarray
    to_coefficients: sp.csr_matrix
    mass: sp.csr_matrix
    mass_bands: np.ndarray
    scale: np.ndarray

    @property
    def nodes(self) -> np.ndarray:
        """The interior mesh nodes."""
        return self.z[1:-1]


def _rows(shape: tuple[int, int], cols: np.ndarray, data: np.ndarray) -> sp.csr_matrix:
    """The CSR matrix with ``data[i, j]`` at ``(i, cols[i, j])``, entries whose column falls
    outside the matrix left out, each row's entries in the given order. Rank-local."""
    keep = (cols >= 0) & (cols < shape[1])
    indptr = np.concatenate([[0], np.cumsum(np.count_nonzero(keep, axis=1))])
    return sp.csr_matrix((data[keep], cols[keep], indptr), shape=shape)


def piecewise_basis(name: str, L: float, R: float, nodes: np.ndarray) -> PiecewiseBasis:
    """The augmented basis of matrix ``name`` on [L, R] with these interior nodes (sorted, distinct,
    inside (L, R)).

    The scaling makes the mass matrix the identity (H, G) or of condition number at most 3 (A, the
    P1 mass matrix). ``T`` and the mass matrix are written row by row (O(n), no sparse
    products). Rank-local.
    """
    z = np.concatenate([[L], nodes, [R]])
    h, K = np.diff(z), z.size - 1
    r = 1.0 / h
    k = np.arange(K - 1)[:, None]
    if name == "A":
        # Rows of T: the slope jumps at the interior nodes, the first cell's slope and its line's
        # value at 0. Mass: the P1 mass matrix, rows (h_{i-1} / 6, (h_{i-1} + h_i) / 3, h_i / 6).
        cols = np.vstack([k + np.arange(3), [[0, 1, -1], [0, 1, -1]]])
        data = np.vstack(
            [
                np.column_stack([r[:-1], -r[:-1] - r[1:], r[1:]]),
                [[-r[0], r[0], 0.0], [1.0 - L * -r[0], -(L * r[0]), 0.0]],
            ]
        )
        diagonal = np.concatenate([[0.0], h]) / 3 + np.concatenate([h, [0.0]]) / 3
        mass = np.column_stack(
            [np.concatenate([[0.0], h / 6]), diagonal, np.concatenate([h / 6, [0.0]])]
        )
        q, g = 1, 2
    elif name == "H":
        cols = np.vstack([k + np.arange(2), [[0, -1]]])
        data = np.vstack([np.tile([-1.0, 1.0], (K - 1, 1)), [[1.0, 0.0]]])
        mass = h[:, None]
        q, g = 1, 1
    else:
        # Per cell: v = a (x - mid) + c, an orthogonal local basis; coefficients are the jumps of
        # (slope, value at 0) = (a, c - a mid) at the nodes, two rows per node.
        mid = 0.5 * (z[:-1] + z[1:])
        ones = np.ones(K - 1)
        cols = np.full((2 * K, 4), -1)
        data = np.zeros((2 * K, 4))
        cols[0:-2:2, :2] = 2 * k + np.array([0, 2])
        data[0:-2:2, :2] = np.column_stack([-ones, ones])
        cols[1:-2:2] = 2 * k + np.arange(4)
        data[1:-2:2] = np.column_stack([mid[:-1], -ones, -mid[1:], ones])
        cols[-2:, :2] = [[0, -1], [0, 1]]
        data[-2:, :2] = [[1.0, 0.0], [-mid[0], 1.0]]
        mass = np.column_stack([h**3 / 12, h]).reshape(-1, 1)
        q, g = 2, 2
    band = mass.shape[1] // 2
    V = mass.shape[0]
    mass_cols = np.arange(V)[:, None] + np.arange(-band, band + 1)
    scale = np.sqrt(mass[:, band])
    unscale = 1.0 / scale
    to_coefficients = _rows((V, V), cols, data * np.take(unscale, cols, mode="clip"))
    scaled = unscale[:, None] * mass * np.take(unscale, mass_cols, mode="clip")
    bands = scaled[:, band:].T.copy()
    for d in range(1, band + 1):
        bands[d, V - d :] = 0.0
    return PiecewiseBasis(q, g, z, to_coefficients, _rows((V, V), mass_cols, scaled), bands, scale)


def neuron_rows(
    name: str, w: np.ndarray, b: np.ndarray, L: float, R: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each neuron's functions in the augmented basis: ``scale_i * basis(node_i) + E_i y_glob``.

    Returns ``nodes`` (the distinct breakpoints inside (L, R), sorted), ``first`` (per node the
    first neuron with that breakpoint), ``node`` (index of the neuron's breakpoint among the
    nodes, -1 if outside (L, R)), ``scale`` (A: |w|; H, G: sign w) and ``E`` (n, q, g): the global
    part, nonzero for left-facing neurons and neurons active on all of [L, R] (A: ``w x + b``;
    H: 1; G: (x, 1)); zero for neurons inactive on [L, R] (then the matrix is singular).
    A left-facing ReLU is ``|w| (x - t)_+ + (w x + b)``, a left-facing Heaviside ``1 - [x >= t]``.
    One sort of the breakpoints. Rank-local.
    """
    t = -b / w
    inside = (t > L) & (t < R)
    where = np.flatnonzero(inside)
    nodes, first, inverse = np.unique(t[where], return_index=True, return_inverse=True)
    node = np.full(t.size, -1)
    node[where] = inverse
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
    return nodes, where[first], node, np.where(inside, scale, 0.0), E


def constant_row(name: str) -> np.ndarray:
    """The constant function 1 in the global part of the augmented basis, shape (1, q, g)."""
    return {
        "A": np.array([[[0.0, 1.0]]]),
        "H": np.array([[[1.0]]]),
        "G": np.array([[[0.0, 1.0], [0.0, 0.0]]]),
    }[name]


class NeuronSpan:
    """The span of 1D neuron functions (plus the constant with ``bias``) in value coordinates.

    ``C`` (augmented coefficients x neurons) has a right inverse ``R`` on its range: a neuron's
    coefficient is the jump of the function at its breakpoint divided by its scale; neurons with no
    breakpoint inside (L, R), the constant, and the second neuron at a shared breakpoint
    (eliminated against the first by the unit-triangular row operation ``Lrow``) are recovered
    from the affine remainder (``Ea``, at most g independent rows, else the functions are linearly
    dependent). ``B = Lrow^T R^T T`` maps values of a function of the span to its coefficients
    (``coefficients``); ``B^T`` is ``values_transpose``. ``null`` (orthonormal, values x m) spans
    the value directions orthogonal to the span: ``T^T`` applied to the null space of ``C^T``.
    Rank-local; every rank holds the O(n) transform.
    """

    def __init__(
        self, name: str, L: float, R: float, w: np.ndarray, b: np.ndarray, bias: bool = False
    ) -> None:
        self.name = name
        self.n = int(w.size)
        nodes, main, node, scale, E = neuron_rows(name, w, b, L, R)
        self.basis = basis = piecewise_basis(name, L, R, nodes)
        if bias:
            node = np.append(node, -1)
            scale = np.append(scale, 0.0)
            E = np.concatenate([E, constant_row(name)])
        self.count = int(node.size)
        inside = np.flatnonzero(node >= 0)
        self.eliminated = inside[main[node[inside]] != inside]
        self.owner = main[node[self.eliminated]]
        self.ratio = scale[self.eliminated] / scale[self.owner]
        E_aff = E.copy()
        E_aff[self.eliminated] -= self.ratio[:, None, None] * E[self.owner]
        self.affine = np.concatenate([np.flatnonzero(node < 0), self.eliminated])
        Ea = E_aff[self.affine].reshape(-1, basis.g)
        if Ea.size and np.linalg.matrix_rank(Ea) < Ea.shape[0]:
            extra = " and the bias" if bias else ""
            raise SolverError(
                f"{self.affine.size} neuron functions{extra}"
                f" are affine (or zero) on the domain or share a breakpoint: they "
                f"are linearly dependent, so {name} is singular"
            )
        self.main, self.main_scale, self.main_E = main, scale[main], E[main]
        self.Ea_pinv = np.linalg.pinv(Ea) if Ea.size else np.zeros((basis.g, 0))
        Z = sla.null_space(Ea) if Ea.size else np.eye(basis.g)
        N = np.vstack(
            [
                (
                    -np.einsum("kqg,gp->kqp", self.main_E, Z) / self.main_scale[:, None, None]
                ).reshape(main.size * basis.q, -1),
                Z,
            ]
        )
        self.null_coefficients = N
        self.null = (
            np.linalg.qr(basis.to_coefficients.T @ N)[0]
            if Z.shape[1]
            else np.zeros((basis.mass.shape[0], 0))
        )

    @property
    def size(self) -> int:
        """Number of value coordinates."""
        return int(self.basis.mass.shape[0])

    def project(self, x: np.ndarray) -> np.ndarray:
        """``(I - N N^T) x``: the part of value coordinates x (V, k) in the span's directions."""
        return x - self.null @ (self.null.T @ x)

    def values_transpose(self, f: np.ndarray) -> np.ndarray:
        """``B^T f`` (values, k) for neuron-space vectors f (n [+1], k). O(n)."""
        q, k = self.basis.q, f.shape[1]
        f = f.reshape(-1, q, k).copy()
        f[self.eliminated] -= self.ratio[:, None, None] * f[self.owner]
        y_glob = self.Ea_pinv @ f[self.affine].reshape(-1, k)
        y_node = (f[self.main] - np.einsum("kqg,gc->kqc", self.main_E, y_glob)) / self.main_scale[
            :, None, None
        ]
        return self.basis.to_coefficients.T @ np.vstack([y_node.reshape(-1, k), y_glob])

    def coefficients(self, values: np.ndarray) -> np.ndarray:
        """``B v``: the neuron coefficients (n [+1], k) of the function with values v (V, k).

        Exact (in exact arithmetic) for v in the span; a differencing of the values: slope jumps
        at the nodes, divided by the neurons' scales. O(n).
        """
        return self.from_augmented(self.augmented(values))

    def augmented(self, values: np.ndarray) -> np.ndarray:
        """``T v``: augmented coefficients (slope jumps, global part) of scaled values (V, k).

        For A and H the jumps are differences of the cell slopes (cell values), each computed
        once: the rounding error of a slope on a small cell then enters the jumps at its two ends
        with opposite signs and cancels in the function (a product with the assembled sparse T
        rounds the two ends independently and leaves an error of eps |v| / h_min in the slope
        of everything beyond). O(n).
        """
        basis = self.basis
        if self.name == "G":
            return basis.to_coefficients @ values
        y = values / basis.scale[:, None]
        z = basis.z
        if self.name == "A":
            slopes = np.diff(y, axis=0) / np.diff(z)[:, None]
            glob = np.vstack([slopes[:1], y[:1] - z[0] * slopes[:1]])
        else:
            slopes, glob = y, y[:1]
        return np.vstack([np.diff(slopes, axis=0), glob])

    def from_augmented(self, a: np.ndarray) -> np.ndarray:
        """Neuron coefficients (n [+1], k) from augmented coefficients ``a`` in the range of C
        (``R^T`` then ``Lrow^T``); the part of a outside the range is dropped. O(n)."""
        q, k = self.basis.q, a.shape[1]
        a_node = a[: -self.basis.g].reshape(-1, q, k) / self.main_scale[:, None, None]
        a_glob = a[-self.basis.g :] - np.einsum("kqg,kqc->gc", self.main_E, a_node)
        x = np.zeros((self.count, q, k))
        x[self.main] = a_node
        x[self.affine] = (self.Ea_pinv.T @ a_glob).reshape(-1, q, k)
        np.add.at(x, self.owner, -self.ratio[:, None, None] * x[self.eliminated])
        return x.reshape(-1, k)


class BandedRows:
    """``Ms^{-1}`` for a block-row-distributed SPD matrix of bandwidth 0 or 1 (partitioned solve).

    Rank p holds rows ``[lo_p, hi_p)``; with ``D_p`` its diagonal block and ``e_p`` the coupling
    ``Ms[hi_p - 1, hi_p]`` to the next nonempty block, ``x_p = g_p - e_{p-1} x^last_{p-1} s_p -
    e_p x^first_{p+1} t_p`` where ``g_p = D_p^{-1} r_p`` and the spikes ``s_p, t_p`` are the first
    and last columns of ``D_p^{-1}``. Taking the first and last entries gives a reduced system of
    2 unknowns per rank, banded (2 sub- and 2 superdiagonals), that every rank solves after one
    Allgather of the boundary entries of ``g``; its matrix is gathered once at construction. Each
    ``D_p`` is factored by LAPACK's banded Cholesky. Construction and ``solve`` are collective;
    O(n/P) work and memory per rank, O(P) in the reduced system (docs/large-n.md).
    """

    def __init__(self, band_values: np.ndarray, comm: MPI.Comm, offsets: np.ndarray) -> None:
        self.comm = comm
        lo, hi = int(offsets[comm.rank]), int(offsets[comm.rank + 1])
        band = band_values.shape[0] - 1
        if band > 1:
            raise SolverError(f"the partitioned solve handles bandwidth 0 or 1, not {band}")
        self.band = band
        self.rows = hi - lo
        nonempty = np.flatnonzero(np.diff(offsets) > 0)
        self.position = int(np.searchsorted(nonempty, comm.rank))
        self.active = nonempty
        self.diagonal = band_values[0, lo:hi].copy()
        self.reduced: np.ndarray | None = None
        if band == 0:
            return
        mine = np.zeros(4)
        if self.rows:
            upper = np.zeros((2, self.rows))
            upper[1] = band_values[0, lo:hi]
            upper[0, 1:] = band_values[1, lo : hi - 1]
            self.cholesky = sla.cholesky_banded(upper, check_finite=False)
            unit = np.zeros((self.rows, 2))
            unit[0, 0], unit[-1, 1] = 1.0, 1.0
            spikes = self._local_solve(unit)  # columns s_p (first), t_p (last)
            last = self.position == nonempty.size - 1
            self.coupling_below = float(band_values[1, lo - 1]) if self.position > 0 else 0.0
            self.coupling_above = 0.0 if last else float(band_values[1, hi - 1])
            self.spikes = spikes
            # This rank's rows of the reduced system: coefficients of x^last_{p-1} and
            # x^first_{p+1} in the equations of its first and last entries.
            mine = np.array(
                [
                    self.coupling_below * spikes[0, 0],
                    self.coupling_above * spikes[0, 1],
                    self.coupling_below * spikes[-1, 0],
                    self.coupling_above * spikes[-1, 1],
                ]
            )
        every = np.zeros((comm.size, 4))
        comm.Allgather(mine, every)
        every = every[nonempty]
        Q = nonempty.size
        # Unknowns ordered (first_0, last_0, first_1, last_1, ...): the equation of first_p
        # touches last_{p-1} (offset -1) and first_{p+1} (+2); that of last_p, last_{p-1} (-2)
        # and first_{p+1} (+1). solve_banded's storage: ab[2 + i - j, j] = M[i, j].
        ab = np.zeros((5, 2 * Q))
        ab[2] = 1.0
        p = np.arange(Q)
        first, lastrow = 2 * p, 2 * p + 1
        ab[2 + 1, first[1:] - 1] = every[1:, 0]  # M[first_p, last_{p-1}]
        ab[2 - 2, first[:-1] + 2] = every[:-1, 1]  # M[first_p, first_{p+1}]
        ab[2 + 2, lastrow[1:] - 2] = every[1:, 2]  # M[last_p, last_{p-1}]
        ab[2 - 1, lastrow[:-1] + 1] = every[:-1, 3]  # M[last_p, first_{p+1}]
        self.reduced = ab

    def _local_solve(self, r: np.ndarray) -> np.ndarray:
        return sla.cho_solve_banded((self.cholesky, False), r, check_finite=False)

    def solve(self, r: np.ndarray) -> np.ndarray:
        """``Ms^{-1} r`` on this rank's rows for block-row-distributed r (m, k). Collective."""
        k = r.shape[1]
        if self.reduced is None:
            return r / self.diagonal[:, None]
        g = self._local_solve(r) if self.rows else np.zeros((0, k))
        ends = np.concatenate([g[0], g[-1]]) if self.rows else np.zeros(2 * k)
        every = np.zeros((self.comm.size, 2 * k))
        self.comm.Allgather(ends, every)
        if not self.rows:
            return g
        rhs = every[self.active].reshape(-1, k)  # rows first_0, last_0, first_1, ...
        x = sla.solve_banded((2, 2), self.reduced, rhs, check_finite=False)
        q = self.position
        result = g
        if q > 0:
            result = result - self.coupling_below * np.outer(self.spikes[:, 0], x[2 * q - 1])
        if q < self.active.size - 1:
            result = result - self.coupling_above * np.outer(self.spikes[:, 1], x[2 * q + 2])
        return result


class NodalSystem:
    """The least-squares system of a 1D neuron span in scaled value coordinates (module doc).

    ``K = P Ms P + N N^T`` with ``Ms`` the scaled (banded) mass matrix and ``N`` the orthonormal
    complement of the span: SPD, ``cond(K) <= max(cond(Ms on the span), 1 / lambda_min)``. The
    solution of ``K y = P f`` is the Galerkin projection of the function with load vector f onto
    the span. Construction is rank-local and replicated (O(n) per rank).
    """

    def __init__(self, span: NeuronSpan) -> None:
        self.span = span
        self.mass = span.basis.mass
        # band_values[d, k] = Ms[k, k + d] (zero-padded at the end)
        self.band_values = span.basis.mass_bands
        self.band = self.band_values.shape[0] - 1
        self._local: dict[tuple[int, int], sp.csr_matrix] = {}
        self._banded: tuple[tuple[int, int, int], BandedRows] | None = None
        N = span.null
        self.mass_null = self.mass @ N  # Q = Ms N
        self.null_gram = N.T @ self.mass_null + np.eye(N.shape[1])  # N^T Ms N + I
        # Banded Cholesky of Ms (SPD, bandwidth 1 or 0): O(n), LAPACK dpbtrf.
        upper = np.zeros((self.band + 1, self.size))
        for d in range(self.band + 1):
            upper[self.band - d, d:] = self.band_values[d, : self.size - d]
        self.mass_cholesky = sla.cholesky_banded(upper, check_finite=False)
        inv_null = self.mass_solve(N) if N.shape[1] else np.zeros((self.size, 0))
        self.inverse_null = inv_null
        self.inverse_gram = sla.cho_factor(N.T @ inv_null) if N.shape[1] else None
        # Lam = T^T N_aug whitened by the Cholesky factor (Ms = U^T U): Y = U^{-T} Lam = Q R. The
        # correction in ``coefficients`` is U^{-1} Q R^{-T} d: cond(R) is the square root of
        # cond(Lam^T Ms^{-1} Lam), which a small cell can push past 1/eps.
        raw = span.basis.to_coefficients.T @ span.null_coefficients
        if raw.shape[1]:
            white = self._triangular_solve(np.asarray(raw), "T")
            self.constraint_q, self.constraint_r = np.linalg.qr(white)
        else:
            self.constraint_q, self.constraint_r = raw, np.zeros((0, 0))

    @property
    def size(self) -> int:
        """Order of K."""
        return self.span.size

    def mass_solve(self, x: np.ndarray) -> np.ndarray:
        """``Ms^{-1} x`` for full vectors x (V,) or (V, k). Rank-local, O(n)."""
        return sla.cho_solve_banded((self.mass_cholesky, False), x, check_finite=False)

    def _triangular_solve(self, x: np.ndarray, trans: str) -> np.ndarray:
        """``U^{-1} x`` (trans "N") or ``U^{-T} x`` (trans "T") for x (V, k), ``Ms = U^T U``.
        Rank-local, O(n k) (LAPACK tbtrs)."""
        y, info = sla.lapack.dtbtrs(self.mass_cholesky, x, uplo="U", trans=trans)
        if info != 0:
            raise np.linalg.LinAlgError(f"banded triangular solve failed (info {info})")
        return y

    def coefficients(self, values: np.ndarray) -> np.ndarray:
        """Neuron coefficients (n [+1], k) of the function with scaled values (V, k) in the span.

        The slope jumps ``a = T v`` of values that lie in the span only up to rounding violate
        the span's affine constraints ``N_aug^T a = 0`` by about ``eps |v| / h_min`` (slopes of
        the smallest cells), and a neuron facing left carries that error into an affine function
        on the whole domain. So a is corrected by ``T delta`` with the smallest change of the
        function (mass-weighted, concentrated on the smallest cells) that restores the
        constraints exactly: ``delta = -Ms^{-1} Lam (Lam^T Ms^{-1} Lam)^{-1} N_aug^T a`` with
        ``Lam = T^T N_aug``, computed as ``-U^{-1} Q R^{-T} N_aug^T a`` from the QR factors of
        the whitened ``U^{-T} Lam`` (a least-squares solve with R^T, so that nearly coincident
        breakpoints cannot make it singular). Rank-local, O(n).
        """
        span = self.span
        a = span.augmented(values)
        raw = span.null_coefficients
        if raw.shape[1]:
            defect = raw.T @ a
            weights = sla.lstsq(self.constraint_r.T, defect, check_finite=False)[0]
            a = a - span.augmented(self._triangular_solve(self.constraint_q @ weights, "N"))
        return span.from_augmented(a)

    def entries(self, I: np.ndarray, J: np.ndarray) -> np.ndarray:
        """Exact entries ``K[I][:, J]``; with leading dimensions, a stack of such blocks
        (I (..., a), J (..., b) -> (..., a, b)). Rank-local; O(|I| |J| + nnz) per block."""
        N, Q = self.span.null, self.mass_null
        rows, cols = I[..., :, None], J[..., None, :]
        out = np.zeros(np.broadcast_shapes(rows.shape, cols.shape))
        offset = cols - rows
        hit = np.nonzero(np.abs(offset) <= self.band)
        d = np.abs(offset[hit])
        low = np.minimum(
            np.broadcast_to(rows, out.shape)[hit], np.broadcast_to(cols, out.shape)[hit]
        )
        out[hit] = self.band_values[d, low]
        if N.shape[1]:
            NI, NJt = N[I], np.swapaxes(N[J], -1, -2)
            out -= NI @ np.swapaxes(Q[J], -1, -2) + Q[I] @ NJt
            out += NI @ self.null_gram @ NJt
        return out

    def local_rows(self, lo: int, hi: int) -> np.ndarray:
        """Dense rows ``K[lo:hi, :]`` (for the dense back end and stored rows). Rank-local."""
        return self.entries(np.arange(lo, hi), np.arange(self.size))

    def matvec(self, x: np.ndarray, comm: MPI.Comm, offsets: np.ndarray) -> np.ndarray:
        """``K x`` on this rank's rows for block-row-distributed x (m, k). Collective.

        Sends ``band`` rows to each neighbouring rank and reduces ``2 |N| k`` numbers.
        """
        rank, P = comm.rank, comm.size
        lo, hi = int(offsets[rank]), int(offsets[rank + 1])
        k = x.shape[1]
        band = self.band
        below = np.zeros((min(band, lo), k))
        above = np.zeros((min(band, self.size - hi), k))
        requests = []
        if band:
            if rank > 0:
                requests.append(comm.Isend(np.ascontiguousarray(x[:band]), dest=rank - 1, tag=71))
                requests.append(comm.Irecv(below, source=rank - 1, tag=72))
            if rank < P - 1:
                requests.append(comm.Isend(np.ascontiguousarray(x[-band:]), dest=rank + 1, tag=72))
                requests.append(comm.Irecv(above, source=rank + 1, tag=71))
            MPI.Request.Waitall(requests)
        halo = np.vstack([below, x, above])
        if (lo, hi) not in self._local:
            self._local[lo, hi] = self.mass[lo:hi, lo - below.shape[0] : hi + above.shape[0]]
        y = self._local[lo, hi] @ halo
        N = self.span.null
        if N.shape[1]:
            NI, QI = N[lo:hi], self.mass_null[lo:hi]
            sums = comm.allreduce(np.concatenate([NI.T @ x, QI.T @ x]))
            nx, qx = sums[: N.shape[1]], sums[N.shape[1] :]
            y += NI @ (self.null_gram @ nx - qx) - QI @ nx
        return y

    def solve(self, f: np.ndarray) -> np.ndarray:
        """``K^{-1} f`` for full vectors f (V, k): ``G f + N N^T f`` with the constrained
        inverse ``G = Ms^{-1} - Ms^{-1} N (N^T Ms^{-1} N)^{-1} N^T Ms^{-1}``. Rank-local, O(n)."""
        N = self.span.null
        px = self.span.project(f)
        a = self.mass_solve(px)
        if self.inverse_gram is not None:
            a -= self.inverse_null @ sla.cho_solve(self.inverse_gram, self.inverse_null.T @ px)
            a = self.span.project(a)
        return a + N @ (N.T @ f)

    def solve_rows(self, f: np.ndarray, comm: MPI.Comm, offsets: np.ndarray) -> np.ndarray:
        """``K^{-1} f`` on this rank's rows for block-row-distributed f (m, k). Collective.

        The same formula as ``solve`` with ``Ms^{-1}`` applied by ``BandedRows`` (a partitioned
        solve: O(n/P) work per rank and 2 k numbers per rank gathered) and the products with N
        reduced over the ranks (``3 |N| k`` numbers). No rank handles a full vector.
        """
        lo, hi = int(offsets[comm.rank]), int(offsets[comm.rank + 1])
        key = (comm.py2f(), lo, hi)
        if self._banded is None or self._banded[0] != key:
            self._banded = (key, BandedRows(self.band_values, comm, offsets))
        banded = self._banded[1]
        N = self.span.null[lo:hi]
        Nf = comm.allreduce(N.T @ f)
        px = f - N @ Nf
        a = banded.solve(px)
        if self.inverse_gram is not None:
            inverse_null = self.inverse_null[lo:hi]
            weights = comm.allreduce(inverse_null.T @ px)
            a -= inverse_null @ sla.cho_solve(self.inverse_gram, weights)
            a -= N @ comm.allreduce(N.T @ a)
        return a + N @ Nf

    # --- quadrature with the target (A: P1 values at the nodes) -----------------------------

    def _cells(self, target: Target, c0: int, c1: int) -> Iterator[tuple[np.ndarray, ...]]:
        """Gauss points on the mesh cells ``c0 <= k < c1``, split at the target's features.

        Yields (cell, lambda, weight, u): per point its cell k, local coordinate
        ``(x - z_k) / h_k`` computed from exact differences of nearby nodes (accurate to rounding
        relative to 1 on the smallest cells), the weight and ``u(x)``.
        """
        z = self.span.basis.z
        edges = z[c0 : c1 + 1]
        bounds = np.array([[z[0], z[-1]]])
        fine = quadrature_nodes(bounds, edges, target)
        fine = fine[(fine >= edges[0]) & (fine <= edges[-1])]
        gx, gw = gauss_legendre(GAUSS_POINTS)
        for s in range(0, fine.size - 1, CHUNK_CELLS):
            left, right = fine[s : s + CHUNK_CELLS], fine[s + 1 : s + CHUNK_CELLS + 1]
            left = left[: right.size]
            width = right - left  # exact: neighbouring doubles (Sterbenz)
            cell = np.searchsorted(edges, left + 0.5 * width, side="right") - 1
            zl, h = edges[cell], edges[cell + 1] - edges[cell]
            # The offset from the cell's left end from exact differences only: a midpoint
            # rounded to ulp(x) would put an error of eps |x| / h into lambda on small cells.
            step = width[:, None] * (0.5 * (1.0 + gx))[None, :]
            offset = (left - zl)[:, None] + step
            x = left[:, None] + step
            half = 0.5 * width
            u = target(x.reshape(-1, 1)).reshape(x.shape)
            yield (cell + c0, offset / h[:, None], half[:, None] * gw[None, :], u)

    def load_vector(self, target: Target, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo:hi`` of the right-hand side ``f_k = int u psi_k`` (A: scaled hats). Local."""
        if self.span.name != "A":
            raise SolverError(
                f"the nodal right-hand side is implemented for A, not {self.span.name}"
            )
        K = self.size - 1
        c0, c1 = max(lo - 1, 0), min(hi, K)
        left = np.zeros(K)
        right = np.zeros(K)
        for cell, lam, weight, u in self._cells(target, c0, c1):
            left += np.bincount(cell, weights=np.sum(u * (1.0 - lam) * weight, axis=1), minlength=K)
            right += np.bincount(cell, weights=np.sum(u * lam * weight, axis=1), minlength=K)
        f = np.zeros(hi - lo)
        k = np.arange(lo, hi)
        has_left, has_right = k >= 1, k <= K - 1
        f[has_left] += right[k[has_left] - 1]
        f[has_right] += left[k[has_right]]
        return f / self.span.basis.scale[lo:hi]

    def right_hand_side(self, target: Target, comm: MPI.Comm, offsets: np.ndarray) -> np.ndarray:
        """This rank's rows of ``P f`` (the load vector projected onto the span). Collective."""
        lo, hi = int(offsets[comm.rank]), int(offsets[comm.rank + 1])
        f = self.load_vector(target, lo, hi)
        N = self.span.null[lo:hi]
        return f - N @ comm.allreduce(N.T @ f)

    def l2_error(
        self, values: np.ndarray, target: Target, comm: MPI.Comm, offsets: np.ndarray
    ) -> float:
        """``sqrt(int (v - u)^2)`` for v with scaled values (V,) (A: P1 by its nodal values).

        Each rank integrates the cells starting at its rows, by Gauss rules split at the target's
        features: a sum of nonnegative terms, accurate to rounding relative to the error itself.
        Collective.
        """
        y = values / self.span.basis.scale
        K = self.size - 1
        lo, hi = int(offsets[comm.rank]), min(int(offsets[comm.rank + 1]), K)
        total = 0.0
        if hi > lo:
            for cell, lam, weight, u in self._cells(target, lo, hi):
                v = y[cell][:, None] * (1.0 - lam) + y[cell + 1][:, None] * lam
                total += float(np.sum((v - u) ** 2 * weight))
        return float(np.sqrt(comm.allreduce(total)))

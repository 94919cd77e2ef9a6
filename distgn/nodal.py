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
  O(n) inverse (``BandedRows``: partitioned banded solves and the global Cholesky factor by a
  scan over the ranks), the right-hand side from quadrature and the fit error from the nodal
  values.

``NeuronSpan`` and ``NodalSystem`` are distributed: each rank passes its own neurons (a contiguous
block of the breakpoint order) and holds O(n/P) of the transform (``move_rows`` brings the node
data its value rows need; docs/large-n.md section 4). Their construction and every method that
takes or returns distributed rows are collective over the span's communicator (``matvec`` and
``solve_rows`` over the one given, a counting wrapper of it); ``piecewise_basis``,
``neuron_rows``, ``entries``, ``rows_at`` and ``learn`` are rank-local.
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


SHAPES = {"A": (1, 2), "H": (1, 1), "G": (2, 2)}  # (q, g) of each matrix's augmented basis


def move_rows(comm: MPI.Comm, rows: np.ndarray, held: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Rows ``[wanted[r, 0], wanted[r, 1])`` of a global sequence of rows that the ranks hold as
    contiguous blocks ``[held[p], held[p + 1])``.

    ``rows`` is this rank's block (its rows of equal width on every rank); the wanted ranges may
    overlap (halos). One ``Alltoallv`` of the rows that some other rank wants; what a rank keeps
    is copied, not sent. Collective.
    """
    rank = comm.rank
    rows = np.ascontiguousarray(rows, dtype=float)
    shape = rows.shape[1:]
    width = int(np.prod(shape))
    flat = rows.reshape(rows.shape[0], width)
    lo, hi = int(held[rank]), int(held[rank + 1])
    send_lo = np.clip(wanted[:, 0], lo, hi)
    send_counts = np.maximum(np.clip(wanted[:, 1], lo, hi) - send_lo, 0)
    want_lo, want_hi = int(wanted[rank, 0]), int(wanted[rank, 1])
    recv_counts = np.maximum(
        np.clip(held[1:], want_lo, want_hi) - np.clip(held[:-1], want_lo, want_hi), 0
    )
    recv_displs = np.concatenate([[0], np.cumsum(recv_counts)[:-1]])
    recv = np.zeros((int(recv_counts.sum()), width))
    own = slice(int(send_lo[rank]) - lo, int(send_lo[rank]) - lo + int(send_counts[rank]))
    recv[recv_displs[rank] : recv_displs[rank] + send_counts[rank]] = flat[own]
    if comm.size > 1:
        send_counts[rank] = recv_counts[rank] = 0
        send = np.concatenate(
            [flat[a - lo : a - lo + c] for a, c in zip(send_lo, send_counts, strict=True)]
            + [np.zeros((0, width))]
        )
        send_displs = np.concatenate([[0], np.cumsum(send_counts)[:-1]])
        comm.Alltoallv(
            [send, send_counts * width, send_displs * width, MPI.DOUBLE],
            [recv, recv_counts * width, recv_displs * width, MPI.DOUBLE],
        )
    return recv.reshape((-1,) + shape)


def halo_rows(
    comm: MPI.Comm, x: np.ndarray, offsets: np.ndarray, depth: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``depth`` rows just below and just above this rank's rows of a block-row-distributed
    x (m, k) (fewer at the ends), from the nearest ranks that hold rows. Collective
    (point to point with those two ranks).
    """
    rank, k = comm.rank, x.shape[1]
    nonempty = np.flatnonzero(np.diff(offsets) > 0)
    lo, hi = int(offsets[rank]), int(offsets[rank + 1])
    below = np.zeros((min(depth, lo), k))
    above = np.zeros((min(depth, int(offsets[-1]) - hi), k))
    if depth == 0 or hi == lo:
        return below, above
    position = int(np.searchsorted(nonempty, rank))
    requests = []
    if position > 0:
        lower = int(nonempty[position - 1])
        requests.append(comm.Isend(np.ascontiguousarray(x[:depth]), dest=lower, tag=71))
        requests.append(comm.Irecv(below, source=lower, tag=72))
    if position < nonempty.size - 1:
        upper = int(nonempty[position + 1])
        requests.append(comm.Isend(np.ascontiguousarray(x[-depth:]), dest=upper, tag=72))
        requests.append(comm.Irecv(above, source=upper, tag=71))
    MPI.Request.Waitall(requests)
    return below, above


def orthonormal(comm: MPI.Comm, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """QR factors of a block-row-distributed x (m, c): this rank's rows of Q and the whole R.

    One rank: LAPACK's QR. Several: a TSQR, each rank's R (at most c x c) gathered and factored
    again. Collective.
    """
    if comm.size == 1:
        return np.linalg.qr(x)
    q, r = np.linalg.qr(x)
    stacked = comm.allgather(r)
    top_q, top_r = np.linalg.qr(np.vstack(stacked))
    first = sum(part.shape[0] for part in stacked[: comm.rank])
    return q @ top_q[first : first + r.shape[0]], top_r


class NeuronSpan:
    """The span of 1D neuron functions (plus the constant with ``bias``) in value coordinates,
    distributed over the ranks of ``comm``.

    ``C`` (augmented coefficients x neurons) has a right inverse ``R`` on its range: a neuron's
    coefficient is the jump of the function at its breakpoint divided by its scale; neurons with no
    breakpoint inside (L, R), the constant, and the second neuron at a shared breakpoint
    (eliminated against the first by the unit-triangular row operation ``Lrow``) are recovered
    from the affine remainder (``Ea``, at most g independent rows, else the functions are linearly
    dependent). ``B = Lrow^T R^T T`` maps values of a function of the span to its coefficients
    (``coefficients``); ``B^T`` is ``values_transpose``. ``null`` (orthonormal, values x m) spans
    the value directions orthogonal to the span: ``T^T`` applied to the null space of ``C^T``.

    Two partitions (docs/large-n.md section 4). Neurons: rank p passes its own neurons ``w, b``,
    a contiguous block of the breakpoint order (the 1D tree order; the bias, if any, belongs to
    the last rank). Value coordinates: rank p owns the units ``[units[p], units[p + 1])`` (A:
    nodal values, H and G: cells; given, else an even split) and holds the mesh, the scales and
    the rows of T, the mass matrix and ``null`` on a window of its units plus two on each side.
    The breakpoints a rank's units need move there once (``move_rows``); per call,
    ``coefficients`` and ``values_transpose`` move one row per node between the partitions.
    O(n/P) memory and work per rank plus O(P) boundary tables. Construction and every method
    that takes or returns distributed rows are collective.
    """

    def __init__(
        self,
        name: str,
        L: float,
        R: float,
        w: np.ndarray,
        b: np.ndarray,
        bias: bool = False,
        comm: MPI.Comm = MPI.COMM_SELF,
        units: np.ndarray | None = None,
    ) -> None:
        self.name, self.comm = name, comm
        rank, P = comm.rank, comm.size
        self.n = int(w.size)
        q, g = SHAPES[name]
        nodes, main, node, scale, E = neuron_rows(name, w, b, L, R)
        if bias and rank == P - 1:
            node = np.append(node, -1)
            scale = np.append(scale, 0.0)
            E = np.concatenate([E, constant_row(name)])
        self.count = int(node.size)
        # Boundary table: per rank its node count, first and last node, and the scale and global
        # part of the first neuron at its last node.
        mine = np.full(4 + q * g, np.nan)
        mine[0] = nodes.size
        if nodes.size:
            mine[1:4] = nodes[0], nodes[-1], scale[main[-1]]
            mine[4:] = E[main[-1]].ravel()
        table = np.array(comm.allgather(mine)) if P > 1 else mine[None]
        shared, owner = _shared_nodes(table)
        kept = table[:, 0].astype(int) - shared
        self.node_offsets = np.concatenate([[0], np.cumsum(kept)])
        first_shared = bool(shared[rank])
        inside = np.flatnonzero(node >= 0)
        here = inside[(node[inside] > 0) | (not first_shared)]
        self.eliminated = here[main[node[here]] != here]
        self.owner = main[node[self.eliminated]]
        self.ratio = scale[self.eliminated] / scale[self.owner]
        self.remote = inside[first_shared & (node[inside] == 0)]
        self.owner_rank = int(owner[rank])
        remote_scale, remote_E = table[self.owner_rank, 3], table[self.owner_rank, 4:]
        self.remote_ratio = scale[self.remote] / remote_scale
        self._borrowers = np.flatnonzero(shared & (owner == rank) & (np.arange(P) != rank))
        E_aff = E.copy()
        E_aff[self.eliminated] -= self.ratio[:, None, None] * E[self.owner]
        E_aff[self.remote] -= self.remote_ratio[:, None, None] * remote_E.reshape(q, g)
        self.affine = np.concatenate([np.flatnonzero(node < 0), self.eliminated, self.remote])
        Ea = E_aff[self.affine].reshape(-1, g)
        counts = np.array(comm.allgather(self.affine.size))
        extra = " and the bias" if bias else ""
        dependent = SolverError(
            f"{int(counts.sum())} neuron functions{extra}"
            f" are affine (or zero) on the domain or share a breakpoint: they "
            f"are linearly dependent, so {name} is singular"
        )
        if q * counts.sum() > g:
            raise dependent
        if P > 1:
            Ea = np.vstack(comm.allgather(Ea))
        if Ea.size and np.linalg.matrix_rank(Ea) < Ea.shape[0]:
            raise dependent
        self.affine_total = int(counts.sum())
        first_row = q * int(counts[:rank].sum())
        self.affine_rows = slice(first_row, first_row + q * self.affine.size)
        self.main = main[1:] if first_shared else main
        self.main_scale, self.main_E = scale[self.main], E[self.main]
        self.Ea_pinv = np.linalg.pinv(Ea) if Ea.size else np.zeros((g, 0))
        self.Z = Z = sla.null_space(Ea) if Ea.size else np.eye(g)
        node_null = -np.einsum("kqg,gp->kqp", self.main_E, Z) / self.main_scale[:, None, None]
        self._setup_values(name, L, R, units, nodes[int(first_shared) :], node_null)

    def _setup_values(
        self,
        name: str,
        L: float,
        R: float,
        units: np.ndarray | None,
        nodes: np.ndarray,
        node_null: np.ndarray,
    ) -> None:
        """The value side: this rank's units, the window of the mesh around them and ``null``."""
        comm, rank, P = self.comm, self.comm.rank, self.comm.size
        q, g = SHAPES[name]
        K = int(self.node_offsets[-1]) + 1  # cells
        count = K + 1 if name == "A" else K
        self.units = (
            np.asarray(units, dtype=np.int64)
            if units is not None
            else np.arange(P + 1, dtype=np.int64) * count // P
        )
        if self.units.size != P + 1 or self.units[0] != 0 or self.units[-1] != count:
            raise ValueError(f"units {self.units} do not split the {count} units over {P} ranks")
        u0, u1 = (int(u) for u in self.units[rank : rank + 2])
        # The window: mesh points z_zw0 .. z_zw1 (two units of halo on each side); every rank's
        # window as a range of interior nodes (node i is the mesh point z_{i+1}).
        windows = [
            _window(name, int(a), int(c), K)
            for a, c in zip(self.units[:-1], self.units[1:], strict=True)
        ]
        zw0, zw1 = windows[rank]
        window = np.array([[max(a - 1, 0), min(c, K - 1)] for a, c in windows])
        self.cells = K
        m = self.Z.shape[1]
        records = np.column_stack(
            [
                nodes,
                self.main_scale,
                self.main_E.reshape(nodes.size, q * g),
                node_null.reshape(nodes.size, q * m),
            ]
        )
        got = move_rows(comm, records, self.node_offsets, window)
        z = np.concatenate([[L] if zw0 == 0 else [], got[:, 0], [R] if zw1 == K else []])
        inner = got[int(zw0 > 0) : got.shape[0] - int(zw1 < K)]
        self.basis = basis = piecewise_basis(name, float(z[0]), float(z[-1]), z[1:-1])
        self.first_unit = zw0
        self.window_start = q * zw0
        self.rows = slice(q * (u0 - zw0), q * (u1 - zw0))
        self.offsets = q * self.units
        # The nodes of this rank's units (A: nodal values at the interior nodes; H, G: the cells
        # that start there), in window-node and global node numbering.
        first, last = max(u0, 1), max(min(u1, K), max(u0, 1))
        self.value_nodes = slice(first - zw0 - 1, last - zw0 - 1)
        self.value_node_offsets = np.concatenate(
            [[0], np.maximum(np.minimum(self.units[1:], K), 1) - 1]
        )
        self.value_node_offsets[-1] = K - 1
        self.window_nodes = window
        self.node_main_scale = inner[:, 1]
        self.node_main_E = inner[:, 2 : 2 + q * g].reshape(-1, q, g)
        inner_null = inner[:, 2 + q * g :].reshape(q * inner.shape[0], m)
        self.node_null = inner_null[q * self.value_nodes.start : q * self.value_nodes.stop]
        raw = basis.to_coefficients.T @ np.vstack([inner_null, self.Z])
        self.raw = raw[self.rows]
        self.null = orthonormal(comm, self.raw)[0] if m else np.zeros((self.raw.shape[0], 0))
        self.scale = basis.scale[self.rows]

    @property
    def size(self) -> int:
        """Number of value coordinates (all ranks)."""
        return int(self.offsets[-1])

    @property
    def q(self) -> int:
        """Augmented coefficients per node."""
        return SHAPES[self.name][0]

    def project(self, x: np.ndarray) -> np.ndarray:
        """``(I - N N^T) x``: the part of this rank's rows x (m, k) of value coordinates in the
        span's directions. Collective."""
        return x - self.null @ self.comm.allreduce(self.null.T @ x)

    def _to_values(self, node_rows: np.ndarray, glob: np.ndarray) -> np.ndarray:
        """This rank's rows of ``T^T [node_rows; glob]`` for node rows on the neuron side
        (kept nodes x q x k) and the global part (g, k). Collective."""
        k = glob.shape[1]
        got = move_rows(self.comm, node_rows, self.node_offsets, self.window_nodes)
        zw0, K = self.first_unit, self.cells
        inner = got[int(zw0 > 0) : got.shape[0] - int(self.window_end < K)]
        return (self.basis.to_coefficients.T @ np.vstack([inner.reshape(-1, k), glob]))[self.rows]

    @property
    def window_end(self) -> int:
        """Index of the window's last mesh point."""
        return self.first_unit + self.basis.z.size - 1

    def values_transpose(self, f: np.ndarray) -> np.ndarray:
        """``B^T f``: this rank's rows of value coordinates for its neuron rows f (count q, k).
        O(n/P). Collective."""
        q, k = self.q, f.shape[1]
        f = f.reshape(-1, q, k).copy()
        if self.comm.size > 1:
            mine = f[self.main[-1]] if self.main.size else np.zeros((q, k))
            f_owner = self.comm.allgather(mine)[self.owner_rank]
            f[self.remote] -= self.remote_ratio[:, None, None] * f_owner
        f[self.eliminated] -= self.ratio[:, None, None] * f[self.owner]
        y_glob = self.comm.allreduce(
            self.Ea_pinv[:, self.affine_rows] @ f[self.affine].reshape(-1, k)
        )
        y_node = (f[self.main] - np.einsum("kqg,gc->kqc", self.main_E, y_glob)) / self.main_scale[
            :, None, None
        ]
        return self._to_values(y_node, y_glob)

    def coefficients(self, values: np.ndarray) -> np.ndarray:
        """``B v``: the neuron coefficients (this rank's count, k) of the function with values v
        (this rank's rows, k).

        Exact (in exact arithmetic) for v in the span; a differencing of the values: slope jumps
        at the nodes, divided by the neurons' scales. O(n/P). Collective.
        """
        return self.from_augmented(*self.augmented(values))

    def _window(self, values: np.ndarray) -> np.ndarray:
        """This rank's rows plus one unit of halo on each side, placed in a window-sized array
        (zeros elsewhere). Collective."""
        q, k = self.q, values.shape[1]
        below, above = halo_rows(self.comm, values, self.offsets, q)
        out = np.zeros((self.basis.mass.shape[0], k))
        a, b = self.rows.start, self.rows.stop
        out[a - below.shape[0] : a] = below
        out[a:b] = values
        out[b : b + above.shape[0]] = above
        return out

    def augmented(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``T v`` for this rank's rows of scaled values (m, k): the slope jumps at the nodes of
        its units (nodes q, k) and the global part (g, k, the same on every rank).

        For A and H the jumps are differences of the cell slopes (cell values), each computed
        once: the rounding error of a slope on a small cell then enters the jumps at its two ends
        with opposite signs and cancels in the function (a product with the assembled sparse T
        rounds the two ends independently and leaves an error of eps |v| / h_min in the slope
        of everything beyond). O(n/P). Collective.
        """
        basis = self.basis
        v = self._window(values)
        if self.name == "G":
            a = basis.to_coefficients @ v
            jumps, glob = a[: -basis.g], a[-basis.g :]
        else:
            y = v / basis.scale[:, None]
            z = basis.z
            if self.name == "A":
                slopes = np.diff(y, axis=0) / np.diff(z)[:, None]
                glob = np.vstack([slopes[:1], y[:1] - z[0] * slopes[:1]])
            else:
                slopes, glob = y, y[:1]
            jumps = np.diff(slopes, axis=0)
        q = self.q
        nodes = jumps[q * self.value_nodes.start : q * self.value_nodes.stop]
        if self.comm.size > 1:
            rank = self.comm.rank
            holds_first = self.units[rank] == 0 < self.units[rank + 1]  # the rank of unit 0
            glob = self.comm.allreduce(glob if holds_first else 0.0 * glob)
        return nodes, glob

    def from_augmented(self, a_nodes: np.ndarray, a_glob: np.ndarray) -> np.ndarray:
        """Neuron coefficients (this rank's count, k) from augmented coefficients in the range
        of C: this rank's node rows (value side) and the global part (``R^T`` then ``Lrow^T``);
        the part outside the range is dropped. O(n/P). Collective."""
        q, k = self.q, a_glob.shape[1]
        a_node = a_nodes.reshape(-1, q, k) / self.node_main_scale[self.value_nodes, None, None]
        main_E = self.node_main_E[self.value_nodes]
        a_glob = a_glob - self.comm.allreduce(np.einsum("kqg,kqc->gc", main_E, a_node))
        neuron_nodes = move_rows(
            self.comm,
            a_node,
            self.value_node_offsets,
            np.column_stack([self.node_offsets[:-1], self.node_offsets[1:]]),
        )
        x = np.zeros((self.count, q, k))
        x[self.main] = neuron_nodes
        x[self.affine] = (self.Ea_pinv[:, self.affine_rows].T @ a_glob).reshape(-1, q, k)
        np.add.at(x, self.owner, -self.ratio[:, None, None] * x[self.eliminated])
        if self.comm.size > 1:
            lent = -np.einsum("i,iqc->qc", self.remote_ratio, x[self.remote])
            every = self.comm.allgather(lent)
            for r in self._borrowers:
                x[self.main[-1]] += every[r]
        return x.reshape(-1, k)


def _window(name: str, u0: int, u1: int, cells: int) -> tuple[int, int]:
    """The mesh points ``z_zw0 .. z_zw1`` that the units ``[u0, u1)`` need: two units on each
    side (A: nodal values; H, G: cells, which end one point further). Rank-local."""
    return max(u0 - 2, 0), min(u1 + (1 if name == "A" else 2), cells)


def _shared_nodes(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From the ranks' (node count, first node, last node) rows: whether each rank's first node
    is the last node of a lower rank, and the rank that holds the first neuron at each rank's
    first node. Raises ValueError (on every rank alike) when the ranks' nodes are not in
    order. Rank-local."""
    P = table.shape[0]
    shared = np.zeros(P, dtype=bool)
    owner = np.arange(P)
    previous, holder = -np.inf, -1
    for r in range(P):
        count, first, last = int(table[r, 0]), table[r, 1], table[r, 2]
        if not count:
            continue
        if first < previous:
            raise ValueError(
                f"rank {r}'s first breakpoint {first!r} lies below the last breakpoint "
                f"{previous!r} of the lower ranks: neurons must be split in breakpoint order"
            )
        shared[r] = first == previous
        owner[r] = holder if shared[r] else r
        previous, holder = last, (owner[r] if count == 1 else r)
    return shared, owner


class BandedRows:
    """``Ms^{-1}`` and the Cholesky factor of a block-row-distributed SPD matrix of bandwidth 0 or
    1 (partitioned solves).

    Rank p holds rows ``[lo_p, hi_p)``: ``bands`` (``bands[d, i] = Ms[lo + i, lo + i + d]``, the
    last column's upper entry its coupling ``e_p`` to the next nonempty block) and ``below``
    (``Ms[lo - 1, lo]``). With ``D_p`` its diagonal block, ``x_p = g_p - e_{p-1} x^last_{p-1} s_p -
    e_p x^first_{p+1} t_p`` where ``g_p = D_p^{-1} r_p`` and the spikes ``s_p, t_p`` are the first
    and last columns of ``D_p^{-1}``. Taking the first and last entries gives a reduced system of
    2 unknowns per rank, banded (2 sub- and 2 superdiagonals), that every rank solves after one
    Allgather of the boundary entries of ``g``; its matrix is gathered once at construction. Each
    ``D_p`` is factored by LAPACK's banded Cholesky.

    The global Cholesky factor ``Ms = U^T U`` restricted to rank p's rows is the factor of
    ``D_p`` with its first diagonal entry lowered by ``e_{p-1}^2 / s_{p-1}``, ``s_{p-1}`` the last
    pivot of the rank below; the last pivot of rank p as a function of that shift follows from the
    spikes (Sherman-Morrison, with ``G = D^{-1}``: ``1 / s = G_nn + t G_n1^2 / (1 - t G_11)``), so
    one Allgather of 4 numbers per rank gives every rank its shift (a scan over the ranks).
    Triangular solves with U are linear recurrences: each rank solves its block and, for the one
    unknown coupling to the neighbouring block, one extra column; the couplings follow from one
    Allgather of k + 2 numbers per rank. Construction and the solves are collective; O(n/P) work
    and memory per rank, O(P) in the reduced systems (docs/large-n.md).
    """

    def __init__(
        self, bands: np.ndarray, below: float, comm: MPI.Comm, offsets: np.ndarray
    ) -> None:
        self.comm = comm
        band = bands.shape[0] - 1
        if band > 1:
            raise SolverError(f"the partitioned solve handles bandwidth 0 or 1, not {band}")
        self.band = band
        self.rows = bands.shape[1]
        nonempty = np.flatnonzero(np.diff(offsets) > 0)
        self.position = int(np.searchsorted(nonempty, comm.rank))
        self.active = nonempty
        self.diagonal = bands[0].copy()
        upper = np.zeros((band + 1, self.rows))
        upper[band] = bands[0]
        if band:
            upper[0, 1:] = bands[1, :-1]
        self.upper = upper
        self.cholesky = sla.cholesky_banded(upper, check_finite=False) if self.rows else upper
        self.reduced: np.ndarray | None = None
        self._factor: tuple[np.ndarray, float] | None = None
        if band == 0:
            return
        mine = np.zeros(4)
        self.coupling_below = self.coupling_above = 0.0
        if self.rows:
            unit = np.zeros((self.rows, 2))
            unit[0, 0], unit[-1, 1] = 1.0, 1.0
            spikes = self._local_solve(unit)  # columns s_p (first), t_p (last)
            last = self.position == nonempty.size - 1
            self.coupling_below = float(below) if self.position > 0 else 0.0
            self.coupling_above = 0.0 if last else float(bands[1, -1])
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

    def solve(self, r: np.ndarray, comm: MPI.Comm | None = None) -> np.ndarray:
        """``Ms^{-1} r`` on this rank's rows for block-row-distributed r (m, k). Collective over
        ``comm`` (by default the one given at construction; a counting wrapper of it counts)."""
        comm = comm or self.comm
        k = r.shape[1]
        if self.reduced is None:
            return r / self.diagonal[:, None]
        g = self._local_solve(r) if self.rows else np.zeros((0, k))
        ends = np.concatenate([g[0], g[-1]]) if self.rows else np.zeros(2 * k)
        every = np.zeros((comm.size, 2 * k))
        comm.Allgather(ends, every)
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

    def _global_factor(self) -> tuple[np.ndarray, float]:
        """This rank's rows of U (LAPACK upper banded storage) and its coupling ``U[hi - 1, hi]``
        to the next nonempty block (class docstring). Collective on first use."""
        if self._factor is not None:
            return self._factor
        if self.reduced is None or self.active.size == 1:
            self._factor = (self.cholesky, 0.0)
            return self._factor
        mine = np.zeros(4)
        if self.rows:
            s = self.spikes
            mine[:] = s[0, 0], s[-1, 0], s[-1, 1], self.coupling_above
        every = np.zeros((self.comm.size, 4))
        self.comm.Allgather(mine, every)
        shift = 0.0
        for r in self.active[: self.position]:
            g11, gn1, gnn, coupling = every[r]
            pivot = 1.0 / (gnn + shift * gn1**2 / (1.0 - shift * g11))
            shift = coupling**2 / pivot
        factor = self.cholesky
        if self.rows:
            upper = self.upper.copy()
            upper[1, 0] -= shift
            factor = sla.cholesky_banded(upper, check_finite=False)
        above = self.coupling_above / factor[1, -1] if self.rows else 0.0
        self._factor = (factor, float(above))
        return self._factor

    def triangular_solve(self, x: np.ndarray, trans: str) -> np.ndarray:
        """``U^{-1} x`` (trans "N") or ``U^{-T} x`` (trans "T") on this rank's rows for
        block-row-distributed x (m, k), ``Ms = U^T U`` (class docstring). Collective."""
        factor, above = self._global_factor()
        k = x.shape[1]
        y = _banded_triangular(factor, x, trans) if self.rows else np.zeros((0, k))
        if self.reduced is None or self.active.size == 1:
            return y
        # The coupling to the neighbouring block enters the first equation (U^T: from the block
        # below) or the last (U: from the block above): y = y0 - w c, w the solution for the unit
        # vector there and c the coupling times the neighbour's boundary entry.
        forward = trans == "T"
        mine = np.zeros(k + 2)
        w = np.zeros(self.rows)
        if self.rows:
            unit = np.zeros((self.rows, 1))
            unit[0 if forward else -1] = 1.0
            w = _banded_triangular(factor, unit, trans)[:, 0]
            end = -1 if forward else 0
            mine[:k], mine[k], mine[k + 1] = y[end], w[end], above
        every = np.zeros((self.comm.size, k + 2))
        self.comm.Allgather(mine, every)
        if not self.rows:
            return y
        order = self.active if forward else self.active[::-1]
        previous, boundary, c = -1, np.zeros(k), np.zeros(k)
        for r in order:
            if previous >= 0:
                c = every[previous if forward else r, k + 1] * boundary
            if r == self.comm.rank:
                break
            boundary = every[r, :k] - c * every[r, k]
            previous = r
        return y - np.outer(w, c)


def _banded_triangular(factor: np.ndarray, x: np.ndarray, trans: str) -> np.ndarray:
    """``U^{-1} x`` or ``U^{-T} x`` for U in LAPACK's upper banded storage (dtbtrs). Rank-local."""
    y, info = sla.lapack.dtbtrs(factor, x, uplo="U", trans=trans)
    if info != 0:
        raise np.linalg.LinAlgError(f"banded triangular solve failed (info {info})")
    return y


class NodalSystem:
    """The least-squares system of a 1D neuron span in scaled value coordinates (module doc),
    distributed like the span's value coordinates (``NeuronSpan``).

    ``K = P Ms P + N N^T`` with ``Ms`` the scaled (banded) mass matrix and ``N`` the orthonormal
    complement of the span: SPD, ``cond(K) <= max(cond(Ms on the span), 1 / lambda_min)``. The
    solution of ``K y = P f`` is the Galerkin projection of the function with load vector f onto
    the span. Rank p holds its rows of ``Ms`` (and one halo row of band values on each side), of
    N and of ``Ms N``; construction is collective.
    """

    def __init__(self, span: NeuronSpan) -> None:
        self.span = span
        comm = self.comm = span.comm
        basis = span.basis
        a, b = span.rows.start, span.rows.stop
        self.band = band = basis.mass_bands.shape[0] - 1
        self.lo, self.hi = (int(v) for v in span.offsets[comm.rank : comm.rank + 2])
        # Band values of the rows lo - 1 .. hi (exact: the window reaches two units further).
        self._band_first = max(self.lo - 1, 0)
        stop = min(self.hi + 1, self.size)
        window = span.window_start
        self._bands = basis.mass_bands[:, self._band_first - window : stop - window]
        below = float(basis.mass_bands[1, a - 1]) if band and a > 0 else 0.0
        self.banded = BandedRows(basis.mass_bands[:, a:b], below, comm, span.offsets)
        self._below = min(band, self.lo)
        self._above = min(band, self.size - self.hi)
        self.mass = basis.mass[a:b, a - self._below : b + self._above]
        N = span.null
        m = N.shape[1]
        low, high = halo_rows(comm, N, span.offsets, band)
        self.mass_null = self.mass @ np.vstack([low, N, high])  # Q = Ms N
        self.null_gram = comm.allreduce(N.T @ self.mass_null) + np.eye(m)  # N^T Ms N + I
        self.inverse_null = self.banded.solve(N) if m else np.zeros((N.shape[0], 0))
        self.inverse_gram = sla.cho_factor(comm.allreduce(N.T @ self.inverse_null)) if m else None
        # Lam = T^T N_aug whitened by the Cholesky factor (Ms = U^T U): Y = U^{-T} Lam = Q R. The
        # correction in ``coefficients`` is U^{-1} Q R^{-T} d: cond(R) is the square root of
        # cond(Lam^T Ms^{-1} Lam), which a small cell can push past 1/eps.
        if m:
            white = self.banded.triangular_solve(span.raw, "T")
            self.constraint_q, self.constraint_r = orthonormal(comm, white)
        else:
            self.constraint_q, self.constraint_r = span.raw, np.zeros((0, 0))
        self._known = np.zeros(0, dtype=np.int64)
        self._known_rows = np.zeros((0, 2 * m + 2))

    @property
    def size(self) -> int:
        """Order of K."""
        return self.span.size

    @property
    def offsets(self) -> np.ndarray:
        """Row offsets of the ranks, shape (P + 1,)."""
        return self.span.offsets

    def coefficients(self, values: np.ndarray) -> np.ndarray:
        """Neuron coefficients (this rank's neurons [+ the bias on the last rank], k) of the
        function with scaled values (this rank's rows, k) in the span.

        The slope jumps ``a = T v`` of values that lie in the span only up to rounding violate
        the span's affine constraints ``N_aug^T a = 0`` by about ``eps |v| / h_min`` (slopes of
        the smallest cells), and a neuron facing left carries that error into an affine function
        on the whole domain. So a is corrected by ``T delta`` with the smallest change of the
        function (mass-weighted, concentrated on the smallest cells) that restores the
        constraints exactly: ``delta = -Ms^{-1} Lam (Lam^T Ms^{-1} Lam)^{-1} N_aug^T a`` with
        ``Lam = T^T N_aug``, computed as ``-U^{-1} Q R^{-T} N_aug^T a`` from the QR factors of
        the whitened ``U^{-T} Lam`` (a least-squares solve with R^T, so that nearly coincident
        breakpoints cannot make it singular). O(n/P). Collective.
        """
        span, comm = self.span, self.comm
        a_nodes, a_glob = span.augmented(values)
        if span.Z.shape[1]:
            first = comm.rank == 0
            rows = np.vstack([span.node_null] + ([span.Z] if first else []))
            defect = comm.allreduce(rows.T @ np.vstack([a_nodes] + ([a_glob] if first else [])))
            weights = sla.lstsq(self.constraint_r.T, defect, check_finite=False)[0]
            delta = self.banded.triangular_solve(self.constraint_q @ weights, "N")
            d_nodes, d_glob = span.augmented(delta)
            a_nodes, a_glob = a_nodes - d_nodes, a_glob - d_glob
        return span.from_augmented(a_nodes, a_glob)

    # --- entries (HSS, dense, diagonals) -------------------------------------------------------

    def _rows_of(self, index: np.ndarray) -> np.ndarray:
        """Per global index (flat): ``[N row, (Ms N) row, Ms[i, i], Ms[i, i + 1]]`` from this
        rank's rows, its halo band values, or rows received with skeletons (``learn``)."""
        m = self.span.null.shape[1]
        out = np.empty((index.size, 2 * m + 2))
        own = (index >= self.lo) & (index < self.hi)
        if own.all():
            local = index - self.lo
            out[:, :m], out[:, m : 2 * m] = self.span.null[local], self.mass_null[local]
        else:
            local = index[own] - self.lo
            out[own, :m], out[own, m : 2 * m] = self.span.null[local], self.mass_null[local]
            other = np.flatnonzero(~own)
            position = np.minimum(np.searchsorted(self._known, index[other]), self._known.size - 1)
            if self._known.size == 0 or np.any(self._known[position] != index[other]):
                raise SolverError(
                    "entries of the value-coordinate system were asked for at rows this rank "
                    "neither owns nor received"
                )
            out[other] = self._known_rows[position]
        near = (index >= self._band_first) & (index < self._band_first + self._bands.shape[1])
        if self.band:
            out[near, 2 * m :] = self._bands[:, index[near] - self._band_first].T
        else:
            out[near, 2 * m] = self._bands[0, index[near] - self._band_first]
        return out

    def rows_at(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What ``entries`` needs of the rows ``index`` (this rank's own or received ones), to be
        sent with a skeleton: ``(index, rows)``, 2 m + 2 numbers per row. Rank-local."""
        index = np.asarray(index, dtype=np.int64).ravel()
        return index, self._rows_of(index)

    def learn(self, received: tuple[np.ndarray, np.ndarray]) -> None:
        """Keep rows sent by another rank (``rows_at``) for ``entries``. Rank-local."""
        index, rows = received
        merged = np.concatenate([self._known, index])
        merged, first = np.unique(merged, return_index=True)
        self._known = merged
        self._known_rows = np.vstack([self._known_rows, rows])[first]

    def entries(self, I: np.ndarray, J: np.ndarray) -> np.ndarray:
        """Exact entries ``K[I][:, J]``; with leading dimensions, a stack of such blocks
        (I (..., a), J (..., b) -> (..., a, b)). Every index must be one of this rank's rows or
        received (``learn``). Rank-local; O(|I| |J|) per block."""
        I, J = np.asarray(I, dtype=np.int64), np.asarray(J, dtype=np.int64)
        return self._entries(I, J, self._rows_of(I.ravel()), self._rows_of(J.ravel()))

    def _entries(
        self, I: np.ndarray, J: np.ndarray, at_i: np.ndarray, at_j: np.ndarray
    ) -> np.ndarray:
        m = self.span.null.shape[1]
        rows, cols = I[..., :, None], J[..., None, :]
        out = np.zeros(np.broadcast_shapes(rows.shape, cols.shape))
        offset = cols - rows
        hit = np.nonzero(np.abs(offset) <= self.band)
        if hit[0].size:
            # Ms[i, j] for |i - j| <= band: the diagonal or upper entry of the lower index.
            d = np.abs(offset[hit])
            lower_is_i = offset[hit] >= 0
            values_i = at_i.reshape(I.shape + (-1,))
            values_j = at_j.reshape(J.shape + (-1,))
            lead = hit[:-2]
            from_i = values_i[lead + (hit[-2],)]
            from_j = values_j[lead + (hit[-1],)]
            pick = np.where(lower_is_i[:, None], from_i, from_j)
            out[hit] = pick[np.arange(d.size), 2 * m + d]
        if m:
            NI = at_i[:, :m].reshape(I.shape + (m,))
            QI = at_i[:, m : 2 * m].reshape(I.shape + (m,))
            NJt = np.swapaxes(at_j[:, :m].reshape(J.shape + (m,)), -1, -2)
            QJt = np.swapaxes(at_j[:, m : 2 * m].reshape(J.shape + (m,)), -1, -2)
            out -= NI @ QJt + QI @ NJt
            out += NI @ self.null_gram @ NJt
        return out

    def local_rows(self) -> np.ndarray:
        """Dense rows of K of this rank (for the dense back end and stored rows): gathers N and
        ``Ms N`` (2 m numbers per row of K). Collective."""
        span, comm = self.span, self.comm
        counts = np.diff(self.offsets)
        m = span.null.shape[1]
        mine = np.hstack([span.null, self.mass_null])
        every = np.empty((self.size, 2 * m))
        comm.Allgatherv(mine, [every, counts * 2 * m, self.offsets[:-1] * 2 * m, MPI.DOUBLE])
        I, J = np.arange(self.lo, self.hi), np.arange(self.size)
        at_j = np.zeros((self.size, 2 * m + 2))
        at_j[:, : 2 * m] = every
        near = slice(self._band_first, self._band_first + self._bands.shape[1])
        at_j[near, 2 * m :] = self._bands.T if self.band else self._bands[:1].T
        return self._entries(I, J, self._rows_of(I), at_j)

    def matvec(self, x: np.ndarray, comm: MPI.Comm) -> np.ndarray:
        """``K x`` on this rank's rows for block-row-distributed x (m, k). Collective over
        ``comm`` (the system's communicator or a counting wrapper of it).

        Sends ``band`` rows to each neighbouring rank and reduces ``2 |N| k`` numbers.
        """
        below, above = halo_rows(comm, x, self.offsets, self.band)
        y = self.mass @ np.vstack([below, x, above])
        N = self.span.null
        if N.shape[1]:
            sums = comm.allreduce(np.concatenate([N.T @ x, self.mass_null.T @ x]))
            nx, qx = sums[: N.shape[1]], sums[N.shape[1] :]
            y += N @ (self.null_gram @ nx - qx) - self.mass_null @ nx
        return y

    def solve_rows(self, f: np.ndarray, comm: MPI.Comm, span_only: bool = False) -> np.ndarray:
        """``K^{-1} f`` on this rank's rows for block-row-distributed f (m, k): ``G f + N N^T f``
        with the constrained inverse ``G = Ms^{-1} - Ms^{-1} N (N^T Ms^{-1} N)^{-1} N^T
        Ms^{-1}``, ``Ms^{-1}`` applied by ``BandedRows`` (a partitioned solve: O(n/P) work per
        rank and 2 k numbers per rank gathered) and the products with N reduced over the ranks
        (``3 |N| k`` numbers). No rank handles a full vector. Collective over ``comm``.

        ``span_only`` returns ``G f`` alone, the solution's part in the span. The neuron-basis
        solve (distgn.solvers.hat) passes a right-hand side already projected onto the span, so
        that its ``N^T f`` is rounding only; added back, it would be amplified by the map to
        neuron coefficients, whose null space can lie nearly inside the span (relative residual
        1.6e-8 instead of 1.4e-13 for A with 256 random breakpoints, benchmarks/krylov.md).
        """
        N = self.span.null
        Nf = comm.allreduce(N.T @ f)
        px = f - N @ Nf
        a = self.banded.solve(px, comm)
        if self.inverse_gram is not None:
            weights = comm.allreduce(self.inverse_null.T @ px)
            a -= self.inverse_null @ sla.cho_solve(self.inverse_gram, weights)
            a -= N @ comm.allreduce(N.T @ a)
        return a if span_only else a + N @ Nf

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

    def load_vector(self, target: Target) -> np.ndarray:
        """This rank's rows of the right-hand side ``f_k = int u psi_k`` (A: scaled hats).
        Rank-local (the window holds the cells next to the rows)."""
        if self.span.name != "A":
            raise SolverError(
                f"the nodal right-hand side is implemented for A, not {self.span.name}"
            )
        lo, hi = self.span.rows.start, self.span.rows.stop
        K = self.span.basis.z.size - 1  # cells of the window
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
        return f / self.span.scale

    def right_hand_side(self, target: Target) -> np.ndarray:
        """This rank's rows of ``P f`` (the load vector projected onto the span). Collective."""
        f = self.load_vector(target)
        N = self.span.null
        return f - N @ self.comm.allreduce(N.T @ f)

    def l2_error(self, values: np.ndarray, target: Target) -> float:
        """``sqrt(int (v - u)^2)`` for v with scaled values (this rank's rows) (A: P1 by its
        nodal values).

        Each rank integrates the cells starting at its rows, by Gauss rules split at the target's
        features: a sum of nonnegative terms, accurate to rounding relative to the error itself.
        Collective.
        """
        span = self.span
        a, b = span.rows.start, span.rows.stop
        above = halo_rows(self.comm, values[:, None], self.offsets, 1)[1][:, 0]
        y = np.zeros(span.basis.z.size)
        y[a:b] = values / span.scale
        y[b : b + above.size] = above / span.basis.scale[b : b + above.size]
        K = span.basis.z.size - 1
        hi = min(b, K)
        total = 0.0
        if hi > a:
            for cell, lam, weight, u in self._cells(target, a, hi):
                v = y[cell][:, None] * (1.0 - lam) + y[cell + 1][:, None] * lam
                total += float(np.sum((v - u) ** 2 * weight))
        return float(np.sqrt(self.comm.allreduce(total)))

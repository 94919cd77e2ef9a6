"""Exact 2D integrals on a convex polygon: A, H, G for neuron pairs, and target moments.

Owns the 2D backend of the assembly: ``pair_integrals`` (exact up to rounding), ``target_moments``
and ``target_integrals`` (high-order quadrature on pieces where the target is smooth). Rank-local:
no MPI.

Pair integrals
--------------
The support of ``h_i h_j`` is the polygon clipped by two half-planes. Each row neuron's clip
``P_i = Omega & {w_i.x + b_i > 0}`` is computed once (Sutherland-Hodgman, compacted to a fixed
number of vertex slots, padded by repeating the last vertex). Then, for a block of pairs at once,
``P_i`` is clipped by ``w_j.x + b_j > 0`` edge by edge: every edge of ``P_i`` keeps its part
``[P_k, Q_k]`` in the half-plane (a degenerate edge when it has none), and the clipped polygon is
fanned from an apex ``c`` on its chord along line j (a vertex of ``P_i`` when line j misses it).
The chord's own triangle is then degenerate and every fan triangle ``(c, P_k, Q_k)`` lies in the
convex clipped polygon (areas are clamped at 0 against rounding). On a triangle T, for affine f
and g, ``int_T f g = |T| / 12 (sum_a f_a g_a + (sum_a f_a)(sum_a g_a))`` over its vertices a:
``A`` uses it with the vertex values of ``phi_i, phi_j`` (all >= 0, so there is no cancellation),
``G`` uses it for the moments of ``x - c`` (a bounded cancellation when shifting back by c), and
``H`` is the sum of the areas. Pairs with an empty support get exact zeros. A line that misses the
polygon gives ``P_i = Omega`` or the empty set. The clip uses ratios of ``w.x + b`` only, so W rows
of any scale work, and ``w = 0`` means active iff ``b > 0``. ``h`` is 1 where ``w.x + b > 0``.
Rows are sorted by vertex count, so that a block loops only over the slots it needs; blocks hold
``BLOCK_PAIRS`` pairs (memory: the outputs plus O(BLOCK_PAIRS) temporaries).

Measured accuracy, against exact rational arithmetic (``fractions.Fraction`` clipping of the same
float inputs, Green's-theorem moments; 3 x 1600 random pairs on the unit square and on a pentagon):
relative error of A, H, G entries median 1e-16, 99th percentile 5e-15, at most 6e-15 for supports
of area > 1e-3. The worst is 3e-13, on supports of area ~1e-5. Such errors come from the rounded
clip vertices and grow like eps * diam / width for a sliver support, as for any floating-point
clipping; a support of width 1e-13 still came out to 5e-14. Speed on one core (numpy 1.24):
0.35-0.5 us per pair for A, H and G together at n = 1024 on the unit square (all n^2 pairs in
0.36-0.5 s), 0.2 us for A alone and 0.14 us for H alone.

Target moments
--------------
``int u h_i xhat`` splits ``P_i`` by every jump line of the target (keeping both sides), so u is
smooth on each convex piece.

A target declared constant between its jumps (``Target.constant``: line_jump, disk) gets closed
forms: the moments of a piece K are sums over its edges PQ of the moments of the triangles
``(c, P, Q)`` (c the circle's centre), and those of K's part in the disk are sums of the moments of
the same triangles intersected with the disk: the triangle over the edge's chord inside the disk
and circular sectors where the edge is outside it (``_disk_triangle_moments``; signed, so no arcs
need to be traced). The part outside is K minus the part inside; u is evaluated once in each part
(the centroid of the convex part in the disk, ``_outside_point`` outside). Cost at n = 512 on one
core: about 5 ms (disk), against 0.4-0.8 s for the quadrature below.

Otherwise, without a jump circle, each piece is fanned into triangles with a
collapsed (Duffy) tensor Gauss-Legendre rule of ``ORDER`` points per direction. With one jump
circle (centre c, radius R), each piece K is cut into wedges about c. The wedges are split at the
angles of K's vertices, of the points where K's edges cross the circle, and of the axes through c,
so every wedge spans at most pi/2. In a wedge, the ray from c meets K in ``[r_near, r_far]`` on two
fixed edges (``r_near = 0`` if c is in K), each edge entirely inside or entirely outside the disk.
The wedge splits into parts that each lie on one side of the circle. Each part is integrated with
u evaluated at its own points: u is never extended across the circle, and no quadrature point of
an outside part lies inside the disk, nor the reverse. The parts are:

* a quadrilateral (two triangles) from the near edge (or c) to ``min(r_far, R)`` (inside), or
  between the two edges (outside, when the near edge is outside the disk);
* the circular segment between that quadrilateral's chord and the arc (inside). It is
  parametrised by the arc angle phi and the distance xi along the bisector,
  ``xi in [R cos(beta), R cos(phi)]``, which is analytic with no near-singularity however close
  the chord passes to c;
* the ring part between the arc and the far edge (outside), parametrised by the position on the
  far edge (``RING_PANELS`` Gauss panels) and the radius. It is analytic, with singularities at
  distance >= R / |edge| from the edge.

Each part gets ``ORDER x ORDER`` Gauss points per panel, the same fixed number for every neuron,
so the work is vectorised across neurons. At most one jump circle is supported.

Measured accuracy, against mpmath (dps 30: exact clipping, Green's theorem along the exact piece
boundaries with their circular arcs, ``mpmath.quad`` of x-antiderivatives along the edges):

* line_jump, disk and smooth targets on the unit square and on a pentagon: max abs error 1e-16 for
  moments of size ~0.1.
* 150 neurons x 5 circles (centre inside, outside, on the boundary; radius 0.05 to 1): <= 3e-16.
* lines within 1e-9 of the disk centre, or tangent to the circle: <= 1e-16.
* a smooth u with a declared circle: 2e-16 (it converges from ``ORDER = 12`` on; without the
  ring panels, the error was 4e-13 at 16).
* ``target_integrals``: the same.

Cost at n = 1024 on one core: 0.14 s (line_jump), 1.2 s (disk), 0.04 s (smooth).
"""

from __future__ import annotations

import numpy as np

from distgn.assembly.quadrature import gauss_legendre
from distgn.errors import InputError
from distgn.targets import Target

ORDER = 16
RING_PANELS = 2
BLOCK_PAIRS = 1 << 14
POINTS_PER_CHUNK = 1 << 18
MATRICES = ("A", "H", "G")


def _check_which(which: tuple[str, ...]) -> None:
    """Reject unknown matrix names."""
    unknown = [name for name in which if name not in MATRICES]
    if unknown:
        raise InputError(f"which = {which!r} has unknown matrices {unknown} (use A, H, G)")


def clip_polygons(
    P: np.ndarray, s: np.ndarray, values: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Clip convex polygons given by vertex slots to the half-planes ``s > 0``.

    Parameters
    ----------
    P : ndarray, shape (k, m, 2)
        Counter-clockwise vertex slots of k convex polygons (repeated vertices allowed).
    s : ndarray, shape (k, m)
        Values of each polygon's affine cutting function at its vertices.
    values : ndarray, shape (k, m), optional
        A per-vertex quantity to carry to the kept vertices; the new vertices (on the line) get 0.

    Returns
    -------
    Q : ndarray, shape (k, m_out, 2)
        Clipped polygons, valid vertices first, padded by repeating the last one (all slots equal
        when the polygon is empty); ``m_out`` is the largest vertex count, at least 1.
    carried : ndarray, shape (k, m_out) or None
        ``values`` at the clipped vertices.
    count : ndarray, shape (k,)
        Number of vertices before the padding (0 for an empty polygon).
    """
    k, m = s.shape
    s1 = np.roll(s, -1, axis=1)
    P1 = np.roll(P, -1, axis=1)
    inside = s > 0
    inside1 = np.roll(inside, -1, axis=1)
    cross = inside != inside1
    t = np.where(cross, s / np.where(cross, s - s1, 1.0), 0.0)
    X = P + t[..., None] * (P1 - P)
    # Sutherland-Hodgman: edge k emits its crossing point, then its end vertex if kept.
    candidates = np.stack([X, P1], axis=2).reshape(k, 2 * m, 2)
    valid = np.stack([cross, inside1], axis=2).reshape(k, 2 * m)
    count = valid.sum(axis=1)
    m_out = max(int(count.max(initial=0)), 1)
    order = np.argsort(~valid, axis=1, kind="stable")
    slot = np.minimum(np.arange(m_out)[None, :], np.maximum(count - 1, 0)[:, None])
    index = np.take_along_axis(order, slot, axis=1)
    Q = np.take_along_axis(candidates, index[..., None], axis=1)
    if values is None:
        return Q, None, count
    carried = np.stack([np.zeros_like(values), np.roll(values, -1, axis=1)], axis=2)
    return Q, np.take_along_axis(carried.reshape(k, 2 * m), index, axis=1), count


def neuron_polygons(
    vertices: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The active polygons ``P_i = Omega ∩ {w_i.x + b_i > 0}`` as vertex slots.

    Returns
    -------
    P : ndarray, shape (n, m, 2)
        Vertex slots (padded by repeating the last vertex; all equal if ``P_i`` is empty).
    phi : ndarray, shape (n, m)
        ``relu(w_i.x + b_i)`` at the slots (exactly 0 at the vertices on line i).
    count : ndarray, shape (n,)
        Number of vertex slots before the padding (at least 1).
    """
    V = np.asarray(vertices, dtype=float)
    s = W @ V.T + b[:, None]
    P, phi, count = clip_polygons(np.broadcast_to(V, (W.shape[0],) + V.shape), s, s)
    return P, phi, np.maximum(count, 1)


def relu_squares(vertices: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``int relu(w_i.x + b_i)^2`` over the polygon for every neuron, shape (n,): the diagonal of
    A without the pair clipping. Fan triangles ``(P_0, P_k, P_k+1)`` of ``P_i`` and the triangle
    rule with the vertex values of ``phi_i`` (all >= 0: no cancellation). Rank-local."""
    P, phi, _ = neuron_polygons(vertices, np.asarray(W, dtype=float), np.asarray(b, dtype=float))
    area = _fan_areas(P)
    a, b1, c = phi[:, :1], phi[:, 1:-1], phi[:, 2:]
    total = a + b1 + c
    return np.sum(area / 12.0 * (a * a + b1 * b1 + c * c + total * total), axis=1)


def line_arrangement(
    vertices: np.ndarray, W: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The cells of the polygon cut by the lines ``w_i.x + b_i = 0``, with each cell's activity.

    Every line splits every cell it crosses into its two sides (``clip_polygons``); cells of no
    area are dropped. Which neurons are active on a cell is recorded as the cells are split, so
    it is exact however thin the cell. O(k^2) cells for k lines in general position (fewer for
    near-parallel lines). Rank-local.

    Returns
    -------
    K : ndarray, shape (cells, m, 2)
        Vertex slots of the cells (counter-clockwise, padded by repeating the last vertex).
    active : ndarray of bool, shape (cells, k)
        ``active[q, i]``: ``w_i.x + b_i > 0`` on cell q.
    """
    K = np.asarray(vertices, dtype=float)[None]
    active = np.zeros((1, b.size), dtype=bool)
    for i in range(b.size):
        s = K @ W[i] + b[i]
        plus, _, count_plus = clip_polygons(K, s)
        minus, _, count_minus = clip_polygons(K, -s)
        m = max(plus.shape[1], minus.shape[1])
        K = np.concatenate([_pad_slots(plus, m), _pad_slots(minus, m)], axis=0)
        side = np.zeros((2, active.shape[0], b.size), dtype=bool)
        side[:] = active
        side[0, :, i] = True
        keep = np.concatenate([count_plus, count_minus]) >= 3
        K, active = K[keep], side.reshape(-1, b.size)[keep]
        keep = _fan_areas(K).sum(axis=1) > 0
        K, active = _compact(K[keep]), active[keep]
    return K, active


def _compact(K: np.ndarray) -> np.ndarray:
    """Vertex slots (k, m, 2) without repeated consecutive vertices, padded to the largest count
    by repeating the last vertex (the padding of ``clip_polygons`` would otherwise pile up)."""
    new = np.concatenate(
        [np.ones((K.shape[0], 1), dtype=bool), np.any(np.diff(K, axis=1) != 0, axis=2)], axis=1
    )
    count = new.sum(axis=1)
    order = np.argsort(~new, axis=1, kind="stable")
    slot = np.minimum(np.arange(max(int(count.max(initial=1)), 1))[None, :], count[:, None] - 1)
    return np.take_along_axis(K, np.take_along_axis(order, slot, axis=1)[..., None], axis=1)


def _fan_areas(K: np.ndarray) -> np.ndarray:
    """Areas of the fan triangles ``(K_0, K_k, K_k+1)`` of convex cells, shape (cells, m-2)."""
    U, V = K[:, 1:-1] - K[:, :1], K[:, 2:] - K[:, :1]
    return np.maximum(0.5 * (U[..., 0] * V[..., 1] - U[..., 1] * V[..., 0]), 0.0)


def relu_sum_integrals(
    vertices: np.ndarray, W: np.ndarray, b: np.ndarray, c: np.ndarray
) -> tuple[float, np.ndarray]:
    """``int v^2`` and ``int v h_i xhat`` for ``v = sum_i c_i relu(w_i.x + b_i)`` over the
    polygon, on the cells of the lines' arrangement (``line_arrangement``).

    On each cell v is one affine function, whose vertex values enter the triangle rule exactly:
    the results carry a rounding error of about ``eps |v| sum_i |c_i| |phi_i|``, not the ``eps
    (sum_i |c_i| |phi_i|)^2`` of ``c^T A c`` (or ``eps sum_i |c_i| |phi_i|`` of ``sum_j c_j
    G_ij r_j``), which for a few neurons with large, cancelling coefficients is larger than the
    integral itself. For a few lines only (O(k^2) cells). Rank-local.

    Returns
    -------
    square : float
        ``int v^2``.
    moments : ndarray, shape (k, 3)
        ``int v h_i (x, y, 1)`` for each neuron i.
    """
    W, b, c = (np.asarray(x, dtype=float) for x in (W, b, c))
    K, active = line_arrangement(vertices, W, b)
    linear = active.astype(float) @ (c[:, None] * np.column_stack([W, b]))
    f = np.einsum("qmk,qk->qm", K, linear[:, :2]) + linear[:, 2:]
    area = _fan_areas(K) / 12.0
    f0, f1, f2 = f[:, :1], f[:, 1:-1], f[:, 2:]
    total = f0 + f1 + f2
    square = float(np.sum(area * (f0 * f0 + f1 * f1 + f2 * f2 + total * total)))
    g = np.concatenate([K, np.ones(K.shape[:2] + (1,))], axis=2)
    g0, g1, g2 = g[:, :1], g[:, 1:-1], g[:, 2:]
    cell = np.einsum(
        "qt,qtk->qk",
        area,
        f0[..., None] * g0
        + f1[..., None] * g1
        + f2[..., None] * g2
        + total[..., None] * (g0 + g1 + g2),
    )
    return square, active.T.astype(float) @ cell


def _crossings(
    pxk: list, pyk: list, pgk: list, s: list, inside: list, want_A: bool
) -> tuple[list, tuple[np.ndarray, ...]]:
    """Pass 1 of ``_pair_block``: the crossing point of every edge k of the row polygons with the
    column lines (x, y and, for A, ``phi_i`` there; per edge, (ci, cj) arrays), and the apex: the
    last crossing point (on line j, inside P_i), or slot 0 of P_i when line j misses it, with
    ``phi_i`` and ``h = relu(w_j . x + b_j)`` there."""
    m = len(s)
    shape = s[0].shape
    cx = np.broadcast_to(pxk[0], shape).copy()
    cy = np.broadcast_to(pyk[0], shape).copy()
    cg = np.broadcast_to(pgk[0], shape).copy()
    ch = np.maximum(s[0], 0.0)
    X = []
    for k in range(m):
        k1 = (k + 1) % m
        cross = inside[k] != inside[k1]
        t = np.zeros(shape)
        np.divide(s[k], s[k] - s[k1], out=t, where=cross)
        xk = pxk[k] + t * (pxk[k1] - pxk[k])
        yk = pyk[k] + t * (pyk[k1] - pyk[k])
        np.copyto(cx, xk, where=cross)
        np.copyto(cy, yk, where=cross)
        np.copyto(ch, 0.0, where=cross)
        gk = None
        if want_A:
            gk = pgk[k] + t * (pgk[k1] - pgk[k])
            np.copyto(cg, gk, where=cross)
        X.append((xk, yk, gk))
    return X, (cx, cy, cg, ch)


def _fan_sums(
    pxk: list,
    pyk: list,
    pgk: list,
    s: list,
    inside: list,
    X: list,
    apex: tuple[np.ndarray, ...],
    want_A: bool,
    want_G: bool,
) -> dict[str, np.ndarray]:
    """Pass 2 of ``_pair_block``: sums over the fan triangles (c, P_k, Q_k) of the clipped edges
    (the apex c and crossings from ``_crossings``); see ``_pair_block`` for the keys."""
    cx, cy, cg, ch = apex
    m = len(s)
    out = {"D": np.zeros(cx.shape)}
    if want_A:
        h = [np.maximum(sk, 0.0) for sk in s]
        cgh = cg * ch
        out["A"] = np.zeros(cx.shape)
    if want_G:
        for key in ("x", "y", "xx", "xy", "yy"):
            out[key] = np.zeros(cx.shape)
        out["cx"], out["cy"] = cx, cy
    for k in range(m):
        k1 = (k + 1) % m
        xk, yk, gk = X[k]
        ux = np.where(inside[k], pxk[k], xk) - cx
        uy = np.where(inside[k], pyk[k], yk) - cy
        vx = np.where(inside[k1], pxk[k1], xk) - cx
        vy = np.where(inside[k1], pyk[k1], yk) - cy
        D = ux * vy - uy * vx
        np.maximum(D, 0.0, out=D)
        out["D"] += D
        if want_A:
            gP = np.where(inside[k], pgk[k], gk)
            gQ = np.where(inside[k1], pgk[k1], gk)
            hP, hQ = h[k], h[k1]
            term = (cg + gP + gQ) * (ch + hP + hQ)
            term += cgh
            term += gP * hP
            term += gQ * hQ
            term *= D
            out["A"] += term
        if want_G:
            sx = ux + vx
            sy = uy + vy
            out["x"] += D * sx
            out["y"] += D * sy
            out["xx"] += D * (sx * sx - ux * vx)
            out["yy"] += D * (sy * sy - uy * vy)
            out["xy"] += D * (sx * sy + ux * uy + vx * vy)
    return out


def _pair_block(
    px: np.ndarray,
    py: np.ndarray,
    pg: np.ndarray,
    wb: np.ndarray,
    want_A: bool,
    want_G: bool,
) -> dict[str, np.ndarray]:
    """Integrals over ``P_i & {w_j.x + b_j > 0}`` for a block of pairs.

    ``px, py, pg`` (ci, m) are the slots of the row polygons and ``phi_i`` there; ``wb`` (3, cj)
    holds ``(w_j, b_j)`` of the columns. Returns (ci, cj) arrays: twice the area ``"D"`` and, when
    asked, 24 A (``"A"``) and the fan sums ``"x", "y", "xx", "xy", "yy"`` of the moments of
    ``x - c`` (the caller applies the 1/6, 1/12, 1/24 factors and the shift by the apex
    ``"cx", "cy"``).
    """
    ci, m = px.shape
    cj = wb.shape[1]
    slots = np.stack([px, py, np.ones_like(px)], axis=2).reshape(ci * m, 3)
    s_all = (slots @ wb).reshape(ci, m, cj)
    s = [s_all[:, k, :] for k in range(m)]
    inside = [sk > 0 for sk in s]
    pxk = [px[:, k, None] for k in range(m)]
    pyk = [py[:, k, None] for k in range(m)]
    pgk = [pg[:, k, None] for k in range(m)]
    X, apex = _crossings(pxk, pyk, pgk, s, inside, want_A)
    return _fan_sums(pxk, pyk, pgk, s, inside, X, apex, want_A, want_G)


def pair_integrals(
    vertices: np.ndarray,
    W: np.ndarray,
    b: np.ndarray,
    I: np.ndarray,
    J: np.ndarray,
    which: tuple[str, ...] = MATRICES,
) -> dict[str, np.ndarray]:
    """Exact ``A``, ``H`` (|I|, |J|) and ``G`` (|I|, |J|, 3, 3) for neuron pairs on a polygon.

    Parameters
    ----------
    vertices : ndarray, shape (V, 2)
        Counter-clockwise vertices of the convex polygon.
    W, b : ndarray
        Weights (n, 2) and biases (n,).
    I, J : ndarray of int
        Row and column neurons.
    which : tuple of str
        Which of "A", "H", "G" to return.

    Returns
    -------
    dict
        ``"A"``: ``int phi_i phi_j``; ``"H"``: ``int h_i h_j``; ``"G"``: ``int h_i h_j xhat xhat^T``
        with ``xhat = (x, y, 1)``; only the keys in ``which``.
    """
    _check_which(which)
    W = np.asarray(W, dtype=float)
    b = np.asarray(b, dtype=float)
    I = np.asarray(I, dtype=np.intp).reshape(-1)
    J = np.asarray(J, dtype=np.intp).reshape(-1)
    nI, nJ = I.size, J.size
    out: dict[str, np.ndarray] = {}
    for name in which:
        out[name] = np.zeros((nI, nJ, 3, 3) if name == "G" else (nI, nJ))
    if nI == 0 or nJ == 0:
        return out
    want_A, want_G = "A" in which, "G" in which
    P, phi, count = neuron_polygons(vertices, W[I], b[I])
    # Rows sorted by vertex count, so that a block only loops over the slots it needs.
    order = np.argsort(count, kind="stable")
    wb = np.vstack([W[J].T, b[J]])
    cj = min(nJ, BLOCK_PAIRS)
    ci = max(1, BLOCK_PAIRS // cj)
    for i0 in range(0, nI, ci):
        dest = order[i0 : i0 + ci]
        m = int(count[dest].max())
        px, py, pg = P[dest, :m, 0], P[dest, :m, 1], phi[dest, :m]
        for j0 in range(0, nJ, cj):
            cols = slice(j0, j0 + cj)
            part = _pair_block(px, py, pg, wb[:, cols], want_A, want_G)
            area = 0.5 * part["D"]
            if "H" in which:
                out["H"][dest, cols] = area
            if want_A:
                out["A"][dest, cols] = part["A"] / 24.0
            if want_G:
                cx, cy = part["cx"], part["cy"]
                mx, my = part["x"] / 6.0, part["y"] / 6.0
                G = np.empty(area.shape + (3, 3))
                G[..., 0, 0] = cx * (cx * area + 2.0 * mx) + part["xx"] / 12.0
                G[..., 1, 1] = cy * (cy * area + 2.0 * my) + part["yy"] / 12.0
                G[..., 0, 1] = G[..., 1, 0] = cx * (cy * area + my) + cy * mx + part["xy"] / 24.0
                G[..., 0, 2] = G[..., 2, 0] = cx * area + mx
                G[..., 1, 2] = G[..., 2, 1] = cy * area + my
                G[..., 2, 2] = area
                out["G"][dest, cols] = G
    return out


def _gauss(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1]."""
    x, w = gauss_legendre(q)
    return 0.5 * (x + 1.0), 0.5 * w


def _triangle_rule(
    a: np.ndarray, b: np.ndarray, c: np.ndarray, q: int
) -> tuple[np.ndarray, np.ndarray]:
    """Collapsed (Duffy) q x q Gauss rule on triangles ``(a, b, c)`` of shape (..., 2).

    Returns points (..., q*q, 2) and weights (..., q*q); exact for polynomials of degree 2q - 2.
    """
    x, w = _gauss(q)
    s, t = x[:, None], x[None, :]
    ws = (w[:, None] * w[None, :] * s).reshape(-1)
    s, t = np.broadcast_to(s, (q, q)).reshape(-1), (s * t).reshape(-1)
    ab, bc = b - a, c - b
    points = a[..., None, :] + s[:, None] * ab[..., None, :] + t[:, None] * bc[..., None, :]
    twice_area = np.abs(ab[..., 0] * bc[..., 1] - ab[..., 1] * bc[..., 0])
    return points, twice_area[..., None] * ws


def _fan_rule(K: np.ndarray, q: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature on convex polygons (k, m, 2) fanned from slot 0.

    Returns points (k, N, 2) and weights (k, N).
    """
    k, m, _ = K.shape
    if m < 3:
        K, m = _pad_slots(K, 3), 3
    a = np.broadcast_to(K[:, :1], (k, m - 2, 2))
    points, weights = _triangle_rule(a, K[:, 1:-1], K[:, 2:], q)
    return points.reshape(k, -1, 2), weights.reshape(k, -1)


def _wedge_angles(K: np.ndarray, rel: np.ndarray, d: np.ndarray, R: float) -> np.ndarray:
    """Sorted breakpoint angles about the centre (k, a) of pieces K (k, m, 2): vertices (``rel``,
    relative to the centre), crossings of the edges ``d`` with the circle, and the axes."""
    k = K.shape[0]
    a2 = np.einsum("kmi,kmi->km", d, d)
    b2 = np.einsum("kmi,kmi->km", d, rel)
    c2 = np.einsum("kmi,kmi->km", rel, rel) - R * R
    disc = b2 * b2 - a2 * c2
    root = np.sqrt(np.maximum(disc, 0.0))
    big = -(b2 + np.copysign(root, b2))
    ok = (disc > 0) & (a2 > 0) & (big != 0)
    big = np.where(ok, big, 1.0)
    lam = np.stack([big / np.where(ok, a2, 1.0), c2 / big], axis=-1)
    ok = ok[..., None] & (lam >= 0.0) & (lam <= 1.0)
    cross = rel[..., None, :] + lam[..., None] * d[..., None, :]
    cross_angle = np.where(ok, np.arctan2(cross[..., 1], cross[..., 0]), np.nan).reshape(k, -1)
    fixed = np.broadcast_to(np.array([-np.pi, -np.pi / 2, 0.0, np.pi / 2, np.pi]), (k, 5))
    angles = np.concatenate([fixed, np.arctan2(rel[..., 1], rel[..., 0]), cross_angle], axis=1)
    angles = np.sort(angles, axis=1)
    used = int(np.max(np.sum(np.isfinite(angles), axis=1)))
    return np.where(np.isfinite(angles), angles, np.pi)[:, :used]


def _wedge_rays(
    K: np.ndarray,
    center: np.ndarray,
    R: float,
    normal: np.ndarray,
    h: np.ndarray,
    th1: np.ndarray,
    th2: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Where the boundary rays of each wedge ``[th1, th2]`` meet its near and far edges.

    ``normal`` (k, m, 2) are the outward edge normals (scaled by the edge lengths) and ``h`` the
    edges' ``normal . (vertex - centre)``. Returns ``r_near, r_far`` (distances at mid-angle),
    ``rn1, rn2, rf1, rf2`` (along the rays th1 and th2), whether the wedge has a near edge, and
    whether it is valid (a nonempty part of K).
    """
    tm = 0.5 * (th1 + th2)
    ne = (
        np.cos(tm)[..., None] * normal[:, None, :, 0]
        + np.sin(tm)[..., None] * normal[:, None, :, 1]
    )
    hk = np.broadcast_to(h[:, None, :], ne.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        r_exit = np.where(ne > 0, hk / ne, np.inf)
        r_entry = np.where(ne < 0, hk / ne, -np.inf)
    far = np.argmin(r_exit, axis=2)[..., None]
    near = np.argmax(r_entry, axis=2)[..., None]
    r_far = np.take_along_axis(r_exit, far, axis=2)[..., 0]
    r_near = np.maximum(np.take_along_axis(r_entry, near, axis=2)[..., 0], 0.0)
    # An entry edge within rounding of c passes through c: the wedges next to it have boundary
    # rays along it, which meet it nowhere (they were dropped, losing up to 2% of the piece).
    rounding = (
        64 * np.finfo(float).eps * (np.max(np.abs(K), axis=(1, 2)) + np.max(np.abs(center)) + R)
    )
    has_near = r_near > rounding[:, None]
    r_near = np.where(has_near, r_near, 0.0)
    blocked = np.any((ne == 0) & (hk < 0), axis=2)
    valid = (th2 > th1) & np.isfinite(r_far) & (r_far > r_near) & ~blocked
    e1 = np.stack([np.cos(th1), np.sin(th1)], axis=-1)
    e2 = np.stack([np.cos(th2), np.sin(th2)], axis=-1)

    def along(edge: np.ndarray, e: np.ndarray, sign: float) -> tuple[np.ndarray, np.ndarray]:
        """Distance from c to the line of ``edge`` along the rays ``e`` (exit edges have
        ``sign = 1``, entry edges -1), and whether the ray meets it on the expected side."""
        nrm = np.take_along_axis(
            np.broadcast_to(normal[:, None], ne.shape + (2,)), edge[..., None], axis=2
        )[:, :, 0]
        hh = np.take_along_axis(hk, edge, axis=2)[..., 0]
        den = sign * np.einsum("ksi,ksi->ks", nrm, e)
        good = den > 0
        return np.where(good, sign * hh / np.where(good, den, 1.0), 0.0), good

    rf1, g1 = along(far, e1, 1.0)
    rf2, g2 = along(far, e2, 1.0)
    rn1, g3 = along(near, e1, -1.0)
    rn2, g4 = along(near, e2, -1.0)
    valid &= g1 & g2 & (g3 & g4 | ~has_near)
    rn1, rn2 = np.where(has_near, rn1, 0.0), np.where(has_near, rn2, 0.0)
    return r_near, r_far, rn1, rn2, rf1, rf2, valid


def _segment_rule(
    th1: np.ndarray, th2: np.ndarray, center: np.ndarray, R: float, q: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gauss rule (..., q, q) on the circular segments between the chords of the wedges
    ``[th1, th2]`` and their arcs: phi in [-beta, beta], xi in ``[R cos(beta), R cos(phi)]``
    along the bisector (analytic however close the chord passes to the centre)."""
    x, w = _gauss(q)
    beta = 0.5 * (th2 - th1)[..., None, None]
    mid = 0.5 * (th1 + th2)[..., None, None]
    phi = beta * (2.0 * x[:, None] - 1.0)
    gap = 2.0 * R * np.sin(0.5 * (beta + phi)) * np.sin(0.5 * (beta - phi))
    xi = R * np.cos(beta) + x[None, :] * gap
    eta = R * np.sin(phi)
    points = center + np.stack(
        [xi * np.cos(mid) - eta * np.sin(mid), xi * np.sin(mid) + eta * np.cos(mid)], axis=-1
    )
    return points, (2.0 * beta * w[:, None]) * w[None, :] * gap * R * np.cos(phi)


def _ring_rule(
    F1: np.ndarray, F2: np.ndarray, center: np.ndarray, R: float, q: int
) -> tuple[np.ndarray, np.ndarray]:
    """Gauss rule (..., RING_PANELS q, q) between the arc and the far edges ``F1 F2``: lambda
    along the edge (``RING_PANELS`` panels, as the edge's distance to the centre limits the
    analyticity in lambda) and the radius in ``[R, rho]``."""
    x, w = _gauss(q)
    xl = ((np.arange(RING_PANELS)[:, None] + x[None, :]) / RING_PANELS).reshape(-1)
    wl = np.tile(w / RING_PANELS, RING_PANELS)
    edge = (F2 - F1)[..., None, None, :]
    E = (F1 - center)[..., None, None, :] + xl[:, None, None] * edge
    rho = np.sqrt(np.sum(E * E, axis=-1))
    rho_safe = np.where(rho > 0, rho, 1.0)
    r = R + x[None, :] * (rho - R)
    points = center + (r / rho_safe)[..., None] * E
    dtheta = (E[..., 0] * edge[..., 1] - E[..., 1] * edge[..., 0]) / rho_safe**2
    return points, wl[:, None] * w[None, :] * r * (rho - R) * dtheta


def _circle_rule(
    K: np.ndarray, center: np.ndarray, radius: float, q: int
) -> tuple[np.ndarray, np.ndarray]:
    """Quadrature on convex polygons (k, m, 2) whose parts inside and outside a circle are separate.

    Wedges about the centre (split at the vertex angles, the edge-circle crossing angles and the
    axes, ``_wedge_angles``) are cut into a quadrilateral, a circular segment and a ring part,
    each on one side of the circle (see the module docstring). Returns points (k, N, 2) and
    weights (k, N).
    """
    k = K.shape[0]
    c, R = np.asarray(center, dtype=float), float(radius)
    rel = K - c
    d = np.roll(K, -1, axis=1) - K
    normal = np.stack([d[..., 1], -d[..., 0]], axis=-1)
    angles = _wedge_angles(K, rel, d, R)
    th1, th2 = angles[:, :-1], angles[:, 1:]
    r_near, r_far, rn1, rn2, rf1, rf2, valid = _wedge_rays(
        K, c, R, normal, np.einsum("kmi,kmi->km", normal, rel), th1, th2
    )
    arc = valid & (r_near <= R) & (r_far > R)
    e1 = np.stack([np.cos(th1), np.sin(th1)], axis=-1)
    e2 = np.stack([np.cos(th2), np.sin(th2)], axis=-1)
    F1, F2 = c + rf1[..., None] * e1, c + rf2[..., None] * e2
    N1, N2 = c + rn1[..., None] * e1, c + rn2[..., None] * e2
    Y1 = np.where(arc[..., None], c + R * e1, F1)
    Y2 = np.where(arc[..., None], c + R * e2, F2)
    # Quadrilateral (N1, Y1, Y2, N2): inside the disk if the near edge is, outside otherwise.
    rules = [
        (_triangle_rule(N1, Y1, Y2, q), valid),
        (_triangle_rule(N1, Y2, N2, q), valid),
        (_segment_rule(th1, th2, c, R, q), arc),
        (_ring_rule(F1, F2, c, R, q), arc),
    ]
    points = np.concatenate([p.reshape(th1.shape + (-1, 2)) for (p, _), _ in rules], axis=2)
    weights = np.concatenate(
        [np.where(mask[..., None], w.reshape(th1.shape + (-1,)), 0.0) for (_, w), mask in rules],
        axis=2,
    )
    keep = (weights != 0.0)[..., None] & np.isfinite(points)
    points = np.where(keep, points, K[:, None, None, 0, :])
    return points.reshape(k, -1, 2), weights.reshape(k, -1)


def _pad_slots(K: np.ndarray, m: int) -> np.ndarray:
    """Pad vertex slots (k, m0, 2) to m slots by repeating the last one."""
    return np.concatenate([K, np.repeat(K[:, -1:], m - K.shape[1], axis=1)], axis=1)


def _split_by_lines(
    K: np.ndarray, owner: np.ndarray, lines: tuple[tuple[np.ndarray, float], ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Split convex pieces (k, m, 2) by every jump line (both sides kept), with their owners."""
    for normal, offset in lines:
        s = K @ np.asarray(normal, dtype=float) - float(offset)
        plus, _, _ = clip_polygons(K, s)
        minus, _, _ = clip_polygons(K, -s)
        m = max(plus.shape[1], minus.shape[1])
        K = np.concatenate([_pad_slots(plus, m), _pad_slots(minus, m)], axis=0)
        owner = np.concatenate([owner, owner])
    return K, owner


def _check_circles(target: Target) -> None:
    """Reject a target with more than one jump circle."""
    if len(target.circles) > 1:
        raise InputError(
            f"target {target.name!r} has {len(target.circles)} jump circles; the 2D polygon "
            "backend supports at most one"
        )


def _piece_rule(
    K: np.ndarray, target: Target, q: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Quadrature on convex pieces (k, m, 2) split where ``target`` jumps.

    Returns points (p, N, 2), weights (p, N), the index (p,) of the input piece each of the p
    sub-pieces belongs to, and the number of points of each triangle or wedge (N is a multiple;
    the trailing ones are padding with zero weights when the pieces have fewer vertices).
    """
    _check_circles(target)
    K, owner = _split_by_lines(K, np.arange(K.shape[0]), target.lines)
    if target.circles:
        center, radius = target.circles[0]
        points, weights = _circle_rule(K, center, radius, q)
        return points, weights, owner, (3 + RING_PANELS) * q * q
    points, weights = _fan_rule(K, q)
    return points, weights, owner, q * q


# ---------------------------------------------------------------------------------------------
# Closed forms for targets constant between their jumps


def _sequential_sum(x: np.ndarray, group: int = 1) -> np.ndarray:
    """Sums over axis 1 of x (k, N, ...): within fixed groups of ``group`` entries, then group by
    group in order. Padding with zeros at the end does not change the bits, so a row's sum does
    not depend on the other rows it is computed with (the number of ranks)."""
    k, count = x.shape[:2]
    parts = np.sum(x.reshape((k, count // group, group) + x.shape[2:]), axis=2)
    return np.cumsum(parts, axis=1)[:, -1]


def _cross(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """``U x V`` of 2-vectors (..., 2)."""
    return U[..., 0] * V[..., 1] - U[..., 1] * V[..., 0]


def _unit(U: np.ndarray) -> np.ndarray:
    """``U / |U|`` (0 for U = 0)."""
    norm = np.hypot(U[..., 0], U[..., 1])[..., None]
    return np.where(norm > 0, U / np.where(norm > 0, norm, 1.0), 0.0)


def _triangle_moments(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """``int (x, y, 1)`` over the triangles ``(0, P, Q)``, signed (positive when CCW), (..., 3)."""
    S = 0.5 * _cross(P, Q)
    return np.stack([S * (P[..., 0] + Q[..., 0]) / 3, S * (P[..., 1] + Q[..., 1]) / 3, S], axis=-1)


def _sector_moments(U: np.ndarray, V: np.ndarray, R: float) -> np.ndarray:
    """``int (x, y, 1)`` over the sectors of the disk ``|x| < R`` from direction U to V (the
    angle ``atan2(U x V, U . V)`` in (-pi, pi], signed), (..., 3)."""
    delta = np.arctan2(_cross(U, V), np.einsum("...i,...i->...", U, V))
    eU, eV = _unit(U), _unit(V)
    third = R**3 / 3
    return np.stack(
        [third * (eV[..., 1] - eU[..., 1]), third * (eU[..., 0] - eV[..., 0]), 0.5 * R * R * delta],
        axis=-1,
    )


def _disk_triangle_moments(P: np.ndarray, Q: np.ndarray, R: float) -> np.ndarray:
    """``int (x, y, 1)`` over the triangles ``(0, P, Q)`` intersected with the disk ``|x| < R``,
    signed, (..., 3): the triangle on the chord of the edge PQ inside the disk, and sectors where
    the edge is outside it. Summed over the edges of a polygon it gives the polygon's part in the
    disk, with no case analysis of arcs."""
    d = Q - P
    a = np.einsum("...i,...i->...", d, d)
    half_b = np.einsum("...i,...i->...", P, d)
    c = np.einsum("...i,...i->...", P, P) - R * R
    disc = half_b * half_b - a * c
    big = -(half_b + np.copysign(np.sqrt(np.maximum(disc, 0.0)), half_b))
    ok = (disc > 0) & (a > 0) & (big != 0)
    roots = np.stack([big / np.where(ok, a, 1.0), c / np.where(ok, big, 1.0)], axis=-1)
    ta = np.clip(np.min(roots, axis=-1), 0.0, 1.0)
    tb = np.clip(np.max(roots, axis=-1), 0.0, 1.0)
    chord = ok & (ta < tb)
    A = P + ta[..., None] * d
    B = P + tb[..., None] * d
    return (
        np.where(chord[..., None], _triangle_moments(A, B), 0.0)
        + np.where((chord & (ta > 0))[..., None], _sector_moments(P, A, R), 0.0)
        + np.where((chord & (tb < 1))[..., None], _sector_moments(B, Q, R), 0.0)
        + np.where(~chord[..., None], _sector_moments(P, Q, R), 0.0)
    )


def _outside_point(K: np.ndarray, centroid: np.ndarray, R: float) -> np.ndarray:
    """A point of each convex piece K (k, m, 2; centred on the circle) outside the disk
    ``|x| < R``: halfway from K's farthest vertex v towards the centroid g, or towards the point
    where the segment v g enters the disk. (Meaningless where K lies in the disk.)"""
    far = np.argmax(np.einsum("kmi,kmi->km", K, K), axis=1)
    v = K[np.arange(K.shape[0]), far]
    d = centroid - v
    a = np.einsum("ki,ki->k", d, d)
    half_b = np.einsum("ki,ki->k", v, d)
    disc = half_b * half_b - a * (np.einsum("ki,ki->k", v, v) - R * R)
    entry = (-half_b - np.sqrt(np.maximum(disc, 0.0))) / np.where(a > 0, a, 1.0)
    t = np.where((disc > 0) & (a > 0) & (entry > 0) & (entry < 1), entry, 1.0)
    return v + 0.5 * t[:, None] * d


def _constant_moments(K: np.ndarray, target: Target) -> tuple[np.ndarray, np.ndarray]:
    """``int u (x, y, 1)`` (k, 3) and ``int u^2`` (k,) over convex pieces K (k, m, 2) on which u
    is constant apart from one jump circle (``target.constant``; the pieces are already split by
    the jump lines). Exact up to rounding: triangle and sector moments (``_disk_triangle_moments``
    for the part in the disk, the rest is the piece minus it), and u taken at one interior point
    of each part (the centroid of the convex part in the disk, ``_outside_point`` outside)."""
    if target.circles:
        center, radius = target.circles[0]
        center, radius = np.asarray(center, dtype=float), float(radius)
    else:
        center, radius = np.zeros(2), 0.0
    rel = K - center
    nxt = np.roll(rel, -1, axis=1)
    total = _sequential_sum(_triangle_moments(rel, nxt))
    inside = (
        _sequential_sum(_disk_triangle_moments(rel, nxt, radius))
        if target.circles
        else np.zeros_like(total)
    )
    parts = np.stack([inside, total - inside], axis=1)  # (k, 2, 3): in the disk, outside it
    area = parts[..., 2]
    safe = np.where(area > 0, area, 1.0)[..., None]
    centroid = total[:, :2] / np.where(total[:, 2:] > 0, total[:, 2:], 1.0)
    points = np.stack([parts[:, 0, :2] / safe[:, 0], _outside_point(rel, centroid, radius)], axis=1)
    u = np.where(area > 0, target(points.reshape(-1, 2) + center).reshape(area.shape), 0.0)
    parts[..., :2] += center * area[..., None]
    return np.einsum("kp,kpi->ki", u, parts), np.einsum("kp,kp->k", u * u, area)


def _points_per_piece(m: int, target: Target, q: int) -> int:
    """An upper bound of the quadrature points per input piece of m vertex slots."""
    m += len(target.lines)
    per_piece = ((3 + RING_PANELS) * (3 * m + 4) if target.circles else max(m - 2, 1)) * q * q
    return per_piece * 2 ** len(target.lines)


def target_moments(
    vertices: np.ndarray, W: np.ndarray, b: np.ndarray, I: np.ndarray, target: Target
) -> np.ndarray:
    """``int u h_i xhat`` for neurons I on a convex polygon, shape (|I|, 3) (order x, y, 1).

    Parameters
    ----------
    vertices : ndarray, shape (V, 2)
        Counter-clockwise vertices of the convex polygon.
    W, b : ndarray
        Weights (n, 2) and biases (n,).
    I : ndarray of int
        The neurons.
    target : Target
        The target u; its jump lines and (at most one) jump circle split the quadrature.
    """
    V = np.asarray(vertices, dtype=float)
    I = np.asarray(I, dtype=np.intp).reshape(-1)
    W = np.asarray(W, dtype=float)[I]
    b = np.asarray(b, dtype=float)[I]
    moments = np.zeros((I.size, 3))
    _check_circles(target)
    q = 1 if target.constant else ORDER
    step = max(1, POINTS_PER_CHUNK // _points_per_piece(V.shape[0] + 1, target, q))
    for lo in range(0, I.size, step):
        P, _, _ = neuron_polygons(V, W[lo : lo + step], b[lo : lo + step])
        if target.constant:
            K, owner = _split_by_lines(P, np.arange(P.shape[0]), target.lines)
            part = _constant_moments(K, target)[0]
        else:
            points, weights, owner, group = _piece_rule(P, target, ORDER)
            used = weights != 0.0  # most slots of the circle rule are unused wedge parts
            uw = np.zeros(weights.shape)
            uw[used] = target(points[used]) * weights[used]
            part = _sequential_sum(
                np.stack([uw * points[..., 0], uw * points[..., 1], uw], axis=2), group
            )
        np.add.at(moments, lo + owner, part)
    return moments


def target_integrals(vertices: np.ndarray, target: Target) -> tuple[float, float]:
    """``(int u, int u^2)`` over a convex polygon (CCW ``vertices`` (V, 2))."""
    K = np.asarray(vertices, dtype=float)[None]
    if target.constant:
        _check_circles(target)
        K, _ = _split_by_lines(K, np.zeros(1, dtype=int), target.lines)
        moments, squares = _constant_moments(K, target)
        return float(np.sum(moments[:, 2])), float(np.sum(squares))
    points, weights, _, _ = _piece_rule(K, target, ORDER)
    u = target(points.reshape(-1, 2)).reshape(weights.shape)
    return float(np.sum(u * weights)), float(np.sum(u * u * weights))

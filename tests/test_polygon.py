"""Exact 2D polygon integrals against independent references.

Pair integrals are compared with exact rational arithmetic (``fractions.Fraction``: Sutherland-
Hodgman clipping of the float inputs, then Green's-theorem moment formulas), target moments with
mpmath (dps 30): exact clipping, then Green's theorem along the exact boundary of each piece
(straight edges and circular arcs), with x-antiderivatives of the smooth target integrated by
``mpmath.quad`` along the edges.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import mpmath as mp
import numpy as np
import pytest

from distgn.assembly import polygon
from distgn.domain import box
from distgn.domain import polygon as polygon_domain
from distgn.errors import InputError
from distgn.targets import Target, make_target

mp.mp.dps = 30

SQUARE = box([[0.0, 1.0], [0.0, 1.0]])
PENTAGON = polygon_domain([[0.1, 0.0], [1.0, 0.2], [1.2, 0.9], [0.5, 1.3], [0.05, 0.7]])
DOMAINS = {"square": SQUARE, "pentagon": PENTAGON}


def random_neurons(n: int, seed: int, domain=SQUARE) -> tuple[np.ndarray, np.ndarray]:
    """Lines with random directions and scales through random points near the domain, plus two
    lines that miss it (one active everywhere, one nowhere) and a w = 0 neuron."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0.0, 2.0 * np.pi, n)
    W = np.column_stack([np.cos(theta), np.sin(theta)]) * rng.uniform(0.1, 10.0, (n, 1))
    lo, hi = domain.bounds[:, 0], domain.bounds[:, 1]
    foot = rng.uniform(lo - 0.2, hi + 0.2, (n, 2))
    b = -np.sum(W * foot, axis=1)
    W[0], b[0] = [1.0, 1.0], 5.0
    W[1], b[1] = [1.0, -2.0], -7.0
    W[2], b[2] = [0.0, 0.0], 1.0
    return W, b


# ---------------------------------------------------------------- exact rational references


def clip_exact(poly: list, w, b) -> list:
    """Sutherland-Hodgman clip of a CCW polygon to ``w.x + b > 0`` in exact arithmetic."""
    out = []
    for k in range(len(poly)):
        P, Q = poly[k], poly[(k + 1) % len(poly)]
        sP = w[0] * P[0] + w[1] * P[1] + b
        sQ = w[0] * Q[0] + w[1] * Q[1] + b
        if (sP > 0) != (sQ > 0):
            t = sP / (sP - sQ)
            out.append((P[0] + t * (Q[0] - P[0]), P[1] + t * (Q[1] - P[1])))
        if sQ > 0:
            out.append(Q)
    return out


def polygon_moments(poly: list, zero=0) -> dict:
    """``int 1, x, y, xx, xy, yy`` over a CCW polygon by Green's theorem (any number type)."""
    M = dict.fromkeys(("1", "x", "y", "xx", "xy", "yy"), zero)
    for k in range(len(poly)):
        (x0, y0), (x1, y1) = poly[k], poly[(k + 1) % len(poly)]
        cr = x0 * y1 - x1 * y0
        M["1"] += cr / 2
        M["x"] += (x0 + x1) * cr / 6
        M["y"] += (y0 + y1) * cr / 6
        M["xx"] += (x0 * x0 + x0 * x1 + x1 * x1) * cr / 12
        M["yy"] += (y0 * y0 + y0 * y1 + y1 * y1) * cr / 12
        M["xy"] += (x0 * y1 + 2 * x0 * y0 + 2 * x1 * y1 + x1 * y0) * cr / 24
    return M


def pair_reference(
    V: np.ndarray, W: np.ndarray, b: np.ndarray, exact: bool = False
) -> dict[str, np.ndarray]:
    """Exact A, H, G of the float inputs, rounded once to float (``exact``: as Fractions)."""
    n = b.size
    square = [(Fraction(x), Fraction(y)) for x, y in V]
    Wf = [(Fraction(w0), Fraction(w1)) for w0, w1 in W]
    bf = [Fraction(v) for v in b]
    kind = object if exact else float
    A, H = np.zeros((n, n), dtype=kind), np.zeros((n, n), dtype=kind)
    G = np.zeros((n, n, 3, 3), dtype=kind)
    for i in range(n):
        Pi = clip_exact(square, Wf[i], bf[i])
        for j in range(n):
            M = polygon_moments(clip_exact(Pi, Wf[j], bf[j]) if Pi else [], Fraction(0))
            (a1, a2), a0, (c1, c2), c0 = Wf[i], bf[i], Wf[j], bf[j]
            A[i, j] = (
                a1 * c1 * M["xx"]
                + (a1 * c2 + a2 * c1) * M["xy"]
                + a2 * c2 * M["yy"]
                + (a1 * c0 + a0 * c1) * M["x"]
                + (a2 * c0 + a0 * c2) * M["y"]
                + a0 * c0 * M["1"]
            )
            H[i, j] = M["1"]
            G[i, j] = [
                [M["xx"], M["xy"], M["x"]],
                [M["xy"], M["yy"], M["y"]],
                [M["x"], M["y"], M["1"]],
            ]
    return {"A": A, "H": H, "G": G}


def max_relative_error(computed: np.ndarray, exact: np.ndarray) -> float:
    """Largest error relative to the exact entry (exact zeros must be computed as zeros)."""
    assert np.all(computed[exact == 0] == 0)
    nz = exact != 0
    return float(np.max(np.abs(computed[nz] - exact[nz]) / np.abs(exact[nz])))


# ---------------------------------------------------------------- mpmath references for u


def mp_polygon(V: np.ndarray) -> list:
    return [(mp.mpf(x), mp.mpf(y)) for x, y in V]


def mp_neuron_piece(V: np.ndarray, w: np.ndarray, b: float) -> list:
    return clip_exact(mp_polygon(V), (mp.mpf(w[0]), mp.mpf(w[1])), mp.mpf(b))


def mp_inside(poly: list, x, y) -> bool:
    for k in range(len(poly)):
        (x0, y0), (x1, y1) = poly[k], poly[(k + 1) % len(poly)]
        if (x1 - x0) * (y - y0) - (y1 - y0) * (x - x0) < 0:
            return False
    return True


def mp_disk_moments(poly: list, center, radius) -> np.ndarray:
    """``int (x, y, 1)`` over polygon ∩ disk by Green's theorem on its exact boundary."""
    if len(poly) < 3:
        return np.zeros(3)
    cx, cy, R = mp.mpf(center[0]), mp.mpf(center[1]), mp.mpf(radius)
    mx = my = m1 = mp.mpf(0)
    angles = []
    for k in range(len(poly)):
        (x0, y0), (x1, y1) = poly[k], poly[(k + 1) % len(poly)]
        dx, dy = x1 - x0, y1 - y0
        a, bb = dx * dx + dy * dy, dx * (x0 - cx) + dy * (y0 - cy)
        cc = (x0 - cx) ** 2 + (y0 - cy) ** 2 - R * R
        disc = bb * bb - a * cc
        if a == 0 or disc <= 0:
            continue
        t1, t2 = (-bb - mp.sqrt(disc)) / a, (-bb + mp.sqrt(disc)) / a
        for t in (t1, t2):
            if 0 <= t <= 1:
                angles.append(mp.atan2(y0 + t * dy - cy, x0 + t * dx - cx))
        ta, tb = max(t1, 0), min(t2, 1)
        if ta < tb:  # the straight part of the boundary inside the disk
            ax, ay, bx, by = x0 + ta * dx, y0 + ta * dy, x0 + tb * dx, y0 + tb * dy
            m1 += (ax * by - bx * ay) / 2
            mx += (by - ay) * (ax * ax + ax * bx + bx * bx) / 6
            my -= (bx - ax) * (ay * ay + ay * by + by * by) / 6
    angles = sorted(angles)
    if not angles:
        arcs = [(mp.mpf(0), 2 * mp.pi)] if mp_inside(poly, cx + R, cy) else []
    else:
        arcs = list(zip(angles, angles[1:] + [angles[0] + 2 * mp.pi], strict=True))
    for ta, tb in arcs:
        tm = (ta + tb) / 2
        if tb - ta < mp.mpf(10) ** -25 or not mp_inside(
            poly, cx + R * mp.cos(tm), cy + R * mp.sin(tm)
        ):
            continue
        m1 += (
            cx * R * (mp.sin(tb) - mp.sin(ta))
            + cy * R * (mp.cos(ta) - mp.cos(tb))
            + R * R * (tb - ta)
        ) / 2
        mx += mp.quad(lambda t: (cx + R * mp.cos(t)) ** 2 * R * mp.cos(t), [ta, tb]) / 2
        my += mp.quad(lambda t: (cy + R * mp.sin(t)) ** 2 * R * mp.sin(t), [ta, tb]) / 2
    return np.array([float(mx), float(my), float(m1)])


def mp_line_integral(poly: list, F) -> mp.mpf:
    """``sum over edges of int F(x, y) dy`` (Green: ``int int dF/dx``)."""
    total = mp.mpf(0)
    for k in range(len(poly)):
        (x0, y0), (x1, y1) = poly[k], poly[(k + 1) % len(poly)]
        if y1 != y0:
            total += mp.quad(
                lambda t, x0=x0, x1=x1, y0=y0, y1=y1: F(x0 + t * (x1 - x0), y0 + t * (y1 - y0)),
                [0, 1],
            ) * (y1 - y0)
    return total


def smooth_parts(domain):
    """k1, k2, x0, y0 of the built-in smooth target sin(k1 (x - x0)) cos(k2 (y - y0))."""
    (x0, x1), (y0, y1) = domain.bounds
    return 2 * mp.pi / (mp.mpf(x1) - x0), mp.pi / (mp.mpf(y1) - y0), mp.mpf(x0), mp.mpf(y0)


def smooth_square_antiderivative(domain):
    """An x-antiderivative of u^2 for the built-in smooth target."""
    k1, k2, x0, y0 = smooth_parts(domain)

    def F(x, y):
        return ((x - x0) / 2 - mp.sin(2 * k1 * (x - x0)) / (4 * k1)) * mp.cos(k2 * (y - y0)) ** 2

    return F


def mp_smooth_moments(poly: list, domain) -> np.ndarray:
    if len(poly) < 3:
        return np.zeros(3)
    k1, k2, x0, y0 = smooth_parts(domain)

    def F1(x, y):
        return -mp.cos(k1 * (x - x0)) / k1 * mp.cos(k2 * (y - y0))

    def Fx(x, y):
        X = k1 * (x - x0)
        return (-x * mp.cos(X) / k1 + mp.sin(X) / k1**2) * mp.cos(k2 * (y - y0))

    return np.array([float(mp_line_integral(poly, f)) for f in (Fx, lambda x, y: y * F1(x, y), F1)])


def mp_target_moments(name: str, domain, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    target = make_target(name, domain)
    out = np.zeros((b.size, 3))
    for i in range(b.size):
        piece = mp_neuron_piece(domain.vertices, W[i], b[i])
        if name == "line_jump":
            ((normal, offset),) = target.lines
            half = clip_exact(piece, (mp.mpf(normal[0]), mp.mpf(normal[1])), -mp.mpf(offset))
            M = polygon_moments(half, mp.mpf(0)) if len(half) >= 3 else None
            out[i] = [float(M["x"]), float(M["y"]), float(M["1"])] if M else 0.0
        elif name == "disk":
            ((center, radius),) = target.circles
            out[i] = mp_disk_moments(piece, center, radius)
        else:
            out[i] = mp_smooth_moments(piece, domain)
    return out


# ---------------------------------------------------------------- pair integrals


@pytest.mark.parametrize("name", ["square", "pentagon"])
def test_pair_integrals_exact(name):
    domain = DOMAINS[name]
    W, b = random_neurons(8, seed=1, domain=domain)
    n = b.size
    got = polygon.pair_integrals(domain.vertices, W, b, np.arange(n), np.arange(n))
    ref = pair_reference(domain.vertices, W, b)
    for key in ("A", "H", "G"):
        assert got[key].shape == ref[key].shape
        assert max_relative_error(got[key], ref[key]) <= 1e-13, key
    assert np.all(got["H"][1] == 0.0) and np.all(got["A"][:, 1] == 0.0)  # inactive neuron
    assert got["H"][0, 0] == pytest.approx(domain.measure, rel=1e-15)  # active everywhere


@pytest.mark.parametrize("name", ["square", "pentagon"])
def test_relu_squares_exact(name):
    # int relu(w.x + b)^2 per neuron against exact rational arithmetic (the diagonal of A).
    domain = DOMAINS[name]
    W, b = random_neurons(8, seed=2, domain=domain)
    ref = np.diag(pair_reference(domain.vertices, W, b)["A"])
    got = polygon.relu_squares(domain.vertices, W, b)
    assert max_relative_error(got, ref) <= 1e-13
    assert got[1] == 0.0  # inactive neuron


@pytest.mark.parametrize("name", ["square", "pentagon"])
def test_line_arrangement_cells_tile_the_domain(name):
    # The cells cover the domain (areas add up) and each cell's activity is the sign of every
    # line at its centroid.
    domain = DOMAINS[name]
    W, b = random_neurons(9, seed=4, domain=domain)
    K, active = polygon.line_arrangement(domain.vertices, W, b)
    area = polygon._fan_areas(K).sum(axis=1)
    assert np.sum(area) == pytest.approx(domain.measure, rel=1e-14)
    centroid = np.array([np.unique(cell, axis=0).mean(axis=0) for cell in K])
    assert np.array_equal(centroid @ W.T + b > 0, active)
    assert K.shape[0] > 9


@pytest.mark.parametrize("name", ["square", "pentagon"])
@pytest.mark.parametrize("width", [1e-3, 1e-9])
def test_relu_sum_integrals_exact_with_cancelling_pairs(name, width):
    """int v^2 and int v h_i xhat for v = sum c_i phi_i against exact rational arithmetic, with
    two pairs that sharpen a ramp of the given width (|c_i| = 1 / width, cancelling): the cell
    sums keep their accuracy where c^T A c loses it all."""
    domain = DOMAINS[name]
    W, b = random_neurons(5, seed=6, domain=domain)
    # A ramp of the given width, and a wedge of two lines turned by the width about a point.
    normal, turned = (np.array([np.cos(t), np.sin(t)]) for t in (0.4, 0.4 + width))
    offset = float(normal @ domain.center)
    pivot = domain.center + 0.1 * normal
    pairs_W = np.array([normal, normal, normal, turned])
    pairs_b = np.array([-offset, -offset - width, -normal @ pivot, -turned @ pivot])
    W, b = np.vstack([W, pairs_W]), np.concatenate([b, pairs_b])
    c = np.concatenate([np.linspace(-1.0, 1.0, 5), np.array([1, -1, 1, -1]) / width])
    exact = pair_reference(domain.vertices, W, b, exact=True)
    cf = [Fraction(x) for x in c]
    r = [[Fraction(x) for x in row] for row in np.column_stack([W, b])]
    square_ref = sum(cf[i] * cf[j] * exact["A"][i, j] for i in range(b.size) for j in range(b.size))
    moments_ref = np.array(
        [
            [
                float(
                    sum(
                        exact["G"][i, j, k, m] * cf[j] * r[j][m]
                        for j in range(b.size)
                        for m in range(3)
                    )
                )
                for k in range(3)
            ]
            for i in range(b.size)
        ]
    )
    square, moments = polygon.relu_sum_integrals(domain.vertices, W, b, c)
    assert square == pytest.approx(float(square_ref), rel=1e-6)
    assert np.max(np.abs(moments - moments_ref)) <= 1e-6 * np.max(np.abs(moments_ref))
    if width < 1e-6:  # what the pair integrals give: c^T A c is lost to rounding
        A = polygon.pair_integrals(domain.vertices, W, b, np.arange(b.size), np.arange(b.size))["A"]
        assert abs(c @ A @ c - float(square_ref)) > 1e-3 * float(square_ref)


def test_pair_integrals_degenerate_lines():
    """Lines through vertices, along edges, parallel and coincident, tiny and huge scales, a
    sliver of width 1e-13."""
    W = np.array(
        [
            [1, 0],
            [-1, 0],
            [1, 1],
            [-1, -1],
            [1, -1],
            [0, 1],
            [0, -1],
            [1e-8, 2e-8],
            [3e8, -1e8],
            [1, 0],
            [2, 0],
            [1, 1.0],
        ]
    )
    b = np.array([0, 1, -1, 1, 0, -0.5, 0.5, -1e-8, -1e8, -1, -1, -1 + 1e-13])
    got = polygon.pair_integrals(SQUARE.vertices, W, b, np.arange(12), np.arange(12))
    ref = pair_reference(SQUARE.vertices, W, b)
    for key in ("A", "H", "G"):
        assert max_relative_error(got[key], ref[key]) <= 1e-12, key


def test_pair_integrals_subsets_symmetry_spd():
    W, b = random_neurons(40, seed=2, domain=PENTAGON)
    V, n = PENTAGON.vertices, 40
    full = polygon.pair_integrals(V, W, b, np.arange(n), np.arange(n))
    I, J = np.array([5, 3, 3, 17]), np.array([39, 0, 12])
    part = polygon.pair_integrals(V, W, b, I, J, which=("H", "A"))
    assert set(part) == {"A", "H"}
    np.testing.assert_allclose(part["A"], full["A"][np.ix_(I, J)], rtol=1e-14, atol=0)
    np.testing.assert_allclose(part["H"], full["H"][np.ix_(I, J)], rtol=1e-14, atol=0)
    G = full["G"].transpose(0, 2, 1, 3).reshape(3 * n, 3 * n)
    for M in (full["A"], full["H"], G):
        assert np.max(np.abs(M - M.T)) <= 1e-14 * np.max(np.abs(M))
    np.testing.assert_array_equal(full["G"], full["G"].transpose(0, 1, 3, 2))
    assert np.min(np.linalg.eigvalsh(G)) > -1e-13 * np.max(np.abs(G))
    # Distinct lines through the domain: A and H are SPD.
    rng = np.random.default_rng(6)
    foot = rng.dirichlet(np.ones(5), n) @ V
    theta = rng.uniform(0.0, 2.0 * np.pi, n)
    W = np.column_stack([np.cos(theta), np.sin(theta)]) * rng.uniform(0.5, 2.0, (n, 1))
    b = -np.sum(W * foot, axis=1)
    full = polygon.pair_integrals(V, W, b, np.arange(n), np.arange(n), which=("A", "H"))
    for M in (full["A"], full["H"]):
        assert np.min(np.linalg.eigvalsh(M)) > 0
        np.linalg.cholesky(M)
    empty = polygon.pair_integrals(V, W, b, np.array([], dtype=int), np.arange(3))
    assert empty["G"].shape == (0, 3, 3, 3)
    with pytest.raises(InputError, match="which"):
        polygon.pair_integrals(V, W, b, I, J, which=("B",))


# ---------------------------------------------------------------- target moments


def test_target_moments_of_one_are_G_columns():
    W, b = random_neurons(8, seed=4, domain=PENTAGON)
    I = np.arange(8)
    G = polygon.pair_integrals(PENTAGON.vertices, W, b, I, I, which=("G",))["G"]
    one = Target("one", lambda x: np.ones(x.shape[0]))
    moments = polygon.target_moments(PENTAGON.vertices, W, b, I, one)
    np.testing.assert_allclose(moments, G[I, I, :, 2], rtol=1e-13, atol=1e-16)
    # The circle machinery with u = 1 must reproduce the same (every part accounted for once).
    ring = Target(
        "one",
        lambda x: np.ones(x.shape[0]),
        circles=((np.array([0.55, 0.6]), 0.3),),
        lines=((np.array([0.6, 0.8]), 0.7),),
    )
    moments = polygon.target_moments(PENTAGON.vertices, W, b, I, ring)
    np.testing.assert_allclose(moments, G[I, I, :, 2], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("domain_name", ["square", "pentagon"])
@pytest.mark.parametrize("target_name", ["line_jump", "disk", "smooth"])
def test_target_moments_mpmath(domain_name, target_name):
    domain = DOMAINS[domain_name]
    W, b = random_neurons(8, seed=5, domain=domain)
    target = make_target(target_name, domain)
    got = polygon.target_moments(domain.vertices, W, b, np.arange(b.size), target)
    ref = mp_target_moments(target_name, domain, W, b)
    err = np.max(np.abs(got - ref))
    print(f"{target_name} on {domain_name}: max abs error {err:.1e}")
    assert err <= 1e-13


def test_target_moments_disk_near_centre():
    """Lines passing very close to the disk centre, on either side, and tangent to the circle."""
    domain = SQUARE
    target = make_target("disk", domain)
    ((center, radius),) = target.circles
    angles = np.linspace(0.1, 6.0, 6)
    normals = np.column_stack([np.cos(angles), np.sin(angles)])
    offsets = np.array([1e-9, -1e-6, 1e-3, radius, -radius * (1 - 1e-9), 0.0])
    b = offsets - normals @ center
    got = polygon.target_moments(domain.vertices, normals, b, np.arange(6), target)
    ref = mp_target_moments("disk", domain, normals, b)
    assert np.max(np.abs(got - ref)) <= 1e-13


@pytest.mark.parametrize("domain_name", ["square", "pentagon"])
def test_target_integrals(domain_name):
    domain = DOMAINS[domain_name]
    poly = mp_polygon(domain.vertices)
    for name in ("line_jump", "disk", "smooth"):
        target = make_target(name, domain)
        total, total_sq = polygon.target_integrals(domain.vertices, target)
        if name == "line_jump":
            ((normal, offset),) = target.lines
            half = clip_exact(poly, (mp.mpf(normal[0]), mp.mpf(normal[1])), -mp.mpf(offset))
            ref = ref_sq = float(polygon_moments(half, mp.mpf(0))["1"])
        elif name == "disk":
            ((center, radius),) = target.circles
            ref = ref_sq = mp_disk_moments(poly, center, radius)[2]
        else:
            ref = mp_smooth_moments(poly, domain)[2]
            ref_sq = float(mp_line_integral(poly, smooth_square_antiderivative(domain)))
        assert abs(total - ref) <= 1e-14 and abs(total_sq - ref_sq) <= 1e-14, name


def test_two_circles_rejected():
    two = Target(
        "two", lambda x: np.ones(x.shape[0]), circles=((np.zeros(2), 0.1), (np.ones(2), 0.1))
    )
    with pytest.raises(InputError, match="circles"):
        polygon.target_integrals(SQUARE.vertices, two)


@pytest.mark.parametrize("offset", [0.0, 1e-17, -1e-17, 3e-16, -3e-16])
@pytest.mark.parametrize("theta", [0.0, 1.0, 4.4])
def test_disk_moments_of_half_planes_through_the_centre(theta, offset):
    # Lines through the jump circle's centre (the uniform 2D start has some): the half disk's
    # area and centroid, whatever the rounding of the line's offset.
    dom = box([[0.0, 1.0], [0.0, 1.0]])
    target = make_target("disk", dom)
    ((center, radius),) = target.circles
    w = np.array([[np.cos(theta), np.sin(theta)]])
    b = np.array([-(w[0] @ center) + offset])
    moments = polygon.target_moments(dom.vertices, w, b, np.array([0]), target)[0]
    area = np.pi * radius**2 / 2
    centroid = center + w[0] * 4 * radius / (3 * np.pi)
    np.testing.assert_allclose(moments, [*(area * centroid), area], rtol=1e-13)


@pytest.mark.parametrize("domain_name", ["square", "pentagon"])
@pytest.mark.parametrize("target_name", ["line_jump", "disk"])
def test_target_moments_quadrature_path_mpmath(domain_name, target_name):
    # The quadrature rules (used for targets not declared constant) against the same references
    # as the closed forms.
    domain = DOMAINS[domain_name]
    W, b = random_neurons(8, seed=5, domain=domain)
    target = replace(make_target(target_name, domain), constant=False)
    got = polygon.target_moments(domain.vertices, W, b, np.arange(b.size), target)
    assert np.max(np.abs(got - mp_target_moments(target_name, domain, W, b))) <= 1e-13


def test_constant_target_with_line_and_circle_matches_quadrature():
    # Four constant values (two sides of a line, inside and outside a circle), circles centred
    # inside, on the boundary and outside the pentagon: the closed form against the quadrature.
    W, b = random_neurons(40, seed=9, domain=PENTAGON)
    normal, offset = np.array([0.6, 0.8]), 0.9
    for center in ([0.8, 0.9], [0.0, 0.5], [3.0, 0.4]):
        center = np.array(center)

        def u(x, center=center):
            inside = np.sum((x - center) ** 2, axis=1) <= 0.49
            return np.where(x @ normal >= offset, 2.0, -0.5) + 1.5 * inside

        constant = Target(
            "pieces", u, lines=((normal, offset),), circles=((center, 0.7),), constant=True
        )
        quadrature = replace(constant, constant=False)
        got = polygon.target_moments(PENTAGON.vertices, W, b, np.arange(40), constant)
        ref = polygon.target_moments(PENTAGON.vertices, W, b, np.arange(40), quadrature)
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-14)
        np.testing.assert_allclose(
            polygon.target_integrals(PENTAGON.vertices, constant),
            polygon.target_integrals(PENTAGON.vertices, quadrature),
            rtol=0,
            atol=1e-14,
        )

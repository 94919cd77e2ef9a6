"""The distributed value-coordinate system against the same system on one rank.

Each rank passes only its own neurons (a contiguous block of the breakpoint order) and holds its
part of the mesh, T, the mass matrix and N. Everything it returns must equal the one-rank
system's rows: the matrix K, its product and inverse, ``B`` and ``B^T``, the global Cholesky
factor's triangular solves (against dense LAPACK), the right-hand side and the fit error. The
layouts put a breakpoint shared by two neurons across a rank boundary, a rank whose only neuron
has no breakpoint inside the interval, and a value partition with an empty rank.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from distgn.domain import interval
from distgn.errors import SolverError
from distgn.nodal import SHAPES, BandedRows, NeuronSpan, NodalSystem, PiecewiseBasis
from distgn.targets import make_target

N_NEURONS = 40
LAYOUTS = ("even", "shared", "outside", "empty")


def neurons(name: str, layout: str, P: int, seed: int = 3) -> tuple[np.ndarray, ...]:
    """Neurons in breakpoint order and the ranks' cuts ``[cuts[p], cuts[p + 1])``."""
    rng = np.random.default_rng(seed)
    t = np.sort(rng.uniform(0.02, 0.98, N_NEURONS))
    sign = rng.choice([-1.0, 1.0], N_NEURONS)
    cuts = np.linspace(0, N_NEURONS, P + 1).astype(int)
    if layout == "outside":  # the last rank holds one neuron, active on all of [0, 1]
        t[-1], sign[-1] = 1.5, -1.0
        if P > 1:
            cuts[-2] = N_NEURONS - 1
    w = sign * rng.uniform(0.5, 2.0, N_NEURONS)
    b = -w * t
    if (
        layout == "shared"
    ):  # the first neuron of rank 1 has rank 0's last kink, facing the other way
        c = cuts[1] if P > 1 else N_NEURONS // 2
        w[c], b[c] = -2.0 * w[c - 1], -2.0 * b[c - 1]
    return w, b, cuts


def units_of(layout: str, count: int, P: int) -> np.ndarray | None:
    """The value partition: even, or (``empty``) with ranks holding none: the last of 2; the
    first (and the third of 4 or more) when P > 2, rank 1 then holding one unit."""
    if layout != "empty" or P == 1:
        return None
    if P == 2:
        return np.array([0, count, count])
    head = [0, 0, 1, 1] if P > 3 else [0, 0, 1]
    return np.concatenate([head, np.linspace(1, count, P - len(head) + 2).astype(int)[1:]])


def pair(comm, name: str, bias: bool, layout: str) -> tuple[NodalSystem, NodalSystem, slice]:
    """(one-rank system, distributed system, this rank's neuron rows)."""
    w, b, cuts = neurons(name, layout, comm.size)
    serial = NodalSystem(NeuronSpan(name, 0.0, 1.0, w, b, bias))
    q = SHAPES[name][0]
    units = units_of(layout, serial.size // q, comm.size)
    mine = slice(cuts[comm.rank], cuts[comm.rank + 1])
    span = NeuronSpan(name, 0.0, 1.0, w[mine], b[mine], bias, comm, units)
    return serial, NodalSystem(span), mine


CASES = [(name, False, layout) for name in ("A", "H", "G") for layout in LAYOUTS] + [
    ("A", True, "even"),
    ("A", True, "empty"),
]


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize(("name", "bias", "layout"), CASES)
def test_distributed_system_equals_the_one_rank_system(comm, name, bias, layout):
    serial, dist, mine = pair(comm, name, bias, layout)
    V = serial.size
    assert dist.size == V
    lo, hi = dist.lo, dist.hi
    K = serial.entries(np.arange(V), np.arange(V))
    scale = np.max(np.abs(K))
    assert np.max(np.abs(dist.local_rows() - K[lo:hi]), initial=0.0) <= 1e-13 * scale
    own = np.arange(lo, hi)
    # Entries at other ranks' rows once their rows have been received (as with HSS skeletons).
    ends = np.unique(np.concatenate([own[:1], own[-1:]])) if hi > lo else own
    for sent in comm.allgather(dist.rows_at(ends)):
        dist.learn(sent)
    every = np.unique(np.concatenate(comm.allgather(ends) + [own]))
    block = dist.entries(own, every)
    assert np.max(np.abs(block - K[lo:hi][:, every]), initial=0.0) <= 1e-13 * scale
    rng = np.random.default_rng(11)
    x = rng.standard_normal((V, 2))
    product = dist.matvec(x[lo:hi], comm)
    assert np.max(np.abs(product - (K @ x)[lo:hi]), initial=0.0) <= 1e-13 * scale * np.abs(x).max()
    inverse = np.linalg.solve(K, x)
    solved = dist.solve_rows(x[lo:hi], comm)
    assert np.max(np.abs(solved - inverse[lo:hi]), initial=0.0) <= 1e-11 * np.abs(inverse).max()

    # B^T and B: neuron rows of this rank (the bias on the last rank) against the one-rank rows.
    q = SHAPES[name][0]
    count = N_NEURONS + bias
    f = rng.standard_normal((count * q, 2))
    rows = np.arange(mine.start, mine.stop)
    if bias and comm.rank == comm.size - 1:
        rows = np.append(rows, N_NEURONS)
    neuron_rows = (q * rows[:, None] + np.arange(q)).ravel()
    expect = serial.span.values_transpose(f)
    got = dist.span.values_transpose(f[neuron_rows])
    assert np.max(np.abs(got - expect[lo:hi]), initial=0.0) <= 1e-12 * np.abs(expect).max()
    values = serial.span.project(x)
    for one, many in ((serial.span, dist.span), (serial, dist)):
        expect = one.coefficients(values)
        got = many.coefficients(values[lo:hi])
        error = np.max(np.abs(got - expect[neuron_rows]), initial=0.0)
        assert error <= 1e-10 * np.abs(expect).max(), error


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", ["A", "H"])
def test_triangular_solves_with_the_global_cholesky_factor(comm, name, layout):
    serial, dist, _ = pair(comm, name, False, layout)
    Ms = serial.span.basis.mass.toarray()
    U = np.linalg.cholesky(Ms).T  # Ms = U^T U, dense LAPACK
    x = np.random.default_rng(5).standard_normal((serial.size, 3))
    lo, hi = dist.lo, dist.hi
    for trans, matrix in (("T", U.T), ("N", U)):
        expect = np.linalg.solve(matrix, x)[lo:hi]
        got = dist.banded.triangular_solve(x[lo:hi], trans)
        assert np.max(np.abs(got - expect), initial=0.0) <= 1e-13 * np.max(
            np.abs(expect), initial=1e-300
        )


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_right_hand_side_and_fit_error_equal_the_one_rank_ones(comm, layout):
    serial, dist, _ = pair(comm, "A", True, layout if layout != "outside" else "even")
    target = make_target("sine", interval(0.0, 1.0))
    lo, hi = dist.lo, dist.hi
    f = serial.right_hand_side(target)
    assert np.allclose(dist.right_hand_side(target), f[lo:hi], rtol=0, atol=1e-14)
    values = serial.span.project(np.linalg.solve(serial.local_rows(), f)[:, None])[:, 0]
    expect = serial.l2_error(values, target)
    assert 1e-4 < expect < 1e-1
    assert abs(dist.l2_error(values[lo:hi], target) - expect) <= 1e-12 * expect


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_ranks_out_of_breakpoint_order_are_refused_on_every_rank(comm):
    if comm.size < 2:
        pytest.skip("needs two ranks")
    w, b, cuts = neurons("A", "even", comm.size)
    order = np.roll(np.arange(comm.size), 1)[comm.rank]  # rank 0 gets the last block
    mine = slice(cuts[order], cuts[order + 1])
    with pytest.raises(ValueError, match="breakpoint order"):
        NeuronSpan("A", 0.0, 1.0, w[mine], b[mine], comm=comm)


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_three_neurons_at_one_kink_are_dependent_on_every_rank(comm):
    w, b, cuts = neurons("A", "shared", comm.size)
    c = cuts[1] if comm.size > 1 else N_NEURONS // 2
    w[c + 1], b[c + 1] = 2.0 * w[c], 2.0 * b[c]  # a third neuron at the shared kink (exactly)
    mine = slice(cuts[comm.rank], cuts[comm.rank + 1])
    with pytest.raises(SolverError, match="linearly dependent"):
        NeuronSpan("A", 0.0, 1.0, w[mine], b[mine], comm=comm)


@pytest.mark.parametrize(
    ("layout", "bias", "bound"),
    # |N| = 2 less one per affine function in the span (the bias, the pair at a shared kink)
    [("even", False, 6), ("even", True, 4), ("shared", False, 4), ("shared", True, 2)],
)
def test_off_diagonal_block_rows_have_the_rank_the_hss_caps_at(layout, bias, bound):
    # The hss skeletons of the value-coordinate system are capped at 2 band + 2 |N|
    # (Operator.rank_bound): every block row K(I, I^c) of a contiguous I must have at most that
    # rank (dense SVD), and a block in the middle reaches it.
    w, b, _ = neurons("A", layout, 1)
    system = NodalSystem(NeuronSpan("A", 0.0, 1.0, w, b, bias))
    assert 2 * system.band + 2 * system.span.null.shape[1] == bound
    V = system.size
    K = system.entries(np.arange(V), np.arange(V))
    ranks = []
    for lo, hi in [(0, 7), (3, 20), (V // 3, 2 * V // 3), (V - 9, V)]:
        rest = np.concatenate([np.arange(lo), np.arange(hi, V)])
        s = np.linalg.svd(K[lo:hi][:, rest], compute_uv=False)
        ranks.append(int(np.count_nonzero(s > 1e-13 * s[0])))
    assert max(ranks) == ranks[2] == bound, ranks


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_every_rank_holds_only_its_part_of_the_transform(comm):
    if comm.size < 2:
        pytest.skip("needs two ranks")
    n = 4000
    rng = np.random.default_rng(2)
    t = np.sort(rng.uniform(0.0, 1.0, n))
    w = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 2.0, n)
    cuts = np.linspace(0, n, comm.size + 1).astype(int)
    mine = slice(cuts[comm.rank], cuts[comm.rank + 1])
    system = NodalSystem(NeuronSpan("A", 0.0, 1.0, w[mine], -w[mine] * t[mine], True, comm))
    limit = n // comm.size + 16  # the rank's rows plus the window's halo
    seen = {}

    def visit(prefix: str, obj: object) -> None:
        for name, value in vars(obj).items():
            key = f"{prefix}{name}"
            if isinstance(value, np.ndarray) or sp.issparse(value):
                seen[key] = max(value.shape, default=1)
            elif isinstance(value, (PiecewiseBasis, BandedRows, NeuronSpan)):
                visit(f"{key}.", value)

    visit("", system)
    assert "span.basis.z" in seen and "banded.cholesky" in seen and "span.null" in seen
    assert {key: size for key, size in seen.items() if size > limit} == {}

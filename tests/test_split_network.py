"""A 1D network split by rank: each rank generates, validates, orders and solves for only its
neurons, with the same bits as the whole network, and the solve file is the same on any number
of ranks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from mpi4py import MPI
from scipy import stats

from distgn.cli import main
from distgn.config import load_config
from distgn.domain import interval
from distgn.errors import InputError
from distgn.fit import l2_error_1d, solve_output_weights
from distgn.network import (
    RANDOM_BLOCK,
    initial_network,
    sort_by_breakpoint,
    sorted_uniform,
    validate,
)
from distgn.operator import build, problem_tree
from distgn.problem import build_problem
from distgn.solvers import factor
from distgn.targets import make_target
from distgn.tree import neuron_order, split_offsets


@pytest.mark.parametrize("init", ["uniform", "random"])
@pytest.mark.parametrize("orientation", ["positive", "alternating", "random"])
def test_rows_of_a_generated_network_are_computed_alone_with_the_same_bits(init, orientation):
    domain = interval(-1.0, 2.0)
    for n in (1, 5, RANDOM_BLOCK - 1, RANDOM_BLOCK, RANDOM_BLOCK + 1, 3 * RANDOM_BLOCK + 17):
        whole = initial_network(domain, n, init, 11, orientation)
        cuts = np.unique(np.concatenate([[0, n], np.random.default_rng(n).integers(0, n + 1, 5)]))
        parts = [
            initial_network(domain, n, init, 11, orientation, rows=(a, z))
            for a, z in zip(cuts[:-1], cuts[1:], strict=True)
        ]
        assert np.array_equal(np.concatenate([p.W for p in parts]), whole.W)
        assert np.array_equal(np.concatenate([p.b for p in parts]), whole.b)
        # generated 1D networks are in breakpoint order: a rank's rows are its tree block
        assert np.array_equal(neuron_order(domain, whole.W, whole.b), np.arange(n))
        t = -whole.b / whole.W[:, 0]
        assert np.all(t >= -1.0) and np.all(t < 2.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_breakpoints_are_sorted_independent_uniform_numbers(seed):
    """Kolmogorov-Smirnov against the uniform law (the values) and, for the scaled spacings, the
    exponential law (independence makes them so); fixed seeds, so the test is deterministic."""
    n = 50_000
    u = sorted_uniform(n, seed, 0, n)
    assert np.all(np.diff(u) >= 0) and u[0] > 0 and u[-1] < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    spacing = np.diff(np.concatenate([[0.0], u, [1.0]]))
    assert stats.kstest(spacing * (n + 1), "expon").pvalue > 1e-3
    # the blocks' sums are the sums of their spacings (no seam in the law at the block edges)
    edges = spacing[RANDOM_BLOCK - 2 : RANDOM_BLOCK + 1] * (n + 1)
    assert np.all(edges > 0) and np.all(edges < 30)
    assert not np.array_equal(u, sorted_uniform(n, seed + 1, 0, n))


def config(*sets: str):
    return load_config(None, ['target.name="sine"', *sets])


CASES = [
    ["network.n=3000", 'network.init="uniform"'],
    ["network.n=3000", 'network.init="random"', 'network.orientation="random"'],
    ["network.n=3001", 'network.init="uniform"', 'network.orientation="alternating"'],
]


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_split_problem_holds_its_block_of_the_whole_network(comm, case):
    cfg = config(*CASES[case])
    whole = build_problem(cfg)
    split = build_problem(cfg, comm)
    n = whole.network.n
    offsets = split_offsets(n, comm.size)
    lo, hi = offsets[comm.rank], offsets[comm.rank + 1]
    order = neuron_order(whole.domain, whole.network.W, whole.network.b)
    assert np.array_equal(split.layout.offsets, offsets)
    assert np.array_equal(split.layout.users, order[lo:hi])
    assert np.array_equal(split.network.W, whole.network.W[order[lo:hi]])
    assert np.array_equal(split.network.b, whole.network.b[order[lo:hi]])
    # the tree and the value-coordinate operator hold the rank's part only
    tree = problem_tree(split, cfg.solver, comm)
    assert tree.perm.size == hi - lo and len(tree.nodes) <= 2 * comm.size + 2 * (hi - lo)
    operator, blocks = build(split, cfg.solver, comm, "A", tree)
    assert blocks.W.shape[0] == hi - lo
    whole_tree = problem_tree(whole, cfg.solver, comm)
    assert tree.node_count == len(whole_tree.nodes) and tree.depth() == whole_tree.depth()
    fit = solve_output_weights(split, blocks, operator, cfg.solver)
    reference_operator, reference_blocks = build(whole, cfg.solver, MPI.COMM_SELF, "A")
    reference = solve_output_weights(whole, reference_blocks, reference_operator, cfg.solver)
    c = reference.c[lo:hi]  # one rank: tree order, here the user order
    # hss (tol 1e-14) on P ranks against one: c differs where kinks are ~1/n^2 apart
    assert np.max(np.abs(fit.c - c)) <= 1e-7 * np.max(np.abs(reference.c))
    assert fit.l2_error == pytest.approx(reference.l2_error, rel=1e-9)


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_a_network_from_a_file_is_ordered_and_split(comm, shared_tmp):
    """Neurons in a file in any order: each rank keeps its block of the breakpoint order, with
    the user indices that the solve file is written back in."""
    domain = interval(0.0, 1.0)
    net = initial_network(domain, 500, "random", 4, "random")
    shuffle = np.random.default_rng(0).permutation(net.n)
    path = shared_tmp / "net.h5"
    if comm.rank == 0:
        with h5py.File(path, "w") as fh:
            fh["W"], fh["b"] = net.W[shuffle], net.b[shuffle]
    comm.Barrier()
    cfg = config('network.init="file"', f'network.file="{path}"')
    split = build_problem(cfg, comm)
    lo, hi = split.layout.offsets[comm.rank], split.layout.offsets[comm.rank + 1]
    assert np.array_equal(shuffle[split.layout.users], np.arange(lo, hi))
    assert np.array_equal(split.network.b, net.b[lo:hi])
    out = shared_tmp / "solve.h5"
    assert (
        main(
            [
                "solve",
                "--set",
                f'network.file="{path}"',
                "--set",
                'network.init="file"',
                "--set",
                f'output.path="{out}"',
                "--set",
                'target.name="sine"',
            ]
        )
        == 0
    )
    with h5py.File(out, "r") as fh:
        assert np.array_equal(fh["network/b"][()], net.b[shuffle])
        c = fh["network/c"][()]
    reference = build_problem(
        config(
            "network.n=500",
            'network.init="random"',
            "network.seed=4",
            'network.orientation="random"',
        )
    )
    operator, blocks = build(reference, cfg.solver, MPI.COMM_SELF, "A")
    expected = solve_output_weights(reference, blocks, operator, cfg.solver).c
    assert np.max(np.abs(c - expected[shuffle])) <= 1e-9 * np.max(np.abs(expected))


def defective(kind: str, n: int, cut: int) -> tuple[np.ndarray, np.ndarray]:
    """A uniform 1D network in breakpoint order with one bad neuron at ``cut``."""
    net = initial_network(interval(0.0, 1.0), n, "uniform")
    W, b = net.W.copy(), net.b.copy()
    if kind == "duplicate":  # the same neuron as its left neighbour
        b[cut] = b[cut - 1]
    elif kind == "dead":
        b[cut] = -5.0
    elif kind == "nan":
        b[cut] = np.nan
    else:  # affine: three neurons active on all of [0, 1] (d + 1 = 2 allowed)
        b[cut - 1 : cut + 2] = 0.5
    return W, b


MESSAGES = {
    "duplicate": "duplicate neurons",
    "dead": "never active",
    "nan": "NaN",
    "affine": "active on the whole domain",
}


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(MESSAGES))
def test_a_split_network_is_validated_on_every_rank(comm, kind):
    """Each rank checks only its rows (with the next rank's first neurons for duplicates); the
    bad neuron sits first on the last rank (the duplicate: of the previous rank's last neuron,
    the affine ones: across that boundary), and every rank raises the same error naming it by
    its user index."""
    n = 64
    offsets = split_offsets(n, comm.size)
    cut = int(offsets[-2]) if comm.size > 1 else 40
    W, b = defective(kind, n, cut)
    lo, hi = offsets[comm.rank], offsets[comm.rank + 1]
    part = initial_network(interval(0.0, 1.0), n, "uniform", rows=(lo, hi))
    part = type(part)(W[lo:hi], b[lo:hi])
    with pytest.raises(InputError, match=MESSAGES[kind]) as caught:
        validate(part, interval(0.0, 1.0), comm, np.arange(lo, hi))
    text = str(caught.value)
    assert len(set(comm.allgather(text))) == 1
    if kind != "affine":
        assert str(cut) in text
    with pytest.raises(InputError, match=MESSAGES[kind]):  # the whole network, one rank
        validate(type(part)(W, b), interval(0.0, 1.0))
    validate(
        initial_network(interval(0.0, 1.0), n, "uniform", rows=(lo, hi)),
        interval(0.0, 1.0),
        comm,
        np.arange(lo, hi),
    )  # the good network passes


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("name", ["H", "G"])
@pytest.mark.parametrize("kind", ["hss", "krylov"])
def test_neuron_basis_solves_on_a_split_network(comm, name, kind):
    """Matrix-free H and G keep the network split: the hss couplings evaluate entries at other
    ranks' skeleton neurons from the ``(w, b)`` sent with them. The right-hand side is the whole
    network's, the residual is small, and H (well conditioned) solves as the whole network does
    on one rank; G (cond ~ n^4) agrees in its residual only."""
    cfg = config(
        "network.n=2000",
        'network.init="uniform"',
        "solver.matrix_free=true",
        f'solver.kind="{kind}"',
        'solver.petsc_options="-distgn_pc_type hat"',
    )
    split = build_problem(cfg, comm)
    operator, blocks = build(split, cfg.solver, comm, name)
    lo, hi = split.layout.offsets[comm.rank], split.layout.offsets[comm.rank + 1]
    assert operator.W.shape[0] == hi - lo  # nothing gathered
    rhs = (blocks.moments if name == "G" else blocks.moments[:, -1]).reshape(-1)
    with factor(operator, cfg.solver) as solver:
        x = solver.solve(rhs)
    residual = operator.matvec(x) - rhs
    norms = comm.allreduce(np.array([residual @ residual, rhs @ rhs]))
    assert np.sqrt(norms[0] / norms[1]) < 1e-9
    whole = build_problem(cfg)
    if kind == "hss" and comm.size > 1:  # the neurons received with skeletons are the right ones
        known = operator.known
        assert known.ids.size > 0 or comm.rank > 0  # rank 0 leads the root's merge
        assert not np.any((known.ids >= lo) & (known.ids < hi))
        if known.ids.size:
            assert np.array_equal(known.params[:, 0], whole.network.W[known.ids, 0])
            assert np.array_equal(known.params[:, 1], whole.network.b[known.ids])
    reference, ref_blocks = build(whole, cfg.solver, MPI.COMM_SELF, name)
    ref_rhs = (ref_blocks.moments if name == "G" else ref_blocks.moments[:, -1]).reshape(-1)
    k = operator.block
    assert np.allclose(rhs, ref_rhs[lo * k : hi * k], rtol=1e-12, atol=1e-15)
    if name == "H":
        with factor(reference, cfg.solver) as solver:
            expected = solver.solve(ref_rhs)
        assert np.max(np.abs(x - expected[lo:hi])) <= 1e-8 * np.max(np.abs(expected))


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [7, 300, 5000])
def test_sort_by_breakpoint_matches_the_whole_networks_order(comm, n):
    """Pieces of any size (a rank may hold none) in any order, with ties of breakpoint and of
    breakpoint and orientation: each rank ends with its exact block of ``neuron_order`` (ties
    by user index, as the stable sort of the whole network), c travelling along."""
    if n < comm.size:
        return
    rng = np.random.default_rng(n)
    t = rng.choice(rng.uniform(0, 1, n // 3 + 1), n)  # many equal breakpoints
    w = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 2.0, n)
    b, c = -w * t, rng.standard_normal(n)
    owner = rng.integers(0, comm.size, n)
    owner[owner == comm.size - 1] = 0  # the last rank starts with nothing (when P > 1)
    mine = np.flatnonzero(owner == comm.rank)
    part = type(initial_network(interval(0.0, 1.0), 1, "uniform"))(w[mine, None], b[mine], c[mine])
    network, users = sort_by_breakpoint(comm, part, mine)
    offsets = split_offsets(n, comm.size)
    order = neuron_order(interval(0.0, 1.0), w[:, None], b)
    assert np.array_equal(users, order[offsets[comm.rank] : offsets[comm.rank + 1]])
    assert np.array_equal(network.b, b[users]) and np.array_equal(network.W[:, 0], w[users])
    assert np.array_equal(network.c, c[users])


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("layout", ["random", "outside", "uneven"])
def test_fit_error_from_each_ranks_cells(comm, layout):
    """``l2_error_1d`` with a communicator (each rank its own neurons, integrating over its own
    cells with the other ranks' active neurons summed) equals the one-rank quadrature."""
    rng = np.random.default_rng(5)
    n = 60
    t = np.sort(rng.uniform(0.05, 0.95, n))
    w = rng.choice([-1.0, 1.0], n) * rng.uniform(0.5, 2.0, n)
    cuts = split_offsets(n, comm.size)
    if layout == "outside":  # kinks beyond both ends: the first and last ranks' windows change
        t[:2], t[-2:] = [-0.4, -0.2], [1.3, 1.6]
    if layout == "uneven" and comm.size > 1:
        cuts = np.concatenate(
            [[0], np.sort(rng.choice(np.arange(1, n), comm.size - 1, False)), [n]]
        )
    b, c = -w * t, rng.standard_normal(n)
    domain = interval(0.0, 1.0)
    u = make_target("tanh_layer", domain)
    whole = l2_error_1d(domain.bounds, w[:, None], b, c, 0.3, u)
    lo, hi = cuts[comm.rank], cuts[comm.rank + 1]
    split = l2_error_1d(domain.bounds, w[lo:hi, None], b[lo:hi], c[lo:hi], 0.3, u, comm)
    assert split == pytest.approx(whole, rel=1e-12)

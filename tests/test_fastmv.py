"""The exact fast 1D products and the matrix-free operators against assembled matrices."""

from __future__ import annotations

import numpy as np
import pytest
from mpi4py import MPI

from distgn.assembly import layer_matrix, pair_integrals
from distgn.config import load_config
from distgn.domain import interval
from distgn.fastmv import fast_matvec_1d
from distgn.network import initial_network
from distgn.operator import build
from distgn.problem import build_problem


@pytest.mark.parametrize("orientation", ["positive", "alternating", "random"])
@pytest.mark.parametrize("name", ["A", "H", "G"])
def test_fast_matvec_matches_dense(orientation: str, name: str) -> None:
    domain = interval(-1.0, 2.0)
    net = initial_network(domain, 257, "random", 4, orientation)
    M = pair_integrals(domain, net.W, net.b, np.arange(257), np.arange(257), (name,))[name]
    M = layer_matrix(M) if name == "G" else M
    product = fast_matvec_1d(domain.bounds, net.W, net.b, name)
    x = np.random.default_rng(1).standard_normal((M.shape[0], 6))
    scale = np.abs(M).sum(axis=1).max() * np.abs(x).max()
    assert np.abs(product(x) - M @ x).max() <= 1e-13 * scale
    assert np.abs(product(x[:, 2]) - M @ x[:, 2]).max() <= 1e-13 * scale


def split_kinks(case: str, size: int) -> np.ndarray:
    """Breakpoints on [-1, 2] in breakpoint order for ``size`` ranks: ``mixed`` (inside, outside,
    at the ends, equal across every rank boundary), ``outside`` (none inside), ``few`` (3)."""
    rng = np.random.default_rng(5)
    if case == "outside":
        return np.sort(np.concatenate([rng.uniform(-2, -1, 20), rng.uniform(2, 3, 20)]))
    if case == "few":
        return np.sort(rng.uniform(-1, 2, 3))
    t = np.sort(np.concatenate([rng.uniform(-1.5, 2.5, 100), [-1.0, -1.0, 2.0]]))
    for k in np.linspace(0, t.size, size + 1).round().astype(int)[1:-1]:
        t[k - 2 : k + 2] = t[k]
    return np.sort(t)


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["mixed", "outside", "few"])
@pytest.mark.parametrize("name", ["A", "H", "G"])
def test_distributed_fast_product_matches_dense(comm, case: str, name: str) -> None:
    """Each rank's rows of the product from its own neurons only, against the dense matrix."""
    domain = interval(-1.0, 2.0)
    t = split_kinks(case, comm.size)
    n = t.size
    rng = np.random.default_rng(6)
    w = rng.choice([-1.0, 1.0], n) * rng.choice([0.5, 1.0, 2.0], n)  # -b / w == t exactly
    order = np.lexsort((np.sign(w), t))  # the 1D tree order
    W, b = w[order][:, None], (-w * t)[order]
    M = pair_integrals(domain, W, b, np.arange(n), np.arange(n), (name,))[name]
    M = layer_matrix(M) if name == "G" else M
    block = M.shape[0] // n
    lo, hi = np.linspace(0, n, comm.size + 1).round().astype(int)[comm.rank : comm.rank + 2]
    product = fast_matvec_1d(domain.bounds, W[lo:hi], b[lo:hi], name, comm)
    x = rng.standard_normal((M.shape[0], 6))
    rows = slice(lo * block, hi * block)
    scale = np.abs(M).sum(axis=1).max() * np.abs(x).max()
    assert np.abs(product(x[rows]) - (M @ x)[rows]).max(initial=0.0) <= 1e-13 * scale
    assert np.abs(product(x[rows, 1]) - (M @ x[:, 1])[rows]).max(initial=0.0) <= 1e-13 * scale


@pytest.mark.mpi
@pytest.mark.timeout(60)
def test_distributed_fast_product_rejects_unsorted_blocks(comm) -> None:
    """Blocks that do not follow the breakpoint order are refused on every rank."""
    if comm.size == 1:
        pytest.skip("needs two ranks")
    domain = interval(0.0, 1.0)
    t = np.linspace(0.1, 0.9, 2 * comm.size)[::-1]  # decreasing: rank 0 holds the largest
    lo = 2 * comm.rank
    W = np.ones((2, 1))
    product = fast_matvec_1d(domain.bounds, W, -t[lo : lo + 2], "A", comm)
    with pytest.raises(ValueError, match="breakpoint order"):
        product(np.ones(2))


@pytest.mark.mpi
@pytest.mark.parametrize(
    "sets",
    [
        ["network.n=300", "network.init=random", "network.orientation=random"],
        ["network.n=60", "domain.kind=box", "domain.bounds=[[0,1],[0,1]]", "network.init=random"],
    ],
)
@pytest.mark.parametrize("name", ["A", "G"])
def test_matrix_free_operator_matches_block_rows(sets: list[str], name: str) -> None:
    comm = MPI.COMM_WORLD
    config = load_config(None, sets + ["solver.leaf_size=16"])
    problem = build_problem(config)
    dense = build(problem, config.solver, comm, name)[0]
    free_config = load_config(None, sets + ["solver.leaf_size=16", "solver.matrix_free=true"])
    free = build(problem, free_config.solver, comm, name)[0]
    assert free.rows is None
    assert (free.fast_matvec is not None) == (problem.domain.dim == 1)
    start, stop = dense.local_range
    x = np.random.default_rng(2).standard_normal((dense.size, 3))[start:stop]
    y, z = dense.matvec(x), free.matvec(x)
    scale = comm.allreduce(float(np.abs(y).max()), op=MPI.MAX)
    assert np.abs(y - z).max() <= 1e-13 * scale

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

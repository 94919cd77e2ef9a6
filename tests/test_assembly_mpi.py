"""Distributed assembly: block rows from P ranks equal the serial matrices; HDF5 in user order.

Run serially and under ``mpiexec -n 2`` / ``-n 4``: every rank compares its rows with the serial
reference it computes itself at small n.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from distgn.assembly import MATRICES, assemble_block_rows, layer_matrix, pair_integrals
from distgn.cli import main
from distgn.config import load_config
from distgn.problem import build_problem
from distgn.tree import build_tree, neuron_order

CASES = {
    "1d-mixed": [
        "network.n=97",
        'network.init="random"',
        'network.orientation="random"',
        "domain.bounds=[-1.0, 2.0]",
        'target.name="tanh_layer"',
    ],
    "2d-box": [
        'domain.kind="box"',
        "domain.bounds=[[0.0, 1.0], [0.0, 2.0]]",
        "network.n=41",
        'network.init="random"',
        'target.name="line_jump"',
    ],
    "2d-pentagon": [
        'domain.kind="polygon"',
        "domain.vertices=[[0.0, 0.0], [2.0, 0.0], [2.5, 1.0], [1.0, 2.0], [-0.5, 1.0]]",
        "network.n=37",
        'network.init="random"',
        'target.name="disk"',
    ],
}


def serial_matrices(problem, perm):
    W, b = problem.network.W[perm], problem.network.b[perm]
    idx = np.arange(perm.size)
    full = pair_integrals(problem.domain, W, b, idx, idx, MATRICES)
    full["G"] = layer_matrix(full["G"])
    return full


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", sorted(CASES))
def test_block_rows_match_serial(comm, case):
    problem = build_problem(load_config(None, CASES[case]))
    perm = neuron_order(problem.domain, problem.network.W, problem.network.b)
    tree = build_tree(perm, comm.size, 8)
    blocks = assemble_block_rows(problem, tree, comm.rank)
    full = serial_matrices(problem, perm)
    k = problem.domain.dim + 1
    for name in MATRICES:
        s = k if name == "G" else 1
        ref = full[name][blocks.start * s : blocks.stop * s]
        assert blocks.matrices[name].shape == ref.shape
        assert np.max(np.abs(blocks.matrices[name] - ref)) <= 1e-14 * np.max(np.abs(ref))
    # The gathered A is symmetric positive definite.
    A = np.vstack(comm.allgather(blocks.matrices["A"]))
    assert np.allclose(A, A.T, rtol=0, atol=1e-15 * np.abs(A).max())
    assert np.linalg.eigvalsh(A)[0] > 0


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", ["1d-mixed", "2d-pentagon"])
def test_assemble_command_writes_user_order(comm, shared_tmp, case):
    out = str(shared_tmp / "mats.h5")
    assert main(["assemble", *sum((["--set", s] for s in CASES[case]), []), "-o", out]) == 0
    problem = build_problem(load_config(None, CASES[case]))
    net = problem.network
    idx = np.arange(net.n)
    ref = pair_integrals(problem.domain, net.W, net.b, idx, idx, MATRICES)
    with h5py.File(out, "r") as fh:
        assert fh.attrs["n"] == net.n and fh.attrs["ranks"] == comm.size
        np.testing.assert_array_equal(fh["W"][...], net.W)
        for name in MATRICES:
            want = layer_matrix(ref[name]) if name == "G" else ref[name]
            got = fh[name][...]
            assert np.max(np.abs(got - want)) <= 1e-14 * np.max(np.abs(want))
        moments = np.asarray(fh["F"])
    from distgn.assembly import target_moments

    F = np.einsum(
        "ik,ik->i", target_moments(problem.domain, problem.target, net.W, net.b, idx), net.r
    )
    np.testing.assert_allclose(moments, F, rtol=1e-13, atol=1e-15)

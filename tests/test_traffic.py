"""Reported communication against a count taken at the communicator (serial and MPI).

A test-side wrapper (independent of distgn.solvers.traffic) counts every call the solver makes on
the communicator it is given; the hss statistics (bytes and messages per level, sketch, solve)
must add up to exactly that count, and the sketch rows must not depend on the number of ranks.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from mpi4py import MPI

from distgn.config import load_config
from distgn.operator import build, local_gaussian, nodal_operator
from distgn.problem import build_problem
from distgn.solvers import factor
from distgn.solvers.hat import HatSolver


class Tally(MPI.Intracomm):
    """Counts bytes (array size or pickle size) and calls of what this rank sends."""

    def __new__(cls, comm):
        return super().__new__(cls, comm)

    def __init__(self, comm):
        self.base = comm
        self.nbytes = 0
        self.calls = 0

    def _add(self, obj, root_only=None):
        if root_only is not None and self.base.rank != root_only:
            return
        if isinstance(obj, np.ndarray):
            size = obj.nbytes
        elif isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], np.ndarray):
            size = obj[0].nbytes
        elif isinstance(obj, (bytes, bytearray)):
            size = len(obj)
        else:
            size = len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        self.nbytes += size
        self.calls += 1

    def send(self, obj, dest, tag=0):
        self._add(obj)
        return self.base.send(obj, dest, tag)

    def recv(self, buf=None, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=None):
        return self.base.recv(buf, source, tag, status)

    def Isend(self, buf, dest, tag=0):
        self._add(buf)
        return self.base.Isend(buf, dest, tag)

    def Irecv(self, buf, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG):
        return self.base.Irecv(buf, source, tag)

    def allreduce(self, obj, op=MPI.SUM):
        self._add(obj)
        return self.base.allreduce(obj, op)

    def Allreduce(self, sendbuf, recvbuf, op=MPI.SUM):
        self._add(recvbuf if sendbuf is MPI.IN_PLACE else sendbuf)
        return self.base.Allreduce(sendbuf, recvbuf, op)

    def Allgather(self, sendbuf, recvbuf):
        self._add(sendbuf)
        return self.base.Allgather(sendbuf, recvbuf)

    def Allgatherv(self, sendbuf, recvbuf):
        self._add(sendbuf)
        return self.base.Allgatherv(sendbuf, recvbuf)

    def Alltoallv(self, sendbuf, recvbuf):
        self._add(sendbuf)
        return self.base.Alltoallv(sendbuf, recvbuf)

    def allgather(self, obj):
        self._add(obj)
        return self.base.allgather(obj)

    def gather(self, obj, root=0):
        self._add(obj)
        return self.base.gather(obj, root)

    def bcast(self, obj, root=0):
        self._add(obj, root_only=root)
        return self.base.bcast(obj, root)


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "sets",
    [
        [
            "network.n=4096",
            'network.init="random"',
            'network.orientation="random"',
            "solver.matrix_free=true",
            "solver.leaf_size=32",
        ],
        [
            'domain.kind="box"',
            "domain.bounds=[[0.0, 1.0], [0.0, 1.0]]",
            "network.n=200",
            'network.init="random"',
            "solver.tol=1e-6",
            "solver.leaf_size=16",
        ],
    ],
)
def test_hss_reports_what_the_communicator_saw(comm, sets):
    config = load_config(None, sets)
    problem = build_problem(config)
    tally = Tally(comm)
    operator, blocks = build(problem, config.solver, tally, "A")
    if problem.domain.dim == 1:
        operator = nodal_operator(operator, config.solver)
    rhs = np.ones(operator.local_range[1] - operator.local_range[0])
    before = (tally.nbytes, tally.calls)
    with factor(operator, config.solver) as solver:
        solver.solve(rhs)
        seen = comm.allreduce(np.array([tally.nbytes - before[0], tally.calls - before[1]]))
        stats = solver.stats()
    reported_bytes = (
        sum(stats["bytes_sent_per_level"])
        + stats["bytes_sent_sketch"]
        + stats["bytes_sent_setup"]
        + stats["bytes_sent_solve"]
    )
    reported_messages = (
        sum(stats["messages_per_level"])
        + stats["messages_sketch"]
        + stats["messages_setup"]
        + stats["messages_solve"]
    )
    assert reported_bytes == seen[0]
    assert reported_messages == seen[1]
    if comm.size > 1:
        assert max(stats["bytes_sent_per_level"]) > 0
    if comm.size > 1 and problem.domain.dim == 1:
        # Interpolative skeletons: the levels above the ranks move far less than O(n) sketch
        # data (the Schur-compensated scheme of the 2D case sends O(n r), as documented).
        assert sum(stats["bytes_sent_per_level"]) < 8 * operator.size * stats["samples"]


def test_sketch_rows_do_not_depend_on_the_partition():
    whole = local_gaussian(5, 0, 5000, 3)
    parts = [local_gaussian(5, lo, hi, 3) for lo, hi in [(0, 17), (17, 2100), (2100, 5000)]]
    assert np.array_equal(whole, np.vstack(parts))
    assert not np.array_equal(whole, local_gaussian(6, 0, 5000, 3))


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["A", "H", "G"])
def test_fast_product_sends_a_few_numbers_per_column(comm, name):
    """The 1D matrix-free product sends two Allgather of (4 + p) k numbers (p = 2 moments for
    A and G, 1 for H), whatever n: no vector entries."""
    k, top = 3, 1 if name == "H" else 2
    for n in (64, 4096):
        sets = [f"network.n={n}", 'network.init="random"', 'network.orientation="random"']
        config = load_config(None, sets + ["solver.matrix_free=true"])
        tally = Tally(comm)
        operator = build(build_problem(config), config.solver, tally, name)[0]
        start, stop = operator.local_range
        x = local_gaussian(3, start, stop, k)
        operator.matvec(x)  # the first product also sorts the interval ends: one more message
        before = (tally.nbytes, tally.calls)
        operator.matvec(x)
        assert (tally.nbytes - before[0], tally.calls - before[1]) == (8 * (4 + top) * k, 2)


@pytest.mark.mpi
@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", ["A", "H", "G"])
def test_neuron_basis_hat_solve_sends_no_vector(comm, name):
    """The hat inverse in the neuron basis moves rows between the neuron and the value partition
    only where the two differ, plus reductions and boundary values: what a rank sends per solve
    does not grow with n (gathering the vector would send 8 n k / P bytes)."""
    k = 3
    sent = {}
    for n in (256, 8192):
        sets = [f"network.n={n}", 'network.init="random"', 'network.orientation="random"']
        config = load_config(None, sets + ["solver.matrix_free=true", 'solver.basis="relu"'])
        tally = Tally(comm)
        operator = build(build_problem(config), config.solver, tally, name)[0]
        solver = HatSolver(operator)
        start, stop = operator.local_range
        rhs = local_gaussian(4, start, stop, k)
        solver.solve(rhs)
        before = tally.nbytes
        solver.solve(rhs)
        sent[n] = tally.nbytes - before
    assert sent[8192] <= sent[256] + 512 * k, sent
    assert sent[8192] < 8 * 8192 * k / comm.size / 20, sent

"""Large n: no quadratic pass when matrix-free, duplicates, the hss preconditioner, 2D reports."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mpi4py import MPI

import distgn.assembly as assembly
import distgn.fit
from distgn.cli import main
from distgn.config import load_config
from distgn.domain import interval
from distgn.fit import solve_output_weights
from distgn.network import duplicate_pairs, initial_network
from distgn.nodal import NeuronSpan, NodalSystem
from distgn.operator import build
from distgn.problem import build_problem


def fit(comm: MPI.Comm, sets: list[str], **kwargs) -> object:
    config = load_config(None, sets)
    problem = build_problem(config)
    operator, blocks = build(problem, config.solver, comm, "A")
    return solve_output_weights(problem, blocks, operator, config.solver, **kwargs)


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_matrix_free_1d_solve_never_computes_pair_integrals(comm, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pair integrals computed on the matrix-free 1D path")

    monkeypatch.setattr(assembly, "pair_integrals", forbidden)
    out = fit(
        comm,
        [
            "network.n=20000",
            'network.init="random"',
            "solver.matrix_free=true",
            'network.orientation="random"',
            'target.name="sine"',
        ],
    )
    assert out.stats["basis"] == "nodal" and out.l2_error < 1e-6


def test_only_exact_duplicates_are_rejected():
    net = initial_network(interval(0.0, 1.0), 2**20, "random", seed=3)
    assert duplicate_pairs(net.W, net.b).size == 0  # kinks ~1e-12 apart are legal
    W = np.array([[1.0], [2.0], [1.0], [-1.0], [1.0]])
    b = np.array([-0.5, -1.0, -0.5, 0.5, -0.5 * (1 + 1e-12)])
    pairs = duplicate_pairs(W, b)
    # 0, 1, 2 are one hyperplane and orientation; 3 faces the other way; 4 is 5e-13 away.
    assert len(pairs) == 2 and set(pairs.ravel()) == {0, 1, 2}


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_cg_with_the_hss_preconditioner_on_random_kinks(comm):
    out = fit(
        comm,
        [
            "network.n=4096",
            'network.init="random"',
            'target.name="step"',
            'solver.kind="krylov"',
            "solver.rtol=1e-10",
            'solver.petsc_options="-distgn_pc_type hss"',
        ],
    )
    assert out.stats["converged"] and out.stats["iterations"] <= 15
    assert out.stats["pc_stats"]["shift_max_relative"] <= 1e-4


@pytest.mark.mpi
@pytest.mark.timeout(200)
def test_2d_reports_forward_error_and_resolved_fit(comm):
    out = fit(
        comm,
        [
            'domain.kind="box"',
            "domain.bounds=[[0.0, 1.0], [0.0, 1.0]]",
            "network.n=120",
            'network.init="random"',
            'target.name="disk"',
            "solver.tol=1e-8",
        ],
        forward_error=True,
    )
    stats = out.stats
    assert stats["cond_estimate"] > 1 and stats["forward_error_estimate"] > 0
    assert np.isfinite(out.l2_error) and out.l2_error >= stats["fit_l2_error_floor"]
    assert stats["shift_max"] >= 0 and "shift_max_relative" in stats


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_solve_json_reports_the_bytes_sent(comm, shared_tmp, capsys):
    code = main(
        [
            "solve",
            "--json",
            "--set",
            "network.n=4096",
            "--set",
            "solver.matrix_free=true",
            "--set",
            f'output.path="{shared_tmp / "s.h5"}"',
        ]
    )
    assert code == 0
    if comm.rank == 0:
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert result["comm_messages_max"] >= (1 if comm.size > 1 else 0)
        if comm.size > 1:
            # skeleton-sized data and halos only: the coefficients are written where they are
            assert 0 < result["comm_bytes_max"] < 64 * 4096


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_krylov_honours_rtol_on_the_nodal_system_and_flags_a_limiting_one(comm, monkeypatch):
    """``solver.rtol`` is used as given on the 1D nodal system; the bound on the solve's part of
    the fit error is reported and holds, and a tolerance loose enough to limit the fit is flagged
    by one warning on rank 0."""
    warnings: list[str] = []
    monkeypatch.setattr(distgn.fit.log, "warning", warnings.append)
    base = [
        "network.n=4096",
        'target.name="sine"',
        'solver.kind="krylov"',
        "solver.matrix_free=true",
    ]
    loose = fit(comm, [*base, "solver.rtol=1e-4"])
    assert len(warnings) == (comm.rank == 0)
    assert all("solver.rtol = 0.0001" in w for w in warnings)
    tight = fit(comm, [*base, "solver.rtol=1e-13"])
    assert len(warnings) == (comm.rank == 0)  # no new warning
    assert (loose.stats["rtol"], tight.stats["rtol"]) == (1e-4, 1e-13)
    bounds = loose.stats["solver_error_bound"] + tight.stats["solver_error_bound"]
    assert abs(loose.l2_error - tight.l2_error) <= bounds
    assert loose.stats["solver_error_bound"] > loose.l2_error
    assert tight.stats["solver_error_bound"] < 1e-3 * tight.l2_error


@pytest.mark.parametrize("gap", [1e-9, 1e-11, 1e-12])
def test_nearly_coincident_breakpoints_keep_the_span_constraints_solvable(gap):
    # Two kinks `gap` apart make a cell so small that the constraint Gram Lam^T Ms^{-1} Lam
    # passes 1/eps (it was singular for some of these seeds); the values of a function in the
    # span must still give back that function.
    for seed in range(20):
        rng = np.random.default_rng(seed)
        kinks = np.sort(rng.uniform(0.0, 1.0, 16))
        kinks[9] = kinks[8] + gap
        w = rng.choice([-1.0, 1.0], 16) * rng.uniform(0.5, 2.0, 16)
        b = -w * kinks
        c = rng.standard_normal(16)
        span = NeuronSpan("A", 0.0, 1.0, w, b)
        relu = np.maximum(np.outer(span.basis.z, w) + b, 0.0)  # at the mesh nodes
        got = NodalSystem(span).coefficients((span.basis.scale * (relu @ c))[:, None])[:, 0]
        error = np.max(np.abs(relu @ (got - c)))
        assert error <= 1e-13 * np.max(np.abs(relu @ c)), (seed, error)

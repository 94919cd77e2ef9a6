"""The package's shape: no import cycles, deferred imports only where PETSc requires them, and one
statistics schema for every solver back end."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from distgn.config import load_config
from distgn.operator import build
from distgn.problem import build_problem
from distgn.solvers import STATS_KEYS, factor

PACKAGE = Path(__file__).resolve().parent.parent / "distgn"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path) -> list[tuple[str, bool]]:
    """The distgn modules imported by a file, each with whether the import is inside a function."""
    tree = ast.parse(path.read_text())
    nested = {
        id(node)
        for fn in ast.walk(tree)
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef)
        for node in ast.walk(fn)
        if isinstance(node, ast.Import | ast.ImportFrom)
    }
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [n if n in MODULES else node.module for n in names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name.startswith("distgn"):
                found.append((name, id(node) in nested))
    return found


GRAPH = {name: _imports(path) for name, path in MODULES.items()}


def test_no_import_cycles() -> None:
    names = sorted(MODULES)
    index = {name: i for i, name in enumerate(names)}
    edges = [(index[a], index[b]) for a, targets in GRAPH.items() for b, _ in targets if a != b]
    rows, cols = zip(*edges, strict=True)
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    count, label = connected_components(graph, directed=True, connection="strong")
    cycles = [[n for n in names if label[index[n]] == k] for k in range(count)]
    assert [c for c in cycles if len(c) > 1] == []


def _imports_petsc(name: str, seen: set[str] | None = None) -> bool:
    """Whether importing ``name`` imports petsc4py.PETSc (at module level, transitively)."""
    seen = set() if seen is None else seen
    if name in seen:
        return False
    seen.add(name)
    body = ast.parse(MODULES[name].read_text()).body
    if any(isinstance(node, ast.ImportFrom) and node.module == "petsc4py" for node in body):
        return True
    return any(_imports_petsc(target, seen) for target, deferred in GRAPH[name] if not deferred)


def test_deferred_imports_are_only_for_petsc() -> None:
    """The one reason for an import inside a function (distgn.solvers): the module imports PETSc,
    which must not start before the CLI has handed it the command line's options."""
    deferred = {(a, b) for a, targets in GRAPH.items() for b, nested in targets if nested}
    assert deferred, "distgn.solvers.factor imports its PETSc back ends on first use"
    assert [(a, b) for a, b in deferred if not _imports_petsc(b)] == []


ONE_D = ["network.n=64", 'network.init="random"', 'target.name="sine"', "solver.leaf_size=16"]
BACK_ENDS = [
    ['solver.kind="hss"'],
    ['solver.kind="dense"'],
    ['solver.kind="krylov"', 'solver.petsc_options="-distgn_pc_type hat"'],
    ['solver.kind="krylov"', 'solver.petsc_options="-distgn_pc_type hss"'],
    ['solver.kind="krylov"', 'solver.petsc_options="-distgn_pc_type bjacobi"'],
]


@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("settings", BACK_ENDS)
def test_every_back_end_reports_the_common_statistics(comm, settings: list[str]) -> None:
    config = load_config(None, ONE_D + settings)
    # H in the neuron basis: stored block rows for every back end (1D solves with A go through
    # the value coordinates, tested in test_large_n.py).
    operator, blocks = build(build_problem(config), config.solver, comm, "H")
    with factor(operator, config.solver) as solver:
        x = solver.solve(np.ascontiguousarray(blocks.moments[:, -1]))
        stats = solver.stats()
    assert list(stats)[: len(STATS_KEYS)] == list(STATS_KEYS)
    assert stats["kind"] == config.solver.kind
    assert stats["seconds_factor"] > 0 and stats["seconds_solve"] > 0
    assert isinstance(stats["factor_bytes"], int) and stats["factor_bytes"] > 0
    # Reduced values: identical on every rank.
    common = [stats[key] for key in STATS_KEYS]
    assert comm.allgather(common) == [common] * comm.size
    assert np.all(np.isfinite(x))

"""Shared fixtures: the communicator and a temporary folder common to all ranks."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from mpi4py import MPI

SOURCE_TREE = Path(__file__).resolve().parents[1]

# Property tests keep no example database and write their caches outside the source tree.
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="distgn-hypothesis-")
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
settings.register_profile("distgn", database=None)
settings.load_profile("distgn")


@pytest.fixture(scope="session", autouse=True)
def nothing_written_into_the_source_tree():
    """Tests write into temporary folders only: the top level of the repository and examples/
    hold the same files after the session as before."""

    def listing() -> list[str]:
        return sorted(
            str(p.relative_to(SOURCE_TREE))
            for folder in (SOURCE_TREE, SOURCE_TREE / "examples")
            for p in folder.iterdir()
        )

    before = listing()
    yield
    new = sorted(set(listing()) - set(before))
    assert not new, f"tests wrote into the source tree: {new}"


@pytest.fixture
def comm() -> MPI.Comm:
    """COMM_WORLD (1 rank in the serial run, 2 or 4 under mpiexec)."""
    return MPI.COMM_WORLD


@pytest.fixture
def shared_tmp(comm: MPI.Comm):
    """A temporary folder made on rank 0 and broadcast to every rank; removed collectively."""
    path = tempfile.mkdtemp(prefix="distgn-") if comm.rank == 0 else None
    path = Path(comm.bcast(path))
    yield path
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator (the same on every rank)."""
    return np.random.default_rng(20240515)


# Running the real ``distgn`` command, under ``mpiexec -n P`` or serially.
MPIEXEC = shutil.which("mpiexec")
UNDER_MPIEXEC = "OMPI_COMM_WORLD_SIZE" in os.environ
DISTGN = str(Path(sys.executable).with_name("distgn"))
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMIX_"))},
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}
needs_mpiexec = pytest.mark.skipif(
    UNDER_MPIEXEC or MPIEXEC is None, reason="launches its own mpiexec"
)


def distgn_command(args: list[str], ranks: int = 2) -> list[str]:
    """``mpiexec -n ranks distgn args`` (``distgn args`` for ranks = 0)."""
    prefix = [MPIEXEC, "-n", str(ranks)] if ranks else []
    return [*prefix, DISTGN, *args]


def run_distgn(
    args: list[str], cwd: Path, ranks: int = 2, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run the real ``distgn`` in ``cwd``; a hang fails the test (TimeoutExpired)."""
    return subprocess.run(
        distgn_command(args, ranks),
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def distgn_lines(stderr: str) -> list[str]:
    """The lines distgn itself printed (mpiexec's own notes left out)."""
    return [line for line in stderr.splitlines() if line.startswith("distgn")]

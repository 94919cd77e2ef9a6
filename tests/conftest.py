"""Shared fixtures: the communicator and a temporary folder common to all ranks."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from mpi4py import MPI


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

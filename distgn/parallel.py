"""MPI plumbing: rank-0 output, collective error handling, timers, moving rows between ranks.

Outcomes of a command and their exit statuses (the same on every rank):

- ``InputError``/``SolverError`` raised identically on every rank (input is replicated and checked
  on rank 0 before the work, so validation is too; a 1D network split by rank is validated
  collectively, ``agree``): one line ``distgn: error: ...`` from rank 0, every rank returns 2 (3
  for a ``ConvergenceError``), no ``MPI_Abort``.
- ``signals.Interrupted`` (agreed by all ranks, checkpoint written): one line from rank 0, status
  75 (SIGTERM, SIGUSR1) or 130 (SIGINT).
- ``KeyboardInterrupt`` (SIGINT outside training): one line, status 130, the process ends at once
  (other ranks may be inside a collective).
- Any other exception on a subset of ranks: one line naming the rank from each failing rank and
  the job is aborted (status 1), so no rank waits forever in a collective.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
from mpi4py import MPI

from distgn.errors import ConvergenceError, InputError, SolverError
from distgn.signals import EXIT_SIGINT, Interrupted

log = logging.getLogger("distgn")

EXIT_INPUT = 2
EXIT_INTERNAL = 1
EXIT_NOT_CONVERGED = 3


def setup_logging(comm: MPI.Comm, verbose: bool = False) -> None:
    """Log progress to stderr on rank 0 only (warnings from every rank)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    if comm.rank == 0:
        log.setLevel(logging.DEBUG if verbose else logging.INFO)
    else:
        log.setLevel(logging.WARNING)


def print0(comm: MPI.Comm, *args: object) -> None:
    """Print on rank 0 only (stdout, flushed)."""
    if comm.rank == 0:
        print(*args, flush=True)


def run_collectively(comm: MPI.Comm, main: Callable[[], int]) -> int:
    """Run ``main`` on every rank and turn failures into one line and a nonzero exit everywhere.

    Collective: the ranks agree on the outcome.
    """
    try:
        status = main()
    except Interrupted as exc:
        if comm.rank == 0:
            print(f"distgn: {exc}", file=sys.stderr, flush=True)
        comm.Barrier()
        return exc.status
    except KeyboardInterrupt:
        if comm.rank == 0:
            print("distgn: interrupted by SIGINT (Ctrl-C)", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(EXIT_SIGINT)
    except (InputError, SolverError) as exc:
        # Raised on every rank by replicated validation: report once, exit together.
        if comm.rank == 0:
            print(f"distgn: error: {exc}", file=sys.stderr, flush=True)
        comm.Barrier()
        return EXIT_NOT_CONVERGED if isinstance(exc, ConvergenceError) else EXIT_INPUT
    except Exception as exc:  # noqa: BLE001 - a crash on some ranks must not hang the others
        print(
            f"distgn: internal error on rank {comm.rank}: {type(exc).__name__}: {exc}",
            file=sys.stderr,
            flush=True,
        )
        if log.isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        if comm.size > 1:
            comm.Abort(EXIT_INTERNAL)
        return EXIT_INTERNAL
    return status


def agree(comm: MPI.Comm, error: str | None) -> None:
    """Raise InputError on every rank if any rank reports ``error``. Collective."""
    errors = comm.allgather(error)
    first = next((e for e in errors if e), None)
    if first:
        raise InputError(first)


@contextmanager
def timed(comm: MPI.Comm, timings: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of a collective phase (max over ranks) into ``timings[name]``."""
    comm.Barrier()
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    timings[name] = comm.allreduce(elapsed, op=MPI.MAX)


def exchange_rows(comm: MPI.Comm, rows: np.ndarray, dest: np.ndarray) -> np.ndarray:
    """Send each row of ``rows`` (float, any width) to rank ``dest[i]``; the rows a rank receives
    come in rank order, each rank's in the order sent. One ``alltoall`` of the counts and one
    ``Alltoallv``. Collective."""
    order = np.argsort(dest, kind="stable")
    rows = np.ascontiguousarray(np.asarray(rows, dtype=float)[order])
    width = rows.shape[1]
    send = np.bincount(dest, minlength=comm.size)
    recv = np.asarray(comm.alltoall(send.tolist()))
    out = np.empty((int(recv.sum()), width))
    comm.Alltoallv(
        [rows, send * width, _starts(send) * width, MPI.DOUBLE],
        [out, recv * width, _starts(recv) * width, MPI.DOUBLE],
    )
    return out


def _starts(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts)[:-1]])

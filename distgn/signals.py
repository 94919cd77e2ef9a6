"""SIGTERM, SIGUSR1 and SIGINT during training: finish the iteration, checkpoint, exit.

Inside ``deferred()`` the first of these signals only sets a flag; the training loop polls it once
per iteration with ``arrived(comm)`` (an allreduce, so all ranks agree although ``mpiexec`` or
``srun`` may deliver the signal to the ranks at different moments, or to some only), writes a
checkpoint and raises ``Interrupted``. A second signal ends the process at once with status
128 + signal number. ``arrived`` is collective; the rest is rank-local.

Exit statuses (``distgn.parallel``): ``EXIT_INTERRUPTED`` (75, EX_TEMPFAIL) after SIGTERM or
SIGUSR1 with a checkpoint written; ``EXIT_SIGINT`` (130) after SIGINT.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from mpi4py import MPI

EXIT_INTERRUPTED = 75
EXIT_SIGINT = 130
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

_received = 0


class Interrupted(Exception):  # noqa: N818 - not an error: a requested stop
    """Training stopped on a signal after writing ``checkpoint`` (None if none was written)."""

    def __init__(self, signum: int, checkpoint: str | None) -> None:
        name = signal.Signals(signum).name
        where = (
            f"checkpoint written to {checkpoint}; continue with --restart {checkpoint}"
            if checkpoint
            else "no checkpoint written"
        )
        super().__init__(f"interrupted by {name}: {where}")
        self.signum = signum
        self.checkpoint = checkpoint

    @property
    def status(self) -> int:
        """The exit status: 130 for SIGINT, 75 otherwise."""
        return EXIT_SIGINT if self.signum == signal.SIGINT else EXIT_INTERRUPTED


def _handler(signum: int, frame: object) -> None:
    global _received
    if _received:
        os._exit(128 + signum)
    _received = signum


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block, record SIGTERM/SIGUSR1/SIGINT instead of acting on them."""
    global _received
    _received = 0
    previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def arrived(comm: MPI.Comm) -> int:
    """The signal any rank received so far (0 if none): the same value on every rank.
    Collective."""
    return int(comm.allreduce(_received, op=MPI.MAX))

"""Communication accounting at the communicator: every byte and message a rank hands to MPI.

``CountingComm`` is an ``MPI.Intracomm`` (same communicator handle, so it can be used wherever a
communicator is) that forwards every call it overrides to the communicator it wraps and counts,
under the current ``label``, the bytes and messages this rank sends:

- point to point (``send``, ``Send``, ``Isend``, ``Sendrecv``, ``sendrecv``): the payload
  (pickled size for the lower-case calls), one message;
- collectives (``allreduce``, ``Allreduce``, ``allgather``, ``Allgather``, ``Allgatherv``,
  ``Alltoallv``, ``alltoall``, ``exscan``, ``gather``, ``bcast`` on the root, ``Barrier``):
  this rank's contribution, one message each (what reaches the network depends on the MPI
  implementation's algorithm; this is the payload given to it).

Solvers report their figures from these counts (``HSSFactorization.stats``, ``distgn solve
--json``), so the figures cannot drift from the code. PETSc's own reductions inside a KSP (its
dot products and norms: a few doubles per iteration) do not go through this object and are not
counted. Rank-local bookkeeping; the forwarded calls are as collective as the MPI calls.
"""

from __future__ import annotations

import pickle
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from mpi4py import MPI


def payload(obj: object) -> int:
    """Bytes of an object as MPI sends it: a buffer's size, else its pickle's."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, (list, tuple)) and obj and isinstance(obj[0], np.ndarray):
        return int(obj[0].nbytes)  # buffer specification [array, counts, displacements, type]
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


class CountingComm(MPI.Intracomm):
    """A communicator that counts what this rank sends (module docstring)."""

    def __new__(cls, comm: MPI.Intracomm) -> CountingComm:
        return super().__new__(cls, comm)

    def __init__(self, comm: MPI.Intracomm) -> None:
        self.inner = comm
        self.label: object = "other"
        self.bytes: defaultdict[object, int] = defaultdict(int)
        self.messages: defaultdict[object, int] = defaultdict(int)

    @contextmanager
    def labelled(self, label: object) -> Iterator[None]:
        """Count the calls in the block under ``label``."""
        previous, self.label = self.label, label
        try:
            yield
        finally:
            self.label = previous

    def _count(self, nbytes: int) -> None:
        self.bytes[self.label] += int(nbytes)
        self.messages[self.label] += 1

    def snapshot(self) -> tuple[dict, dict]:
        """Copies of the counters (to report the difference over a phase)."""
        return dict(self.bytes), dict(self.messages)

    def since(self, snapshot: tuple[dict, dict], label: object) -> tuple[int, int]:
        """(bytes, messages) under ``label`` since ``snapshot``."""
        return (
            self.bytes[label] - snapshot[0].get(label, 0),
            self.messages[label] - snapshot[1].get(label, 0),
        )

    def totals(self) -> tuple[int, int]:
        """(bytes, messages) sent by this rank under every label."""
        return sum(self.bytes.values()), sum(self.messages.values())

    # --- point to point ---------------------------------------------------------------------

    def send(self, obj, dest, tag=0):  # noqa: D102
        self._count(payload(obj))
        return self.inner.send(obj, dest, tag)

    def Send(self, buf, dest, tag=0):  # noqa: D102
        self._count(payload(buf))
        return self.inner.Send(buf, dest, tag)

    def Isend(self, buf, dest, tag=0):  # noqa: D102
        self._count(payload(buf))
        return self.inner.Isend(buf, dest, tag)

    def Sendrecv(
        self,
        sendbuf,
        dest,
        sendtag=0,
        recvbuf=None,
        source=MPI.ANY_SOURCE,  # noqa: D102
        recvtag=MPI.ANY_TAG,
        status=None,
    ):
        self._count(payload(sendbuf))
        return self.inner.Sendrecv(sendbuf, dest, sendtag, recvbuf, source, recvtag, status)

    def sendrecv(  # noqa: D102
        self,
        sendobj,
        dest,
        sendtag=0,
        recvbuf=None,
        source=MPI.ANY_SOURCE,
        recvtag=MPI.ANY_TAG,
        status=None,
    ):
        if dest != MPI.PROC_NULL:
            self._count(payload(sendobj))
        return self.inner.sendrecv(sendobj, dest, sendtag, recvbuf, source, recvtag, status)

    def recv(self, buf=None, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG, status=None):  # noqa: D102
        return self.inner.recv(buf, source, tag, status)

    def Irecv(self, buf, source=MPI.ANY_SOURCE, tag=MPI.ANY_TAG):  # noqa: D102
        return self.inner.Irecv(buf, source, tag)

    # --- collectives ------------------------------------------------------------------------

    def allreduce(self, sendobj, op=MPI.SUM):  # noqa: D102
        self._count(payload(sendobj))
        return self.inner.allreduce(sendobj, op)

    def Allreduce(self, sendbuf, recvbuf, op=MPI.SUM):  # noqa: D102
        self._count(payload(recvbuf if sendbuf is MPI.IN_PLACE else sendbuf))
        return self.inner.Allreduce(sendbuf, recvbuf, op)

    def allgather(self, sendobj):  # noqa: D102
        self._count(payload(sendobj))
        return self.inner.allgather(sendobj)

    def Allgather(self, sendbuf, recvbuf):  # noqa: D102
        self._count(payload(sendbuf))
        return self.inner.Allgather(sendbuf, recvbuf)

    def Allgatherv(self, sendbuf, recvbuf):  # noqa: D102
        self._count(payload(sendbuf))
        return self.inner.Allgatherv(sendbuf, recvbuf)

    def Alltoallv(self, sendbuf, recvbuf):  # noqa: D102
        self._count(payload(sendbuf))
        return self.inner.Alltoallv(sendbuf, recvbuf)

    def alltoall(self, sendobj):  # noqa: D102
        self._count(payload(sendobj))
        return self.inner.alltoall(sendobj)

    def exscan(self, sendobj, op=MPI.SUM):  # noqa: D102
        self._count(payload(sendobj))
        return self.inner.exscan(sendobj, op)

    def gather(self, sendobj, root=0):  # noqa: D102
        self._count(payload(sendobj))
        return self.inner.gather(sendobj, root)

    def bcast(self, obj, root=0):  # noqa: D102
        if self.inner.rank == root:
            self._count(payload(obj))
        return self.inner.bcast(obj, root)

    def Barrier(self):  # noqa: D102
        self._count(0)
        return self.inner.Barrier()


def counting(comm: MPI.Intracomm) -> CountingComm:
    """``comm`` itself when it already counts, else a counting wrapper around it."""
    return comm if isinstance(comm, CountingComm) else CountingComm(comm)


def plain(comm: MPI.Intracomm) -> MPI.Intracomm:
    """A plain communicator with the same handle (for PETSc, which takes no subclasses)."""
    return MPI.Intracomm(comm) if isinstance(comm, CountingComm) else comm


def summary(comm: CountingComm) -> dict:
    """Bytes and messages sent, per rank: ``comm_bytes_max`` / ``comm_messages_max`` (largest
    rank) and ``comm_bytes_total`` (all ranks). Collective over the wrapped communicator."""
    nbytes, messages = comm.totals()
    inner = comm.inner
    return {
        "comm_bytes_max": int(inner.allreduce(nbytes, op=MPI.MAX)),
        "comm_messages_max": int(inner.allreduce(messages, op=MPI.MAX)),
        "comm_bytes_total": int(inner.allreduce(nbytes, op=MPI.SUM)),
    }

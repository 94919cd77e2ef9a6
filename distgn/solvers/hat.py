"""The exact O(n) 1D solve with A, H or G through a piecewise-polynomial basis (the hat solver).

In 1D, with the breakpoints as mesh nodes, the neuron functions of A (ReLUs), H (Heavisides) and
G (Heavisides times ``(x, 1)``) span spaces with a local basis whose Gram matrix is banded; the
change of basis is sparse and banded too (distgn.nodal, docs/large-n.md). ``HatSolver`` applies
``M^{-1}`` in O(n) for any orientations, in the neuron basis or, for an operator already in value
coordinates (``Operator.system``), as the exact inverse of that system; it is the ``hat``
preconditioner of the Krylov back end. Construction and ``HatSolver.solve`` are collective;
each rank holds O(n/P) of the transform.
"""

from __future__ import annotations

import numpy as np

from distgn.errors import InputError, SolverError
from distgn.nodal import NeuronSpan, NodalSystem
from distgn.operator import Operator
from distgn.solvers.base import Disposable
from distgn.solvers.petsc import PREFIX


class HatSolver(Disposable):
    """Exact O(n) solve with a 1D A, H or G: the ReLU -> hat transform (docs/math.md), generalised.

    In the value coordinates of ``distgn.nodal.PiecewiseBasis`` (nodal values for A, cell values for
    H, cell polynomials for G) the matrix is ``M = V^T mass V`` with ``mass`` banded and V (m x nq)
    the neuron functions. V has a cheap left inverse B (``B V = I``): a neuron's coefficient is the
    jump of the function at its breakpoint (``to_coefficients`` then ``R^T``, R a right inverse of
    the neurons' augmented rows C); neurons without a breakpoint inside (L, R), and the second
    neuron at a shared breakpoint (eliminated against the first by a unit-triangular row operation
    ``Lrow``), are recovered from the affine remainder (``Ea``, at most g independent rows, else M
    is singular). V has at most g more rows than columns; with N an orthonormal basis of the
    null space of V^T, the splitting
    ``mass^{-1} = V M^{-1} V^T + mass^{-1} N (N^T mass^{-1} N)^{-1} N^T mass^{-1}`` gives

        ``M^{-1} = B (I - N N^T) (mass^{-1} - mass^{-1} N (N^T mass^{-1} N)^{-1} N^T mass^{-1})
        (I - N N^T) B^T``.

    The projections ``I - N N^T`` are exact identities; they keep rounding errors along N, which B
    would amplify (its null space, the affine functions, can be nearly inside the range of V), out
    of the result. One orientation with sorted distinct breakpoints and no nullity is docs/math.md's
    ``A^{-1} = T^{-1} M^{-1} T^{-T}``; this form is exact (in exact arithmetic) for every 1D neuron
    set with a nonsingular matrix, any orientations. Rounding grows with the spread of cell lengths
    (nearly coinciding breakpoints) and with mixed orientations; see benchmarks/krylov.md.

    The transform is distributed like the operator (``NeuronSpan``: each rank passes its own
    neurons, a contiguous block of the breakpoint order, and holds O(n/P) of the mesh, T, the mass
    matrix and N). ``solve`` is a partitioned banded solve on each rank's value rows
    (``NodalSystem.solve_rows``); in the neuron basis the right-hand side moves to the value
    partition and back (one row per node, ``NeuronSpan.values_transpose`` and
    ``coefficients``). Construction and ``solve`` are collective.
    """

    def __init__(self, operator: Operator) -> None:
        if operator.domain.dim != 1:
            raise InputError(
                f"-{PREFIX}pc_type hat is for 1D domains; this domain is "
                f"{operator.domain.dim}D (use -{PREFIX}pc_type hss)"
            )
        self.operator = operator
        self.span: NeuronSpan | None = None
        if operator.system is not None:
            self.system = operator.system
        else:
            L, R = (float(v) for v in operator.domain.bounds[0])
            W, b = operator.own_neurons()
            self.span = NeuronSpan(operator.name, L, R, W[:, 0], b, comm=operator.comm)
            self.system = NodalSystem(self.span)

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """Solution rows of this rank for local right-hand-side rows (m,) or (m, k). Collective.

        O(n/P) work per rank; the value-coordinate solve sends a few numbers per rank, the
        neuron basis also one row per node between the neuron and the value partition.
        """
        columns = rhs.reshape(rhs.shape[0], -1)
        comm = self.operator.comm
        if self.span is None:
            return self.system.solve_rows(columns, comm).reshape(rhs.shape)
        values = self.span.project(self.span.values_transpose(columns))
        solution = self.system.solve_rows(values, comm, span_only=True)
        return self.span.coefficients(solution).reshape(rhs.shape)

    def logdet(self) -> float:
        """Not provided (the hat transform is used as a preconditioner)."""
        raise SolverError(
            'the hat preconditioner has no log-determinant; use solver.kind = "dense" or "hss"'
        )

    def nbytes(self) -> int:
        """Bytes held by the transform on this rank."""
        span = self.system.span
        sparse = (span.basis.to_coefficients, span.basis.mass, self.system.mass)
        return int(
            sum(m.data.nbytes + m.indices.nbytes + m.indptr.nbytes for m in sparse)
            + span.null.nbytes
            + self.system.inverse_null.nbytes
        )

    def stats(self) -> dict:
        """Sizes of the transform."""
        span = self.system.span
        return {
            "type": "hat",
            "factor_bytes": self.nbytes(),
            "interior_nodes": int(span.node_offsets[-1]),
            "affine_rows": span.affine_total,
            "nullity": int(span.null.shape[1]),
            "operator_basis": "relu" if self.span is not None else "nodal",
        }

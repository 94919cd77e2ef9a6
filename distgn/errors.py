"""Exceptions that distgn reports to users as one-line messages."""


class InputError(ValueError):
    """Bad configuration or input data; the message names the offending value."""


class SolverError(RuntimeError):
    """A solver failed (e.g. Cholesky of a numerically indefinite matrix); the message says why."""


class ConvergenceError(SolverError):
    """An iterative solve stopped without converging; the message names PETSc's reason."""

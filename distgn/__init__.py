"""distgn: exact assembly and distributed hierarchical solvers for shallow ReLU network matrices."""

__version__ = "0.1.0"

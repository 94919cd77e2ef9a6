"""Training: SgGN and the baseline optimizers on the least-squares fit of a target.

Modules: ``objective`` (loss, gradient, collective agreement), ``deflation`` (parametrisation and
singular components), ``linesearch`` (the step length), ``sggn`` (the SgGN iteration), ``growth``
(staged growth), ``baselines`` (Adam, BFGS, Levenberg-Marquardt), ``loop`` (method dispatch,
stopping, history, checkpoints). ``train`` is the entry point and is collective.
"""

from distgn.training.loop import METHODS, train

__all__ = ["METHODS", "train"]

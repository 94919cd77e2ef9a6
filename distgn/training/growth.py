"""Staged growth of an SgGN run: a converged network grown into the start of a larger one.

With ``[train] grow_from = n0`` an SgGN run starts from the configured initial network of n0
neurons instead of ``network.n``, and grows through ``TrainConfig.stage_sizes`` (n0, n0 *
growth, ..., network.n). When a stage has converged (distgn.training.sggn.run), ``grow`` makes
the next stage's network from its best iterate:

- every live neuron is kept, with its c: the new network spans the old one's functions, so the
  least-squares fit the next stage starts from is at least as good as the one the last stage
  ended with (the c-solve keeps the old c if its own is worse);
- the neurons whose hyperplane cuts the domain are copied, in order of decreasing ``|c_i|``,
  one copy per neuron per round, until the stage's size is reached; copy ``j`` of a neuron is its
  hyperplane moved parallel by ``s_j * grow_spread / growth**k`` (``s = 1, -1, 2, -2, ...``,
  k the growths done before; ``|w_i| = 1``, so this is a distance in the domain's units), with
  ``c = 0``. Copies active nowhere or on the whole domain, and exact duplicates of a neuron
  already there, are skipped. The spacing shrinks by ``growth`` per stage, so copies of copies
  fall between the earlier ones instead of onto them.

A stage starts where the last one converged, with its lines in place, and the new neurons
start next to the lines that carry the fit: on the 2D disk, where SgGN from a uniform start of
n = 256 neurons stops in a poor stationary point, the stages reach a fit that BFGS does not
(docs/sggn.md, section 2f). Rank-local (every rank computes the same network).
"""

from __future__ import annotations

import numpy as np

from distgn.domain import Domain
from distgn.errors import InputError
from distgn.network import Network, activity, duplicate_pairs

# Rounds of copies tried before a stage's size is declared out of reach.
MAX_ROUNDS = 64


def offsets(rounds: int) -> np.ndarray:
    """``s_1 .. s_rounds = 1, -1, 2, -2, ...``: the copies' shifts in units of the spacing."""
    j = np.arange(1, rounds + 1)
    return np.where(j % 2 == 1, (j + 1) // 2, -(j // 2)).astype(float)


def grow(network: Network, live: np.ndarray, domain: Domain, size: int, spacing: float) -> Network:
    """The next stage's network: the live neurons of ``network`` and copies of them (module
    docstring), ``size`` neurons in all, with ``c = 0`` on the copies.

    Parameters
    ----------
    network : Network
        The converged stage, normalised (``|w_i| = 1``), with c.
    live : numpy.ndarray
        The neurons that are not removed.
    domain : Domain
        The domain.
    size : int
        The next stage's number of neurons.
    spacing : float
        The shift between neighbouring copies (``grow_spread / growth**k``).

    Raises
    ------
    InputError
        ``size`` cannot be reached in ``MAX_ROUNDS`` rounds (the copies leave the domain).
    """
    kept = network.subset(np.flatnonzero(live))
    _, affine = activity(kept.W, kept.b, domain)
    movable = np.flatnonzero(~affine)
    movable = movable[np.argsort(-np.abs(kept.c[movable]), kind="stable")]
    shift = offsets(MAX_ROUNDS) * spacing
    W = np.tile(kept.W[movable], (MAX_ROUNDS, 1))
    b = (kept.b[movable][None, :] + shift[:, None]).ravel()
    dead, every = activity(W, b, domain)
    W, b = W[~dead & ~every], b[~dead & ~every]
    need = size - kept.n
    chosen, taken = np.array([], dtype=int), 0  # candidates accepted; candidates looked at
    while True:
        more = np.arange(taken, min(taken + need - chosen.size, b.size))
        chosen, taken = np.concatenate([chosen, more]), taken + more.size
        all_W, all_b = np.vstack([kept.W, W[chosen]]), np.concatenate([kept.b, b[chosen]])
        pairs = duplicate_pairs(all_W, all_b)
        extra = np.unique(pairs[:, 1]) - kept.n if pairs.size else np.array([], dtype=int)
        extra = extra[extra >= 0]  # a copy; duplicates among the kept neurons stay as they were
        if not extra.size:
            break
        chosen = np.delete(chosen, extra)
    if chosen.size < need:
        raise InputError(
            f"train.grow_spread: no room for {size} neurons; the copies of the "
            f"{movable.size} neurons that cut the domain leave it (try a smaller spread)"
        )
    c = np.concatenate([kept.c, np.zeros(need)])
    return Network(all_W, all_b, c, kept.c0)

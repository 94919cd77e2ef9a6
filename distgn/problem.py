"""The problem a run solves: domain, target and network, built and validated from the config.

Rank-local: every rank builds the same problem (same file, same seed).
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np

from distgn import domain as domains
from distgn.config import CHOICES, Config
from distgn.domain import Domain
from distgn.errors import InputError
from distgn.network import Network, initial_network, validate
from distgn.targets import Target, make_target


@dataclass(frozen=True)
class Problem:
    """What to fit: ``u`` on ``domain`` with ``network`` (user neuron order)."""

    domain: Domain
    target: Target
    network: Network
    output_bias: bool = False


def check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise InputError naming ``key`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"config key {key} = {value!r} is not one of {', '.join(choices)}")


def build_domain(config: Config) -> Domain:
    """The domain described by ``[domain]``."""
    cfg = config.domain
    check_choice("domain.kind", cfg.kind, CHOICES["domain.kind"])
    try:
        if cfg.kind == "interval":
            if len(cfg.bounds) != 2 or isinstance(cfg.bounds[0], list):
                raise InputError(f"domain.bounds = {cfg.bounds!r} must be [L, R] for an interval")
            return domains.interval(float(cfg.bounds[0]), float(cfg.bounds[1]))
        if cfg.kind == "box":
            return domains.box(cfg.bounds)
        return domains.polygon(cfg.vertices)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"domain {cfg.kind} is malformed: {exc}") from None


def read_parameters(path: str, dim: int) -> Network:
    """Network parameters from HDF5 datasets ``W`` (n x d), ``b`` (n) and optional ``c``, ``c0``.

    A training output file is accepted too (datasets under ``network/``).
    """
    try:
        with h5py.File(path, "r") as fh:
            group = fh["network"] if "network" in fh and "W" not in fh else fh
            if "W" not in group or "b" not in group:
                raise InputError(f"network.file = {path!r} has no datasets W and b")
            W = np.asarray(group["W"], dtype=float)
            b = np.asarray(group["b"], dtype=float)
            c = np.asarray(group["c"], dtype=float) if "c" in group else None
            c0 = float(np.asarray(group["c0"])) if "c0" in group else None
    except OSError as exc:
        raise InputError(f"network.file = {path!r} cannot be read: {exc}") from None
    if W.ndim == 1:
        W = W[:, None]
    if W.ndim != 2 or W.shape[1] != dim or b.shape != (W.shape[0],):
        raise InputError(
            f"network.file = {path!r}: W has shape {W.shape} and b {b.shape}; "
            f"expected (n, {dim}) and (n,)"
        )
    if c is not None and c.shape != b.shape:
        raise InputError(f"network.file = {path!r}: c has shape {c.shape}, expected {b.shape}")
    return Network(W, b, c, c0)


def build_problem(config: Config) -> Problem:
    """Domain, target and validated network from the configuration."""
    domain = build_domain(config)
    cfg = config.network
    check_choice("network.init", cfg.init, CHOICES["network.init"])
    check_choice("network.orientation", cfg.orientation, CHOICES["network.orientation"])
    if cfg.init == "file":
        network = read_parameters(cfg.file, domain.dim)
    else:
        if cfg.n < 1:
            raise InputError(f"config key network.n = {cfg.n} must be at least 1")
        network = initial_network(domain, cfg.n, cfg.init, cfg.seed, cfg.orientation)
    validate(network, domain)
    return Problem(domain, make_target(config.target.name, domain), network, cfg.output_bias)

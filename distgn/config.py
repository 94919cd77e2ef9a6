"""Run configuration: TOML file plus ``--set section.key=value`` overrides -> frozen dataclasses.

Unknown sections or keys and values of the wrong type are rejected with a one-line message naming
the key. Rank-local: every rank parses the same file, so every rank raises the same error.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from distgn.errors import InputError


@dataclass(frozen=True)
class DomainConfig:
    """``[domain]``: kind "interval" | "box" | "polygon"; bounds or vertices."""

    kind: str = "interval"
    bounds: list = field(default_factory=lambda: [0.0, 1.0])
    vertices: list = field(default_factory=list)


@dataclass(frozen=True)
class NetworkConfig:
    """``[network]``: size and initialisation of the network."""

    n: int = 64
    init: str = "uniform"
    file: str = "params.h5"
    seed: int = 0
    orientation: str = "positive"
    output_bias: bool = False


@dataclass(frozen=True)
class TargetConfig:
    """``[target]``: built-in target name or ``package.module:function``; "auto" is the
    dimension's first built-in (step, line_jump, smooth)."""

    name: str = "auto"


@dataclass(frozen=True)
class OutputConfig:
    """``[output]``: where results go."""

    path: str = "run.h5"


@dataclass(frozen=True)
class SolverConfig:
    """``[solver]``: linear solver for the SPD systems with A, H, G."""

    kind: str = "hss"
    matrix: str = "A"
    tol: float = 1e-14
    leaf_size: int = 64
    ordering: str = "auto"
    matrix_free: bool = False
    rtol: float = 1e-10
    max_iter: int = 1000
    petsc_options: str = ""
    sample_size: int = 0
    seed: int = 1
    compensation: str = "auto"
    basis: str = "auto"


@dataclass(frozen=True)
class AnalyzeConfig:
    """``[analyze]``: the matrix study."""

    sizes: list = field(default_factory=lambda: [64, 128, 256, 512, 1024])
    tolerances: list = field(default_factory=lambda: [1e-8, 1e-12])
    leaf_size: int = 64
    plots: str = "analysis"


@dataclass(frozen=True)
class TrainConfig:
    """``[train]``: the optimizer."""

    method: str = "sggn"
    variant: str = "alternating"
    max_iter: int = 200
    max_seconds: float = 3600.0
    tol: float = 1e-12
    patience: int = 5
    gtol: float = 0.0
    learning_rate: float = 1e-3
    lr_decay: float = 1.0
    drop_tol: float = 1e-4
    deterministic: bool = True
    log_every: int = 1
    checkpoint_every: int = 10


@dataclass(frozen=True)
class Config:
    """A whole run."""

    domain: DomainConfig = field(default_factory=DomainConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    analyze: AnalyzeConfig = field(default_factory=AnalyzeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a TOML file (or the defaults when ``path`` is None) and apply ``section.key=value``."""
    data: dict = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise InputError(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    for item in overrides:
        key, sep, text = item.partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise InputError(f"--set {item!r} must look like section.key=value")
        data.setdefault(parts[0], {})[parts[1]] = _parse_value(text.strip())
    return from_dict(data)


def from_dict(data: dict) -> Config:
    """Validate a nested dict against the schema and build the Config."""
    sections = typing.get_type_hints(Config)
    built = {}
    for name, values in data.items():
        if name not in sections:
            raise InputError(f"unknown config section [{name}] (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise InputError(f"config section [{name}] must be a table")
        built[name] = _build_section(name, sections[name], dict(values))
    return Config(**built)


def to_dict(config: Config) -> dict:
    """The configuration as a nested dict (for HDF5 attributes and JSON)."""
    return dataclasses.asdict(config)


def _build_section(name: str, cls: type, values: dict) -> object:
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in hints:
            raise InputError(
                f"unknown config key {name}.{key} (known: {', '.join(hints)})"
            )
        values[key] = _check_type(f"{name}.{key}", hints[key], value)
    return cls(**values)


def _check_type(key: str, expected: object, value: object) -> object:
    if isinstance(expected, types.GenericAlias) or expected is list:
        if not isinstance(value, list):
            raise InputError(f"config key {key} = {value!r} must be a list")
        return value
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is bool and not isinstance(value, bool):
        raise InputError(f"config key {key} = {value!r} must be true or false")
    if expected is int and isinstance(value, bool):
        raise InputError(f"config key {key} = {value!r} must be an integer")
    if not isinstance(value, expected):  # type: ignore[arg-type]
        raise InputError(
            f"config key {key} = {value!r} must be of type {expected.__name__}"  # type: ignore[union-attr]
        )
    return value


def _parse_value(text: str) -> object:
    """A TOML value (number, bool, string, array), or the bare text as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text

"""Run configuration: TOML file plus ``--set section.key=value`` overrides -> frozen dataclasses.

Unknown sections or keys, values of the wrong type, choices not in their list and numbers out of
range (``RANGES``) are rejected with a one-line message naming the one bad key. ``to_toml`` writes a
configuration back as TOML text (stored in every output file) that ``loads`` reads again.
Rank-local: every rank parses the same file, so every rank raises the same error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
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
    """``[output]``: where results go. ``path = ""``: ``<config stem>.<subcommand>.h5`` in the
    current directory (``run.<subcommand>.h5`` without a config file)."""

    path: str = ""


@dataclass(frozen=True)
class CheckpointConfig:
    """``[checkpoint]`` of ``train``: ``path`` (``""``: ``<output.path stem>.ckpt.h5``), every
    ``every`` iterations (0: only on a signal), ``keep`` newest files, and also when ``seconds``
    of wall time passed since the last one (0: off)."""

    path: str = ""
    every: int = 10
    keep: int = 2
    seconds: float = 0.0


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
    regularization: float = 0.0


@dataclass(frozen=True)
class AnalyzeConfig:
    """``[analyze]``: the matrix study; ``plots`` is the PNG path prefix, relative to the output
    file's folder (``""``: the output file's name without ``.h5``)."""

    sizes: list = field(default_factory=lambda: [64, 128, 256, 512, 1024])
    tolerances: list = field(default_factory=lambda: [1e-8, 1e-12])
    leaf_size: int = 64
    plots: str = ""


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
    damping: float = 1e-3
    reseat: bool = True
    hops: int = 0
    hop_tol: float = 1e-6
    grow_from: int = 0
    growth: int = 4
    grow_spread: float = 0.05
    stage_iter: int = 0
    deterministic: bool = True
    log_every: int = 1

    def stage_sizes(self, n: int) -> list[int]:
        """The network sizes of the stages of a run of ``n`` neurons: ``grow_from, grow_from *
        growth, ...`` up to ``n`` (the last one is n); ``[n]`` without staged growth
        (``grow_from = 0``) or when ``grow_from >= n``."""
        sizes = [self.grow_from] if 0 < self.grow_from < n else [n]
        while sizes[-1] < n:
            sizes.append(min(sizes[-1] * self.growth, n))
        return sizes


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
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)


# Allowed values: choices of string keys, ranges of numbers (lo, lo_open, hi, hi_open); None is
# unbounded. Checked for every key, so a value out of range never reaches the work. The solver
# back ends check their own choices (solver.kind, ordering, compensation), before any work too.
CHOICES: dict[str, tuple[str, ...]] = {
    "domain.kind": ("interval", "box", "polygon"),
    "network.init": ("uniform", "random", "file"),
    "network.orientation": ("positive", "alternating", "random"),
    "solver.matrix": ("A", "H", "G"),
    "train.method": ("sggn", "adam", "bfgs", "lm"),
    "train.variant": ("alternating", "varpro"),
}
RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "network.n": (1, False, None, False),
    "network.seed": (0, False, 2**60, True),
    "solver.tol": (0.0, True, 1.0, True),
    "solver.rtol": (0.0, True, 1.0, True),
    "solver.regularization": (0.0, False, 1.0, True),
    "solver.leaf_size": (1, False, None, False),
    "solver.max_iter": (1, False, None, False),
    "solver.sample_size": (0, False, None, False),
    "solver.seed": (0, False, None, False),
    "analyze.sizes": (1, False, None, False),
    "analyze.tolerances": (0.0, True, 1.0, True),
    "analyze.leaf_size": (1, False, None, False),
    "train.max_iter": (0, False, None, False),
    "train.max_seconds": (0.0, True, None, False),
    "train.tol": (0.0, False, None, False),
    "train.patience": (1, False, None, False),
    "train.gtol": (0.0, False, None, False),
    "train.learning_rate": (0.0, True, None, False),
    "train.lr_decay": (0.0, True, 1.0, False),
    "train.drop_tol": (0.0, False, 1.0, True),
    "train.damping": (0.0, False, None, False),
    "train.hops": (0, False, None, False),
    "train.hop_tol": (0.0, False, 1.0, True),
    "train.grow_from": (0, False, None, False),
    "train.growth": (2, False, None, False),
    "train.grow_spread": (0.0, True, None, False),
    "train.stage_iter": (0, False, None, False),
    "train.log_every": (1, False, None, False),
    "checkpoint.every": (0, False, None, False),
    "checkpoint.keep": (1, False, None, False),
    "checkpoint.seconds": (0.0, False, None, False),
}
# Lists of numbers whose items must be integers.
LIST_ITEMS = {"analyze.sizes": int}
# Keys that may be infinite (no limit); every other float must be finite.
UNBOUNDED = ("train.max_seconds", "checkpoint.seconds")
# Old names that still work: train.checkpoint_every is checkpoint.every.
ALIASES = {("train", "checkpoint_every"): ("checkpoint", "every")}


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
    data = _resolve_aliases(data)
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


def to_toml(config: Config) -> str:
    """The whole configuration (defaults included) as TOML text that ``loads`` reads back."""
    lines = []
    for section, values in to_dict(config).items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def loads(text: str, origin: str) -> Config:
    """A configuration from TOML text (``origin`` names it in errors)."""
    try:
        return from_dict(tomllib.loads(text))
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{origin} is not valid TOML: {exc}") from None


def problem_signature(config: Config) -> dict:
    """What makes two runs the same problem: domain, target, neurons, output bias."""
    return {
        "domain": to_dict(config)["domain"],
        "target": config.target.name,
        "n": config.network.n if config.network.init != "file" else None,
        "output_bias": config.network.output_bias,
    }


def problem_id(config: Config) -> str:
    """A short hash of ``problem_signature`` (stored in every file; compared before a file is
    replaced or a checkpoint is restarted from)."""
    text = json.dumps(problem_signature(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return (
            '"'
            + "".join(
                "\\" + ch
                if ch in '"\\'
                else f"\\u{ord(ch):04x}"
                if ord(ch) < 0x20 or ord(ch) == 0x7F
                else ch
                for ch in value
            )
            + '"'
        )
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


def _resolve_aliases(data: dict) -> dict:
    data = {
        name: dict(values) if isinstance(values, dict) else values for name, values in data.items()
    }
    for (section, key), (new_section, new_key) in ALIASES.items():
        if isinstance(data.get(section), dict) and key in data[section]:
            value = data[section].pop(key)
            target = data.setdefault(new_section, {})
            if isinstance(target, dict):
                if new_key in target and target[new_key] != value:
                    raise InputError(
                        f"config keys {section}.{key} = {value!r} and "
                        f"{new_section}.{new_key} = {target[new_key]!r} disagree "
                        f"({section}.{key} is the old name of "
                        f"{new_section}.{new_key})"
                    )
                target[new_key] = value
    return data


def _build_section(name: str, cls: type, values: dict) -> object:
    hints = typing.get_type_hints(cls)
    for key, value in values.items():
        if key not in hints:
            raise InputError(f"unknown config key {name}.{key} (known: {', '.join(hints)})")
        values[key] = _check_type(f"{name}.{key}", hints[key], value)
        _check_value(f"{name}.{key}", values[key])
    if name == "domain":
        _check_bounds(values)
    return cls(**values)


def _check_value(key: str, value: object) -> None:
    """Raise InputError naming ``key`` for a choice not in ``CHOICES`` or a number out of
    ``RANGES`` (every element of a list)."""
    if key in CHOICES and value not in CHOICES[key]:
        raise InputError(f"config key {key} = {value!r} is not one of {', '.join(CHOICES[key])}")
    items = value if isinstance(value, list) else [value]
    if key in RANGES and isinstance(value, list):
        if not value:
            raise InputError(f"config key {key} = [] must not be empty")
        kind = LIST_ITEMS.get(key, float)
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, kind)):
                raise InputError(
                    f"config key {key} = {value!r} must be a list of "
                    f"{'integers' if kind is int else 'numbers'}"
                )
    for item in items:
        if (
            isinstance(item, float)
            and not math.isfinite(item)
            and not (key in UNBOUNDED and item == math.inf)
        ):
            raise InputError(f"config key {key} = {value!r} must be finite")
        if key not in RANGES:
            continue
        lo, lo_open, hi, hi_open = RANGES[key]
        below = lo is not None and (item < lo or (lo_open and item == lo))
        above = hi is not None and (item > hi or (hi_open and item == hi))
        if below or above:
            if lo is not None and hi is not None:
                bound = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
            else:
                bound = f"{'>' if lo_open else '>='} {lo}"
            raise InputError(f"config key {key} = {value!r} must be {bound}")


def _check_bounds(values: dict) -> None:
    """``domain.bounds``: numbers, each pair ordered (an interval ``[L, R]`` or a box
    ``[[x0, x1], ...]``); ``domain.vertices``: pairs of numbers."""
    bounds = values.get("bounds")
    if bounds is not None:
        pairs = bounds if bounds and all(isinstance(p, list) for p in bounds) else [bounds]
        for pair in pairs:
            if len(pair) != 2 or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                for x in pair
            ):
                raise InputError(
                    f"config key domain.bounds = {bounds!r} must be [L, R] or "
                    "[[x0, x1], [y0, y1], ...] with finite numbers"
                )
            if not pair[0] < pair[1]:
                raise InputError(
                    f"config key domain.bounds = {bounds!r} is not ordered: "
                    f"{pair[0]} must be < {pair[1]}"
                )
    vertices = values.get("vertices")
    if vertices is not None and not all(
        isinstance(v, list)
        and len(v) == 2
        and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v
        )
        for v in vertices
    ):
        raise InputError(
            f"config key domain.vertices = {vertices!r} must be a list of "
            "[x, y] pairs of finite numbers"
        )


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

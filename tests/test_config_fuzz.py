"""Property tests of the config parser (hypothesis): no input crashes with anything but a one-line
InputError, no value out of range is accepted, and the TOML text stored in files reads back to
the same configuration."""

from __future__ import annotations

import dataclasses
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distgn.config import Config, from_dict, load_config, loads, to_toml
from distgn.errors import InputError

# What a valid config satisfies, written out independently of distgn.config's tables.
VALID = {
    "network.n": lambda v: v >= 1,
    "network.seed": lambda v: v >= 0,
    "solver.tol": lambda v: 0 < v < 1,
    "solver.rtol": lambda v: 0 < v < 1,
    "solver.leaf_size": lambda v: v >= 1,
    "solver.max_iter": lambda v: v >= 1,
    "solver.sample_size": lambda v: v >= 0,
    "solver.seed": lambda v: v >= 0,
    "analyze.sizes": lambda v: len(v) > 0 and all(isinstance(x, int) and x >= 1 for x in v),
    "analyze.tolerances": lambda v: len(v) > 0 and all(0 < x < 1 for x in v),
    "analyze.leaf_size": lambda v: v >= 1,
    "train.max_iter": lambda v: v >= 0,
    "train.max_seconds": lambda v: v > 0,
    "train.tol": lambda v: 0 <= v < math.inf,
    "train.patience": lambda v: v >= 1,
    "train.gtol": lambda v: 0 <= v < math.inf,
    "train.learning_rate": lambda v: 0 < v < math.inf,
    "train.lr_decay": lambda v: 0 < v <= 1,
    "train.drop_tol": lambda v: 0 <= v < 1,
    "train.damping": lambda v: 0 <= v < math.inf,
    "train.log_every": lambda v: v >= 1,
    "train.method": lambda v: v in ("sggn", "adam", "bfgs", "lm"),
    "train.variant": lambda v: v in ("alternating", "varpro"),
    "checkpoint.every": lambda v: v >= 0,
    "checkpoint.keep": lambda v: v >= 1,
    "checkpoint.seconds": lambda v: v >= 0,
    "domain.kind": lambda v: v in ("interval", "box", "polygon"),
}
SCHEMA = {
    f.name: [g.name for g in dataclasses.fields(f.default_factory())]
    for f in dataclasses.fields(Config)
}
KEYS = [f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys]

numbers = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(numbers, st.booleans(), st.text(max_size=12))
values = st.one_of(
    scalars, st.lists(scalars, max_size=4), st.lists(st.lists(numbers, max_size=3), max_size=3)
)
keys = st.one_of(st.sampled_from(KEYS), st.from_regex(r"[a-z]{1,8}\.[a-z_]{1,12}", fullmatch=True))


def assert_valid(config: Config) -> None:
    data = dataclasses.asdict(config)
    for key, check in VALID.items():
        section, name = key.split(".")
        value = data[section][name]
        assert check(value), f"{key} = {value!r} accepted"
    for section, entries in data.items():
        for name, value in entries.items():
            if isinstance(value, float):
                assert not math.isnan(value), f"{section}.{name} = nan accepted"
    bounds = config.domain.bounds
    pairs = bounds if bounds and isinstance(bounds[0], list) else [bounds]
    assert all(p[0] < p[1] for p in pairs), f"unordered domain.bounds {bounds!r} accepted"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=6))
def test_dicts_are_refused_with_one_line_or_accepted_in_range(entries):
    data: dict = {}
    for key, value in entries.items():
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    try:
        config = from_dict(data)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert_valid(config)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(KEYS), st.text(max_size=20))
def test_overrides_are_refused_with_one_line_or_accepted_in_range(key, text):
    try:
        config = load_config(None, [f"{key}={text}"])
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert_valid(config)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(KEYS), values, max_size=6))
def test_stored_toml_text_reads_back_to_the_same_config(entries):
    data: dict = {}
    for key, value in entries.items():
        section, name = key.split(".", 1)
        data.setdefault(section, {})[name] = value
    try:
        config = from_dict(data)
    except InputError:
        return
    assert loads(to_toml(config), "stored") == config


def test_list_items_are_checked():
    for text, message in [
        ("analyze.sizes=[64.5]", "list of integers"),
        ("analyze.sizes=[64, true]", "list of integers"),
        ('analyze.tolerances=["a"]', "list of numbers"),
    ]:
        try:
            load_config(None, [text])
        except InputError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"{text} accepted")

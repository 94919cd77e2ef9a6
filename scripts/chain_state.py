"""State of a training run for the next link of a restart chain (slurm/chain.sbatch).

    python scripts/chain_state.py CONFIG [distgn options, of which --set key=value are read]

prints one line: ``finished OUTPUT`` (the run file has the root attribute ``finished = 1``),
``restart CHECKPOINT`` (the newest checkpoint exists) or ``start`` (nothing to continue from).
Paths are resolved like ``distgn train`` does: ``output.path``, ``checkpoint.path`` (default: the
output path with ``.ckpt.h5`` in place of its suffix), ``--set`` overrides applied.
"""

from __future__ import annotations

import sys
from pathlib import Path

import h5py

from distgn.config import load_config


def overrides(options: list[str]) -> list[str]:
    """The ``key=value`` items of ``--set key=value`` / ``--set=key=value`` in ``options``."""
    items = []
    for i, token in enumerate(options):
        if token == "--set" and i + 1 < len(options):
            items.append(options[i + 1])
        elif token.startswith("--set="):
            items.append(token[len("--set=") :])
    return items


def paths(config_path: str, options: list[str]) -> tuple[Path, Path]:
    """Output and newest-checkpoint paths of the run."""
    config = load_config(config_path, overrides(options))
    output = Path(config.output.path)
    section = getattr(config, "checkpoint", None)
    checkpoint = getattr(section, "path", "") or str(output.with_suffix("")) + ".ckpt.h5"
    return output, Path(checkpoint)


def finished(path: Path) -> bool:
    """True when ``path`` is a run file that ``distgn train`` marked finished."""
    if not path.is_file():
        return False
    with h5py.File(path, "r") as fh:
        return int(fh.attrs.get("finished", 0)) == 1


def main(argv: list[str]) -> int:
    """Print the state line; exit status 2 on a bad command line."""
    if not argv:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    output, checkpoint = paths(argv[0], argv[1:])
    if finished(output):
        print(f"finished {output}")
    elif checkpoint.is_file():
        print(f"restart {checkpoint}")
    else:
        print("start")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

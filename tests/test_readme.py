"""The README's commands work as written: every command of the "Quick start" (but its
site-module install) and "Running" sections runs, in order, in a fresh folder holding the
examples (shrunk: fewer iterations and neurons), with ``.venv/bin`` on PATH as ``source
.venv/bin/activate`` puts it. Nothing is written into the source tree."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENV, needs_mpiexec

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("## Quick start", "## Running")
# Shrinking of the copied examples: (file, pattern, replacement).
SHRINK = [
    ("demo.toml", r"max_iter = 40", "max_iter = 4"),
    ("demo.toml", r"sizes = \[64, 128, 256, 512, 1024\]", "sizes = [32, 64]"),
    ("solve-1d.toml", r"n = 16384", "n = 512"),
    ("train-1d.toml", r"max_iter = 200", "max_iter = 4"),
]
RUN_AS_IS = ("mpiexec", "distgn")  # "make setup" was done; "source" is emulated by PATH


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for heading in SECTIONS:
        start = text.index(heading)
        ends = [text.find(mark, start + 1) for mark in ("\n## ", "\n### HPC install")]
        end = min(e for e in ends if e > 0)
        for line in text[start:end].splitlines():
            if line.startswith("    ") and not line.startswith("     "):
                command = line.strip()
                if command.split()[0] in ("make", "source"):
                    assert command in ("make setup", "source .venv/bin/activate"), command
                    continue
                if "SUBCOMMAND" in command:  # the synopsis, not a command
                    continue
                commands.append(command)
    return commands


def test_the_readme_lists_the_newcomer_path():
    commands = readme_commands()
    for sub in ("train", "analyze", "solve", "inspect", "assemble"):
        assert any(f"distgn {sub} " in c for c in commands), sub
    assert all(c.split()[0] in RUN_AS_IS for c in commands), commands


@needs_mpiexec
@pytest.mark.timeout(600)
def test_readme_commands_run_as_written(tmp_path):
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for name, pattern, replacement in SHRINK:
        path = tmp_path / "examples" / name
        text, count = re.subn(pattern, replacement, path.read_text())
        assert count == 1, (name, pattern)
        path.write_text(text)
    before = sorted(p.name for p in ROOT.iterdir())
    env = {**ENV, "PATH": f"{Path(sys.executable).parent}:{ENV['PATH']}"}
    for command in readme_commands():
        proc = subprocess.run(
            shlex.split(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-2000:]}"
        assert "Traceback" not in proc.stderr
    for name in (
        "demo.train.h5",
        "demo.train.ckpt.h5",
        "demo.analyze.h5",
        "demo.analyze.png",
        "solve-1d.solve.h5",
        "demo.assemble.h5",
        "bfgs.h5",
    ):
        assert (tmp_path / name).exists(), name
    assert sorted(p.name for p in ROOT.iterdir()) == before

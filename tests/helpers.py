"""Shared test helpers: install a plugin package into a private directory , run Python there, train a recipe."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def install_package(src: Path, target: Path) -> None:
    """pip-install a plugin package (no deps, no network) into ``target``, as a user's pip would."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
    )


def run_python(code: str, extra_path: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    if extra_path is not None:
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), full_env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300)


def train_recipe(recipe_file: Path, run_dir: Path, overrides: list[str]) -> tuple[list[float], dict]:
    """Train a recipe into run_dir; the logged training losses (in order) and the final record."""
    import json

    from capslab.recipe import load_recipe
    from capslab.train import train

    record = train(load_recipe(recipe_file, overrides), run_dir)
    rows = map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    return [r["loss"] for r in rows if r.get("kind") == "train"], record

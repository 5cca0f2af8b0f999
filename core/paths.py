"""Where the project keeps its local state: the checkout's `.data/` folder."""

from __future__ import annotations

from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def default_data_dir() -> Path:
    """The embedded registry, the model cache, the review queue and `make up`'s Ray live here."""
    return PROJECT_ROOT / ".data"

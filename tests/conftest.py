"""Shared test helpers: the `../shared` folder (fixtures and media) and the tiny FBK reference configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FAMA_SHARED_DIR", ROOT.parent / "shared"))


def require_shared(*parts: str) -> Path:
    """Path under `../shared`; fails loudly under CI=true when missing, otherwise skips with a reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        reason = f"{path} is missing (the shared test material sits beside the checkout in CI)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def fbk_reference_configs() -> list[str]:
    """Names of every reference config folder in ../shared/fixtures/fbk_reference (more may be added)."""
    base = SHARED / "fixtures" / "fbk_reference"
    if not base.is_dir():
        return ["<missing>"]
    names = sorted(p.name for p in base.iterdir() if p.is_dir() and (p / "outputs.npz").exists())
    return names or ["<missing>"]


@pytest.fixture
def shared_dir() -> Path:
    return require_shared()

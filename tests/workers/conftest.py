"""Fixtures shared by the model tests: the tiny preset, built once per test session."""

from pathlib import Path

import pytest

from workers.tiny_models import build_tiny


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a fresh build of the tiny preset (cascade, captioner, embedder)."""
    folder = tmp_path_factory.mktemp("models")
    build_tiny(folder)
    return folder

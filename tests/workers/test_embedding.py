"""Image and text embeddings on the tiny preset: unit vectors, stable, and far enough apart to search."""

from __future__ import annotations

import io
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest

from core.presets import PRESETS, get_preset
from workers.embedding import embed_images, embed_texts
from workers.pipelines import ModelsNotFoundError
from workers.vision_models import Embedder, get_embedder, load_embedder

TEXTS = [
    "a corgi wearing a golden crown",
    "a red car",
    "a blue car",
    "two cats sleeping on a sofa",
    "a dog",
    "a cat",
    "sunset over the sea",
    "an oil painting of a forest at night",
    "a robot reading a book in a library",
    "the moon",
]


def varied_images(count: int = 30, size: int = 96, seed: int = 7) -> list[PIL.Image.Image]:
    """Solid colours, shapes on colours, noise, gradients and scribbles, each with random colours."""
    rng = random.Random(seed)
    noise = np.random.default_rng(seed)

    def colour() -> tuple[int, int, int]:
        return (rng.randrange(256), rng.randrange(256), rng.randrange(256))

    images: list[PIL.Image.Image] = []
    for index in range(count):
        kind = index % 5
        image = PIL.Image.new("RGB", (size, size), colour())
        draw = PIL.ImageDraw.Draw(image)
        if kind == 1:
            x, y = rng.randrange(size // 2), rng.randrange(size // 2)
            box = (x, y, x + rng.randrange(10, size // 2), y + rng.randrange(10, size // 2))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour())
        elif kind == 2:
            image = PIL.Image.fromarray(noise.integers(0, 256, (size, size, 3), dtype=np.uint8))
        elif kind == 3:
            ramp = np.linspace(0.0, 1.0, size)
            ramp = ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None]
            start, end = np.array(colour(), dtype=float), np.array(colour(), dtype=float)
            pixels = (start * (1 - ramp) + end * ramp) * np.ones((size, size, 1))
            image = PIL.Image.fromarray(pixels.astype(np.uint8))
        elif kind == 4:
            for _ in range(6):
                ends = [(rng.randrange(size), rng.randrange(size)) for _ in range(2)]
                draw.line(ends, fill=colour(), width=rng.randrange(2, 8))
        images.append(image)
    return images


@pytest.fixture(scope="module")
def embedder(models_dir: Path) -> Embedder:
    return get_embedder("tiny", models_dir)


@pytest.fixture(scope="module")
def images() -> list[PIL.Image.Image]:
    return varied_images()


@pytest.fixture(scope="module")
def image_vectors(embedder: Embedder, images: list[PIL.Image.Image]) -> np.ndarray:
    return np.array(embed_images(embedder, images))


def _png_copy(image: PIL.Image.Image) -> PIL.Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with PIL.Image.open(io.BytesIO(buffer.getvalue())) as opened:
        return opened.convert("RGB")


def test_vectors_have_the_presets_length_and_tag(embedder: Embedder, image_vectors: np.ndarray) -> None:
    preset = get_preset("tiny")
    assert embedder.dim == preset.embedder.dim == 64
    assert embedder.model_id == preset.embedder_id == "tiny-clip-1"
    assert image_vectors.shape == (30, 64)
    assert len(embed_texts(embedder, ["a dog"])[0]) == 64


def test_vectors_are_unit_float32(embedder: Embedder, image_vectors: np.ndarray) -> None:
    text_vectors = embed_texts(embedder, TEXTS)
    for vector in [*image_vectors.tolist(), *text_vectors]:
        assert all(isinstance(value, float) for value in vector)
        # Each value is exactly a float32, as stored in a pgvector column.
        assert np.array_equal(np.array(vector, dtype=np.float32).astype(np.float64), np.array(vector))
        assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def test_the_same_image_gives_the_same_vector(
    embedder: Embedder, images: list[PIL.Image.Image], image_vectors: np.ndarray
) -> None:
    again = np.array(embed_images(embedder, [_png_copy(images[0]), images[0].convert("RGBA")]))
    assert again @ image_vectors[0] == pytest.approx([1.0, 1.0], abs=1e-5)


def test_each_image_is_its_own_nearest_neighbour(image_vectors: np.ndarray) -> None:
    similarity = image_vectors @ image_vectors.T
    assert list(similarity.argmax(axis=1)) == list(range(len(image_vectors)))
    off_diagonal = similarity[~np.eye(len(image_vectors), dtype=bool)]
    # Clearly apart, not merely distinct: random CLIP weights at their default scale give ~0.999 here.
    assert off_diagonal.max() < 0.99


def test_a_resized_copy_finds_its_original(
    embedder: Embedder, images: list[PIL.Image.Image], image_vectors: np.ndarray
) -> None:
    queries = np.array(embed_images(embedder, [image.resize((160, 160)) for image in images]))
    assert list((queries @ image_vectors.T).argmax(axis=1)) == list(range(len(images)))


def test_different_texts_give_different_vectors(embedder: Embedder) -> None:
    vectors = np.array(embed_texts(embedder, TEXTS))
    similarity = vectors @ vectors.T
    assert similarity[~np.eye(len(TEXTS), dtype=bool)].max() < 0.95
    assert np.array(embed_texts(embedder, [TEXTS[3]]))[0] @ vectors[3] == pytest.approx(1.0, abs=1e-5)


def test_a_batch_gives_the_vectors_of_one_at_a_time(
    embedder: Embedder, images: list[PIL.Image.Image], image_vectors: np.ndarray
) -> None:
    one_by_one = np.array([embed_images(embedder, [image])[0] for image in images[:8]])
    np.testing.assert_allclose(one_by_one, image_vectors[:8], atol=1e-5)
    # Texts of different lengths are padded in a batch; the padding must not leak into a vector.
    batch = np.array(embed_texts(embedder, TEXTS))
    np.testing.assert_allclose(np.array([embed_texts(embedder, [text])[0] for text in TEXTS]), batch, atol=1e-5)


def test_text_beyond_the_context_is_cut_off(embedder: Embedder) -> None:
    long_text = " ".join(["a corgi wearing a golden crown"] * 40)
    (vector,) = embed_texts(embedder, [long_text])
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-5)


def _slim(width: int, height: int) -> list[PIL.Image.Image]:
    return [PIL.Image.new("RGB", (width, height))]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda e: embed_images(e, []), "images"),
        (lambda e: embed_images(e, PIL.Image.new("RGB", (8, 8))), "images"),
        (lambda e: embed_images(e, [PIL.Image.new("RGB", (8, 8)), b"png"]), "images[1]"),
        (lambda e: embed_images(e, _slim(1, 100)), "images[0]"),
        (lambda e: embed_images(e, [PIL.Image.new("RGB", (8, 8))] * 65), "images"),
        (lambda e: embed_texts(e, []), "texts"),
        (lambda e: embed_texts(e, "a dog"), "texts"),
        (lambda e: embed_texts(e, ["a dog", "  "]), "texts[1]"),
        (lambda e: embed_texts(e, [42]), "texts[0]"),
        (lambda e: embed_texts(e, ["x" * 4001]), "texts[0]"),
    ],
)
def test_invalid_input_raises_value_error_naming_it(
    call: Callable[[Embedder], Any], name: str, embedder: Embedder
) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}\W"):
        call(embedder)


def test_missing_tiny_models_name_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(ModelsNotFoundError, match="imagen-queue models build-tiny"):
        load_embedder(get_preset("tiny"), tmp_path)


def test_get_embedder_loads_once_per_process(embedder: Embedder, models_dir: Path) -> None:
    assert get_embedder("tiny", models_dir) is embedder
    assert embedder.device == "cpu" or embedder.device == "cuda"
    assert embedder.load_seconds > 0


def test_every_preset_names_an_embedder_with_its_own_tag() -> None:
    assert get_preset("deepfloyd-if").embedder.source == "openai/clip-vit-base-patch32"
    assert get_preset("deepfloyd-if").embedder.dim == 512
    tags = [preset.embedder_id for preset in PRESETS.values()]
    assert len(set(tags)) == len(tags)

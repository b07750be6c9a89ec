"""Captions on the tiny preset: never empty, deterministic, bounded, and bad parameters named."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest

from core.presets import get_preset
from workers.captioning import caption_images
from workers.pipelines import ModelsNotFoundError
from workers.vision_models import Captioner, get_captioner, load_captioner


def _images() -> list[PIL.Image.Image]:
    """A few different kinds of picture, in the modes uploads come in."""
    solid = PIL.Image.new("RGB", (64, 64), (200, 30, 40))
    shape = PIL.Image.new("RGB", (320, 200), (20, 40, 200))
    PIL.ImageDraw.Draw(shape).ellipse((40, 30, 200, 180), fill=(250, 250, 20))
    noise = PIL.Image.fromarray(np.random.default_rng(3).integers(0, 256, (128, 128, 3), dtype=np.uint8))
    ramp = np.linspace(0, 255, 256, dtype=np.uint8)
    gradient = PIL.Image.fromarray(np.broadcast_to(ramp, (256, 256)).copy(), mode="L")
    black = PIL.Image.new("RGBA", (1024, 1024), (0, 0, 0, 255))
    white = PIL.Image.new("P", (50, 80), 255)
    return [solid, shape, noise, gradient, black, white]


@pytest.fixture(scope="module")
def captioner(models_dir: Path) -> Captioner:
    return get_captioner("tiny", models_dir)


@pytest.fixture(scope="module")
def images() -> list[PIL.Image.Image]:
    return _images()


@pytest.fixture(scope="module")
def captions(captioner: Captioner, images: list[PIL.Image.Image]) -> list[str]:
    return caption_images(captioner, images, max_new_tokens=12)


def test_every_image_gets_a_non_empty_caption(captions: list[str], images: list[PIL.Image.Image]) -> None:
    assert len(captions) == len(images)
    for caption in captions:
        assert caption
        assert caption == caption.strip()
    # The captioner looks at the image: not every picture reads the same.
    assert len(set(captions)) > 1


def test_a_single_token_caption_is_still_text(captioner: Captioner, images: list[PIL.Image.Image]) -> None:
    for caption in caption_images(captioner, images, max_new_tokens=1):
        assert caption
        assert len(caption.split()) == 1


def test_captions_stay_within_max_new_tokens(captioner: Captioner, images: list[PIL.Image.Image]) -> None:
    # Each generated token adds at most one word (word pieces join the word before them).
    for caption in caption_images(captioner, images[:2], max_new_tokens=5):
        assert len(caption.split()) in range(1, 6)


def test_the_same_image_gets_the_same_caption(
    captioner: Captioner, images: list[PIL.Image.Image], captions: list[str]
) -> None:
    assert caption_images(captioner, images, max_new_tokens=12) == captions
    # A caption depends on its image only, not on the others captioned with it.
    assert caption_images(captioner, [images[2]], max_new_tokens=12) == [captions[2]]
    assert caption_images(captioner, [images[2].copy(), images[2]], max_new_tokens=12) == [captions[2]] * 2


def test_beam_search_gives_deterministic_non_empty_captions(
    captioner: Captioner, images: list[PIL.Image.Image]
) -> None:
    beams = caption_images(captioner, images, max_new_tokens=12, num_beams=4)
    assert len(beams) == len(images)
    assert all(beams)
    assert caption_images(captioner, images, max_new_tokens=12, num_beams=4) == beams


def _slim(width: int, height: int) -> list[PIL.Image.Image]:
    return [PIL.Image.new("RGB", (width, height))]


_ONE = [PIL.Image.new("RGB", (32, 32), (10, 20, 30))]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda c: caption_images(c, _ONE, max_new_tokens=0), "max_new_tokens"),
        (lambda c: caption_images(c, _ONE, max_new_tokens=101), "max_new_tokens"),
        (lambda c: caption_images(c, _ONE, max_new_tokens=2.5), "max_new_tokens"),
        (lambda c: caption_images(c, _ONE, max_new_tokens=True), "max_new_tokens"),
        (lambda c: caption_images(c, _ONE, num_beams=0), "num_beams"),
        (lambda c: caption_images(c, _ONE, num_beams=9), "num_beams"),
        (lambda c: caption_images(c, _ONE, num_beams="2"), "num_beams"),
        (lambda c: caption_images(c, []), "images"),
        (lambda c: caption_images(c, _ONE[0]), "images"),
        (lambda c: caption_images(c, [*_ONE, "cat.png"]), "images[1]"),
        (lambda c: caption_images(c, _slim(2000, 10)), "images[0]"),
    ],
)
def test_invalid_input_raises_value_error_naming_it(
    call: Callable[[Captioner], Any], name: str, captioner: Captioner
) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}\W"):
        call(captioner)


def test_missing_tiny_models_name_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(ModelsNotFoundError, match="imagen-queue models build-tiny"):
        load_captioner(get_preset("tiny"), tmp_path)


def test_get_captioner_loads_once_per_process(captioner: Captioner, models_dir: Path) -> None:
    assert get_captioner("tiny", models_dir) is captioner
    assert captioner.load_seconds > 0


def test_presets_name_their_captioner() -> None:
    assert get_preset("tiny").captioner.source == "tiny/caption"
    assert get_preset("deepfloyd-if").captioner.source == "microsoft/git-base-coco"

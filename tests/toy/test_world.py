"""The toy world and its checker: what the toy preset's tests and bench/quality.py score generations with."""

import random

import numpy as np
import PIL.Image
import pytest

from training import world
from training.checker import read


def _pixels(scenes: list[world.Scene], resolution: int) -> list[np.ndarray]:
    batch = (world.render(scenes, resolution) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return list(batch)


@pytest.mark.parametrize("resolution", [32, 128])
def test_the_checker_reads_true_scenes(resolution: int) -> None:
    rng = random.Random(7)
    scenes = world.all_scenes() + [world.random_scene(rng) for _ in range(300)]
    wrong = [
        (scene, reading)
        for scene, pixels in zip(scenes, _pixels(scenes, resolution), strict=True)
        if not (reading := read(pixels)).matches(scene)["all"] or reading.background != scene.background
    ]
    # At 32 px a small triangle's bounding box is a few pixels, and a rare one reads as a circle.
    assert len(wrong) <= (0 if resolution == 128 else len(scenes) // 50), wrong[:5]


def test_the_checker_sees_no_shape_on_a_plain_image_and_reads_pil_images() -> None:
    blank = PIL.Image.new("RGB", (64, 64), world.BACKGROUNDS["dark"])
    reading = read(blank)
    assert reading.shape is None and reading.colour is None and reading.background == "dark"
    (pixels,) = _pixels([world.Scene("orange", "triangle", "right", "light")], 128)
    reading = read(PIL.Image.fromarray(pixels))
    assert (reading.colour, reading.shape, reading.position) == ("orange", "triangle", "right")


def test_a_scene_renders_the_same_at_every_call_and_agrees_across_resolutions() -> None:
    scene = world.Scene("blue", "square", "top", "light")
    first, second = world.render([scene], 128), world.render([scene], 128)
    assert np.array_equal(first.numpy(), second.numpy())
    # Averaging the 128 px image down gives the 32 px one: the two are of one scene.
    small = world.render([scene], 32)
    pooled = first.reshape(1, 3, 32, 4, 32, 4).mean(dim=(3, 5))
    assert float((pooled - small).abs().max()) < 1e-5


_HELD_OUT_TABLES = (world.HELDOUT_COLOURS, world.HELDOUT_SHAPES, world.HELDOUT_POSITIONS)


def _held_out_words() -> set[str]:
    """Every word of a held-out phrase or sentence form that plain training wording does not use."""
    phrases = [phrase for table in _HELD_OUT_TABLES for synonyms in table.values() for phrase in synonyms]
    phrases += [template.replace(",", " ") for template in world.HELDOUT_TEMPLATES]
    words = {word for phrase in phrases for word in phrase.split() if not word.startswith("{")}
    return words - world.training_vocabulary()


@pytest.mark.parametrize("synonyms", [False, True])
def test_training_captions_never_use_held_out_wording(synonyms: bool) -> None:
    rng = random.Random(0)
    held_out = _held_out_words()
    assert {"crimson", "navy", "box", "disc", "lemon", "edge", "upper", "located", "draw"} <= held_out
    vocabulary = world.training_vocabulary(synonyms=synonyms)
    assert not vocabulary & held_out, "a training synonym uses a held-out word"
    named_synonym = False
    for _ in range(3000):
        scene = world.random_scene(rng)
        caption = world.caption(scene, rng, synonyms=synonyms)
        words = set(caption.replace(",", " ").split())
        assert words <= vocabulary, caption
        assert not words & held_out, caption
        named_synonym |= bool(words & set(world.COLOUR_SYNONYMS[scene.colour]))
    assert named_synonym == synonyms


def test_held_out_prompts_differ_from_training_wording_and_full_captions_name_everything() -> None:
    rng = random.Random(1)
    markers = [
        phrase
        for table in (world.HELDOUT_COLOURS, world.HELDOUT_SHAPES, world.HELDOUT_POSITIONS)
        for synonyms in table.values()
        for phrase in synonyms
    ]
    markers += [
        template.split("{")[0].strip() or template.split("}")[-1].strip() for template in world.HELDOUT_TEMPLATES
    ]
    markers += ["located", "you can see", "placed"]
    for _ in range(500):
        scene = world.random_scene(rng)
        prompt = world.heldout_prompt(scene, rng)
        assert any(marker and marker in prompt for marker in markers), prompt
        named = world.parse_caption(world.full_caption(scene, rng))
        assert (named["colour"], named["shape"], named["position"]) == scene.attributes
    assert world.parse_caption(world.canonical_caption(world.Scene("red", "circle", "center", "dark"))) == {
        "colour": "red",
        "shape": "circle",
        "position": "center",
        "background": "dark",
    }

"""The typed job input: resolved once from the preset, stored as the job's ``input``, and read back by workers
as the same value."""

import pytest

from core.job_input import CaptionSpec, GenerateSpec, IndexSpec, InputImage, read_job_input, stored_input
from core.presets import PRESETS, StageParams, get_preset

IMAGE = InputImage(key="uploads/abc", sha256="abc", width=64, height=48, mime="image/png", source="base64")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_final_stage_is_the_one_that_makes_the_resolution(name: str) -> None:
    preset = get_preset(name)
    for spec in preset.stages:
        assert preset.final_stage(spec.resolution) == spec
    with pytest.raises(ValueError, match="resolution"):
        preset.final_stage(3)


def test_resolve_params_fills_defaults_and_keeps_choices() -> None:
    toy = get_preset("toy")
    assert toy.resolve_params(128, {"sr_128": StageParams(3, 2.0)}) == {
        "base_32": StageParams(20, 4.0, None),
        "sr_128": StageParams(3, 2.0, 100),
    }
    # The cascade stops at the resolution: later stages get nothing, even when chosen.
    assert list(toy.resolve_params(32, {"sr_128": StageParams(3, 2.0)})) == ["base_32"]
    # A base stage never carries a noise level.
    assert toy.resolve_params(32, {"base_32": StageParams(5, 1.0, 50)})["base_32"].noise_level is None
    with pytest.raises(ValueError, match=r"^params has unknown stages \['sr_256'\]"):
        toy.resolve_params(128, {"sr_256": StageParams(3, 2.0)})


def test_a_generate_input_reads_back_as_it_was_stored() -> None:
    tiny = get_preset("tiny")
    spec = GenerateSpec(
        prompt="a corgi",
        num_images=2,
        seed=7,
        resolution=256,
        stages=tiny.resolve_params(256),
    )
    stored = stored_input(spec)
    assert stored["stages"] == {
        "base_64": {"steps": 8, "guidance_scale": 7.0},
        "sr_256": {"steps": 5, "guidance_scale": 4.0, "noise_level": 250},
    }
    back = read_job_input("generate", stored)
    assert back == spec
    assert isinstance(back, GenerateSpec)
    assert back.final_stage(tiny).name == "sr_256"
    assert [back.image_seed(i) for i in range(2)] == [7, 8]


def test_caption_and_index_inputs_read_back_with_their_defaults() -> None:
    caption = read_job_input("caption", {"image": IMAGE.model_dump()})
    assert caption == CaptionSpec(image=IMAGE, max_new_tokens=30, num_beams=1)
    index = read_job_input("index", stored_input(IndexSpec(image=IMAGE, text="a cat")))
    assert index == IndexSpec(image=IMAGE, text="a cat", collection="default")
    with pytest.raises(ValueError, match="kind must be one of generate, caption, index"):
        read_job_input("paint", {})

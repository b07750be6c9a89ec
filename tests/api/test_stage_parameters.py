"""`input.stages` is checked against the model preset: its keys, the base stage's lack of a noise level,
each preset's caps, and the resolution a request that names none gets."""

from collections.abc import Callable
from typing import Any

import pytest

from api.schemas import GenerateInput
from api.submission import resolve_generate_input
from core.errors import InvalidInput
from core.job_input import stored_input
from core.presets import PRESETS, get_preset

Resolve = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def resolve() -> Resolve:
    """api.submission's resolve_generate_input, giving the job's input as stored."""

    def resolve_for(preset: str, **input: Any) -> dict[str, Any]:
        spec = resolve_generate_input(GenerateInput(prompt="a blue square at the top", **input), get_preset(preset))
        return stored_input(spec)

    return resolve_for


def test_each_preset_has_its_request_keys() -> None:
    keys = {name: list(preset.request_keys()) for name, preset in PRESETS.items()}
    # The keys of the public contract stay as they were for the three-stage presets.
    assert keys == {
        "tiny": ["base", "sr256", "sr1024"],
        "toy": ["base", "sr128"],
        "deepfloyd-if": ["base", "sr256", "sr1024"],
    }


def test_toy_takes_its_own_keys_and_runs_its_own_stages(resolve: Resolve) -> None:
    resolved = resolve("toy", stages={"base": {"steps": 7}, "sr128": {"noise_level": 300}})
    assert resolved["resolution"] == 128
    assert resolved["stages"] == {
        "base_32": {"steps": 7, "guidance_scale": 4.0},
        "sr_128": {"steps": 10, "guidance_scale": 1.0, "noise_level": 300},
    }


@pytest.mark.parametrize(
    ("preset", "key", "allowed"), [("tiny", "sr128", "base, sr256, sr1024"), ("toy", "sr256", "base, sr128")]
)
def test_a_key_of_another_preset_is_refused_naming_the_allowed_ones(
    resolve: Resolve, preset: str, key: str, allowed: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        resolve(preset, stages={key: {"steps": 3}})
    assert caught.value.field == f"input.stages.{key}"
    assert f"allowed keys: {allowed}" in caught.value.message
    assert repr(preset) in caught.value.message


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_noise_level_on_the_base_stage_is_refused(resolve: Resolve, preset: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        resolve(preset, stages={"base": {"noise_level": 10}})
    assert caught.value.field == "input.stages.base.noise_level"


@pytest.mark.parametrize(("preset", "final"), [("tiny", 1024), ("toy", 128), ("deepfloyd-if", 1024)])
def test_the_resolution_defaults_to_the_presets_last_stage(resolve: Resolve, preset: str, final: int) -> None:
    resolved = resolve(preset)
    assert resolved["resolution"] == final
    assert list(resolved["stages"]) == [spec.name for spec in get_preset(preset).stages]


def test_tiny_defaults_are_unchanged(resolve: Resolve) -> None:
    assert resolve("tiny", seed=1) == {
        "prompt": "a blue square at the top",
        "negative_prompt": None,
        "num_images": 1,
        "seed": 1,
        "resolution": 1024,
        "stages": {
            "base_64": {"steps": 8, "guidance_scale": 7.0},
            "sr_256": {"steps": 5, "guidance_scale": 4.0, "noise_level": 250},
            "sr_1024": {"steps": 5, "guidance_scale": 9.0, "noise_level": 100},
        },
        "caption": False,
        "index": False,
        "output_format": "png",
        "output_quality": None,
    }


def test_stages_above_the_resolution_get_no_parameters(resolve: Resolve) -> None:
    resolved = resolve("toy", resolution=32, stages={"sr128": {"steps": 4}})
    assert resolved["stages"] == {"base_32": {"steps": 20, "guidance_scale": 4.0}}


def test_a_resolution_of_another_preset_is_refused(resolve: Resolve) -> None:
    with pytest.raises(InvalidInput) as caught:
        resolve("toy", resolution=256)
    assert caught.value.field == "input.resolution"
    assert "[32, 128]" in caught.value.message


def test_each_preset_caps_its_own_noise_level(resolve: Resolve) -> None:
    assert resolve("toy", stages={"sr128": {"noise_level": 400}})["stages"]["sr_128"]["noise_level"] == 400
    with pytest.raises(InvalidInput) as caught:
        resolve("toy", stages={"sr128": {"noise_level": 401}})
    assert caught.value.field == "input.stages.sr128.noise_level"
    assert "between 0 and 400" in caught.value.message

"""The cascade's stages on the tiny preset: sizes, seeds, batches, progress, cancellation and bad input."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.pipelines.deepfloyd_if.pipeline_if_superresolution import IFSuperResolutionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_upscale import (
    StableDiffusionUpscalePipeline,
)

from core.presets import PRESETS, StageParams, get_preset
from workers import cascade as stages
from workers import stage_outputs
from workers.atomic_build import BUILD_MARKER
from workers.pipelines import Cascade, ModelsNotFoundError, get_cascade, load_cascade
from workers.preset_files import build_preset
from workers.stage_outputs import PromptEmbeds
from workers.tiny_models import TINY_DIR, build_tiny

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a corgi wearing a golden crown"
NEGATIVE = "blurry"
SEED = 1234
# Fewer steps than the defaults where a test asserts behaviour, not looks: the suite stays quick.
FEW_STEPS = {
    "base_64": StageParams(3, 7.0),
    "sr_256": StageParams(2, 4.0, 250),
    "sr_1024": StageParams(2, 9.0, 100),
}


class Stop(Exception):
    """What a caller raises from on_progress to cancel a stage."""


@pytest.fixture(scope="module")
def cascade(models_dir: Path) -> Cascade:
    return get_cascade("tiny", models_dir)


@pytest.fixture(scope="module")
def embeds(cascade: Cascade) -> PromptEmbeds:
    return stages.encode_prompt(cascade, PROMPT, NEGATIVE)


@pytest.fixture(scope="module")
def full_run(cascade: Cascade) -> dict[str, list[PIL.Image.Image]]:
    return stages.run_direct(cascade, PROMPT, NEGATIVE, num_images=1, seed=SEED, resolution=1024, params=FEW_STEPS)


def _digests(outputs: dict[str, list[PIL.Image.Image]]) -> dict[str, list[str]]:
    return {
        name: [hashlib.sha256(stage_outputs.image_to_png(image)).hexdigest() for image in images]
        for name, images in outputs.items()
    }


def test_each_stage_produces_its_resolution(full_run: dict[str, list[PIL.Image.Image]]) -> None:
    sizes = {name: [image.size for image in images] for name, images in full_run.items()}
    assert sizes == {"base_64": [(64, 64)], "sr_256": [(256, 256)], "sr_1024": [(1024, 1024)]}


def test_cascade_stops_at_the_requested_resolution(
    cascade: Cascade, full_run: dict[str, list[PIL.Image.Image]]
) -> None:
    outputs = stages.run_direct(cascade, PROMPT, NEGATIVE, num_images=1, seed=SEED, resolution=256, params=FEW_STEPS)
    assert list(outputs) == ["base_64", "sr_256"]
    # Same seed, same images: the first two stages of the full run, byte for byte.
    full = _digests(full_run)
    assert _digests(outputs) == {"base_64": full["base_64"], "sr_256": full["sr_256"]}


def test_same_seed_gives_identical_pngs_in_another_process(
    models_dir: Path, full_run: dict[str, list[PIL.Image.Image]]
) -> None:
    script = f"""
import hashlib, json, sys
from pathlib import Path
import torch
torch.set_num_threads({torch.get_num_threads()})
from workers import cascade as stages
from workers import stage_outputs
from workers.pipelines import load_cascade
from core.presets import StageParams, get_preset
params = {{name: StageParams(*values) for name, values in json.loads(sys.argv[2]).items()}}
cascade = load_cascade(get_preset("tiny"), Path(sys.argv[1]))
outputs = stages.run_direct(cascade, {PROMPT!r}, {NEGATIVE!r}, num_images=1, seed={SEED},
                            resolution=1024, params=params)
print(json.dumps({{name: [hashlib.sha256(stage_outputs.image_to_png(i)).hexdigest() for i in images]
                  for name, images in outputs.items()}}))
"""
    params = {name: [p.steps, p.guidance_scale, p.noise_level] for name, p in FEW_STEPS.items()}
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(models_dir), json.dumps(params)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == _digests(full_run)


def test_another_seed_gives_another_image(cascade: Cascade, embeds: PromptEmbeds) -> None:
    first = stages.run_base(cascade, embeds, num_images=1, seed=SEED, steps=3, guidance_scale=7.0)
    other = stages.run_base(cascade, embeds, num_images=1, seed=SEED + 100, steps=3, guidance_scale=7.0)
    assert stage_outputs.image_to_png(first[0]) != stage_outputs.image_to_png(other[0])


def test_unbatched_each_image_depends_only_on_its_own_seed(cascade: Cascade, embeds: PromptEmbeds) -> None:
    pair = stages.run_base(cascade, embeds, num_images=2, seed=SEED, steps=3, guidance_scale=7.0, max_batch=1)
    second = stages.run_base(cascade, embeds, num_images=1, seed=SEED + 1, steps=3, guidance_scale=7.0)
    pngs = [stage_outputs.image_to_png(image) for image in pair]
    assert pngs[0] != pngs[1]
    assert pngs[1] == stage_outputs.image_to_png(second[0])


def test_same_seed_and_batches_give_identical_pngs(cascade: Cascade, embeds: PromptEmbeds) -> None:
    first = stages.run_base(cascade, embeds, num_images=3, seed=SEED, steps=3, guidance_scale=7.0, max_batch=2)
    again = stages.run_base(cascade, embeds, num_images=3, seed=SEED, steps=3, guidance_scale=7.0, max_batch=2)
    assert [stage_outputs.image_to_png(image) for image in first] == [
        stage_outputs.image_to_png(image) for image in again
    ]


def _one_image_call(stage: str, cascade: Cascade, embeds: PromptEmbeds, image: PIL.Image.Image, seed: int) -> bytes:
    """Image `seed` of a stage as the stages made it before batching: one pipeline call per image."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    if stage == "sr_1024":
        upscaled = cascade.pipeline(stage, StableDiffusionUpscalePipeline)(
            prompt=PROMPT,
            negative_prompt=NEGATIVE,
            image=image,
            num_inference_steps=2,
            guidance_scale=4.0,
            noise_level=100,
            generator=generator,
            output_type="pil",
            return_dict=False,
        )[0][0]
        return stage_outputs.image_to_png(upscaled)
    common: dict[str, Any] = {
        "prompt_embeds": embeds.prompt_embeds,
        "negative_prompt_embeds": embeds.negative_embeds,
        "num_inference_steps": 2,
        "generator": generator,
        "output_type": "pt",
    }
    if stage == "base_64":
        output = cascade.base(**common, guidance_scale=7.0, height=64, width=64)
    else:
        pipeline = cascade.pipeline(stage, IFSuperResolutionPipeline)
        output = pipeline(**common, image=image, guidance_scale=4.0, noise_level=100, height=256, width=256)
    return stage_outputs.image_to_png(stages._tensor_to_image(output.images[0]))


@pytest.mark.parametrize("stage", ["base_64", "sr_256", "sr_1024"])
def test_batches_of_one_give_the_bytes_of_one_call_per_image(
    stage: str, cascade: Cascade, embeds: PromptEmbeds
) -> None:
    inputs = _inputs(stage, 2)
    images = _run_stage(stage, cascade, embeds, None, images=inputs, steps=2, max_batch=1)
    expected = [_one_image_call(stage, cascade, embeds, inputs[i], SEED + i) for i in range(2)]
    assert [stage_outputs.image_to_png(image) for image in images] == expected


# The most an image's pixel (0-255) moves between a run alone and a run in a batch of up to 8: measured 1
# on tiny and toy (bench/cascade.py --batching prints it too); the bound leaves margin for other CPUs.
BATCH_DRIFT_BOUND = 4


def _max_pixel_difference(first: PIL.Image.Image, second: PIL.Image.Image) -> int:
    return int(np.abs(np.asarray(first, dtype=np.int16) - np.asarray(second, dtype=np.int16)).max())


@pytest.mark.parametrize("stage", ["base_64", "sr_256", "sr_1024"])
def test_a_batched_image_stays_within_a_few_levels_of_its_unbatched_self(
    stage: str, cascade: Cascade, embeds: PromptEmbeds
) -> None:
    inputs = _inputs(stage, 3)
    alone = _run_stage(stage, cascade, embeds, None, images=inputs, steps=2, max_batch=1)
    batched = _run_stage(stage, cascade, embeds, None, images=inputs, steps=2, max_batch=3)
    differences = [_max_pixel_difference(a, b) for a, b in zip(alone, batched, strict=True)]
    assert max(differences) <= BATCH_DRIFT_BOUND, differences
    # Each image still follows its own seed: the batch does not blend them.
    assert len({stage_outputs.image_to_png(image) for image in batched}) == 3


# The toy preset's scheduler (DPM-Solver) hands numpy a torch tensor in a way numpy 2 deprecates.
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_a_batched_toy_image_stays_within_a_few_levels_of_its_unbatched_self(tmp_path: Path) -> None:
    preset = get_preset("toy")
    build_preset(preset, tmp_path)
    toy = load_cascade(preset, tmp_path)
    toy_embeds = stages.encode_prompt(toy, "a red circle on the left")
    base: dict[str, Any] = {"num_images": 3, "seed": SEED, "steps": 4, "guidance_scale": 4.0}
    alone = stages.run_base(toy, toy_embeds, **base, max_batch=1)
    batched = stages.run_base(toy, toy_embeds, **base, max_batch=3)
    # Stage II from the same inputs either way, so its own drift is measured, not stage I's carried over.
    sr: dict[str, Any] = {"seed": SEED, "steps": 3, "guidance_scale": 1.0, "noise_level": 100}
    alone_sr = stages.run_sr(toy, "sr_128", alone, toy_embeds, "a red circle on the left", None, **sr, max_batch=1)
    batched_sr = stages.run_sr(toy, "sr_128", alone, toy_embeds, "a red circle on the left", None, **sr, max_batch=3)
    pairs = [*zip(alone, batched, strict=True), *zip(alone_sr, batched_sr, strict=True)]
    differences = [_max_pixel_difference(a, b) for a, b in pairs]
    assert max(differences) <= BATCH_DRIFT_BOUND, differences


OTHER_PROMPT = "a lighthouse at dusk"


def _mixed_batch(stage: str, cascade: Cascade, max_batch: int) -> list[PIL.Image.Image]:
    """Two jobs' images in one call: two of PROMPT (seeds SEED, SEED+1), one of OTHER_PROMPT (seed 7)."""
    first, second = stages.encode_prompts(cascade, [(PROMPT, NEGATIVE), (OTHER_PROMPT, None)])
    images = _inputs(stage, 3)
    requests = [
        stages.ImageRequest(first, SEED, images[0], PROMPT, NEGATIVE),
        stages.ImageRequest(first, SEED + 1, images[1], PROMPT, NEGATIVE),
        stages.ImageRequest(second, 7, images[2], OTHER_PROMPT, None),
    ]
    if stage == "base_64":
        return stages.run_base_batch(cascade, requests, steps=2, guidance_scale=7.0, max_batch=max_batch)
    return stages.run_sr_batch(
        cascade, stage, requests, steps=2, guidance_scale=4.0, noise_level=100, max_batch=max_batch
    )


def _each_job_alone(stage: str, cascade: Cascade) -> list[PIL.Image.Image]:
    """The same three images as ``_mixed_batch``, each job's run on its own, one image per pass."""
    images = _inputs(stage, 3)
    first = _run_stage(
        stage, cascade, stages.encode_prompt(cascade, PROMPT, NEGATIVE), None, images=images[:2], steps=2, max_batch=1
    )
    other = stages.encode_prompt(cascade, OTHER_PROMPT)
    if stage == "base_64":
        second = stages.run_base(cascade, other, num_images=1, seed=7, steps=2, guidance_scale=7.0, max_batch=1)
    else:
        second = stages.run_sr(
            cascade,
            stage,
            images[2:],
            other,
            OTHER_PROMPT,
            None,
            seed=7,
            steps=2,
            guidance_scale=4.0,
            noise_level=100,
            max_batch=1,
        )
    return [*first, *second]


@pytest.mark.parametrize("stage", ["base_64", "sr_256", "sr_1024"])
def test_jobs_sharing_a_pass_each_get_the_images_they_would_get_alone(stage: str, cascade: Cascade) -> None:
    alone = _each_job_alone(stage, cascade)
    # One image per pass: byte for byte what each job's own run makes.
    assert [stage_outputs.image_to_png(i) for i in _mixed_batch(stage, cascade, max_batch=1)] == [
        stage_outputs.image_to_png(i) for i in alone
    ]
    # One pass for all three: each image within the batching drift of its own, and none taken for another.
    batched = _mixed_batch(stage, cascade, max_batch=3)
    differences = [_max_pixel_difference(a, b) for a, b in zip(alone, batched, strict=True)]
    assert max(differences) <= BATCH_DRIFT_BOUND, differences
    assert len({stage_outputs.image_to_png(image) for image in batched}) == 3


def test_prompts_encoded_together_match_each_encoded_alone(cascade: Cascade) -> None:
    pairs = [(PROMPT, NEGATIVE), (OTHER_PROMPT, None), ("a red cube", "")]
    together = stages.encode_prompts(cascade, pairs)
    alone = [stages.encode_prompt(cascade, prompt, negative) for prompt, negative in pairs]
    for batched, single in zip(together, alone, strict=True):
        assert batched.prompt_embeds.shape == single.prompt_embeds.shape == (1, 77, single.prompt_embeds.shape[-1])
        torch.testing.assert_close(batched.prompt_embeds, single.prompt_embeds, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(batched.negative_embeds, single.negative_embeds, atol=1e-5, rtol=1e-4)
    # No negative prompt is the empty one, as in the pipeline.
    torch.testing.assert_close(together[1].negative_embeds, together[2].negative_embeds, atol=1e-5, rtol=1e-4)


def test_a_part_holds_only_its_own_model(models_dir: Path) -> None:
    text = load_cascade(get_preset("tiny"), models_dir, parts=["text_encoder"])
    assert text.text_encoder.unet is None and text.text_encoder.text_encoder is not None
    with pytest.raises(KeyError, match="base_64"):
        text.base  # noqa: B018
    sr = load_cascade(get_preset("tiny"), models_dir, parts=["sr_256", "sr_1024"])
    assert sr.pipeline("sr_256", IFSuperResolutionPipeline).text_encoder is None
    # The x4 upscaler encodes its own prompts with its own text encoder.
    assert sr.pipeline("sr_1024", StableDiffusionUpscalePipeline).text_encoder is not None
    assert set(sr.parts) == {"sr_256", "sr_1024"}


def _inputs(stage: str, count: int) -> list[PIL.Image.Image]:
    """`count` distinct images for a stage to start from (none for the base stage, which starts from noise)."""
    if stage == "base_64":
        return [PIL.Image.new("RGB", (64, 64))] * count  # unused: only their number counts
    source = 64 if stage == "sr_256" else 256
    return [PIL.Image.new("RGB", (source, source), (200, 120 - 40 * i, 40 + 40 * i)) for i in range(count)]


def _run_stage(
    stage: str,
    cascade: Cascade,
    embeds: PromptEmbeds,
    on_progress: Callable[[float], None] | None,
    *,
    num_images: int = 2,
    steps: int = 3,
    max_batch: int = 8,
    images: list[PIL.Image.Image] | None = None,
) -> list[PIL.Image.Image]:
    images = images if images is not None else _inputs(stage, num_images)
    if stage == "base_64":
        return stages.run_base(
            cascade,
            embeds,
            num_images=len(images),
            seed=SEED,
            steps=steps,
            guidance_scale=7.0,
            max_batch=max_batch,
            on_progress=on_progress,
        )
    return stages.run_sr(
        cascade,
        stage,
        images,
        embeds,
        PROMPT,
        NEGATIVE,
        seed=SEED,
        steps=steps,
        guidance_scale=4.0,
        noise_level=100,
        max_batch=max_batch,
        on_progress=on_progress,
    )


@pytest.mark.parametrize("stage", ["base_64", "sr_256", "sr_1024"])
def test_progress_rises_after_every_step_to_one(stage: str, cascade: Cascade, embeds: PromptEmbeds) -> None:
    fractions: list[float] = []
    # Three images of three steps each, in batches of two and one: one report per step of each batch.
    images = _run_stage(stage, cascade, embeds, fractions.append, num_images=3, steps=3, max_batch=2)
    assert len(images) == 3
    assert len(fractions) == 6
    assert all(a < b for a, b in itertools.pairwise(fractions))
    assert fractions[0] > 0.0
    assert fractions[-1] == 1.0


@pytest.mark.parametrize("stage", ["base_64", "sr_256", "sr_1024"])
def test_raising_in_on_progress_stops_the_stage(stage: str, cascade: Cascade, embeds: PromptEmbeds) -> None:
    calls: list[float] = []

    def cancel_on_second_step(fraction: float) -> None:
        calls.append(fraction)
        if len(calls) == 2:
            raise Stop

    with pytest.raises(Stop):
        _run_stage(stage, cascade, embeds, cancel_on_second_step, steps=10)
    assert len(calls) == 2


def test_a_stage_runs_again_after_a_cancellation(cascade: Cascade, embeds: PromptEmbeds) -> None:
    def cancel(fraction: float) -> None:
        raise Stop

    with pytest.raises(Stop):
        stages.run_base(cascade, embeds, num_images=1, seed=SEED, steps=3, guidance_scale=7.0, on_progress=cancel)
    again = stages.run_base(cascade, embeds, num_images=1, seed=SEED, steps=3, guidance_scale=7.0)
    fresh = stages.run_base(cascade, embeds, num_images=1, seed=SEED, steps=3, guidance_scale=7.0)
    assert stage_outputs.image_to_png(again[0]) == stage_outputs.image_to_png(fresh[0])


def test_embeds_round_trip_through_bytes_exactly(embeds: PromptEmbeds) -> None:
    data = stage_outputs.embeds_to_bytes(embeds)
    restored = stage_outputs.embeds_from_bytes(data)
    assert restored.prompt_embeds.dtype == embeds.prompt_embeds.dtype
    assert torch.equal(restored.prompt_embeds, embeds.prompt_embeds)
    assert torch.equal(restored.negative_embeds, embeds.negative_embeds)
    assert stage_outputs.embeds_to_bytes(restored) == data
    assert not torch.equal(embeds.prompt_embeds, embeds.negative_embeds)


def test_encode_prompt_is_deterministic(cascade: Cascade, embeds: PromptEmbeds) -> None:
    again = stages.encode_prompt(cascade, PROMPT, NEGATIVE)
    assert stage_outputs.embeds_to_bytes(again) == stage_outputs.embeds_to_bytes(embeds)


def test_png_round_trip_keeps_pixels(full_run: dict[str, list[PIL.Image.Image]]) -> None:
    image = full_run["sr_256"][0]
    data = stage_outputs.image_to_png(image)
    assert data.startswith(b"\x89PNG")
    assert stage_outputs.image_to_png(stage_outputs.png_to_image(data)) == data
    assert stage_outputs.png_to_image(data).tobytes() == image.tobytes()


def _small(size: int) -> list[PIL.Image.Image]:
    return [PIL.Image.new("RGB", (size, size))]


_BASE: dict[str, Any] = {"num_images": 1, "seed": 0, "steps": 2, "guidance_scale": 7.0}
_SR: dict[str, Any] = {"seed": 0, "steps": 2, "guidance_scale": 4.0, "noise_level": 100}


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda c, e: stages.encode_prompt(c, "   "), "prompt"),
        (lambda c, e: stages.encode_prompt(c, 42), "prompt"),  # type: ignore[arg-type]
        (lambda c, e: stages.encode_prompt(c, "ok", b"neg"), "negative_prompt"),  # type: ignore[arg-type]
        (lambda c, e: stages.run_base(c, e, **{**_BASE, "num_images": 0}), "num_images"),
        (lambda c, e: stages.run_base(c, e, **{**_BASE, "seed": -1}), "seed"),
        (lambda c, e: stages.run_base(c, e, **{**_BASE, "seed": 2**63}), "seed"),
        (lambda c, e: stages.run_base(c, e, **{**_BASE, "steps": 0}), "steps"),
        (lambda c, e: stages.run_base(c, e, **{**_BASE, "steps": 2.5}), "steps"),
        (lambda c, e: stages.run_base(c, e, **{**_BASE, "guidance_scale": -1.0}), "guidance_scale"),
        (lambda c, e: stages.run_base(c, e, **_BASE, max_batch=0), "max_batch"),
        (lambda c, e: stages.run_sr(c, "sr_256", _small(64), e, PROMPT, None, **_SR, max_batch=65), "max_batch"),
        (
            lambda c, e: stages.run_base(c, e, **{**_BASE, "guidance_scale": float("nan")}),
            "guidance_scale",
        ),
        (
            lambda c, e: stages.run_base(c, PromptEmbeds(torch.zeros(1, 77, 5), torch.zeros(1, 77, 5)), **_BASE),
            "embeds",
        ),
        (lambda c, e: stages.run_sr(c, "sr_256", _small(32), e, PROMPT, None, **_SR), "images[0]"),
        (lambda c, e: stages.run_sr(c, "sr_256", [], e, PROMPT, None, **_SR), "images"),
        (
            lambda c, e: stages.run_sr(c, "sr_256", _small(64), e, PROMPT, None, **{**_SR, "noise_level": 1000}),
            "noise_level",
        ),
        (
            lambda c, e: stages.run_sr(c, "sr_1024", _small(256), e, PROMPT, None, **{**_SR, "noise_level": 351}),
            "noise_level",
        ),
        (lambda c, e: stages.run_sr(c, "sr_1024", _small(64), e, PROMPT, None, **_SR), "images[0]"),
        (lambda c, e: stages.run_sr(c, "sr_1024", _small(256), e, "", None, **_SR), "prompt"),
        (lambda c, e: stages.run_sr(c, "sr_512", _small(64), e, PROMPT, None, **_SR), "stage_name"),
        (lambda c, e: stages.run_sr(c, "base_64", _small(64), e, PROMPT, None, **_SR), "stage_name"),
        (
            lambda c, e: stages.run_direct(c, PROMPT, num_images=1, seed=0, resolution=512),
            "resolution",
        ),
        (
            lambda c, e: stages.run_direct(
                c, PROMPT, num_images=1, seed=0, resolution=64, params={"base": StageParams(2, 1.0)}
            ),
            "params",
        ),
        (lambda c, e: stage_outputs.embeds_from_bytes(b"not safetensors"), "embeddings"),
        (lambda c, e: stage_outputs.png_to_image(b"not a png"), "image"),
    ],
)
def test_invalid_input_raises_value_error_naming_it(
    call: Callable[[Cascade, PromptEmbeds], Any], name: str, cascade: Cascade, embeds: PromptEmbeds
) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(name)}\W"):
        call(cascade, embeds)


def test_build_tiny_is_deterministic(models_dir: Path, tmp_path: Path) -> None:
    build_tiny(tmp_path)
    first, second = _tree(models_dir / TINY_DIR), _tree(tmp_path / TINY_DIR)
    assert any(name.endswith(".safetensors") for name in first)
    assert first == second


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_build_tiny_skips_a_complete_build_and_redoes_an_incomplete_one(tmp_path: Path) -> None:
    target = build_tiny(tmp_path)
    marker = target / BUILD_MARKER
    built = marker.stat().st_mtime_ns, marker.stat().st_ino

    assert build_tiny(tmp_path) == target
    assert (marker.stat().st_mtime_ns, marker.stat().st_ino) == built

    marker.unlink()
    build_tiny(tmp_path)
    assert marker.is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == [TINY_DIR]


def test_missing_tiny_models_name_the_build_command(tmp_path: Path) -> None:
    with pytest.raises(ModelsNotFoundError, match="imagen-queue models build-tiny"):
        load_cascade(get_preset("tiny"), tmp_path)


def test_get_cascade_loads_each_part_once_per_process(cascade: Cascade, models_dir: Path) -> None:
    again = get_cascade("tiny", models_dir)
    assert set(again.parts) == {"text_encoder", "base_64", "sr_256", "sr_1024"}
    assert all(again.parts[name] is cascade.parts[name] for name in again.parts)
    # Asking for one part hands back the resident one, not a second copy.
    assert get_cascade("tiny", models_dir, parts=["sr_256"]).parts["sr_256"] is cascade.parts["sr_256"]
    assert cascade.load_seconds > 0


def test_presets_share_the_cascade_shape() -> None:
    for preset in (PRESETS["tiny"], PRESETS["deepfloyd-if"]):
        assert [(s.name, s.resolution) for s in preset.stages] == [
            ("base_64", 64),
            ("sr_256", 256),
            ("sr_1024", 1024),
        ]
    assert get_preset("deepfloyd-if").stage("sr_1024").max_noise_level == 350
    with pytest.raises(ValueError, match="deepfloyd-if, tiny"):
        get_preset("huge")

"""The x4 upscaler runs the IF safety checker it borrows from stage I, also on an image the checker flags.

diffusers' upscaler hands the checker a tensor, and IF's checker blanks a flagged image by assigning a NumPy
array to it: a flagged image failed its stage with a TypeError. Real tiny modules, a checker whose head
flags every image.
"""

import numpy as np
import PIL.Image
import torch

from tests.workers.hub_layout import _safety_modules
from workers.pipelines import UpscalePipeline
from workers.tiny_models import _build_stage_3


def _upscaler(flag: bool) -> UpscalePipeline:
    safety = _safety_modules()
    checker = safety["safety_checker"]
    with torch.no_grad():
        checker.p_head.bias.fill_(1.0 if flag else -1.0)  # type: ignore[attr-defined]
    return UpscalePipeline(**_build_stage_3().components | safety)


def _upscale(pipeline: UpscalePipeline) -> tuple[PIL.Image.Image, list[bool]]:
    low_res = PIL.Image.new("RGB", (16, 16), (200, 40, 40))
    generator = torch.Generator().manual_seed(0)
    output = pipeline(
        "a red square", image=low_res, num_inference_steps=2, noise_level=20, generator=generator, output_type="pil"
    )
    return output.images[0], list(output.nsfw_content_detected)


def test_a_flagged_image_comes_back_black_instead_of_failing_the_stage() -> None:
    image, flagged = _upscale(_upscaler(flag=True))
    assert flagged == [True]
    assert image.size == (64, 64)
    assert int(np.asarray(image).max()) == 0


def test_an_unflagged_image_is_untouched_by_the_check() -> None:
    image, flagged = _upscale(_upscaler(flag=False))
    assert flagged == [False]
    assert int(np.asarray(image).max()) > 0

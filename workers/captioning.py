"""Image captioning as a plain function: images in, one caption each; no Celery, database or storage.

Decoding is greedy or beam search, never sampling, and each image is captioned on its own: a caption
depends only on its image and the parameters, not on the other images of the call.
"""

from __future__ import annotations

from collections.abc import Sequence

import PIL.Image
import torch
from transformers import GenerationConfig

from core.limits import MAX_BEAMS, MAX_NEW_TOKENS, check_int
from workers.vision_models import Captioner, check_images

# A caption is never empty: the end token is held back for the first few tokens (or all of them,
# when fewer are asked for), and tokens that decode to nothing are never generated.
MIN_NEW_TOKENS = 3


def caption_images(
    captioner: Captioner,
    images: Sequence[PIL.Image.Image],
    *,
    max_new_tokens: int = 30,
    num_beams: int = 1,
) -> list[str]:
    """One caption per image, in order: at most `max_new_tokens` tokens, by greedy or beam search."""
    # 1. Check inputs
    images = check_images(images)
    check_int("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
    check_int("num_beams", num_beams, 1, MAX_BEAMS)

    # 2. Fix the decoding: deterministic, bounded, never an empty caption
    generation_config = _generation_config(captioner, max_new_tokens, num_beams)

    # 3. Caption each image on its own
    captions: list[str] = []
    with captioner.run_lock, torch.inference_mode():
        for image in images:
            pixel_values = _pixel_values(captioner, image)
            token_ids = captioner.model.generate(pixel_values=pixel_values, generation_config=generation_config)
            if not isinstance(token_ids, torch.Tensor):  # an output object, where one was asked for
                token_ids = token_ids.sequences
            text = captioner.processor.batch_decode(token_ids, skip_special_tokens=True)[0]
            captions.append(text.strip())
    return captions


def _generation_config(captioner: Captioner, max_new_tokens: int, num_beams: int) -> GenerationConfig:
    tokenizer = captioner.processor.tokenizer
    # GIT starts a caption with [CLS] and ends it with [SEP]; the other special tokens (padding,
    # unknown, mask) carry no text, and a model with untrained weights would happily emit them.
    end_id = tokenizer.sep_token_id
    silent_ids = sorted(set(tokenizer.all_special_ids) - {end_id})
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=min(MIN_NEW_TOKENS, max_new_tokens),
        num_beams=num_beams,
        do_sample=False,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=end_id,
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=silent_ids,
    )


def _pixel_values(captioner: Captioner, image: PIL.Image.Image) -> torch.Tensor:
    inputs = captioner.processor(images=[image.convert("RGB")], return_tensors="pt")
    pixel_values: torch.Tensor = inputs["pixel_values"]
    return pixel_values.to(captioner.device, captioner.dtype)

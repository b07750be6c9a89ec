"""Image and text embeddings as plain functions: unit vectors in the embedder's shared space.

Vectors are L2-normalised float32 values, so the cosine similarity of two is their dot product. Each
call runs its whole batch in one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import PIL.Image
import torch

from core.limits import MAX_BATCH, check_text
from workers.vision_models import Embedder, check_images


def embed_images(embedder: Embedder, images: Sequence[PIL.Image.Image]) -> list[list[float]]:
    """One unit vector per image, in order, in the space `embedder.model_id` names."""
    # 1. Check inputs
    images = check_images(images)

    # 2. Preprocess the batch as the model was trained
    inputs = embedder.processor(images=[image.convert("RGB") for image in images], return_tensors="pt")
    pixel_values = inputs["pixel_values"].to(embedder.device, embedder.dtype)

    # 3. Embed the batch in one forward pass
    with embedder.run_lock, torch.inference_mode():
        features = embedder.model.get_image_features(pixel_values=pixel_values)
    return _unit_vectors(features)


def embed_texts(embedder: Embedder, texts: Sequence[str]) -> list[list[float]]:
    """One unit vector per text, in order, in the same space as `embed_images`'s."""
    # 1. Check inputs
    _check_texts(texts)

    # 2. Tokenize; text beyond the model's context (77 tokens for CLIP) is cut off, as CLIP was trained
    inputs = embedder.processor(text=list(texts), padding=True, truncation=True, return_tensors="pt")
    input_ids = inputs["input_ids"].to(embedder.device)
    attention_mask = inputs["attention_mask"].to(embedder.device)

    # 3. Embed the batch in one forward pass
    with embedder.run_lock, torch.inference_mode():
        features = embedder.model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
    return _unit_vectors(features)


def _unit_vectors(features: object) -> list[list[float]]:
    # transformers 5 returns an output object whose `pooler_output` is the projected embedding;
    # older releases returned the tensor itself.
    tensor = features if isinstance(features, torch.Tensor) else getattr(features, "pooler_output", None)
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"the embedder returned {type(features).__name__}, with no projected embedding tensor")
    vectors = torch.nn.functional.normalize(tensor.detach().to("cpu", torch.float32), dim=-1)
    rows: list[list[float]] = vectors.tolist()
    return rows


def _check_texts(texts: object) -> None:
    if not isinstance(texts, Sequence) or isinstance(texts, str | bytes):
        raise ValueError(f"texts must be a list of strings, got {type(texts).__name__}")
    if not 1 <= len(texts) <= MAX_BATCH:
        raise ValueError(f"texts must hold 1 to {MAX_BATCH} strings, got {len(texts)}")
    for index, text in enumerate(texts):
        check_text(f"texts[{index}]", text)

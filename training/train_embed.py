"""Train the toy preset's embedder: a small CLIP, from scratch, contrastively on scenes and their captions.

Each image is paired with one training caption of its scene, full or partial, in a random phrasing. In a
batch, many captions fit more than one image: "a red circle" fits every red circle, whatever its position
and background, and most full captions leave the background out. So the targets are multi-positive: text t
is a positive of image i whenever image i's scene has every attribute the caption names, and each direction's
cross-entropy is taken against the normalized positives of its row. Images are renders at stage II's resolution seen
at 64 px through the exported processor's preprocessing, lightly damaged as generated images are. Every step's batch
is drawn from the step number, so a resumed run sees exactly the data an uninterrupted one would.

    python -m training.train_embed --steps 1200 --threads 1   # resumes from training/runs/embed if there is one
"""

from __future__ import annotations

import argparse
import logging
import math
import random
from pathlib import Path
from typing import TypeVar

import PIL.Image
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

from core.limits import MAX_BATCH
from core.presets import TOY
from training import world
from training.architectures import committed_folder
from training.common import (
    Ema,
    StepLog,
    arguments,
    end_of_step,
    optimize,
    progress,
    record,
    set_lr,
    setup_logging,
    start_training,
)
from training.vision_common import (
    IMAGE_SIZE,
    PATCH_SIZE,
    evaluation_images,
    export_fp16,
    image_processor,
    pretrained_weights,
    product_preset,
    scene_pool,
    training_images,
)
from workers.embedding import embed_images, embed_texts
from workers.model_configs import TextTower, VisionTower, clip_config
from workers.preprocessors import clip_tokenizer
from workers.vision_models import load_embedder

logger = logging.getLogger("training")
T = TypeVar("T")
EMBED_DIR = committed_folder(TOY.embedder.source)
# The tag the toy preset stores beside its vectors, and their length.
MODEL_ID = TOY.embedder.model_id
EMBED_DIM = TOY.embedder.dim
VISION_DIM = 96
TEXT_DIM = 64
# CLIP's context: the product truncates any text to it.
MAX_TOKENS = 77
EMA_DECAY = 0.998
WARMUP_STEPS = 200
# CLIP caps its learned temperature at 100, so the logits cannot grow without bound.
MAX_LOGIT_SCALE = math.log(100.0)
ATTRIBUTES = ("colour", "shape", "position", "background")
_VALUES: dict[str, tuple[str, ...]] = {
    "colour": tuple(world.COLOURS),
    "shape": world.SHAPES,
    "position": tuple(world.POSITIONS),
    "background": tuple(world.BACKGROUNDS),
}


def build_tokenizer() -> CLIPTokenizer:
    """Byte-level BPE as in CLIP, over the world's training words (sorted, so the ids never change).

    Its merges make the world's words a few tokens each, as the tiny preset's tokenizer does for its word list.
    """
    return clip_tokenizer(sorted(world.training_vocabulary()), max_tokens=MAX_TOKENS)


def build_processor() -> CLIPProcessor:
    """CLIP's processor, shrunk: 64 px images, the world-vocabulary tokenizer."""
    return CLIPProcessor(image_processor=image_processor(), tokenizer=build_tokenizer())


def build_model(tokenizer: CLIPTokenizer) -> CLIPModel:
    """A CLIP of about half a million parameters: a 3-layer ViT on 8 px patches, a 2-layer text
    transformer, both projected to EMBED_DIM."""
    text = TextTower(width=TEXT_DIM, layers=2)
    vision = VisionTower(width=VISION_DIM, layers=3, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    return CLIPModel(clip_config(tokenizer, text, vision, projection_dim=EMBED_DIM))


def sample_caption(scene: world.Scene, rng: random.Random) -> tuple[str, dict[str, str]]:
    """`world.caption(scene, rng)` (the same draws, so the same text) and the attributes it names."""
    template = rng.choice(world.PARTIAL_TEMPLATES if rng.random() < 0.15 else world.TEMPLATES)
    return world._fill(template, scene, rng), world.caption_attributes(scene, template)


def attribute_codes(named: list[dict[str, str]]) -> torch.Tensor:
    """(N, 4) indices of each attribute's value, -1 where it is not named."""
    return torch.tensor(
        [[_VALUES[name].index(attrs[name]) if name in attrs else -1 for name in ATTRIBUTES] for attrs in named]
    )


def positives(scenes: list[world.Scene], named: list[dict[str, str]]) -> torch.Tensor:
    """(images, texts) float mask: 1 where the image's scene has every attribute the text names."""
    scene_codes = attribute_codes([{name: getattr(scene, name) for name in ATTRIBUTES} for scene in scenes])
    text_codes = attribute_codes(named)
    fits = (scene_codes[:, None, :] == text_codes[None, :, :]) | (text_codes[None, :, :] < 0)
    return fits.all(dim=-1).float()


def contrastive_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of (images, texts) `logits` against each row's (and column's) positives,
    normalized to a distribution. Every row and column has at least its own pair as a positive."""
    image_to_text = -(mask / mask.sum(1, keepdim=True) * F.log_softmax(logits, dim=1)).sum(1).mean()
    text_to_image = -(mask.t() / mask.t().sum(1, keepdim=True) * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


def batch(
    step: int,
    size: int,
    seed: int,
    pool: tuple[list[world.Scene], torch.Tensor],
    processor: CLIPProcessor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step `step`'s pixel values, caption ids, attention mask and positives: a pure function of (seed, step)."""
    scenes, pixels = pool
    rng = random.Random(seed * 1_000_003 + step)
    indices = [rng.randrange(len(scenes)) for _ in range(size)]
    chosen = [scenes[i] for i in indices]
    captions = [sample_caption(scene, rng) for scene in chosen]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    images = training_images(pixels, indices, generator, processor.image_processor)
    tokens = processor.tokenizer([text for text, _ in captions], padding=True, truncation=True, return_tensors="pt")
    mask = positives(chosen, [named for _, named in captions])
    return images, tokens.input_ids, tokens.attention_mask, mask


def main() -> None:
    parser = arguments("embed", steps=1200, batch=128, lr=1e-3)
    args = parser.parse_args()
    setup_logging(args.run_dir)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    processor = build_processor()
    model = build_model(processor.tokenizer)
    ema, optimizer, start = start_training(
        model,
        args.run_dir,
        EMBED_DIR,
        lambda: pretrained_weights(EMBED_DIR, _load_fp32),
        lr=args.lr,
        ema_decay=EMA_DECAY,
    )
    pool = scene_pool(args.seed)
    params = sum(p.numel() for p in model.parameters())
    logger.info(
        "embedder: %.2f M parameters, %d tokens, %d-dim vectors; batch %d, lr %g, %d threads",
        params / 1e6,
        len(processor.tokenizer),
        EMBED_DIM,
        args.batch,
        args.lr,
        args.threads,
    )

    if start >= args.steps and not args.no_export:
        # Nothing left to train: export what there is (a finished run re-exported, e.g. after an interrupted export).
        export(ema, start, args)
        return
    model.train()
    log = StepLog()
    for step in progress(start, args.steps):
        images, input_ids, attention_mask, mask = batch(step, args.batch, args.seed, pool, processor)
        set_lr(optimizer, args.lr, step, WARMUP_STEPS)
        output = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images)
        # logits_per_image: (images, texts) cosine similarities times the learned scale.
        loss = contrastive_loss(output.logits_per_image, mask)
        optimize(model, optimizer, loss)
        with torch.no_grad():
            model.logit_scale.clamp_(max=MAX_LOGIT_SCALE)
        ema.update(model, step)

        done = step + 1
        log(done, loss.item(), f", scale {model.logit_scale.exp().item():.1f}")
        end_of_step(done, args, model, ema, optimizer, lambda step: export(ema, step, args))


def _load_fp32(folder: Path) -> CLIPModel:
    return CLIPModel.from_pretrained(folder, dtype=torch.float32)


def export(ema: Ema, step: int, args: argparse.Namespace) -> None:
    """Write the EMA weights (fp16) and the processor to models/toy/embed and score them through the product."""
    # A fresh processor: the training one remembers the padding and truncation of its last batch and would save them.
    processor = build_processor()
    model = build_model(processor.tokenizer)
    ema.copy_to(model)
    model.eval()
    export_fp16(model, processor, EMBED_DIR)
    scores = evaluate(EMBED_DIR)
    record(
        EMBED_DIR,
        steps=step,
        batch=args.batch,
        lr=args.lr,
        seed=args.seed,
        model_id=MODEL_ID,
        dim=EMBED_DIM,
        eval=scores,
    )
    logger.info("exported the embedder at step %d: %s", step, scores)


def evaluate(folder: Path) -> dict[str, float]:
    """Text-to-image retrieval through the product's embedding path, over the 180 distinct scenes at stage II's size.

    The queries are one full caption per scene (`world.full_caption`'s draws, which often leave the
    background out); a retrieved image is a hit when its scene has every attribute the query names.
    `canonical_recall@1` asks the same with `world.canonical_caption`, which names all four.
    """
    preset, models_dir = product_preset(folder, model_id=MODEL_ID, dim=EMBED_DIM)
    embedder = load_embedder(preset, models_dir)
    scenes, images = evaluation_images()

    def images_in_chunks(items: list[PIL.Image.Image]) -> torch.Tensor:
        # The product takes at most MAX_BATCH images (and as many texts) a call.
        return torch.tensor([row for c in _chunks(items) for row in embed_images(embedder, c)])

    def texts_in_chunks(items: list[str]) -> torch.Tensor:
        return torch.tensor([row for c in _chunks(items) for row in embed_texts(embedder, c)])

    gallery = images_in_chunks(images)
    rng = random.Random(1234)
    queries = []
    for scene in scenes:
        # world.full_caption's draws, keeping the template to know what the query names.
        template = rng.choice(world.TEMPLATES)
        queries.append((world._fill(template, scene, rng), world.caption_attributes(scene, template)))
    scores = _recall(gallery, texts_in_chunks([text for text, _ in queries]), scenes, queries)
    full = "{c} {s} {p} {b}"
    canonical = [(world.canonical_caption(scene), world.caption_attributes(scene, full)) for scene in scenes]
    scores["canonical_recall@1"] = _recall(
        gallery, texts_in_chunks([text for text, _ in canonical]), scenes, canonical
    )["recall@1"]
    return scores


def _chunks(items: list[T]) -> list[list[T]]:
    return [items[start : start + MAX_BATCH] for start in range(0, len(items), MAX_BATCH)]


def _recall(
    gallery: torch.Tensor, texts: torch.Tensor, scenes: list[world.Scene], queries: list[tuple[str, dict[str, str]]]
) -> dict[str, float]:
    mask = positives(scenes, [named for _, named in queries])  # (images, queries)
    ranking = (texts @ gallery.t()).argsort(dim=1, descending=True)  # (queries, images), best first
    hits = mask.t().gather(1, ranking)  # whether each ranked image fits its query
    return {f"recall@{k}": round(hits[:, :k].amax(dim=1).mean().item(), 4) for k in (1, 5)}


if __name__ == "__main__":
    main()

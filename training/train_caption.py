"""Train the toy preset's captioner: a small GIT, from scratch, that writes the canonical caption of a scene.

The target is always `world.canonical_caption`, which names colour, shape, position and background in one
fixed order, so greedy decoding has one right answer per scene. Images are renders of random scenes
at stage II's output size, lightly damaged as generated images are, and seen at 64 px through the
same CLIP preprocessing the exported processor applies. Every step's batch is drawn from the step
number, so a resumed run sees exactly the data an uninterrupted one would.

    python -m training.train_caption --steps 2000 --threads 1   # resumes from training/runs/caption if there is one
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path

import torch
from transformers import BertTokenizer, GitForCausalLM, GitProcessor

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
    pretrained_weights,
    product_preset,
    scene_pool,
    sincos_positions,
    training_images,
)
from workers.captioning import caption_images
from workers.model_configs import TextTower, VisionTower, git_config
from workers.preprocessors import git_processor, wordpiece_vocabulary
from workers.vision_models import load_captioner

logger = logging.getLogger("training")
CAPTION_DIR = committed_folder(TOY.captioner.source)
EMA_DECAY = 0.998
WARMUP_STEPS = 200
# Room for the product's longest request (100 new tokens) after [CLS]: positions past the table would fail.
MAX_TOKENS = 128
VISION_DIM = 96
TEXT_DIM = 96
ATTRIBUTES = ("colour", "shape", "position", "background")


def vocabulary() -> list[str]:
    """The WordPiece vocabulary: specials, the world's training words (sorted, so the ids never change),
    then single characters and their "##" continuations, so that any text tokenizes."""
    return wordpiece_vocabulary(sorted(world.training_vocabulary()))


def build_processor(folder: Path) -> GitProcessor:
    """GIT's processor, shrunk: CLIP's image preprocessing at 64 px and a BERT tokenizer over `vocabulary()`,
    whose vocab.txt is written to `folder` (a scratch folder; save_pretrained copies it into the export)."""
    return git_processor(folder, vocabulary(), image_size=IMAGE_SIZE, max_tokens=MAX_TOKENS)


def build_model(tokenizer: BertTokenizer) -> GitForCausalLM:
    """A GIT of about half a million parameters: a 3-layer ViT on 8 px patches and a 2-layer decoder."""
    text = TextTower(width=TEXT_DIM, layers=2)
    vision = VisionTower(width=VISION_DIM, layers=3, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE)
    model = GitForCausalLM(git_config(tokenizer, text, vision))
    sincos_positions(model.git.image_encoder.vision_model.embeddings.position_embedding)
    return model


def batch(
    step: int,
    size: int,
    seed: int,
    pool: tuple[list[world.Scene], torch.Tensor],
    processor: GitProcessor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Step `step`'s pixel values, caption token ids and attention mask: a pure function of (seed, step)."""
    scenes, pixels = pool
    rng = random.Random(seed * 1_000_003 + step)
    indices = [rng.randrange(len(scenes)) for _ in range(size)]
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    images = training_images(pixels, indices, generator, processor.image_processor)
    # [CLS] caption [SEP], padded to the longest in the batch.
    tokens = processor.tokenizer(
        [world.canonical_caption(scenes[i]) for i in indices], padding=True, return_tensors="pt"
    )
    return images, tokens.input_ids, tokens.attention_mask


def main() -> None:
    parser = arguments("caption", steps=2000, batch=64, lr=1e-3)
    args = parser.parse_args()
    setup_logging(args.run_dir)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    processor = build_processor(args.run_dir / "tokenizer")
    model = build_model(processor.tokenizer)
    ema, optimizer, start = start_training(
        model,
        args.run_dir,
        CAPTION_DIR,
        lambda: pretrained_weights(CAPTION_DIR, _load_fp32),
        lr=args.lr,
        ema_decay=EMA_DECAY,
    )
    pool = scene_pool(args.seed)
    params = sum(p.numel() for p in model.parameters())
    logger.info(
        "captioner: %.2f M parameters, %d tokens; batch %d, lr %g, %d threads",
        params / 1e6,
        len(processor.tokenizer),
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
        images, input_ids, attention_mask = batch(step, args.batch, args.seed, pool, processor)
        # The loss covers the caption after [CLS], up to and including [SEP]; padding is ignored.
        labels = input_ids.masked_fill(attention_mask == 0, -100)
        set_lr(optimizer, args.lr, step, WARMUP_STEPS)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=images, labels=labels).loss
        optimize(model, optimizer, loss)
        ema.update(model, step)

        done = step + 1
        log(done, loss.item())
        end_of_step(done, args, model, ema, optimizer, lambda step: export(ema, step, args))


def _load_fp32(folder: Path) -> GitForCausalLM:
    return GitForCausalLM.from_pretrained(folder, dtype=torch.float32)


def export(ema: Ema, step: int, args: argparse.Namespace) -> None:
    """Write the EMA weights (fp16) and the processor to models/toy/caption and score them through the product."""
    # A fresh processor: the training one remembers the padding of its last batch and would save it.
    processor = build_processor(args.run_dir / "tokenizer")
    model = build_model(processor.tokenizer)
    ema.copy_to(model)
    model.eval()
    export_fp16(model, processor, CAPTION_DIR)
    scores = evaluate(CAPTION_DIR)
    record(CAPTION_DIR, steps=step, batch=args.batch, lr=args.lr, seed=args.seed, eval=scores)
    logger.info("exported the captioner at step %d: %s", step, scores)


def evaluate(folder: Path) -> dict[str, float]:
    """Load `folder` as the worker does and caption the 180 distinct scenes at stage II's resolution: the fraction
    whose caption names each attribute correctly, and all four at once."""
    preset, models_dir = product_preset(folder)
    captioner = load_captioner(preset, models_dir)
    scenes, images = evaluation_images()
    # The product takes at most MAX_BATCH images a call.
    captions = [
        text
        for start in range(0, len(images), MAX_BATCH)
        for text in caption_images(captioner, images[start : start + MAX_BATCH])
    ]
    scores = dict.fromkeys([*ATTRIBUTES, "all"], 0)
    for scene, text in zip(scenes, captions, strict=True):
        named = world.parse_caption(text)
        right = [named.get(name) == getattr(scene, name) for name in ATTRIBUTES]
        for name, ok in zip(ATTRIBUTES, right, strict=True):
            scores[name] += ok
        scores["all"] += all(right)
    mistakes = [(world.canonical_caption(s), t) for s, t in zip(scenes, captions, strict=True)]
    for expected, text in [(expected, text) for expected, text in mistakes if expected != text][:5]:
        logger.info("  expected %r, wrote %r", expected, text)
    return {name: round(count / len(scenes), 4) for name, count in scores.items()}


if __name__ == "__main__":
    main()

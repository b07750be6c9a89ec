"""Benchmark: how well the committed `toy` weights do what they are asked, through the worker's code.

Prints, for the `toy` preset as `imagen-queue models build-toy` assembles it:
- generated-image accuracy (colour, shape, position, all three) read back by the analytic checker, for
  prompts in the training wording and for held-out paraphrases (synonyms and sentence forms that
  training never uses);
- the captioner's exact-match accuracy on attributes, on true scenes and on the generated images;
- text -> image recall@1/@5 of the embedder over a gallery of the 180 distinct scenes;
- seconds per image for each stage.

    python bench/quality.py [--prompts 90] [--threads 2] [--grid docs/toy-grid.png]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont
import torch

from core.presets import TOY
from training import world
from training.checker import read

_T = TypeVar("_T")
_R = TypeVar("_R")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=90, help="prompts per set (in distribution, paraphrased)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models-dir", type=Path, default=None, help="where to build the preset (a temp dir)")
    parser.add_argument("--grid", type=Path, default=None, help="also save a grid of generated images here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from workers import cascade as stages
    from workers.captioning import caption_images
    from workers.embedding import embed_images, embed_texts
    from workers.pipelines import get_cascade
    from workers.toy_models import build_toy
    from workers.vision_models import get_captioner, get_embedder

    models_dir = args.models_dir or Path(tempfile.mkdtemp(prefix="imagen-bench-quality-"))
    build_toy(models_dir)
    cascade = get_cascade("toy", models_dir)
    captioner = get_captioner("toy", models_dir)
    embedder = get_embedder("toy", models_dir)
    print(f"toy preset from {models_dir}; {args.threads} threads; {args.prompts} prompts per set\n")

    rng = random.Random(args.seed)

    base, final = TOY.base_stage, TOY.stages[-1]

    def generate(prompt: str, seed: int) -> PIL.Image.Image:
        return stages.run_direct(cascade, prompt, num_images=1, seed=seed, resolution=final.resolution)[final.name][0]

    # 1. Generated images, in the training wording and in held-out wording
    sets: dict[str, Callable[[world.Scene], str]] = {
        "in distribution": lambda scene: world.full_caption(scene, rng),
        "held-out paraphrases": lambda scene: world.heldout_prompt(scene, rng),
    }
    generated: list[tuple[str, world.Scene, PIL.Image.Image]] = []
    for label, make_prompt in sets.items():
        scores = {"colour": 0, "shape": 0, "position": 0, "all": 0}
        for index in range(args.prompts):
            scene = world.random_scene(rng)
            prompt = make_prompt(scene)
            image = generate(prompt, seed=args.seed * 10_000 + index)
            match = read(image).matches(scene)
            for key in scores:
                scores[key] += match[key]
            generated.append((prompt, scene, image))
        print(f"generated images, {label} ({args.prompts} prompts, checker at 128 px):")
        print("  " + ", ".join(f"{key} {value / args.prompts:.1%}" for key, value in scores.items()))

    # 2. Captions: of true scenes, and of the generated images as the checker reads them
    scenes = world.all_scenes()
    truth = _to_images(world.render(scenes, 128))
    readings = [read(image) for _, _, image in generated]
    print("\ncaptions (colour, shape, position and background all right):")
    for label, pairs in (
        ("true scenes", list(zip(scenes, truth, strict=True))),
        (
            "generated images, against what the checker reads in them",
            [
                (world.Scene(r.colour, r.shape, r.position, r.background), image)
                for r, (_, _, image) in zip(readings, generated, strict=True)
                if r.colour is not None and r.shape is not None and r.position is not None
            ],
        ),
    ):
        texts = _chunked(lambda chunk: caption_images(captioner, chunk), [image for _, image in pairs])
        exact = sum(_caption_right(text, scene) for text, (scene, _) in zip(texts, pairs, strict=True))
        print(f"  {label}: {exact / len(pairs):.1%} of {len(pairs)} (e.g. {texts[0]!r})")

    # 3. Text -> image retrieval over the gallery of distinct scenes
    gallery = np.array(_chunked(lambda chunk: embed_images(embedder, chunk), truth))
    queries = [world.full_caption(scene, rng) for scene in scenes]
    vectors = np.array(_chunked(lambda chunk: embed_texts(embedder, chunk), queries))
    ranking = np.argsort(-(vectors @ gallery.T), axis=1)
    hits = {1: 0, 5: 0}
    for query, ranked in zip(queries, ranking, strict=True):
        named = world.parse_caption(query)
        for k in hits:
            hits[k] += any(_satisfies(scenes[index], named) for index in ranked[:k])
    print(f"\nsearch over {len(scenes)} scenes, one query per scene:")
    print(f"  recall@1 {hits[1] / len(scenes):.1%}, recall@5 {hits[5] / len(scenes):.1%}")

    # 4. Time per image and stage: the encoder alone, the cascade stopped at 32 px, the whole cascade
    timings: dict[str, list[float]] = {"encode_text": [], base.name: [], final.name: []}
    for index in range(10):
        prompt = world.full_caption(world.random_scene(rng), rng)
        encode_s = _seconds(lambda p=prompt: stages.encode_prompt(cascade, p))
        base_s = _seconds(
            lambda p=prompt, i=index: stages.run_direct(cascade, p, num_images=1, seed=i, resolution=base.resolution)
        )
        whole_s = _seconds(
            lambda p=prompt, i=index: stages.run_direct(cascade, p, num_images=1, seed=i, resolution=final.resolution)
        )
        timings["encode_text"].append(encode_s)
        timings[base.name].append(base_s - encode_s)
        timings[final.name].append(whole_s - base_s)
    print("\nseconds per image (median of 10; base = 32 px run minus encoding, sr = 128 px run minus 32 px run):")
    for name, values in timings.items():
        print(f"  {name}: {statistics.median(values):.3f} s")

    # 5. What the frozen encoder's states tell of held-out wording, with no image model involved
    print("\nread-out of the frozen encoder's token states (trained on training captions, as stage I):")
    for label, accuracy in _encoder_readout(rng).items():
        print(f"  {label}: " + ", ".join(f"{key} {value:.1%}" for key, value in accuracy.items()))

    if args.grid is not None:
        _save_grid(args.grid, [(prompt, image) for prompt, _, image in generated[:12]])
        print(f"\ngrid of generated images: {args.grid}")


def _encoder_readout(rng: random.Random, train: int = 3000, test: int = 600) -> dict[str, dict[str, float]]:
    """Colour, shape and position read from MiniLM's token states by one learned attention query and a
    linear layer per attribute, trained on stage I's training captions; scored on new training-wording
    captions and on held-out prompts. A reference for the generated images' held-out accuracy: where this
    small read-out fails, the states alone do not place the wording near the right attribute."""
    from training.architectures import MAX_TOKENS, encode, text_encoder

    values = {"colour": list(world.COLOURS), "shape": list(world.SHAPES), "position": list(world.POSITIONS)}

    def encoded(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokenizer, _ = text_encoder()
        mask = tokenizer([t.lower().strip() for t in texts], padding="max_length", max_length=MAX_TOKENS)
        with torch.no_grad():
            states = torch.cat([encode(texts[i : i + 64]) for i in range(0, len(texts), 64)])
        return states, torch.tensor(mask["attention_mask"], dtype=torch.bool)

    def labelled(scenes: list[world.Scene]) -> dict[str, torch.Tensor]:
        return {key: torch.tensor([names.index(getattr(s, key)) for s in scenes]) for key, names in values.items()}

    # Full captions only (every attribute named), in stage I's wording with its training synonyms.
    full = [world.random_scene(rng) for _ in range(train)]
    states, mask = encoded([world.caption(scene, rng, synonyms=True, full=True) for scene in full])
    targets = labelled(full)
    generator = torch.Generator().manual_seed(0)
    queries = torch.nn.Parameter(torch.randn(len(values), states.shape[-1], generator=generator) * 0.02)
    heads = torch.nn.ModuleList(torch.nn.Linear(states.shape[-1], len(names)) for names in values.values())

    def predict(states: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        weights = torch.einsum("ntd,ad->nat", states, queries).masked_fill(~mask[:, None, :], -torch.inf)
        pooled = torch.einsum("nat,ntd->nad", weights.softmax(-1), states)
        return [head(pooled[:, index]) for index, head in enumerate(heads)]

    optimizer = torch.optim.Adam([queries, *heads.parameters()], lr=1e-2)
    for _ in range(300):
        pick = torch.randint(0, train, (256,), generator=generator)
        outputs = predict(states[pick], mask[pick])
        loss = sum(
            torch.nn.functional.cross_entropy(out, targets[key][pick]) for out, key in zip(outputs, values, strict=True)
        )
        optimizer.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()

    scenes = [world.random_scene(rng) for _ in range(test)]
    truth = labelled(scenes)
    results = {}
    for label, prompt in (
        ("training wording", lambda scene: world.full_caption(scene, rng)),
        ("held-out paraphrases", lambda scene: world.heldout_prompt(scene, rng)),
    ):
        with torch.no_grad():
            outputs = predict(*encoded([prompt(scene) for scene in scenes]))
        right = {key: out.argmax(-1) == truth[key] for out, key in zip(outputs, values, strict=True)}
        right["all"] = torch.stack(list(right.values())).all(0)
        results[label] = {key: float(hits.float().mean()) for key, hits in right.items()}
    return results


def _chunked(work: Callable[[list[_T]], list[_R]], items: Sequence[_T], size: int = 64) -> list[_R]:
    """`work` over `items` in chunks of at most `size` (the worker's functions take 64 at a time)."""
    return [result for start in range(0, len(items), size) for result in work(list(items[start : start + size]))]


def _seconds(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _caption_right(text: str, scene: world.Scene) -> bool:
    named = world.parse_caption(text)
    return named == {
        "colour": scene.colour,
        "shape": scene.shape,
        "position": scene.position,
        "background": scene.background,
    }


def _satisfies(scene: world.Scene, named: dict[str, str]) -> bool:
    actual = {"colour": scene.colour, "shape": scene.shape, "position": scene.position, "background": scene.background}
    return all(actual[key] == value for key, value in named.items())


def _to_images(batch: torch.Tensor) -> list[PIL.Image.Image]:
    pixels = (batch * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [PIL.Image.fromarray(array) for array in pixels]


def _save_grid(path: Path, items: Sequence[tuple[str, PIL.Image.Image]], columns: int = 4) -> None:
    cell, label = 192, 56
    rows = (len(items) + columns - 1) // columns
    grid = PIL.Image.new("RGB", (columns * cell, rows * (cell + label)), "white")
    draw = PIL.ImageDraw.Draw(grid)
    font = PIL.ImageFont.load_default(size=13)
    for index, (prompt, image) in enumerate(items):
        x, y = (index % columns) * cell, (index // columns) * (cell + label)
        grid.paste(image.resize((cell - 16, cell - 16), PIL.Image.Resampling.NEAREST), (x + 8, y + 8))
        words, lines = prompt.split(), [""]
        for word in words:
            if len(lines[-1]) + len(word) > 28:
                lines.append("")
            lines[-1] = f"{lines[-1]} {word}".strip()
        draw.multiline_text((x + 8, y + cell - 4), "\n".join(lines[:3]), fill="black", font=font, spacing=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)


if __name__ == "__main__":
    main()

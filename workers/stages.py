"""The stage bodies: read a stage's inputs from storage, call the pure function in ``cascade``,
``captioning`` or ``embedding``, store its outputs. The life cycle around them is in ``lifecycle``.

Model code is imported inside the bodies: importing this module (as the API's Celery app does) loads no
torch.
"""

import hashlib
import io
from pathlib import Path
from typing import Any

from core.config import get_settings
from core.job_input import (
    DEFAULT_COLLECTION,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_NUM_BEAMS,
    CaptionSpec,
    GenerateSpec,
    IndexSpec,
)
from core.presets import StageParams, get_preset
from core.routing import ENCODE_TEXT
from db.session import session_scope
from storage.factory import process_store
from storage.keys import embeddings_key, image_key
from workers.lifecycle import StageRun, progress_reporter


def load_cascade(preset: str, models_dir: Path) -> object:
    from workers.pipelines import get_cascade

    return get_cascade(preset, models_dir)


def load_captioner(preset: str, models_dir: Path) -> object:
    from workers.vision_models import get_captioner

    return get_captioner(preset, models_dir)


def load_embedder(preset: str, models_dir: Path) -> object:
    from workers.vision_models import get_embedder

    return get_embedder(preset, models_dir)


def encode_text(run: StageRun) -> None:
    """Encode the prompt (and the negative prompt) once; stages I and II read the embeddings back."""
    from workers import cascade, stage_outputs

    spec = _generate_spec(run)
    key = embeddings_key(run.job_id)
    stored = _stored_by_earlier_attempt([key])
    if stored is not None:
        data = stored[0]
    else:
        pipes: Any = load_cascade(run.preset, get_settings().resolved_models_dir)
        data = stage_outputs.embeds_to_bytes(cascade.encode_prompt(pipes, spec.prompt, spec.negative_prompt))
        process_store().put(key, data, "application/octet-stream")
    report = progress_reporter(run)
    _record(run, 0, key, data, "application/octet-stream")
    run.outputs.append({"index": 0, "key": key})
    report(1.0)


def base(run: StageRun) -> None:
    """Stage I: the job's images at the base resolution, each from its own seed."""
    from workers import cascade

    if _reuse_stored_images(run):
        return
    spec, params, pipes, embeds = _cascade_inputs(run, base=True)
    images = cascade.run_base(
        pipes,
        embeds,
        num_images=spec.num_images,
        seed=spec.seed,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        max_batch=get_settings().max_batch,
        on_progress=progress_reporter(run),
    )
    _store_pngs(run, images, spec)


def super_resolve(run: StageRun) -> None:
    """A super-resolution stage: the previous stage's images upscaled, conditioned on the text."""
    from workers import cascade, stage_outputs

    if _reuse_stored_images(run):
        return
    spec, params, pipes, embeds = _cascade_inputs(run, base=False)
    if run.previous_stage is None or run.previous_stage == ENCODE_TEXT:
        raise ValueError(f"stage {run.stage} needs an image stage before it, got {run.previous_stage!r}")
    assert params.noise_level is not None  # every super-resolution stage's is resolved at submission
    store = process_store()
    low_res = [
        stage_outputs.png_to_image(store.get(image_key(run.job_id, run.previous_stage, i)))
        for i in range(spec.num_images)
    ]
    images = cascade.run_sr(
        pipes,
        run.stage,
        low_res,
        embeds,
        spec.prompt,
        spec.negative_prompt,
        seed=spec.seed,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        noise_level=params.noise_level,
        max_batch=get_settings().max_batch,
        on_progress=progress_reporter(run),
    )
    _store_pngs(run, images, spec)


def caption(run: StageRun) -> None:
    """Describe the job's image, or a generate job's final images, in words."""
    from workers.captioning import caption_images

    captioner: Any = load_captioner(run.preset, get_settings().resolved_models_dir)
    report = progress_reporter(run)
    tokens, beams = DEFAULT_MAX_NEW_TOKENS, DEFAULT_NUM_BEAMS
    if isinstance(run.spec, CaptionSpec):
        tokens, beams = run.spec.max_new_tokens, run.spec.num_beams
    captions = caption_images(captioner, read_images(_final_image_keys(run)), max_new_tokens=tokens, num_beams=beams)
    run.outputs.extend({"index": i, "caption": text} for i, text in enumerate(captions))
    report(1.0)


def embed(run: StageRun) -> None:
    """Add the job's image, or a generate job's final images, to the tenant's index."""
    from db.search import ensure_vector_index, upsert_embedding
    from workers.embedding import embed_images, embed_texts

    embedder: Any = load_embedder(run.preset, get_settings().resolved_models_dir)
    report = progress_reporter(run)
    keys = _final_image_keys(run)
    vectors = embed_images(embedder, read_images(keys))
    if isinstance(run.spec, GenerateSpec):
        text: str | None = run.spec.prompt
        collection = DEFAULT_COLLECTION
        captions = {o["index"]: o["caption"] for o in run.earlier_outputs.get("caption", [])}
    else:
        assert isinstance(run.spec, IndexSpec)
        text, collection, captions = run.spec.text, run.spec.collection, {}
    text_vector = embed_texts(embedder, [text])[0] if text else None
    with session_scope() as session:
        ensure_vector_index(session, model=embedder.model_id, dim=embedder.dim)
    with session_scope() as session:
        for index, (key, vector) in enumerate(zip(keys, vectors, strict=True)):
            embedding_id = upsert_embedding(
                session,
                tenant_id=run.tenant_id,
                job_id=run.job_id,
                collection=collection,
                model=embedder.model_id,
                embedding=vector,
                image_key=key,
                text_embedding=text_vector,
                caption=captions.get(index),
                text_value=text,
                meta=run.meta,
            )
            run.outputs.append({"index": index, "embedding_id": str(embedding_id), "collection": collection})
    report(1.0)


def embed_query(preset: str, text: str | None, image_key: str | None) -> dict[str, Any]:
    """A search query's vector: ``{"model", "vector"}``."""
    from workers.embedding import embed_images, embed_texts

    embedder: Any = load_embedder(preset, get_settings().resolved_models_dir)
    if text is not None:
        vector = embed_texts(embedder, [text])[0]
    elif image_key is not None:
        vector = embed_images(embedder, read_images([image_key]))[0]
    else:
        raise ValueError("embed_query needs text or image_key, got neither")
    return {"model": embedder.model_id, "vector": vector}


def read_images(keys: list[str]) -> list[Any]:
    """RGB images from the store: stage PNGs, or client uploads the API already checked (any format)."""
    import PIL.Image

    images = []
    for key in keys:
        with PIL.Image.open(io.BytesIO(process_store().get(key))) as opened:
            images.append(opened.convert("RGB"))
    return images


def _generate_spec(run: StageRun) -> GenerateSpec:
    if not isinstance(run.spec, GenerateSpec):
        raise ValueError(f"stage {run.stage} runs for generate jobs only, not a {run.kind} job")
    return run.spec


def _final_image_keys(run: StageRun) -> list[str]:
    """The images a stage after the cascade works on: the job's input image, or the cascade's last images."""
    if not isinstance(run.spec, GenerateSpec):
        return [run.spec.image.key]
    final = run.spec.final_stage(get_preset(run.preset))
    return [image_key(run.job_id, final.name, i) for i in range(run.spec.num_images)]


def _cascade_inputs(run: StageRun, *, base: bool) -> tuple[GenerateSpec, StageParams, Any, Any]:
    """A cascade stage's job input, its parameters, the resident cascade and the prompt's embeddings.

    The stage's task follows from its kind in the job's preset: a message for another kind is a mistake.
    """
    from workers import stage_outputs

    spec = _generate_spec(run)
    stage = get_preset(run.preset).stage(run.stage)
    if stage.is_base != base:
        task = "base" if base else "super-resolution"
        raise ValueError(f"stage {run.stage} of preset {run.preset!r} is of kind {stage.kind!r}, not a {task} stage")
    pipes = load_cascade(run.preset, get_settings().resolved_models_dir)
    embeds = stage_outputs.embeds_from_bytes(process_store().get(embeddings_key(run.job_id)))
    return spec, spec.stages[run.stage], pipes, embeds


def _store_pngs(run: StageRun, images: list[Any], spec: GenerateSpec) -> None:
    """Store a cascade stage's images as PNGs, image ``i`` under its own key and with its own seed."""
    from workers.stage_outputs import image_to_png

    for index, image in enumerate(images):
        png = image_to_png(image)
        key = image_key(run.job_id, run.stage, index)
        process_store().put(key, png, "image/png")
        _add_image(run, spec, index, key, png, width=image.width, height=image.height)


def _stored_by_earlier_attempt(keys: list[str]) -> list[bytes] | None:
    """The outputs an earlier attempt of the stage stored before it stopped, or None unless all are there.

    An attempt can die (or lose the database) after its writes and before the commit that records them;
    the next attempt records those objects instead of computing and writing them a second time. Writes
    are atomic, so an object that exists is whole, and it was made from the same job input.
    """
    store = process_store()
    if not all(store.exists(key) for key in keys):
        return None
    return [store.get(key) for key in keys]


def _reuse_stored_images(run: StageRun) -> bool:
    """Record the images an earlier attempt of this cascade stage stored, if it stored them all."""
    import PIL.Image

    spec = _generate_spec(run)
    keys = [image_key(run.job_id, run.stage, i) for i in range(spec.num_images)]
    pngs = _stored_by_earlier_attempt(keys)
    if pngs is None:
        return False
    for index, (key, png) in enumerate(zip(keys, pngs, strict=True)):
        with PIL.Image.open(io.BytesIO(png)) as image:
            width, height = image.size
        _add_image(run, spec, index, key, png, width=width, height=height)
    return True


def _add_image(run: StageRun, spec: GenerateSpec, index: int, key: str, png: bytes, *, width: int, height: int) -> None:
    """An image output of a cascade stage: its artifact row and its entry in the stage's outputs."""
    size, seed = {"width": width, "height": height}, spec.image_seed(index)
    _record(run, index, key, png, "image/png", **size, seed=seed)
    run.outputs.append({"index": index, "key": key, **size, "seed": seed})


def _record(run: StageRun, index: int, key: str, data: bytes, content_type: str, **image: int) -> None:
    """An artifact row to write when the stage completes."""
    run.artifacts.append(
        dict(
            index=index,
            key=key,
            content_type=content_type,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            **image,
        )
    )

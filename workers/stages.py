"""The stage bodies: read a stage's inputs from storage, call the pure function in ``cascade``,
``captioning`` or ``embedding``, store its outputs. The life cycle around them is in ``lifecycle``.

Model code is imported inside the bodies: importing this module (as the API's Celery app does) loads no
torch.
"""

import hashlib
import io
from typing import Any

from core.config import get_settings
from core.job_input import (
    DEFAULT_COLLECTION,
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_NUM_BEAMS,
    DEFAULT_OUTPUT_QUALITY,
    OUTPUT_FORMATS,
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


def load_stage_models(preset: str, stage: str) -> Any:
    """The part of the preset's cascade that ``stage`` runs (the text encoder, or the stage's pipeline),
    loaded on first use: a worker holds only the parts of the stages it was sent."""
    from workers.pipelines import TEXT_ENCODER, get_cascade

    spec = get_preset(preset)
    part = TEXT_ENCODER if stage == ENCODE_TEXT else stage
    if part != TEXT_ENCODER and part not in {s.name for s in spec.stages}:
        return None  # not a stage of this preset: the run fails with a clear error once claimed
    return get_cascade(preset, get_settings().resolved_models_dir, parts=[part])


def load_captioner(preset: str, stage: str = "") -> Any:
    from workers.vision_models import get_captioner

    return get_captioner(preset, get_settings().resolved_models_dir)


def load_embedder(preset: str, stage: str = "") -> Any:
    from workers.vision_models import get_embedder

    return get_embedder(preset, get_settings().resolved_models_dir)


def encode_text(runs: list[StageRun]) -> None:
    """Encode each job's prompt (and negative prompt) once, the batch's prompts together; stages I and II
    read the embeddings back."""
    from workers import cascade, stage_outputs

    todo: list[StageRun] = []
    for run in runs:
        key = embeddings_key(run.job_id)
        stored = _stored_by_earlier_attempt([key])
        if stored is None:
            todo.append(run)
        else:
            _record_embeddings(run, key, stored[0])
    if todo:
        pipes = load_stage_models(todo[0].preset, ENCODE_TEXT)
        specs = [_generate_spec(run) for run in todo]
        pairs = [(spec.prompt, spec.negative_prompt) for spec in specs]
        for run, embeds in zip(todo, cascade.encode_prompts(pipes, pairs, max_batch=len(pairs)), strict=True):
            key, data = embeddings_key(run.job_id), stage_outputs.embeds_to_bytes(embeds)
            process_store().put(key, data, "application/octet-stream")
            _record_embeddings(run, key, data)
    progress_reporter(*runs)(1.0)


def base(runs: list[StageRun]) -> None:
    """Stage I: each job's images at the base resolution, each image from its own seed, in shared passes."""
    from workers import cascade

    todo = [run for run in runs if not _reuse_stored_images(run)]
    if not todo:
        return
    params, pipes = _cascade_inputs(todo, base=True)
    requests = [
        cascade.ImageRequest(_embeddings(run), spec.image_seed(index))
        for run, spec in ((run, _generate_spec(run)) for run in todo)
        for index in range(spec.num_images)
    ]
    images = cascade.run_base_batch(
        pipes,
        requests,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        max_batch=get_settings().max_batch,
        on_progress=progress_reporter(*todo),
    )
    _store_images(todo, images)


def super_resolve(runs: list[StageRun]) -> None:
    """A super-resolution stage: each job's previous images upscaled, conditioned on its text, in shared
    passes."""
    from workers import cascade, stage_outputs

    todo = [run for run in runs if not _reuse_stored_images(run)]
    if not todo:
        return
    params, pipes = _cascade_inputs(todo, base=False)
    assert params.noise_level is not None  # every super-resolution stage's is resolved at submission
    store = process_store()
    requests: list[Any] = []
    for run in todo:
        spec = _generate_spec(run)
        if run.previous_stage is None or run.previous_stage == ENCODE_TEXT:
            raise ValueError(f"stage {run.stage} needs an image stage before it, got {run.previous_stage!r}")
        embeds = _embeddings(run)
        for index in range(spec.num_images):
            low_res = stage_outputs.png_to_image(store.get(image_key(run.job_id, run.previous_stage, index)))
            requests.append(
                cascade.ImageRequest(embeds, spec.image_seed(index), low_res, spec.prompt, spec.negative_prompt)
            )
    images = cascade.run_sr_batch(
        pipes,
        todo[0].stage,
        requests,
        steps=params.steps,
        guidance_scale=params.guidance_scale,
        noise_level=params.noise_level,
        max_batch=get_settings().max_batch,
        on_progress=progress_reporter(*todo),
    )
    _store_images(todo, images)


def caption(runs: list[StageRun]) -> None:
    """Describe each job's image, or a generate job's final images, in words."""
    for run in runs:
        _caption(run)


def _caption(run: StageRun) -> None:
    from workers.captioning import caption_images

    captioner = load_captioner(run.preset)
    report = progress_reporter(run)
    tokens, beams = DEFAULT_MAX_NEW_TOKENS, DEFAULT_NUM_BEAMS
    if isinstance(run.spec, CaptionSpec):
        tokens, beams = run.spec.max_new_tokens, run.spec.num_beams
    captions = caption_images(captioner, read_images(_final_image_keys(run)), max_new_tokens=tokens, num_beams=beams)
    run.outputs.extend({"index": i, "caption": text} for i, text in enumerate(captions))
    report(1.0)


def embed(runs: list[StageRun]) -> None:
    """Add each job's image, or a generate job's final images, to the tenant's index."""
    for run in runs:
        _embed(run)


def _embed(run: StageRun) -> None:
    from db.search import ensure_vector_index, upsert_embedding
    from workers.embedding import embed_images, embed_texts

    embedder = load_embedder(run.preset)
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

    embedder = load_embedder(preset)
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
    extension = OUTPUT_FORMATS[run.spec.output_format][1]
    return [image_key(run.job_id, final.name, i, extension) for i in range(run.spec.num_images)]


def _cascade_inputs(runs: list[StageRun], *, base: bool) -> tuple[StageParams, Any]:
    """The parameters the runs of a cascade stage share, and the resident pipeline of their stage.

    The stage's task follows from its kind in the job's preset: a message for another kind is a mistake,
    as is a batch of runs that do not share a stage, a preset and parameters.
    """
    first = runs[0]
    stage = get_preset(first.preset).stage(first.stage)
    if stage.is_base != base:
        task = "base" if base else "super-resolution"
        raise ValueError(
            f"stage {first.stage} of preset {first.preset!r} is of kind {stage.kind!r}, not a {task} stage"
        )
    params = _generate_spec(first).stages[first.stage]
    for run in runs[1:]:
        if (run.preset, run.stage, _generate_spec(run).stages[run.stage]) != (first.preset, first.stage, params):
            raise ValueError(f"job {run.job_id} cannot share a pass of {first.stage} with job {first.job_id}")
    return params, load_stage_models(first.preset, first.stage)


def _embeddings(run: StageRun) -> Any:
    """The job's prompt embeddings, as the text encoder stage stored them."""
    from workers import stage_outputs

    return stage_outputs.embeds_from_bytes(process_store().get(embeddings_key(run.job_id)))


def _store_images(runs: list[StageRun], images: list[Any]) -> None:
    """Store a batch's images, each run's in order; a run canceled while the batch ran stores nothing."""
    offset = 0
    for run in runs:
        spec = _generate_spec(run)
        own = images[offset : offset + spec.num_images]
        offset += spec.num_images
        if not run.canceled:
            _store_pngs(run, own, spec)


def _store_pngs(run: StageRun, images: list[Any], spec: GenerateSpec) -> None:
    """Store a cascade stage's images, image ``i`` under its own key and with its own seed: as PNGs, except
    the final stage's, which take the job's output format."""
    from workers.stage_outputs import image_to_png

    image_format = spec.image_format(run.stage, get_preset(run.preset))
    content_type, extension = OUTPUT_FORMATS[image_format]
    for index, image in enumerate(images):
        data = image_to_png(image) if image_format == "png" else _encode_lossy(image, image_format, spec)
        key = image_key(run.job_id, run.stage, index, extension)
        process_store().put(key, data, content_type)
        _add_image(run, spec, index, key, data, content_type, width=image.width, height=image.height)


def _encode_lossy(image: Any, image_format: str, spec: GenerateSpec) -> bytes:
    """A final image as WebP or JPEG at the job's quality (no metadata, so the bytes depend on the pixels)."""
    quality = spec.output_quality if spec.output_quality is not None else DEFAULT_OUTPUT_QUALITY
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=image_format.upper(), quality=quality)
    return buffer.getvalue()


def _record_embeddings(run: StageRun, key: str, data: bytes) -> None:
    _record(run, 0, key, data, "application/octet-stream")
    run.outputs.append({"index": 0, "key": key})


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
    content_type, extension = OUTPUT_FORMATS[spec.image_format(run.stage, get_preset(run.preset))]
    keys = [image_key(run.job_id, run.stage, i, extension) for i in range(spec.num_images)]
    stored = _stored_by_earlier_attempt(keys)
    if stored is None:
        return False
    for index, (key, data) in enumerate(zip(keys, stored, strict=True)):
        with PIL.Image.open(io.BytesIO(data)) as image:
            width, height = image.size
        _add_image(run, spec, index, key, data, content_type, width=width, height=height)
    return True


def _add_image(
    run: StageRun, spec: GenerateSpec, index: int, key: str, data: bytes, content_type: str, *, width: int, height: int
) -> None:
    """An image output of a cascade stage: its artifact row and its entry in the stage's outputs."""
    size, seed = {"width": width, "height": height}, spec.image_seed(index)
    _record(run, index, key, data, content_type, **size, seed=seed)
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

"""/v1/search: find a tenant's indexed images by text or by example."""

import contextlib

from celery.exceptions import TimeoutError as CeleryTimeout
from fastapi import APIRouter
from kombu.exceptions import KombuError
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from api.callers import Caller
from api.deps import CurrentKey, SessionDep, SettingsDep, StoreDep
from api.images import resolve_image_input
from api.long_requests import release_slot, take_slot
from api.openapi import error_responses
from api.schemas import SearchRequest, SearchResponse, SearchResult
from core.config import Settings
from core.errors import InvalidInput, ServiceUnavailable, TooManyRequests
from core.presets import get_preset
from db.search import search_embeddings
from storage.errors import StoreError
from storage.keys import QUERIES_PREFIX
from storage.object_store import ObjectStore
from workers.dispatch import send_query_embedding

router = APIRouter(prefix="/v1", tags=["search"])

QUERY_TIMEOUT_S = 15.0


def embed_query(preset: str, *, text: str | None = None, image_key: str | None = None) -> tuple[str, list[float]]:
    """The query's vector, computed by an embed worker (the API loads no model); (model id, vector)."""
    try:
        result = send_query_embedding(preset, text=text, image_key=image_key)
    except (KombuError, RedisError, OSError) as exc:
        raise ServiceUnavailable(f"the broker is unreachable: {exc}") from None
    except RuntimeError as exc:  # Celery's result consumer gave up reconnecting; it retries on the next call
        raise ServiceUnavailable(f"the result backend is unreachable: {exc}") from None
    try:
        answer = result.get(timeout=QUERY_TIMEOUT_S)
    except CeleryTimeout:
        raise ServiceUnavailable(f"no embed worker answered within {QUERY_TIMEOUT_S:.0f} s") from None
    except (KombuError, RedisError, OSError, RuntimeError) as exc:
        raise ServiceUnavailable(f"the result backend is unreachable: {exc}") from None
    finally:
        with contextlib.suppress(KombuError, RedisError, OSError, RuntimeError):
            result.forget()  # it expires anyway (result_expires)
    return str(answer["model"]), [float(x) for x in answer["vector"]]


@router.post(
    "/search",
    response_model=SearchResponse,
    responses=error_responses(
        404, s404="the query image names an artifact that is not among the tenant's jobs, or no longer stored"
    ),
)
def search_index(
    body: SearchRequest, key: CurrentKey, session: SessionDep, store: StoreDep, settings: SettingsDep
) -> SearchResponse:
    """The k images of the tenant's collection nearest to a text or an image, best first."""
    if (body.text is None) == (body.image is None):
        raise InvalidInput("give exactly one of text or image", field="text")
    slot = take_slot("search", key.tenant_id, limit=settings.max_searches_per_tenant, ttl_s=QUERY_TIMEOUT_S + 30)
    if slot is None:
        raise TooManyRequests(
            f"at most {settings.max_searches_per_tenant} searches of a tenant run at once; retry in a second",
            retry_after_s=1,
        )
    image_key = None
    try:
        if body.image is not None:
            image = resolve_image_input(
                session,
                body.image,
                tenant_id=key.tenant_id,
                store=store,
                settings=settings,
                field="image",
                temporary=True,
            )
            image_key = image.key
        return _search(body, key=key, session=session, store=store, settings=settings, image_key=image_key)
    finally:
        release_slot(slot)
        if image_key is not None and image_key.startswith(QUERIES_PREFIX):
            # The example image served this search only (the sweeper deletes any a crash left behind).
            with contextlib.suppress(StoreError):
                store.delete_prefix(image_key)


def _search(
    body: SearchRequest, *, key: Caller, session: Session, store: ObjectStore, settings: Settings, image_key: str | None
) -> SearchResponse:
    preset = get_preset(settings.model_preset)
    tenant_id = key.tenant_id
    session.rollback()  # hold no pooled connection while an embed worker computes the query's vector
    model, vector = embed_query(preset.name, text=body.text, image_key=image_key)
    hits = search_embeddings(
        session, tenant_id=tenant_id, collection=body.collection, model=model, query=vector, k=body.k
    )
    session.rollback()  # read-only; ends the transaction that SET LOCAL tuned
    return SearchResponse(
        results=[
            SearchResult(
                score=hit.score,
                image_url=store.presigned_url(hit.image_key, settings.presign_ttl_s),
                job_id=hit.job_id,
                caption=hit.caption,
                text=hit.text,
                metadata=hit.meta,
            )
            for hit in hits
        ]
    )

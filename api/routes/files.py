"""/files/{key}: objects of the embedded (folder) store, behind signed, expiring URLs."""

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from api.deps import StoreDep
from core.errors import Forbidden, NotFound
from storage.errors import InvalidKey, ObjectNotFound
from storage.local import LocalObjectStore

router = APIRouter(tags=["files"])


@router.get("/files/{key:path}", include_in_schema=False)
def read_file(
    key: str, store: StoreDep, expires: int = Query(...), signature: str = Query(..., max_length=128)
) -> FileResponse:
    """One stored object, if the URL's signature is authentic and unexpired."""
    if not isinstance(store, LocalObjectStore):
        raise NotFound("objects are served by the object store, not by the API")
    try:
        if not store.verify(key, expires, signature):
            raise Forbidden("the link is invalid or has expired", field="signature")
        path = store.file_path(key)
    except (InvalidKey, ObjectNotFound):
        raise NotFound(f"no object {key!r}") from None
    return FileResponse(path, media_type=store.content_type(key), headers={"Cache-Control": "private, max-age=3600"})

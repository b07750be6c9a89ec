"""Benchmark: indexing throughput (one image at a time vs batched) and search latency at 10k vectors.

Indexing runs the tiny preset's embedder and writes rows to Postgres + pgvector, as the embed stage
does. Search latency is measured on 10,000 stored vectors of the embedder's size, through the same
query the API runs, with the partial HNSW index and with index scans turned off (exact scan).

    python bench/embed.py [--images 64] [--batch 32] [--vectors 10000] [--queries 200]
"""

import argparse
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw
from sqlalchemy import text

from cli.services import start_postgres


def _images(n: int, size: int = 128) -> list[Image.Image]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        image = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, x1 = sorted(rng.randrange(size) for _ in range(2))
            y0, y1 = sorted(rng.randrange(size) for _ in range(2))
            draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=tuple(rng.randrange(256) for _ in range(3)))
        out.append(image)
    return out


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="imagen-bench-embed-"))
    _server, url = start_postgres(root / "pgdata", delete_on_exit=True)
    os.environ["IMAGEN_DATABASE_URL"] = url
    import torch

    from db import jobs as job_queries
    from db import tenants
    from db.migrate import upgrade
    from db.search import ensure_vector_index, search_embeddings, upsert_embedding
    from db.session import get_engine, session_scope
    from workers.embedding import embed_images, embed_texts
    from workers.tiny_models import build_tiny
    from workers.vision_models import get_embedder

    torch.set_num_threads(args.threads)
    upgrade(url)
    build_tiny(root / "models")
    embedder = get_embedder("tiny", root / "models")
    images = _images(args.images)
    embed_images(embedder, images[:2])  # warm-up

    with session_scope() as session:
        tenant = tenants.get_or_create_tenant(session, name="bench")
        job = job_queries.create_job(
            session, tenant_id=tenant.id, kind="index", preset="tiny", input={}, stages=[("embed", "embed")]
        )
        ensure_vector_index(session, model=embedder.model_id, dim=embedder.dim)
        tenant_id, job_id = tenant.id, job.id

    def index(batch: list[Image.Image], offset: int) -> None:
        vectors = embed_images(embedder, batch)
        with session_scope() as session:
            for i, vector in enumerate(vectors):
                upsert_embedding(
                    session,
                    tenant_id=tenant_id,
                    job_id=job_id,
                    collection="bench-index",
                    model=embedder.model_id,
                    embedding=vector,
                    image_key=f"img/{offset + i}",
                )

    start = time.perf_counter()
    for i, image in enumerate(images):
        index([image], i)
    one_at_a_time = len(images) / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(0, len(images), args.batch):
        index(images[i : i + args.batch], 10_000 + i)
    batched = len(images) / (time.perf_counter() - start)

    rng = random.Random(1)
    with session_scope() as session:
        for n in range(args.vectors):
            vector = [rng.gauss(0, 1) for _ in range(embedder.dim)]
            norm = sum(x * x for x in vector) ** 0.5
            upsert_embedding(
                session,
                tenant_id=tenant_id,
                job_id=job_id,
                collection="bench-search",
                model=embedder.model_id,
                embedding=[x / norm for x in vector],
                image_key=f"v/{n}",
            )
    with get_engine().connect() as connection:
        connection.exec_driver_sql("ANALYZE embeddings")
        connection.commit()

    texts = [f"query number {i}" for i in range(args.queries)]
    queries = [vector for i in range(0, len(texts), 64) for vector in embed_texts(embedder, texts[i : i + 64])]
    latencies: dict[bool, list[float]] = {True: [], False: []}
    for use_index in (True, False):
        for query in queries:
            with session_scope() as session:
                start = time.perf_counter()
                hits = search_embeddings(
                    session,
                    tenant_id=tenant_id,
                    collection="bench-search",
                    model=embedder.model_id,
                    query=query,
                    k=10,
                    use_index=use_index,
                )
                latencies[use_index].append((time.perf_counter() - start) * 1000)
                assert len(hits) == 10
    with session_scope() as session:
        plan = "\n".join(
            r[0]
            for r in session.execute(
                text(
                    f"EXPLAIN SELECT id FROM embeddings WHERE model = '{embedder.model_id}' AND dim = {embedder.dim} "
                    f"ORDER BY embedding::vector({embedder.dim}) <=> "
                    f"'[{','.join(['0'] * (embedder.dim - 1) + ['1'])}]'::vector({embedder.dim}) LIMIT 10"
                )
            )
        )

    print(f"embedder {embedder.model_id} ({embedder.dim}-d), torch threads {args.threads}")
    print(
        f"indexing {len(images)} images: one at a time {one_at_a_time:.1f} images/s, "
        f"batches of {args.batch} {batched:.1f} images/s ({batched / one_at_a_time:.1f}x)"
    )
    for use_index, label in ((True, "HNSW index"), (False, "exact scan (no index)")):
        values = latencies[use_index]
        print(
            f"search at {args.vectors} vectors, k=10, {label}: p50 {_pct(values, 0.5):.2f} ms, "
            f"p95 {_pct(values, 0.95):.2f} ms, mean {statistics.mean(values):.2f} ms"
        )
    print("plan with the index:", " / ".join(line.strip() for line in plan.splitlines()[:3]))
    get_engine().dispose()


if __name__ == "__main__":
    main()

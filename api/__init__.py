"""The HTTP API: FastAPI app, routes, schemas. It never loads a model; it enqueues by task name."""

"""The serving process (`manage.py serve`): loads released versions, batches requests, routes
canary and shadow traffic, logs predictions and exports metrics. The only place besides the
training worker that imports torch. docs/serving.md says how it works.

    app.py        the HTTP API (FastAPI): /v1 predict and feedback, the Open Inference Protocol, /metrics
    service.py    one process: routes, loading, background threads, the predict step
    routes.py     what a deployment serves here, and when a new generation may switch
    loaded.py     verified, loaded, warmed versions in an LRU within a memory budget
    batching.py   dynamic batching per loaded version, with a bounded queue
    ratelimit.py  per-token token buckets in Redis
    recording.py  prediction log rows, masked by the source dataset's PII policy
    features.py   the drift features of each input (the projected embedding)
    metrics.py    the Prometheus metrics
    predlog.py    the prediction log buffer (batched writes, spooled while the database is away)
    server.py     uvicorn, one process or several workers
"""

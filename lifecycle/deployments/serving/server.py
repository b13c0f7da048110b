"""Running the app on uvicorn: in this process, or as several worker processes sharing the
port (each one its own Service: its own routes, models and ServingProcess row)."""
import os

import uvicorn

WORKERS_ENV = "LIFECYCLE_SERVING_WORKERS"


def torch_threads(workers):
    """Intra-op threads per process: the cores shared out among the workers. Each loaded
    version runs one forward pass at a time, so more threads than cores only contend."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def configure_torch(workers):
    import torch
    import transformers

    torch.set_num_threads(torch_threads(workers))
    # Each load would print the base model's load report (the head's weights come from the adapter).
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def asgi_app():
    """The app factory each worker process calls (uvicorn imports it by name)."""
    import django

    django.setup()
    from lifecycle.deployments.serving.app import create_app

    configure_torch(int(os.environ.get(WORKERS_ENV, "1")))
    return create_app()


def run(host, port, workers=1, access_log=False):
    os.environ[WORKERS_ENV] = str(workers)
    options = dict(host=host, port=port, access_log=access_log, log_level="info", lifespan="on",
                   timeout_graceful_shutdown=10)
    if workers == 1:
        from lifecycle.deployments.serving.app import create_app
        from lifecycle.deployments.serving.service import Service

        configure_torch(1)
        uvicorn.run(create_app(Service(port=port)), **options)
    else:
        # Workers are fresh interpreters that read settings from the environment: this is how
        # each learns the port it reports in its ServingProcess row.
        os.environ["SERVING_PORT"] = str(port)
        uvicorn.run("lifecycle.deployments.serving.server:asgi_app", factory=True, workers=workers, **options)

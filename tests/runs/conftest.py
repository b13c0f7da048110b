import pytest

from tests.runs.factories import TINY, make_tiny_causal_lm
from tests.workers import run_burst


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_tiny_causal_lm(tmp_path_factory.mktemp("models") / TINY)


@pytest.fixture
def model_roots(settings, tiny_model_dir):
    """The bundled MiniLM plus the tiny causal LM (LIFECYCLE_MODEL_ROOTS for subprocess workers)."""
    settings.MODEL_ROOTS = {**settings.MODEL_ROOTS, TINY: str(tiny_model_dir)}
    return settings.MODEL_ROOTS


@pytest.fixture(autouse=True)
def artifacts(settings, tmp_path):
    settings.ARTIFACT_DIR = tmp_path / "artifacts"
    settings.MODEL_CACHE_DIR = tmp_path / "model-cache"
    return settings.ARTIFACT_DIR


def worker_extra_env():
    from django.conf import settings

    return {"LIFECYCLE_MODEL_ROOTS": settings.MODEL_ROOTS.get(TINY, ""), "MODEL_CACHE_DIR": str(settings.MODEL_CACHE_DIR)}


def run_training_burst(log_dir, timeout=600):
    """A real worker process on the training queue, in burst mode: it runs what is queued and exits."""
    return run_burst(log_dir, "training", env=worker_extra_env(), timeout=timeout)
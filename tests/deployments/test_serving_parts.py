"""The serving process's parts on their own, where big counts or exact cases are cheaper than
over HTTP: canary draws and sticky keys, the route plan, the memory-bounded LRU, the batcher,
the drift projection and the log's masking."""
import asyncio
import hashlib
import math
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from lifecycle.deployments import routing
from lifecycle.deployments.serving import features, recording
from lifecycle.deployments.serving.batching import Batcher, Overloaded
from lifecycle.deployments.serving.loaded import ModelCache
from lifecycle.deployments.serving.routes import Route, plan
from tests.workers import ROOT


def within(count, n, share, sds=5):
    """|count - n p| within `sds` binomial standard deviations."""
    p = share / 100
    return abs(count - n * p) <= sds * math.sqrt(n * p * (1 - p))


# --- canary routing ------------------------------------------------------------------------------


def test_requests_without_a_key_take_the_canary_at_its_share():
    rng = random.Random(18)
    for share in (1.0, 10.0, 50.0):
        n = 50_000
        hits = sum(routing.choose(share, 7, None, rng=rng) == routing.CANARY for _ in range(n))
        assert within(hits, n, share), (share, hits)
    assert routing.choose(0.0, 7, "k") == routing.STABLE and routing.choose(100.0, 7, "k") == routing.CANARY


def test_keys_split_at_the_share_and_only_move_onto_the_canary_as_it_grows():
    keys = [f"user-{i}" for i in range(20_000)]
    on = {share: {k for k in keys if routing.choose(share, 41, k) == routing.CANARY} for share in (10.0, 20.0, 50.0)}
    for share, chosen in on.items():
        assert within(len(chosen), len(keys), share), (share, len(chosen))
    assert on[10.0] <= on[20.0] <= on[50.0]  # a key on the canary stays there as the share grows
    # Another release draws afresh: the same users do not land on every canary.
    next_release = {k for k in keys if routing.choose(10.0, 42, k) == routing.CANARY}
    assert within(len(on[10.0] & next_release), len(on[10.0]), 10.0)


# --- the route plan ----------------------------------------------------------------------------


def route(**changes):
    base = dict(deployment=1, name="d", generation=3, release=9, stable=1, candidate=2, mode="canary", share=10.0)
    return Route(**{**base, **changes})


def test_a_generation_applies_once_everything_it_names_is_loaded():
    read = route()
    done = plan(read, None, {1, 2}.__contains__, lambda v: "")
    assert (done.route, done.ack, done.load) == (read, True, ())


def test_while_the_candidate_loads_the_previous_route_serves_or_stable_alone_on_a_fresh_start():
    read, previous = route(), route(generation=2, candidate=None, mode="", share=0.0)
    waiting = plan(read, previous, {1}.__contains__, lambda v: "")
    assert (waiting.route, waiting.ack, waiting.load) == (previous, False, (2,))
    fresh = plan(read, None, {1}.__contains__, lambda v: "")
    assert fresh.route.interim and fresh.route.candidate is None and not fresh.ack
    nothing = plan(read, None, set().__contains__, lambda v: "")
    assert nothing.route is None and nothing.load == (1, 2)
    # A previous route of another deployment that had this name serves nothing here.
    renamed = plan(read, route(deployment=5, candidate=None), set().__contains__, lambda v: "")
    assert renamed.route is None


def test_a_candidate_that_cannot_load_is_dropped_and_a_stable_that_cannot_answers_503():
    failed = {2: "signature check failed"}
    dropped = plan(route(), None, {1}.__contains__, lambda v: failed.get(v, ""))
    assert dropped.drop == "signature check failed" and dropped.route.candidate is None and not dropped.ack
    failed = {1: "files changed"}
    down = plan(route(), None, {2}.__contains__, lambda v: failed.get(v, ""))
    assert down.route is None and "files changed" in down.unavailable and down.ack


# --- the LRU -----------------------------------------------------------------------------------


@dataclass
class Info:
    id: int


class Sized:
    """Just what the cache reads of a loaded model: its id and size."""

    def __init__(self, version_id, size_bytes):
        self.info, self.size_bytes, self.load_seconds = Info(version_id), size_bytes, 0.0


def test_the_least_recently_used_version_leaves_first_and_what_the_routes_need_never_does():
    cache = ModelCache(budget_bytes=250)
    assert cache.add(Sized(1, 100), keep={1}) == [] and cache.add(Sized(2, 100), keep={2}) == []
    cache.get(1)  # 2 is now the least recently used
    assert [m.info.id for m in cache.add(Sized(3, 100), keep={3})] == [2]
    # Needed by the routes: kept even past the budget.
    assert cache.add(Sized(4, 100), keep={1, 3, 4}) == [] and {m.info.id for m in cache.all()} == {1, 3, 4}
    assert [entry["version"] for entry in cache.summary()] == [1, 3, 4]


# --- batching ----------------------------------------------------------------------------------


class Echo:
    """A stand-in model: answers each text upper-cased, a little slowly, and notes its batches."""

    def __init__(self, fail=False):
        self.info = Info(99)
        self.executor = ThreadPoolExecutor(max_workers=1)
        self.batches, self.fail = [], fail

    def forward(self, texts):
        self.batches.append(len(texts))
        time.sleep(0.02)
        if self.fail:
            raise RuntimeError("out of memory")
        return [text.upper() for text in texts]

    def close(self):
        self.executor.shutdown(wait=False)


def test_concurrent_requests_share_forward_passes_up_to_the_maximum_batch():
    model = Echo()

    async def scenario():
        batcher = Batcher(model, max_batch=8, wait_seconds=0.005, max_queue=100)
        answers = await asyncio.gather(*(batcher.submit([f"t{i}", f"u{i}"]) for i in range(30)))
        batcher.close()
        return answers

    answers = asyncio.run(scenario())
    assert answers == [[f"T{i}", f"U{i}"] for i in range(30)]
    assert sum(model.batches) == 60 and max(model.batches) <= 8 and len(model.batches) < 30


def test_a_full_queue_refuses_at_once_and_a_failed_pass_fails_only_its_requests():
    async def overloaded():
        batcher = Batcher(Echo(), max_batch=4, wait_seconds=0.005, max_queue=10)
        waiting = asyncio.ensure_future(batcher.submit(["x"] * 8))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.submit(["y"] * 3)
        return await waiting

    assert asyncio.run(overloaded()) == ["X"] * 8

    async def failing():
        batcher = Batcher(Echo(fail=True), max_batch=4, wait_seconds=0.005, max_queue=10)
        return await asyncio.gather(batcher.submit(["a"]), batcher.submit(["b"]), return_exceptions=True)

    assert [str(e) for e in asyncio.run(failing())] == ["out of memory", "out of memory"]


# --- drift features and masking ----------------------------------------------------------------


def test_the_embedding_projection_is_the_same_in_every_process():
    here = hashlib.sha256(features.projection(384).tobytes()).hexdigest()
    code = ("import hashlib; from lifecycle.deployments.serving import features; "
            "print(hashlib.sha256(features.projection(384).tobytes()).hexdigest())")
    there = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           timeout=60).stdout.strip()
    assert here == there and features.projection(384).shape == (384, features.EMBEDDING_SIZE)
    assert not (features.projection(384)[:16] == features.projection(768)[:16]).all()


def test_logged_inputs_are_redacted_unless_the_dataset_allows_them():
    text = "mail jane.doe@example.com about order 1234"
    assert recording.mask(text, "redact") == recording.mask(text, "block") == "mail <EMAIL> about order 1234"
    assert recording.mask(text, "allow") == text


def test_the_recorder_masks_off_the_caller_and_hands_rows_to_the_buffer_in_order():
    class Buffer:
        def __init__(self):
            self.rows, self.lock = [], threading.Lock()

        def add(self, rows):
            with self.lock:
                self.rows.extend(rows)

    buffer = Buffer()
    recorder = recording.Recorder(buffer)
    recorder.start()
    for i in range(5):
        recorder.record([{"input_text": f"{i}: call +44 20 7946 0958"}], "redact")
    recorder.stop()
    assert [row["input_text"] for row in buffer.rows] == [f"{i}: call <PHONE>" for i in range(5)]


# --- a causal LM ---------------------------------------------------------------------------------


def test_a_causal_lm_version_answers_generated_text_with_its_features(settings, tmp_path):
    from lifecycle.deployments.serving.loaded import LoadedModel, VersionInfo
    from lifecycle.runs import basemodels, outputs
    from tests.runs.factories import TINY, make_tiny_causal_lm

    tiny = make_tiny_causal_lm(tmp_path / TINY)
    settings.MODEL_ROOTS = {**settings.MODEL_ROOTS, TINY: str(tiny)}
    key = outputs.write(tiny, {"task": "causal_lm", "method": "full", "labels": [], "config": {"max_length": 64},
                               "base_model": {"name": TINY, "sha256": basemodels.directory_sha256(tiny)}})
    info = VersionInfo(id=1, number=1, model_slug="qa", model_name="QA", task="causal_lm", labels=(),
                       output_sha256=key, artifact_bytes=1, pii_policy="redact")
    model = LoadedModel(info, outputs.Predictor(key), size_bytes=1)
    answers = model.forward(["question: where is my order ?", "hello"])
    assert [set(a) for a in answers] == [{"text", "token_count", "embedding"}] * 2
    assert all(isinstance(a["text"], str) and a["token_count"] > 0 and len(a["embedding"]) == 16 for a in answers)
    assert model.forward(["question: where is my order ?"])[0] == answers[0]  # greedy: the same answer again
    model.close()

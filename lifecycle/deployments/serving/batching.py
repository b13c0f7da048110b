"""Dynamic batching for one loaded version: one queue, two knobs, a bounded depth.

Requests put their inputs on the queue and wait. The batcher takes up to SERVING_MAX_BATCH
inputs, waiting at most SERVING_BATCH_WAIT_MS after the oldest one arrived for more to join,
runs one forward pass in the model's own thread, and hands each input its answer. While a pass
runs, new inputs gather; those already waited longer than the window when it ends, so the next
pass starts at once. Past SERVING_MAX_QUEUE waiting inputs a request is refused (503 with
Retry-After) instead of queueing without bound: the wait would only grow.
"""
import asyncio
import collections
import time

from lifecycle.deployments.serving import metrics


class Overloaded(Exception):
    pass


class Batcher:
    def __init__(self, model, *, max_batch, wait_seconds, max_queue):
        self.model = model
        self.max_batch, self.wait_seconds, self.max_queue = max_batch, wait_seconds, max_queue
        self.loop = asyncio.get_running_loop()
        self.queue = collections.deque()  # (text, future, enqueued at)
        self.arrived = asyncio.Event()
        self.closed = False
        self.depth = metrics.QUEUE_DEPTH.labels(version=str(model.info.id))
        self.batch_sizes = metrics.BATCH_SIZE.labels(version=str(model.info.id))
        self.task = self.loop.create_task(self._run(), name=f"batcher-{model.info.id}")

    async def submit(self, texts):
        """The answers for `texts`, in order; raises Overloaded when the queue is full."""
        if self.closed:
            raise Overloaded("this version is being unloaded")
        if len(self.queue) + len(texts) > self.max_queue:
            raise Overloaded(f"{len(self.queue)} inputs are waiting for this version")
        now = time.monotonic()
        futures = [self.loop.create_future() for _ in texts]
        self.queue.extend(zip(texts, futures, [now] * len(texts)))
        self.depth.inc(len(texts))
        self.arrived.set()
        answers = await asyncio.gather(*futures, return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return answers

    def close(self):
        """Stop once what is queued has been answered (an evicted version's last requests)."""
        self.closed = True
        self.arrived.set()

    async def _run(self):
        while True:
            if not self.queue:
                if self.closed:
                    self.model.close()
                    return
                self.arrived.clear()
                await self.arrived.wait()
                continue
            await self._gather_window()
            await self._run_batch(self._take())

    async def _gather_window(self):
        """Wait for more inputs until the batch is full or the oldest input's window ends."""
        deadline = self.queue[0][2] + self.wait_seconds
        while len(self.queue) < self.max_batch and not self.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.arrived.clear()
            try:
                await asyncio.wait_for(self.arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take(self):
        items = [self.queue.popleft() for _ in range(min(self.max_batch, len(self.queue)))]
        self.depth.dec(len(items))
        # A request whose client went away has its futures cancelled: no forward pass for it.
        return [(text, future) for text, future, _ in items if not future.done()]

    async def _run_batch(self, items):
        if not items:
            return
        self.batch_sizes.observe(len(items))
        texts = [text for text, _ in items]
        try:
            answers = await self.loop.run_in_executor(self.model.executor, self.model.forward, texts)
        except Exception as exc:  # noqa: BLE001 - each waiting request answers with the error
            for _, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), answer in zip(items, answers):
            if not future.done():
                future.set_result(answer)

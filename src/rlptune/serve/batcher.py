"""Batching across tasks: requests wait a few milliseconds so that one image-tower pass serves many of them.

Requests of every task whose method leaves the image tower frozen go into ONE image-tower batch (the tower is
the expensive part; a task's scoring afterwards is one small matmul). Requests of image-tower tasks (MaPLe,
IVLP, deep vision prompts, vision LoRA) run their own prompted tower, batched per task. The tower runs on one
worker thread, so the event loop keeps accepting and decoding requests meanwhile, and whatever arrived during a
pass forms the next batch without waiting.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from ..errors import RlptuneError
from .tasks import LoadedTask

log = logging.getLogger("rlptune.serve")


@dataclass
class Prediction:
    labels: list[str]
    probs: list[float]

    def to_json(self) -> dict[str, Any]:
        return {"labels": self.labels, "probs": self.probs}


@dataclass
class Job:
    task: LoadedTask
    images: torch.Tensor  # (n, 3, H, W) preprocessed
    top_k: int
    future: asyncio.Future = field(repr=False)


class ServerClosing(Exception):
    """The server is shutting down and takes no new work."""


class Batcher:
    def __init__(
        self,
        backbone,
        max_batch_size: int,
        max_wait_s: float,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.backbone = backbone
        self.max_batch_size = int(max_batch_size)
        self.max_wait_s = float(max_wait_s)
        self.on_batch = on_batch or (lambda size: None)
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    async def start(self) -> None:
        self._closing = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlptune-tower")
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Finish every queued request, then stop the worker."""
        self._closing = True
        if self._queue is not None and self._worker is not None:
            await self._queue.put(None)
            await self._worker
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, task: LoadedTask, images: torch.Tensor, top_k: int) -> list[Prediction]:
        if self._closing or self._queue is None:
            raise ServerClosing("server is shutting down")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(Job(task, images, top_k, future))
        return await future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        stop = False
        while not stop:
            job = await queue.get()
            if job is None:
                break
            jobs = [job]
            count = len(job.images)
            deadline = loop.time() + self.max_wait_s
            while count < self.max_batch_size:
                try:
                    more = queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        more = await asyncio.wait_for(queue.get(), remaining)
                    except asyncio.TimeoutError:
                        break
                if more is None:
                    stop = True
                    break
                jobs.append(more)
                count += len(more.images)
            try:
                outcomes = await loop.run_in_executor(self._executor, self._run, jobs)
            except Exception as exc:  # noqa: BLE001 - reported to each waiting request, logged once
                log.exception("batch of %d request(s) failed", len(jobs))
                outcomes = [exc] * len(jobs)
            for job, outcome in zip(jobs, outcomes):
                if job.future.done():
                    continue
                if isinstance(outcome, Exception):
                    job.future.set_exception(outcome)
                else:
                    job.future.set_result(outcome)

    # -- the worker thread ------------------------------------------------------------------------------------
    @torch.no_grad()
    def _run(self, jobs: list[Job]) -> list[Any]:
        outcomes: list[Any] = [None] * len(jobs)
        shared = [i for i, j in enumerate(jobs) if j.task.shares_image_tower]
        if shared:
            features = self._encode(self.backbone.encode_image, [jobs[i].images for i in shared])
            self._score(jobs, shared, features, outcomes)
        per_task: dict[int, list[int]] = {}
        for i, job in enumerate(jobs):
            if not job.task.shares_image_tower:
                per_task.setdefault(id(job.task.method), []).append(i)
        for indices in per_task.values():
            method = jobs[indices[0]].task.method
            features = self._encode(method.encode_images, [jobs[i].images for i in indices])
            self._score(jobs, indices, features, outcomes)
        return outcomes

    def _encode(self, encoder: Callable[[torch.Tensor], torch.Tensor], chunks: list[torch.Tensor]) -> torch.Tensor:
        images = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        outs = []
        for start in range(0, len(images), self.max_batch_size):
            part = images[start : start + self.max_batch_size]
            self.on_batch(len(part))
            outs.append(encoder(part.to(self.backbone.device)))
        return torch.cat(outs) if len(outs) > 1 else outs[0]

    @staticmethod
    def _score(jobs: list[Job], indices: list[int], features: torch.Tensor, outcomes: list[Any]) -> None:
        start = 0
        for i in indices:
            job = jobs[i]
            n = len(job.images)
            part = features[start : start + n]
            start += n
            try:
                logits = job.task.scores(part).float()
                if not torch.isfinite(logits).all():  # NaN probabilities are no answer (and not valid JSON)
                    log.warning("task %s: logits are not finite (NaN or inf) for a request", job.task.info.name)
                    outcomes[i] = RlptuneError(
                        f"task {job.task.info.name!r}: its logits are not finite (NaN or inf) for this image; "
                        f"the adapter's tensors are damaged or too large"
                    )
                    continue
                probs = logits.softmax(-1).cpu()
                k = max(1, min(job.top_k, probs.shape[-1]))
                top = probs.topk(k, dim=-1)
                names = job.task.info.classnames
                outcomes[i] = [
                    Prediction([names[int(c)] for c in idx], [float(v) for v in val])
                    for val, idx in zip(top.values, top.indices)
                ]
            except Exception as exc:  # noqa: BLE001 - one task's failure must not fail the others in the batch
                log.exception("scoring task %s failed", job.task.info.name)
                outcomes[i] = exc

"""One model, many clients: a single worker thread owns the model and runs queued jobs one batch at a time.

    worker = ModelWorker(model, processor, max_batch_size=8, max_queue=64, max_prompt_tokens=4096)
    worker.start()
    worker.submit(Job(messages, images, options, stream=False, emit=events.append))
    # events: ("admitted", prompt_tokens), then ("text", piece)... for streams, then ("done", Completion)
    # or a single ("error", error): a `VlmforgeError` (the request's fault) or any other exception (a bug)

Waiting non-streamed jobs with equal generation settings are generated together as one left-padded
batch (greedy answers equal those of the same request alone); a streamed job runs alone. Because
only this thread touches the model and the tokenizer, generations never mix. A request is encoded
once (`prompt_token_ids`: its length is checked on admission) and generated from those ids.

The worker knows nothing of HTTP: it raises and emits vlmforge errors (`QueueFull`, `WorkerClosed`,
`PromptTooLong`, ...); the server maps them to status codes.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from vlmforge.errors import DataError, VlmforgeError
from vlmforge.infer.generate import GenerationOptions, generate, prompt_token_ids, stream

logger = logging.getLogger(__name__)


class QueueFull(VlmforgeError):
    """Too many requests are waiting; the client should retry shortly."""


class WorkerClosed(VlmforgeError):
    """The worker is shutting down and takes no more jobs."""


class PromptTooLong(DataError):
    """A prompt (image tokens included) longer than the worker takes."""


@dataclass
class Job:
    messages: list[dict]
    images: list
    options: GenerationOptions
    stream: bool
    emit: Callable[[tuple[str, object]], None]  # called from the worker thread
    cancelled: threading.Event = field(default_factory=threading.Event)
    prompt_ids: list[int] | None = None  # set on admission

    def batch_key(self):
        """Jobs with equal keys can share a batch; None = must run alone (streams, seeded sampling)."""
        if self.stream or (self.options.temperature > 0 and self.options.seed is not None):
            return None
        options = self.options
        return (options.max_new_tokens, options.temperature, options.top_p, options.seed,
                tuple(options.stop), options.use_cache)


class JobQueue:
    """A FIFO that hands out the oldest job together with the waiting jobs that can share its batch."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self._jobs: deque[Job] = deque()
        self._ready = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        return len(self._jobs)

    def put(self, job: Job) -> None:
        with self._ready:
            if self._closed:
                raise WorkerClosed("the server is shutting down")
            if len(self._jobs) >= self.max_size:
                raise QueueFull(f"too many requests waiting ({self.max_size}); retry shortly")
            self._jobs.append(job)
            self._ready.notify()

    def take_batch(self, max_batch_size: int) -> list[Job] | None:
        """Block until a job waits; None once closed and empty."""
        with self._ready:
            while not self._jobs and not self._closed:
                self._ready.wait()
            if not self._jobs:
                return None
            first = self._jobs.popleft()
            key = first.batch_key()
            if key is None:
                return [first]
            batch = [first] + [job for job in self._jobs if job.batch_key() == key][: max_batch_size - 1]
            for job in batch[1:]:
                self._jobs.remove(job)
            return batch

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()


class ModelWorker:
    def __init__(self, model, processor, max_batch_size: int = 8, max_queue: int = 64,
                 max_prompt_tokens: int = 4096):
        self.model, self.processor = model, processor
        self.max_batch_size = max_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        self.queue = JobQueue(max_queue)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vlmforge-model-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self.queue.close()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        self.queue.put(job)

    def _run(self) -> None:
        while (batch := self.queue.take_batch(self.max_batch_size)) is not None:
            admitted = [job for job in batch if self._admit(job)]
            if admitted and admitted[0].stream:
                self._stream(admitted[0])
            elif admitted:
                self._complete(admitted)

    def _admit(self, job: Job) -> bool:
        """Encode the prompt once and check its length (exactly, image tokens included); tell the job it is admitted."""
        if job.cancelled.is_set():
            return False
        try:
            job.prompt_ids = prompt_token_ids(self.processor, job.messages, job.images)
            if len(job.prompt_ids) > self.max_prompt_tokens:
                raise PromptTooLong(f"the prompt has {len(job.prompt_ids)} tokens (images included); this server "
                                    f"takes at most {self.max_prompt_tokens}")
        except Exception as error:
            _fail(job, error)
            return False
        job.emit(("admitted", len(job.prompt_ids)))
        return True

    def _complete(self, jobs: list[Job]) -> None:
        logger.debug("generating a batch of %d", len(jobs))
        try:
            completions = generate(self.model, self.processor, [j.messages for j in jobs],
                                   [j.images for j in jobs], jobs[0].options, [j.prompt_ids for j in jobs])
        except Exception as error:
            if len(jobs) == 1:
                _fail(jobs[0], error)
            else:  # find the job that broke the batch; the others still get their answers
                for job in jobs:
                    self._complete([job])
            return
        for job, completion in zip(jobs, completions, strict=True):
            job.emit(("done", completion))

    def _stream(self, job: Job) -> None:
        finished = []
        pieces = stream(self.model, self.processor, job.messages, job.images, job.options, on_finish=finished.append,
                        prompt_ids=job.prompt_ids)
        try:
            for piece in pieces:
                if job.cancelled.is_set():
                    return
                job.emit(("text", piece))
        except Exception as error:
            _fail(job, error)
            return
        finally:
            pieces.close()  # stops the generation when the client went away
        if finished:
            job.emit(("done", finished[0]))


def _fail(job: Job, error: Exception) -> None:
    """Hand the error to the job; one that is not a `VlmforgeError` is a bug, so it is logged here."""
    if not isinstance(error, VlmforgeError):
        logger.exception("generation failed", exc_info=error)
    job.emit(("error", error))

"""The model worker speaks vlmforge errors; only the server turns them into HTTP answers."""

import pytest

from vlmforge.errors import DataError, VlmforgeError
from vlmforge.infer.generate import GenerationOptions
from vlmforge.infer.model_worker import Job, JobQueue, PromptTooLong, QueueFull, WorkerClosed
from vlmforge.infer.openai_schema import RequestError
from vlmforge.infer.server import request_error


def _job() -> Job:
    return Job([], [], GenerationOptions(), stream=False, emit=lambda event: None)


def test_a_full_or_closed_queue_raises_vlmforge_errors_not_http_ones():
    queue = JobQueue(max_size=1)
    queue.put(_job())
    with pytest.raises(QueueFull) as full:
        queue.put(_job())
    queue.close()
    with pytest.raises(WorkerClosed) as closed:
        queue.put(_job())
    for error in (full.value, closed.value):
        assert isinstance(error, VlmforgeError) and not isinstance(error, RequestError)


@pytest.mark.parametrize("error, status, kind, code, param", [
    (QueueFull("wait"), 429, "rate_limit_error", "queue_full", None),
    (WorkerClosed("bye"), 503, "server_error", None, None),
    (PromptTooLong("long"), 400, "invalid_request_error", "context_length_exceeded", "messages"),
    (DataError("bad"), 400, "invalid_request_error", None, None),
    (RuntimeError("secret detail"), 500, "server_error", None, None),
])
def test_the_server_maps_worker_errors_to_http_answers(error, status, kind, code, param):
    answer = request_error(error)
    assert (answer.status, answer.kind, answer.code, answer.param) == (status, kind, code, param)
    if not isinstance(error, VlmforgeError):
        assert "secret detail" not in str(answer)  # a bug's details stay in the log
    else:
        assert str(answer) == str(error)

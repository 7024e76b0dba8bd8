"""Generation tasks published in bulk: the messages Celery's ``send_task`` writes, thousands at a time.

Celery builds, routes, serialises and publishes one task at a time, then publishes a
``task-sent`` event for it (what Flower shows for queued tasks): about 200 µs per task, most
of the time of enqueueing a large run. The tasks of one enqueue differ only in their args, so
Celery builds one message here (``create_task_message``, the call ``send_task`` makes) and every
task's message is that one with the fields Celery derives from the task id and args set as
Celery sets them: ``id``, ``root_id``, ``argsrepr`` and ``correlation_id``, the body's args, and
the event's ``uuid``, ``root_id`` and ``args``. kombu's channel turns each into the envelope
its Redis transport stores (its publish batch: one pipeline per 1,000 messages), and the
task-sent events of a chunk go out as one ``task.multi`` event message, the batched form
Celery's own workers send and every event receiver (Flower, ``celery events``) unpacks.

tests/test_publish.py checks that each message and event equals the one ``send_task`` writes
for the same task, and that a real worker runs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Celery
from celery.utils.saferepr import saferepr
from kombu.entity import maybe_delivery_mode
from kombu.serialization import dumps

from convfarm.messages import GENERATE_TASK, task_id

CHUNK = 1000  # messages per Redis pipeline, and task-sent events per event message


class TaskPublisher:
    """Publishes ``convfarm.generate(run, word, attempt)`` tasks to one queue."""

    def __init__(self, celery: Celery, queue: str) -> None:
        self.celery = celery
        self.queue = celery.amqp.queues[queue]
        self.events = celery.conf.task_send_sent_event

    def _template(self, run: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any] | None]:
        """Celery's own message for a task of this run: headers, properties, body's embed, sent event."""
        headers, properties, (_, _, embed), sent_event = self.celery.amqp.create_task_message(
            task_id(run, "", 0), GENERATE_TASK, [run, "", 0], {}, reply_to=self.celery.thread_oid,
            create_sent_event=self.events, ignore_result=None)  # as send_task calls it
        return headers, properties, embed, sent_event

    def publish(self, run: str, tasks: list[tuple[str, int]]) -> None:
        if not tasks:
            return
        amqp = self.celery.amqp
        headers, properties, embed, sent_event = self._template(run)
        repr_size, repr_levels = amqp.argsrepr_maxsize, self.celery.conf.task_repr_maxlevels
        # what send_task adds: the queue's delivery mode; the anonymous exchange, routing key = queue
        properties = {**properties, "delivery_mode": maybe_delivery_mode(
            self.queue.exchange.delivery_mode or self.celery.conf.task_default_delivery_mode)}
        routing = {"queue": self.queue.name, "exchange": "", "routing_key": self.queue.name}
        with self.celery.producer_or_acquire() as producer, self._dispatcher(producer) as dispatcher:
            producer.maybe_declare(self.queue)  # once, not with every message
            channel = producer.channel
            for start in range(0, len(tasks), CHUNK):
                with _publish_batch(channel) as publish:
                    for word, attempt in tasks[start:start + CHUNK]:
                        tid, args = task_id(run, word, attempt), [run, word, attempt]
                        argsrepr = args_repr(args, repr_size, repr_levels)
                        content_type, encoding, body = dumps((args, {}, embed), serializer="json")
                        message = channel.prepare_message(
                            body, 0, content_type, encoding,
                            {**headers, "id": tid, "root_id": tid, "argsrepr": argsrepr},
                            {**properties, "correlation_id": tid})
                        publish(message, exchange="", routing_key=self.queue.name)
                        if dispatcher is not None and sent_event is not None:
                            dispatcher.send("task-sent", **{**sent_event, "uuid": tid, "root_id": tid, "args": argsrepr},
                                            **routing)
                if dispatcher is not None:
                    dispatcher.flush()  # after its tasks' messages, as send_task orders them

    @contextmanager
    def _dispatcher(self, producer: Any) -> Iterator[Any]:
        """Celery's event dispatcher, buffering task events into one message per chunk."""
        if not self.events:
            yield None
            return
        dispatcher = self.celery.events.Dispatcher(producer.connection, buffer_group=["task"], buffer_limit=CHUNK + 1)
        try:
            yield dispatcher
        finally:
            dispatcher.close()


def args_repr(args: list[Any], maxlen: int, maxlevels: int) -> str:
    """Celery's ``saferepr`` of ``[run, word, attempt]`` (the ``argsrepr`` header Flower shows):
    when nothing needs cutting to ``maxlen`` it is each string in single quotes with its single
    quotes escaped, which is built here directly (saferepr's token stream was a fifth of the time
    per task); longer ones are left to saferepr."""
    run, word, attempt = args
    text = "['{}', '{}', {}]".format(run.replace("'", "\\'"), word.replace("'", "\\'"), attempt)
    return text if len(text) <= maxlen else saferepr(args, maxlen, maxlevels=maxlevels)


@contextmanager
def _publish_batch(channel: Any) -> Iterator[Any]:
    """kombu's Redis publish batch for a chunk (one pipeline), flushed at the end and dropped on
    an error; a transport without one publishes each message at once. Messages lost to an error
    here are sent again when their attempts' leases expire (docs/design.md, "Delivery guarantees")."""
    if not (getattr(channel, "supports_batch_publish", False) and hasattr(channel, "create_publish_batch")):
        yield channel.basic_publish
        return
    batch = channel.create_publish_batch(max_size=CHUNK)
    try:
        yield batch.publish
        batch.flush()
    except BaseException:
        batch.discard()
        raise
    finally:
        batch.close()

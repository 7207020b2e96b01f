"""The sender's drain under a stop signal: no answer is ever left unrecorded or awaited twice."""

from __future__ import annotations

import signal
import threading
from queue import SimpleQueue
from typing import Any

import pytest

from optisync.optimove.outcome import Delivery, Endpoint
from optisync.realtime.sender import SIGNALS, Sender


class InstantClient:
    """Answers every send at once (the sender only needs ``send``)."""

    def send(self, endpoint: Endpoint, body: Any) -> Delivery:
        return body  # type: ignore[no-any-return]  # the handler below only reads it back


def test_a_signal_while_answers_are_taken_is_recorded_and_the_drain_ends() -> None:
    fired: list[bool] = []

    class SignalOnce(SimpleQueue[Any]):
        def empty(self) -> bool:
            # Ctrl-C arriving between taking an answer from the queue and recording it
            if not fired:
                fired.append(True)
                SIGNALS.handler(signal.SIGINT, None)
            return super().empty()

    sender: Sender[int] = Sender(InstantClient(), workers=1)  # type: ignore[arg-type]
    sender.finished = SignalOnce()
    for i in range(4):  # room for two such calls: the next settle must make room
        sender.submit(Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, i, i)
    while sender.finished.qsize() < 4:
        pass
    handled: list[int] = []
    try:
        with pytest.raises(KeyboardInterrupt):
            sender.settle(lambda tag, delivery, exc: handled.append(tag))
        drain = threading.Thread(
            daemon=True,
            target=sender.settle,
            args=(lambda tag, d, e: handled.append(tag),),
            kwargs={"all_": True},
        )
        drain.start()
        drain.join(timeout=10)
        assert not drain.is_alive(), "the final drain waits for an answer already taken"
        assert sorted(handled) == [0, 1, 2, 3]
        assert sender.inflight == {}
    finally:
        SIGNALS.pending = False
        sender.close()


class HeldClient:
    """Answers nothing until released, so every send stays in flight."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def send(self, endpoint: Endpoint, body: Any) -> Delivery:
        self.release.wait(10)
        return body  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("endpoint", "in_flight"),
    [
        (Endpoint.UPDATE_CUSTOMER_ATTRIBUTES, 2),  # up to 1,000 customers, a quota: two
        (Endpoint.SEND_TRANSACTIONAL_MAIL, 2),
        (Endpoint.EVENTS, 16),  # one small event each: many, so the run plans ahead
    ],
)
def test_sends_in_flight_per_worker_by_what_they_carry(endpoint: Endpoint, in_flight: int) -> None:
    client = HeldClient()
    sender: Sender[int] = Sender(client, workers=1)  # type: ignore[arg-type]
    submitted = 0
    while sender.room > 0:
        sender.submit(endpoint, submitted, submitted)
        submitted += 1
    assert submitted == in_flight
    client.release.set()
    handled: list[int] = []
    sender.settle(lambda tag, delivery, exc: handled.append(tag), all_=True)
    assert sorted(handled) == list(range(in_flight)) and sender.room == sender.limit
    sender.close()

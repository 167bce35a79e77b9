"""The plugin's gRPC server, as a grpc client sees it: answers, status codes, deadlines, streams,
cancellation, quick methods answered while every worker is busy, and stopping."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from plugin.rpcserver import Server

SERVICE = "test.Echo"
QUICK = f"/{SERVICE}/Quick"
TIMEOUT = 10.0


class Handlers:
    """Methods on raw bytes; each records what its handler saw."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.slow_started = threading.Event()
        self.time_remaining: float | None = None
        self.cancelled = threading.Event()
        self.answered = threading.Event()
        self.received: list[bytes] = []

    def echo(self, request: bytes, context: Any) -> bytes:
        self.time_remaining = context.time_remaining()
        return b"echo:" + request

    def quick(self, request: bytes, context: Any) -> bytes:
        return b"quick:" + request

    def slow(self, request: bytes, context: Any) -> bytes:
        self.slow_started.set()
        self.release.wait(TIMEOUT)
        return b"slow"

    def refuse(self, request: bytes, context: Any) -> bytes:
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not you: " + request.decode())
        raise AssertionError("abort returned")

    def fail(self, request: bytes, context: Any) -> bytes:
        raise RuntimeError("boom")

    def answer_then_note(self, request: bytes, context: Any) -> bytes:
        context.add_callback(self.answered.set)
        return b"answered"

    def count(self, request: bytes, context: Any) -> Iterator[bytes]:
        for number in range(int(request)):
            yield str(number).encode()

    def watch(self, request: bytes, context: Any) -> Iterator[bytes]:
        context.add_callback(self.cancelled.set)
        yield b"first"
        self.cancelled.wait(TIMEOUT)

    def collect(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        self.received.extend(requests)
        return
        yield

    def handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        unary = grpc.unary_unary_rpc_method_handler
        return {
            "Echo": unary(self.echo),
            "Quick": unary(self.quick),
            "Slow": unary(self.slow),
            "Refuse": unary(self.refuse),
            "Fail": unary(self.fail),
            "AnswerThenNote": unary(self.answer_then_note),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
            "Watch": grpc.unary_stream_rpc_method_handler(self.watch),
            "Collect": grpc.stream_stream_rpc_method_handler(self.collect),
        }


@pytest.fixture
def handlers() -> Handlers:
    return Handlers()


def _serve(
    tmp_path: Path, handlers: Handlers, registered: bool = True, max_workers: int = 2
) -> tuple[Server, str]:
    server = Server(quick_methods=[QUICK], max_workers=max_workers)
    if registered:
        server.add_registered_method_handlers(SERVICE, handlers.handlers())
    else:
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers.handlers())])
    address = f"unix:{tmp_path}/server.sock"
    server.add_insecure_port(address)
    server.start()
    return server, address


@pytest.fixture
def channel(tmp_path: Path, handlers: Handlers) -> Iterator[grpc.Channel]:
    server, address = _serve(tmp_path, handlers)
    try:
        with grpc.insecure_channel(address) as client:
            yield client
    finally:
        handlers.release.set()
        assert server.stop(grace=0).wait(TIMEOUT)


def _unary(channel: grpc.Channel, name: str, request: bytes = b"", timeout: float = TIMEOUT) -> bytes:
    answer: bytes = channel.unary_unary(f"/{SERVICE}/{name}")(request, timeout=timeout)
    return answer


def _error(channel: grpc.Channel, name: str, request: bytes = b"") -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        _unary(channel, name, request)
    return caught.value


def test_a_unary_call_is_answered_with_what_its_handler_returns(channel: grpc.Channel) -> None:
    assert _unary(channel, "Echo", b"hello") == b"echo:hello"


def test_generic_handlers_answer_too(tmp_path: Path, handlers: Handlers) -> None:
    server, address = _serve(tmp_path, handlers, registered=False)
    try:
        with grpc.insecure_channel(address) as client:
            assert _unary(client, "Echo", b"hi") == b"echo:hi"
    finally:
        assert server.stop(grace=0).wait(TIMEOUT)


def test_an_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    error = _error(channel, "NoSuchMethod")
    assert error.code() is grpc.StatusCode.UNIMPLEMENTED
    assert error.details() == "Method not found!"


def test_abort_answers_the_code_and_details_the_handler_gave(channel: grpc.Channel) -> None:
    error = _error(channel, "Refuse", b"mallory")
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == "not you: mallory"


def test_a_handler_that_raises_is_unknown_and_the_server_keeps_serving(channel: grpc.Channel) -> None:
    error = _error(channel, "Fail")
    assert error.code() is grpc.StatusCode.UNKNOWN
    assert error.details() == "Exception calling application: boom"
    assert _unary(channel, "Echo", b"still") == b"echo:still"


def test_the_handler_sees_the_time_the_caller_gave(channel: grpc.Channel, handlers: Handlers) -> None:
    _unary(channel, "Echo", timeout=5.0)
    assert handlers.time_remaining is not None
    # Within the clock skew of gRPC core's realtime conversion.
    assert 4.0 < handlers.time_remaining < 5.1


def test_a_quick_method_is_answered_while_every_worker_is_busy(
    channel: grpc.Channel, handlers: Handlers
) -> None:
    slow = [channel.unary_unary(f"/{SERVICE}/Slow").future(b"", timeout=TIMEOUT) for _ in range(2)]
    assert handlers.slow_started.wait(TIMEOUT)
    assert _unary(channel, "Quick", b"now", timeout=2.0) == b"quick:now"
    assert not any(call.done() for call in slow)
    handlers.release.set()
    assert [call.result() for call in slow] == [b"slow", b"slow"]


def test_calls_beyond_the_workers_wait_their_turn_and_quick_ones_do_not(
    tmp_path: Path, handlers: Handlers
) -> None:
    server, address = _serve(tmp_path, handlers, max_workers=1)
    try:
        with grpc.insecure_channel(address) as client:
            slow = [client.unary_unary(f"/{SERVICE}/Slow").future(b"", timeout=TIMEOUT) for _ in range(3)]
            assert handlers.slow_started.wait(TIMEOUT)
            assert _unary(client, "Quick", b"now", timeout=2.0) == b"quick:now"
            assert not any(call.done() for call in slow)
            handlers.release.set()
            assert [call.result() for call in slow] == [b"slow", b"slow", b"slow"]
            assert _unary(client, "Echo", b"after") == b"echo:after"
    finally:
        handlers.release.set()
        assert server.stop(grace=0).wait(TIMEOUT)


def test_workers_serve_calls_side_by_side(channel: grpc.Channel, handlers: Handlers) -> None:
    first = channel.unary_unary(f"/{SERVICE}/Slow").future(b"", timeout=TIMEOUT)
    assert handlers.slow_started.wait(TIMEOUT)
    # The second worker answers while the first waits.
    assert _unary(channel, "Echo", b"beside", timeout=2.0) == b"echo:beside"
    handlers.release.set()
    assert first.result() == b"slow"


def test_a_callback_runs_once_the_answer_is_out(channel: grpc.Channel, handlers: Handlers) -> None:
    assert _unary(channel, "AnswerThenNote") == b"answered"
    assert handlers.answered.wait(TIMEOUT)


def test_a_server_stream_delivers_every_response_in_order(channel: grpc.Channel) -> None:
    responses = channel.unary_stream(f"/{SERVICE}/Count")(b"5", timeout=TIMEOUT)
    assert list(responses) == [b"0", b"1", b"2", b"3", b"4"]


def test_a_client_stream_reaches_the_handler_in_order_and_ends_ok(
    channel: grpc.Channel, handlers: Handlers
) -> None:
    responses = channel.stream_stream(f"/{SERVICE}/Collect")(iter([b"a", b"b", b"c"]), timeout=TIMEOUT)
    assert list(responses) == []
    assert handlers.received == [b"a", b"b", b"c"]


def test_a_cancelled_stream_runs_the_handlers_callback(channel: grpc.Channel, handlers: Handlers) -> None:
    responses = channel.unary_stream(f"/{SERVICE}/Watch")(b"", timeout=TIMEOUT)
    assert next(responses) == b"first"
    responses.cancel()
    assert handlers.cancelled.wait(TIMEOUT)
    # The worker the stream held is free again: two workers serve two slow calls at once.
    slow = [channel.unary_unary(f"/{SERVICE}/Slow").future(b"", timeout=TIMEOUT) for _ in range(2)]
    handlers.release.set()
    assert [call.result() for call in slow] == [b"slow", b"slow"]


def test_stop_cancels_what_still_runs_after_the_grace_and_refuses_new_calls(
    tmp_path: Path, handlers: Handlers
) -> None:
    server, address = _serve(tmp_path, handlers)
    with grpc.insecure_channel(address) as client:
        stream = client.unary_stream(f"/{SERVICE}/Watch")(b"", timeout=TIMEOUT)
        assert next(stream) == b"first"
        started = time.monotonic()
        stopped = server.stop(grace=0.2)
        assert stopped.wait(TIMEOUT)
        assert 0.2 <= time.monotonic() - started < 5.0
        assert handlers.cancelled.is_set()
        with pytest.raises(grpc.RpcError) as caught:
            client.unary_unary(f"/{SERVICE}/Echo")(b"", timeout=2.0)
        assert caught.value.code() is grpc.StatusCode.UNAVAILABLE

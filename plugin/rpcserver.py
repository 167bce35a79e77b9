"""A gRPC server on grpcio's core that answers quick calls on the thread that polls for them.

grpcio's own server (`grpc.server`) polls its completion queue on one thread and runs every handler on a
pool thread, which then waits on a condition variable for the polling thread to hand it the request
message, and so on for each step of the call. On this project's 2-core VM that costs an empty unary call
0.26 to 0.31 ms of CPU and 0.27 to 0.37 ms of latency, as much as the rest of the plugin spends on a
signature. This server drives the same C core (`cygrpc`) itself, for 0.10 ms of CPU and 0.16 to 0.18 ms:

- a method named quick (a read of cached public keys, a health check) runs on the polling thread as soon
  as its request arrives, and answers from there;
- any other call runs on the thread that read it too, which first hands the polling to another thread
  (leader and followers): no call waits for a thread to wake up, unless every thread is busy;
- streams (go-plugin's broker, stdio and health watch) hold their thread for their whole life.

It offers what the generated `add_*Servicer_to_server` functions and the plugin's servicers use of gRPC:
registering method handlers, and a servicer context with `time_remaining`, `abort`, `add_callback`,
`is_active` and `invocation_metadata`.
"""

from __future__ import annotations

import collections
import functools
import queue
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import grpc

# grpcio's own layer under grpc.server and grpc.aio, not a public API: setup.cfg pins grpcio, and
# tests/unit/test_rpcserver.py exercises every part of it used here.
from grpc._cython import cygrpc

from plugin.log import get_logger

_NO_FLAGS = 0
_NO_METADATA = None
# What grpcio's server answers in these cases, so that a client sees the same.
_METHOD_NOT_FOUND = "Method not found!"
_UNDECODABLE = "Exception deserializing request!"

log = get_logger("grpc")
Job = Callable[[], None]
# What a batch of operations calls when it completes; it may return a call to run (`Server._lead`).
Tag = Callable[[Any], "Job | None"]


class _Aborted(Exception):
    """Raised by `abort`: the handler ends with this status (an Exception, as grpcio's abort raises)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


@dataclass(frozen=True)
class _CallDetails:
    """What a generic handler is asked about (grpc.HandlerCallDetails)."""

    method: str
    invocation_metadata: tuple[tuple[str, Any], ...]


def _status(code: grpc.StatusCode) -> int:
    number: int = code.value[0]
    return number


class _Rpc:
    """One call: the servicer context its handler gets, and what the polling thread learns of it."""

    def __init__(self, event: Any, method: str, handler: Any) -> None:
        self.call = event.call
        self.method = method
        self.handler = handler
        self._deadline: float = event.call_details.deadline
        self._metadata = event.invocation_metadata
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self._over = False
        self._metadata_sent = False
        # A stream learns of its end at once (go-plugin's streams wait for it), so it asks for the close
        # from the start; a unary call asks with its answer, one completion fewer.
        self.streaming = handler is not None and (handler.request_streaming or handler.response_streaming)
        if self.streaming:
            # What the thread running the stream waits for: a request message, a response sent.
            self._arrivals: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
            self._sent = threading.Event()
            self.start((cygrpc.ReceiveCloseOnServerOperation(_NO_FLAGS),), self.on_close)

    # The servicer context.

    def time_remaining(self) -> float:
        return max(self._deadline - time.time(), 0.0)

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        raise _Aborted(code, details)

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Run `callback` once the call is over (answered or cancelled); False when it is over already."""
        with self._lock:
            if self._over:
                return False
            self._callbacks.append(callback)
            return True

    def is_active(self) -> bool:
        return not self._over

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return tuple(self._metadata)

    # What the server does with the call.

    def start(self, operations: Iterable[Any], tag: Tag) -> bool:
        """Start a batch; False when the core refused it (then `tag` is never called)."""
        return self.call.start_server_batch(tuple(operations), tag) == cygrpc.CallError.ok  # type: ignore[no-any-return]

    def initial_metadata(self) -> list[Any]:
        """The initial metadata operation, the first time only."""
        if self._metadata_sent:
            return []
        self._metadata_sent = True
        return [cygrpc.SendInitialMetadataOperation(_NO_METADATA, _NO_FLAGS)]

    def finish(self, code: grpc.StatusCode, details: str = "", body: bytes | None = None) -> None:
        operations = self.initial_metadata()
        if body is not None:
            operations.append(cygrpc.SendMessageOperation(body, _NO_FLAGS))
        operations.append(
            cygrpc.SendStatusFromServerOperation(
                _NO_METADATA, _status(code), details.encode("utf-8", "replace"), _NO_FLAGS
            )
        )
        if self.streaming:
            self.start(operations, _ignore)
        else:
            operations.append(cygrpc.ReceiveCloseOnServerOperation(_NO_FLAGS))
            self.start(operations, self.on_close)

    def on_close(self, event: Any) -> None:
        with self._lock:
            self._over = True
            callbacks, self._callbacks = self._callbacks, []
        if self.streaming:
            self._sent.set()
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("A gRPC call's callback failed", method=self.method)

    # Streams, driven from the thread that runs the handler.

    def requests(self) -> Iterator[Any]:
        deserialize = self.handler.request_deserializer
        while not self._over:
            if not self.start((cygrpc.ReceiveMessageOperation(_NO_FLAGS),), self._on_stream_message):
                return
            data = self._arrivals.get()
            if data is None:
                return
            yield deserialize(data) if deserialize else data

    def _on_stream_message(self, event: Any) -> None:
        self._arrivals.put(event.batch_operations[0].message() if event.success else None)

    def send(self, body: bytes) -> bool:
        """Send one streamed response and wait until it is gone; False when the call is over."""
        self._sent.clear()
        operations = [*self.initial_metadata(), cygrpc.SendMessageOperation(body, _NO_FLAGS)]
        if not self.start(operations, self._on_sent):
            return False
        self._sent.wait()
        return not self._over

    def _on_sent(self, event: Any) -> None:
        self._sent.set()


def _ignore(event: Any) -> None:
    pass


class Server:
    """A gRPC server for plaintext unix sockets. `quick_methods` (full names, "/package.Service/Method")
    run on the polling thread: only for handlers that never wait (no lock held across I/O, no I/O).

    Leader and followers: one thread polls. When it takes a call that may wait, it hands the polling to a
    follower (started if none waits) and runs the call itself, so the call starts at once, on the thread
    that read it. Up to `max_workers` calls run at once; more wait for a thread in arrival order."""

    def __init__(self, quick_methods: Collection[str] = (), max_workers: int = 32) -> None:
        self._quick = frozenset(quick_methods)
        self._handlers: dict[str, Any] = {}
        self._generic: list[Any] = []
        self._max_threads = max_workers + 1
        self._threads = 0
        self._followers = 0
        self._lock = threading.Lock()
        # Whoever takes it polls; a leader hands it over before it runs a call that may wait.
        self._baton: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._backlog: collections.deque[Job] = collections.deque()
        self._queue = cygrpc.CompletionQueue()
        self._server = cygrpc.Server((), False)
        self._server.register_completion_queue(self._queue)
        self._stopped = threading.Event()
        self._stopping = False

    # What the generated add_*Servicer_to_server functions call.

    def add_generic_rpc_handlers(self, handlers: Iterable[Any]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, handlers: Mapping[str, Any]) -> None:
        self._handlers.update({f"/{service}/{name}": handler for name, handler in handlers.items()})

    def add_insecure_port(self, address: str) -> int:
        port: int = self._server.add_http2_port(address.encode())
        return port

    def start(self) -> None:
        self._server.start()
        self._request_call()
        with self._lock:
            self._start_follower()
        self._baton.put(None)

    def stop(self, grace: float | None) -> threading.Event:
        """Refuse new calls, cancel those still running after `grace` seconds (None: now); the event is
        set once every call is over."""
        if not self._stopping:
            self._stopping = True
            self._server.shutdown(self._queue, self._on_shutdown)
            timer = threading.Timer(grace or 0.0, self._server.cancel_all_calls)
            timer.daemon = True
            timer.start()
        return self._stopped

    # The threads: one leader polling, followers waiting for the baton, the others running calls. The lock
    # guards the count of followers and the backlog together, so that a call is never left in the backlog
    # while a follower waits.

    def _start_follower(self) -> None:
        threading.Thread(target=self._follow, name=f"grpc-{self._threads}", daemon=True).start()
        self._threads += 1
        self._followers += 1

    def _follow(self) -> None:
        while True:
            self._baton.get()
            with self._lock:
                self._followers -= 1
            if self._stopped.is_set():
                self._baton.put(None)  # on to the next follower, which stops too
                return
            self._lead()

    def _lead(self) -> None:
        """Poll until a call that may wait comes, then run it (the polling handed over first)."""
        while not self._stopped.is_set():
            event = self._queue.poll()
            if event.completion_type != cygrpc.CompletionType.operation_complete:
                continue
            job: Job | None = None
            try:
                job = event.tag(event)
            except Exception:
                log.exception("Handling a gRPC event failed")
            # Drop the event before polling again: it may hold the last reference to a finished call.
            event = None
            if job is not None and self._hand_over(job):
                self._work(job)
                return
        self._baton.put(None)

    def _hand_over(self, job: Job) -> bool:
        """Pass the polling to a follower, starting one if none waits; when every thread is busy, put
        `job` in the backlog instead and say so (False)."""
        with self._lock:
            if self._followers == 0:
                if self._threads >= self._max_threads:
                    self._backlog.append(job)
                    return False
                self._start_follower()
        self._baton.put(None)
        return True

    def _work(self, job: Job) -> None:
        """Run `job`, then what waits in the backlog; then follow."""
        while True:
            job()
            with self._lock:
                if not self._backlog:
                    self._followers += 1
                    return
                job = self._backlog.popleft()

    def _on_shutdown(self, event: Any) -> None:
        self._stopped.set()

    def _request_call(self) -> None:
        self._server.request_call(self._queue, self._queue, self._on_call)

    def _handler(self, method: str, metadata: Iterable[tuple[str, Any]]) -> Any:
        handler = self._handlers.get(method)
        if handler is None:
            details = _CallDetails(method, tuple(metadata))
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    break
        return handler

    # What each completion does; a call that may wait is returned, to run once the polling is handed over.

    def _on_call(self, event: Any) -> Job | None:
        if not event.success:  # the server is shutting down
            return None
        if not self._stopping:
            self._request_call()
        method = event.call_details.method.decode()
        rpc = _Rpc(event, method, self._handler(method, event.invocation_metadata))
        if rpc.handler is None:
            rpc.finish(grpc.StatusCode.UNIMPLEMENTED, _METHOD_NOT_FOUND)
        elif rpc.handler.request_streaming:
            return functools.partial(self._run, rpc, None)
        else:
            rpc.start((cygrpc.ReceiveMessageOperation(_NO_FLAGS),), functools.partial(self._on_request, rpc))
        return None

    def _on_request(self, rpc: _Rpc, event: Any) -> Job | None:
        data = event.batch_operations[0].message() if event.success else None
        if data is None:
            rpc.finish(grpc.StatusCode.UNIMPLEMENTED, f'"{rpc.method}" requires exactly one request message.')
            return None
        if rpc.method in self._quick:
            self._run(rpc, data)
            return None
        return functools.partial(self._run, rpc, data)

    # Handlers, on the polling thread (quick methods) or a worker.

    def _run(self, rpc: _Rpc, data: bytes | None) -> None:
        try:
            self._answer(rpc, data)
        except Exception:
            log.exception("Answering a gRPC call failed", method=rpc.method)

    def _answer(self, rpc: _Rpc, data: bytes | None) -> None:
        handler = rpc.handler
        request: Any = data
        if handler.request_streaming:
            request = rpc.requests()
        elif handler.request_deserializer is not None:
            try:
                request = handler.request_deserializer(data)
            except Exception:
                log.exception("A gRPC request could not be decoded", method=rpc.method)
                rpc.finish(grpc.StatusCode.INTERNAL, _UNDECODABLE)
                return
        try:
            if handler.response_streaming:
                behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
                self._stream(rpc, behavior(request, rpc))
                body = None
            else:
                behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
                body = self._serialized(handler, behavior(request, rpc))
        except _Aborted as aborted:
            rpc.finish(aborted.code, aborted.details)
        except Exception as err:
            log.exception("A gRPC handler failed", method=rpc.method)
            rpc.finish(grpc.StatusCode.UNKNOWN, f"Exception calling application: {err}")
        else:
            rpc.finish(grpc.StatusCode.OK, body=body)

    @staticmethod
    def _serialized(handler: Any, response: Any) -> bytes:
        serialize = handler.response_serializer
        return serialize(response) if serialize else response  # type: ignore[no-any-return]

    def _stream(self, rpc: _Rpc, responses: Iterator[Any]) -> None:
        try:
            for response in responses:
                if not rpc.send(self._serialized(rpc.handler, response)):
                    return
        finally:
            close = getattr(responses, "close", None)
            if close is not None:
                close()

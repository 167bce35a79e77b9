"""The hashicorp/go-plugin host contract, as SPIRE drives it (see the wire spec, sections 1-3 and 8).

This module knows nothing of keys or AWS. `serve()` starts a plaintext gRPC server on a unix socket in a
private directory, prints the handshake line, serves go-plugin's own services next to the caller's, and
returns once the host asks for shutdown, the process gets SIGTERM, or the process the host started dies.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Collection, Iterator
from typing import Any

import grpc

from plugin.bundle import Launcher
from plugin.log import get_logger
from plugin.rpcserver import Server
from proto_gen.goplugin import (
    broker_pb2,
    broker_pb2_grpc,
    controller_pb2,
    controller_pb2_grpc,
    stdio_pb2,
    stdio_pb2_grpc,
)
from proto_gen.health import health_pb2, health_pb2_grpc

CORE_PROTOCOL_VERSION = 1
APP_PROTOCOL_VERSION = 1
# Each long-lived stream (broker, stdio, health watch) holds a worker for the plugin's whole life; the rest
# serve SPIRE's concurrent KeyManager calls.
MAX_WORKERS = 32
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
PARENT_POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1

log = get_logger("goplugin")


class Stopper:
    """One event that every reason to stop sets, and every long-lived stream waits on."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason = ""

    def stop(self, reason: str) -> None:
        if not self.event.is_set():
            self.reason = reason
            self.event.set()

    def wait_or_cancelled(self, context: grpc.ServicerContext) -> None:
        cancelled = threading.Event()
        context.add_callback(cancelled.set)
        while not (cancelled.is_set() or self.event.is_set()):
            cancelled.wait(PARENT_POLL_SECONDS)


# The broker id under which SPIRE announces the server of its host services (spire-plugin-sdk's
# HostServiceProviderID).
HOST_SERVICES_ID = 1


class HostServices:
    """Where SPIRE serves its host services (Metrics among them): the address it announces once on the
    broker stream, right after connecting. The plugin dials it as a plain gRPC client."""

    def __init__(self) -> None:
        self._announced = threading.Event()
        self._target: str | None = None

    def announce(self, info: broker_pb2.ConnInfo) -> None:
        if info.service_id != HOST_SERVICES_ID or self._announced.is_set():
            return
        if info.network == "unix":
            self._target = f"unix:{info.address}"
        elif info.network == "tcp":
            self._target = info.address
        else:
            log.warn("Host services announced on an unknown network", network=info.network)
        self._announced.set()

    def target(self, timeout: float) -> str | None:
        """The gRPC target of SPIRE's host services, waiting up to `timeout` for the announcement (it may
        come just after Init); None when none came."""
        self._announced.wait(timeout)
        return self._target


class _Broker(broker_pb2_grpc.GRPCBrokerServicer):
    """SPIRE announces its host-services server here once; the stream must stay open for the plugin's
    whole life or plugin loading fails."""

    def __init__(self, host_services: HostServices) -> None:
        self._host_services = host_services

    def StartStream(
        self, request_iterator: Iterator[broker_pb2.ConnInfo], context: grpc.ServicerContext
    ) -> Iterator[broker_pb2.ConnInfo]:
        for info in request_iterator:
            log.trace("Broker connection info received", service_id=info.service_id, network=info.network)
            self._host_services.announce(info)
        return
        yield  # a generator that never answers


class _Stdio(stdio_pb2_grpc.GRPCStdioServicer):
    """Logs go straight to stderr, so nothing is ever forwarded here; the stream just stays open."""

    def __init__(self, stopper: Stopper) -> None:
        self._stopper = stopper

    def StreamStdio(self, request: Any, context: grpc.ServicerContext) -> Iterator[stdio_pb2.StdioData]:
        self._stopper.wait_or_cancelled(context)
        return
        yield


class _Controller(controller_pb2_grpc.GRPCControllerServicer):
    def __init__(self, stopper: Stopper) -> None:
        self._stopper = stopper

    def Shutdown(self, request: controller_pb2.Empty, context: grpc.ServicerContext) -> controller_pb2.Empty:
        # Answer first: SPIRE waits only 2 s for the process to go before it sends SIGKILL.
        context.add_callback(lambda: self._stopper.stop("host requested shutdown"))
        return controller_pb2.Empty()


class _Health(health_pb2_grpc.HealthServicer):
    _SERVED = ("", "plugin")

    def __init__(self, stopper: Stopper) -> None:
        self._stopper = stopper

    def _status(self, service: str) -> health_pb2.HealthCheckResponse:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if service in self._SERVED
            else health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        )
        return health_pb2.HealthCheckResponse(status=status)

    def Check(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        return self._status(request.service)

    def Watch(
        self, request: health_pb2.HealthCheckRequest, context: grpc.ServicerContext
    ) -> Iterator[health_pb2.HealthCheckResponse]:
        yield self._status(request.service)
        self._stopper.wait_or_cancelled(context)


def negotiate_protocol(environ: dict[str, str]) -> int | None:
    """The app protocol version to speak, or None when the host offers none we know."""
    offered = environ.get("PLUGIN_PROTOCOL_VERSIONS", "")
    if not offered:
        return APP_PROTOCOL_VERSION
    versions = {v.strip() for v in offered.split(",")}
    return APP_PROTOCOL_VERSION if str(APP_PROTOCOL_VERSION) in versions else None


def handshake_line(socket_path: str, app_version: int = APP_PROTOCOL_VERSION) -> str:
    # No sixth field: go-plugin would take a long one for a TLS certificate.
    return f"{CORE_PROTOCOL_VERSION}|{app_version}|unix|{socket_path}|grpc\n"


def stop_on_sigterm(stopper: Stopper) -> None:
    """SIGTERM stops the plugin. A Python signal handler runs in the main thread between two bytecodes, maybe
    while that thread holds the stop event's own lock (inside Event.wait), so it must not touch the event: the
    handler does nothing, and a thread woken by the interpreter's wake-up pipe (written from C, lock-free)
    sets it. Call from the main thread."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end)
    signal.signal(signal.SIGTERM, lambda *_: None)

    def wait_for_sigterm() -> None:
        while data := os.read(read_end, 64):
            if signal.SIGTERM in data:
                stopper.stop("SIGTERM")
                return

    threading.Thread(target=wait_for_sigterm, name="sigterm", daemon=True).start()


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when our parent dies, at once (it is polled too, in case it died first)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) is unavailable; relying on polling the parent pid")


def _watch_launcher(launcher: Launcher, stopper: Stopper) -> None:
    while not stopper.event.wait(PARENT_POLL_SECONDS):
        if not launcher.running():
            stopper.stop("the process the host started exited")


def serve(
    register_services: Callable[[Server], None],
    on_stop: Callable[[], None] = lambda: None,
    stdout: Any = None,
    host_services: HostServices | None = None,
    quick_methods: Collection[str] = (),
) -> int:
    """Serve until told to stop; returns the process exit code. `host_services` learns where SPIRE
    serves its host services; `quick_methods` never wait (see `plugin.rpcserver`)."""
    launcher = Launcher.of_this_process()
    out = stdout or sys.stdout
    app_version = negotiate_protocol(dict(os.environ))
    if app_version is None:
        log.error(
            "Host offers no supported plugin protocol version",
            offered=os.environ.get("PLUGIN_PROTOCOL_VERSIONS", ""),
            supported=str(APP_PROTOCOL_VERSION),
        )
        return 1

    stopper = Stopper()
    # The host handles Ctrl-C for its whole process group and shuts us down through the controller.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_on_sigterm(stopper)
    _die_with_parent()

    socket_dir = tempfile.mkdtemp(prefix="plugin")  # mkdtemp makes it 0700
    socket_path = os.path.join(socket_dir, "plugin.sock")
    server = Server(quick_methods=(HEALTH_CHECK, *quick_methods), max_workers=MAX_WORKERS)
    try:
        broker_pb2_grpc.add_GRPCBrokerServicer_to_server(_Broker(host_services or HostServices()), server)
        stdio_pb2_grpc.add_GRPCStdioServicer_to_server(_Stdio(stopper), server)
        controller_pb2_grpc.add_GRPCControllerServicer_to_server(_Controller(stopper), server)
        health_pb2_grpc.add_HealthServicer_to_server(_Health(stopper), server)
        register_services(server)
        server.add_insecure_port(f"unix:{socket_path}")
        server.start()

        out.write(handshake_line(socket_path, app_version))
        out.flush()
        log.debug("Plugin serving", socket=socket_path, pid=os.getpid(), launcher=launcher.pid)

        threading.Thread(
            target=_watch_launcher, args=(launcher, stopper), name="launcher-watch", daemon=True
        ).start()
        if not launcher.running():
            stopper.stop("the process the host started exited")
        while not stopper.event.wait(PARENT_POLL_SECONDS):
            pass
        log.debug("Plugin stopping", reason=stopper.reason)
        on_stop()
        server.stop(grace=0.5).wait(1.0)
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)
        launcher.remove_if_gone()
    return 0

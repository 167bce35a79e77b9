"""The emulator server: moto's WSGI app, patched, behind the fault-injection middleware, on 127.0.0.1.

Importing this module imports moto (about two seconds); the control client (control.py) does not.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from moto.moto_api._internal.models import moto_api_backend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import BaseWSGIServer, make_server

from .clock import CLOCK
from .middleware import EmulatorMiddleware
from .patches import apply_kms_patches

# Loopback only: the emulator accepts any credentials, so it must not be reachable from elsewhere
# (moto's own server binds 0.0.0.0 by default).
LISTEN_HOST = "127.0.0.1"

# Backends whose Flask apps are built before the server reports ready, so the first KMS/STS call of a
# test is not the one that pays for it (about half a second).
_WARM_BACKENDS = ("kms", "sts")


class _RequestHandler(MotoRequestHandler):
    """moto's handler (keeps underscored headers) without a log line per request unless verbose."""

    verbose = False

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if self.verbose:
            super().log_request(code, size)


def _reset_backends() -> None:
    # Same as POST /moto-api/reset: every moto backend back to empty.
    moto_api_backend.reset()


def build_app() -> EmulatorMiddleware:
    """The complete WSGI application: patches applied, moto dispatcher wrapped by the middleware."""
    apply_kms_patches()
    dispatcher = DomainDispatcherApplication(create_backend_app)
    for backend in _WARM_BACKENDS:
        # The dispatcher caches one Flask app per backend name; filling the cache early is only a
        # speed-up, the dispatcher builds missing ones on demand.
        with dispatcher.lock:
            if backend not in dispatcher.app_instances:
                dispatcher.app_instances[backend] = create_backend_app(backend)  # type: ignore[arg-type]
    return EmulatorMiddleware(dispatcher, CLOCK, _reset_backends)


class EmulatorServer:
    """Serves the emulator on 127.0.0.1:port (0 = any free port) from a background thread."""

    def __init__(self, port: int = 0, verbose: bool = False) -> None:
        self._requested_port = port
        self._verbose = verbose
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.app: EmulatorMiddleware | None = None

    def start(self) -> None:
        if not self._verbose:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)
        handler: Any = type("EmulatorRequestHandler", (_RequestHandler,), {"verbose": self._verbose})
        self.app = build_app()
        self._server = make_server(
            LISTEN_HOST, self._requested_port, self.app, threaded=True, request_handler=handler
        )
        # A short poll interval keeps shutdown (SIGTERM -> exit) quick.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="kms-emulator",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("emulator server not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{LISTEN_HOST}:{self.port}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

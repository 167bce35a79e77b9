"""A loopback TCP proxy that a test can take down and bring back, to simulate KMS becoming unreachable
(connections refused) and reachable again, without losing the emulator's state behind it. Given a server
TLS context, it terminates TLS in front of a plain-HTTP emulator, as HTTPS to KMS."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from types import TracebackType


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, tls: ssl.SSLContext | None = None) -> None:
        self._target = (target_host, target_port)
        self._tls = tls
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://127.0.0.1:{self.port}"

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="tcp-proxy", daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and cut the open ones, as an unreachable endpoint does."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            # The TLS handshake of one client must not hold up the others.
            threading.Thread(target=self._serve, args=(listener, client), daemon=True).start()

    def _serve(self, listener: socket.socket, client: socket.socket) -> None:
        try:
            if self._tls is not None:
                client.settimeout(10)
                client = self._tls.wrap_socket(client, server_side=True)
                client.settimeout(None)
            upstream = socket.create_connection(self._target, timeout=5)
        except OSError:  # ssl.SSLError included: a client that refuses our certificate
            client.close()
            return
        with self._lock:
            if self._listener is not listener:
                client.close()
                upstream.close()
                return
            self._connections.update((client, upstream))
        for source, sink in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.down()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

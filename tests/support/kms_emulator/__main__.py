"""python -m tests.support.kms_emulator [--port N] [--verbose] [--exit-on-stdin-eof]

Prints exactly one line, ``KMS emulator listening on http://127.0.0.1:PORT``, once it accepts
connections, then serves until SIGTERM or SIGINT and exits with status 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType

READY_LINE_PREFIX = "KMS emulator listening on "


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.support.kms_emulator", description=__doc__)
    parser.add_argument(
        "--port", type=int, default=0, help="TCP port on 127.0.0.1 (default 0: any free port)"
    )
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument(
        "--exit-on-stdin-eof",
        action="store_true",
        help="also stop when stdin closes (used by start_emulator_process so that an emulator never "
        "outlives a test runner that died without stopping it)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    return args


def _watch_stdin(stop: threading.Event) -> None:
    # os.read, not sys.stdin: a daemon thread blocked inside a buffered reader aborts interpreter shutdown.
    try:
        while os.read(0, 4096):
            pass
    except OSError:
        pass
    stop.set()


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    from .server import EmulatorServer  # imports moto: after the signal handlers are in place

    server = EmulatorServer(port=args.port, verbose=args.verbose)
    server.start()
    try:
        print(f"{READY_LINE_PREFIX}{server.url}", flush=True)
        # The ready line is the only thing on stdout; anything moto prints later goes to stderr.
        sys.stdout = sys.stderr
        if args.exit_on_stdin_eof:
            threading.Thread(target=_watch_stdin, args=(stop,), name="stdin-watch", daemon=True).start()
        # Event.wait with a timeout so the main thread wakes up to run the Python signal handlers.
        while not stop.wait(0.1):
            pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

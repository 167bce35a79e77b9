"""Test-side API: start the emulator as a subprocess and steer it over HTTP.

Standard library only (boto3 is imported lazily by the client factories), and moto is never imported
here: the emulator runs in its own process, so its moto patches never leak into the test process.
"""

from __future__ import annotations

import json
import queue
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Any

_PROJECT_ROOT = Path(__file__).resolve().parents[3]
_MODULE = "tests.support.kms_emulator"
_READY_LINE = re.compile(r"^KMS emulator listening on (http://127\.0\.0\.1:\d+)$")

# Dummy credentials: moto accepts any; these are the conventional ones for its default account.
DUMMY_ACCESS_KEY_ID = "testing"
DUMMY_SECRET_ACCESS_KEY = "testing"


class EmulatorError(RuntimeError):
    """The emulator could not be started, or a control call failed."""


class EmulatorControl:
    """Client for the emulator's `/_emulator/` control API."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._timeout = timeout
        # The emulator is on loopback: never route control calls through an HTTP(S)_PROXY.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, resource: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(
            f"{self.url}/_emulator/{resource}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise EmulatorError(f"{method} /_emulator/{resource}: HTTP {exc.code}: {detail}") from exc

    def add_fault(
        self,
        operation: str,
        error: str | None = "ThrottlingException",
        status: int = 400,
        message: str = "Rate exceeded",
        count: int = 1,
        delay_ms: int = 0,
        probability: float = 1.0,
        body: str | None = None,
    ) -> None:
        """Make the next `count` calls of `operation` ("Sign", an STS Action, or "*") fail with `error`
        after `delay_ms`; error=None only delays the real answer; count=-1 lasts until clear_faults();
        probability < 1 faults only that share of the matching calls. `body` (with error=None) answers
        `status` with that raw body instead, as a proxy or load balancer in front of KMS would."""
        self._request(
            "POST",
            "faults",
            {
                "operation": operation,
                "error": error,
                "status": status,
                "message": message,
                "count": count,
                "delay_ms": delay_ms,
                "probability": probability,
                "body": body,
            },
        )

    def faults(self) -> list[dict[str, Any]]:
        """The faults still queued, in matching order."""
        return list(self._request("GET", "faults")["faults"])

    def clear_faults(self) -> None:
        self._request("DELETE", "faults")

    def calls(self) -> dict[str, int]:
        """Calls received per operation since start or the last reset, faulted ones included."""
        return {str(k): int(v) for k, v in self._request("GET", "calls").items()}

    def reset_calls(self) -> None:
        """Zero the counters and forget the callers."""
        self._request("DELETE", "calls")

    def callers(self) -> list[dict[str, Any]]:
        """Who made each AWS call since start or the last reset, oldest first (the last 10,000): operation,
        access_key_id (None when unsigned), session_token (sent or not), and for STS calls that hand out
        credentials issued_access_key_id, role_arn, web_identity_token_sha256 and
        issued_secret_access_key_sha256 (secrets only as their SHA-256)."""
        return list(self._request("GET", "callers"))

    def access_key_ids(self, operation: str) -> list[str | None]:
        """The access key id of each call of `operation`, in order."""
        return [c["access_key_id"] for c in self.callers() if c["operation"] == operation]

    def reset(self) -> None:
        """Empty every moto backend, clear faults and counters, and set the clock offset back to 0."""
        self._request("POST", "reset")

    def set_clock_offset(self, seconds: float) -> None:
        """Emulator "now" = real now + seconds (absolute, not cumulative)."""
        self._request("POST", "clock", {"offset_seconds": seconds})

    def set_sts_duration(self, seconds: int | None) -> None:
        """AssumeRole and AssumeRoleWithWebIdentity hand out credentials that expire after `seconds`
        (900 to 43200), whatever the request asked; None: as asked (moto's default, 1 hour). reset() too."""
        self._request("POST", "sts", {"duration_seconds": seconds})

    def clock_offset(self) -> float:
        return float(self._request("GET", "clock")["offset_seconds"])

    def kms_client(self, region: str = "us-east-1", max_attempts: int = 1) -> Any:
        """A boto3 KMS client on the emulator with dummy credentials.

        SDK retries are off by default (max_attempts=1) so that a test sees exactly the faults it injects.
        """
        return self._client("kms", region, max_attempts)

    def sts_client(self, region: str = "us-east-1", max_attempts: int = 1) -> Any:
        return self._client("sts", region, max_attempts)

    def _client(self, service: str, region: str, max_attempts: int) -> Any:
        import boto3
        from botocore.config import Config

        # A session of its own, so AWS_PROFILE or credentials in the environment cannot leak in.
        session = boto3.session.Session(
            aws_access_key_id=DUMMY_ACCESS_KEY_ID,
            aws_secret_access_key=DUMMY_SECRET_ACCESS_KEY,
            region_name=region,
        )
        config = Config(retries={"total_max_attempts": max_attempts, "mode": "standard"})
        return session.client(service, endpoint_url=self.url, config=config)


class EmulatorProcess:
    """A running `python -m tests.support.kms_emulator` subprocess. Use as a context manager or stop()."""

    def __init__(self, process: subprocess.Popen[str], url: str, stdout_tail: deque[str]) -> None:
        self.process = process
        self.url = url
        self._stdout_tail = stdout_tail

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def control(self) -> EmulatorControl:
        return EmulatorControl(self.url)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait (SIGKILL after `timeout`); returns the exit status. Safe to call twice."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        return int(self.process.returncode)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _pump_stdout(stream: IO[str], lines: queue.Queue[str | None], tail: deque[str]) -> None:
    """Hands lines to the starter, then keeps draining so the emulator can never block on a full pipe."""
    try:
        for line in stream:
            tail.append(line.rstrip("\n"))
            lines.put(line.rstrip("\n"))
    except (OSError, ValueError):
        pass
    lines.put(None)


def start_emulator_process(port: int = 0, timeout: float = 30.0, verbose: bool = False) -> EmulatorProcess:
    """Start the emulator in a subprocess and wait (up to `timeout` s) for it to listen.

    stderr is inherited, so the emulator's logs land where the test runner captures the test's output.
    stdin is a pipe the emulator watches: if this process dies without stop(), the emulator exits too.
    """
    command = [sys.executable, "-m", _MODULE, "--port", str(port), "--exit-on-stdin-eof"]
    if verbose:
        command.append("--verbose")
    process = subprocess.Popen(
        command,
        cwd=_PROJECT_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )
    assert process.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    tail: deque[str] = deque(maxlen=50)
    threading.Thread(
        target=_pump_stdout, args=(process.stdout, lines, tail), name="kms-emulator-stdout", daemon=True
    ).start()

    emulator = EmulatorProcess(process, "", tail)
    try:
        line = lines.get(timeout=timeout)
    except queue.Empty:
        emulator.stop()
        raise EmulatorError(f"KMS emulator did not report ready within {timeout} s") from None
    match = _READY_LINE.match(line or "")
    if match is None:
        status = emulator.stop()
        raise EmulatorError(
            f"KMS emulator failed to start (exit status {status}, first stdout line {line!r}; see its stderr)"
        )
    emulator.url = match.group(1)
    return emulator

"""WSGI layer in front of moto: fault injection, call counting and the `/_emulator/` control API.

It speaks plain HTTP + JSON so that any client (the Python tests, a Go test binary, curl) can steer the
emulator on the same port it talks KMS to. Standard library only.

Control API (all bodies JSON):
  GET    /_emulator/health  -> {"status": "ok"}
  GET    /_emulator/faults  -> {"faults": [...queued faults...]}
  POST   /_emulator/faults  {"operation": "Sign", "error": "ThrottlingException", "status": 400,
                             "message": "Rate exceeded", "count": 3, "delay_ms": 0}
                            or, as a proxy in front of KMS would answer, a raw body instead of an error:
                            {"operation": "Sign", "status": 503, "body": ""} (any status from 200)
  DELETE /_emulator/faults
  GET    /_emulator/calls   -> {"Sign": 12, "CreateKey": 2, ...}
  DELETE /_emulator/calls   (and the callers below)
  GET    /_emulator/callers -> [{"operation": "Sign", "access_key_id": "ASIA...", "session_token": true,
                               "issued_access_key_id": null, "role_arn": null,
                               "web_identity_token_sha256": null, "issued_secret_access_key_sha256": null},
                               ...] (oldest first, the last 10,000)
  POST   /_emulator/reset   (moto state, faults, counters and clock)
  GET    /_emulator/clock   -> {"offset_seconds": 0.0, "now": 1700000000.0}
  POST   /_emulator/clock   {"offset_seconds": 1209600}
  GET    /_emulator/sts     -> {"duration_seconds": null}
  POST   /_emulator/sts     {"duration_seconds": 920}: AssumeRole and AssumeRoleWithWebIdentity hand out
                            credentials that expire after that long, whatever the request asked (null: as
                            asked, else moto's 1 hour), as a role whose maximum session is short would
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlencode
from xml.sax.saxutils import escape

from .clock import EmulatorClock

WSGIEnviron = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[WSGIEnviron, StartResponse], Iterable[bytes]]

CONTROL_PREFIX = "/_emulator/"
ANY_OPERATION = "*"
_MAX_DELAY_MS = 600_000
_MAX_FORM_BODY = 1 << 20


@dataclass
class Fault:
    operation: str  # KMS operation ("Sign"), STS Action ("AssumeRole") or "*" for any
    error: str | None  # AWS error code; None = latency only, then the real answer
    status: int
    message: str
    count: int  # calls still to fault; -1 = until cleared
    delay_ms: int
    probability: float = 1.0  # share of matching calls this fault hits; the others pass untouched
    body: str | None = None  # sent as it is (text/html), as a proxy would, instead of an AWS error

    def matches(self, operation: str) -> bool:
        return self.operation in (ANY_OPERATION, operation)


class FaultQueue:
    """Faults in the order they were added; a call consumes the first one that matches it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._faults]

    def take(self, operation: str) -> Fault | None:
        with self._lock:
            for index, fault in enumerate(self._faults):
                if not fault.matches(operation):
                    continue
                if fault.probability < 1.0 and random.random() >= fault.probability:
                    return None
                taken = Fault(**asdict(fault))
                if fault.count > 0:
                    fault.count -= 1
                    if fault.count == 0:
                        del self._faults[index]
                return taken
        return None


class CallCounter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def increment(self, operation: str) -> None:
        with self._lock:
            self._counts[operation] = self._counts.get(operation, 0) + 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()


# SigV4: "AWS4-HMAC-SHA256 Credential=<access key id>/<date>/<region>/<service>/aws4_request, ...".
_SIGV4_ACCESS_KEY = re.compile(r"Credential=([^/,\s]+)/")
# What STS hands out, in its XML answer to AssumeRole, AssumeRoleWithWebIdentity and GetSessionToken.
_ISSUED_ACCESS_KEY = re.compile(rb"<AccessKeyId>([^<]+)</AccessKeyId>")
_ISSUED_SECRET_KEY = re.compile(rb"<SecretAccessKey>([^<]+)</SecretAccessKey>")
_MAX_CALLERS = 10_000
# The operations whose credentials' lifetime POST /_emulator/sts sets.
_ROLE_OPERATIONS = ("AssumeRole", "AssumeRoleWithWebIdentity")


@dataclass
class Caller:
    """Who made one AWS call: the access key id it was signed with (None when unsigned, as
    AssumeRoleWithWebIdentity is), whether it carried a session token, and for STS calls that hand out
    credentials, which ones and for what. Secrets (web identity tokens, the secret keys handed out) are kept
    only as their SHA-256: enough for a test to tell which token reached STS, or to find a secret in a log."""

    operation: str
    access_key_id: str | None
    session_token: bool
    issued_access_key_id: str | None = None
    role_arn: str | None = None
    web_identity_token_sha256: str | None = None
    issued_secret_access_key_sha256: str | None = None


class CallerLog:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._callers: deque[Caller] = deque(maxlen=_MAX_CALLERS)

    def add(self, caller: Caller) -> None:
        with self._lock:
            self._callers.append(caller)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(c) for c in self._callers]

    def reset(self) -> None:
        with self._lock:
            self._callers.clear()


def _form_params(environ: WSGIEnviron) -> dict[str, list[str]]:
    """A query-protocol call's parameters; aws_operation has already put its body in a BytesIO."""
    params = parse_qs(str(environ.get("QUERY_STRING", "")))
    stream = environ.get("wsgi.input")
    if isinstance(stream, io.BytesIO):
        params.update(parse_qs(stream.getvalue().decode("utf-8", "replace")))
    return params


def _set_form_param(environ: WSGIEnviron, name: str, value: str) -> None:
    """Rewrite one parameter of a query-protocol call's form body before moto reads it."""
    params = _form_params(environ)
    params[name] = [value]
    body = urlencode(params, doseq=True).encode("utf-8")
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ["CONTENT_TYPE"] = "application/x-www-form-urlencoded; charset=utf-8"


def caller_of(environ: WSGIEnviron, operation: str) -> Caller:
    match = _SIGV4_ACCESS_KEY.search(str(environ.get("HTTP_AUTHORIZATION", "")))
    caller = Caller(
        operation=operation,
        access_key_id=match.group(1) if match else None,
        session_token=bool(environ.get("HTTP_X_AMZ_SECURITY_TOKEN")),
    )
    if not _is_json_protocol(environ):
        params = _form_params(environ)
        caller.role_arn = params.get("RoleArn", [None])[0]
        token = params.get("WebIdentityToken", [None])[0]
        if token is not None:
            caller.web_identity_token_sha256 = hashlib.sha256(token.encode("utf-8")).hexdigest()
    return caller


class ControlError(Exception):
    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


def _status_line(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return f"{status} Error"


def _read_body(environ: WSGIEnviron, limit: int) -> bytes:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length <= 0:
        return b""
    return bytes(environ["wsgi.input"].read(min(length, limit)))


def aws_operation(environ: WSGIEnviron) -> str | None:
    """The AWS operation a request calls, or None when it is not an AWS API call.

    JSON protocols (KMS) name it in X-Amz-Target ("TrentService.Sign"); query protocols (STS) in the
    Action form field or query parameter.
    """
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return str(target).rsplit(".", 1)[-1]
    action = parse_qs(str(environ.get("QUERY_STRING", ""))).get("Action")
    if action:
        return action[0]
    if str(environ.get("CONTENT_TYPE", "")).startswith("application/x-www-form-urlencoded"):
        body = _read_body(environ, _MAX_FORM_BODY)
        # moto reads the body again: hand it a fresh stream with the same bytes.
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        action = parse_qs(body.decode("utf-8", "replace")).get("Action")
        if action:
            return action[0]
    return None


def _is_json_protocol(environ: WSGIEnviron) -> bool:
    content_type = str(environ.get("CONTENT_TYPE", ""))
    return bool(environ.get("HTTP_X_AMZ_TARGET")) or content_type.startswith("application/x-amz-json")


def _aws_error_response(environ: WSGIEnviron, fault: Fault) -> tuple[str, list[tuple[str, str]], bytes]:
    """The error the real service would send: JSON for KMS (awsJson1_1), XML for STS (awsQuery)."""
    assert fault.error is not None
    request_id = str(uuid.uuid4())
    if _is_json_protocol(environ):
        body = json.dumps({"__type": fault.error, "message": fault.message}).encode("utf-8")
        headers = [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("x-amzn-RequestId", request_id),
            ("x-amzn-ErrorType", fault.error),
        ]
    else:
        kind = "Receiver" if fault.status >= 500 else "Sender"
        body = (
            "<ErrorResponse><Error>"
            f"<Type>{kind}</Type><Code>{escape(fault.error)}</Code><Message>{escape(fault.message)}</Message>"
            f"</Error><RequestId>{request_id}</RequestId></ErrorResponse>"
        ).encode()
        headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
    headers.append(("Content-Length", str(len(body))))
    return _status_line(fault.status), headers, body


def _with_json_content_type(start_response: StartResponse) -> StartResponse:
    """moto labels KMS answers text/html; KMS sends application/x-amz-json-1.1 (strict clients check)."""

    def replacement(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers = [(k, v) for k, v in headers if k.lower() != "content-type"]
        headers.append(("Content-Type", "application/x-amz-json-1.1"))
        return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

    return replacement


def _int_field(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ControlError(400, f"{name} must be an integer")
    return int(value)


def parse_fault(body: Any) -> Fault:
    if not isinstance(body, dict):
        raise ControlError(400, "expected a JSON object")
    operation = body.get("operation")
    if not isinstance(operation, str) or not operation:
        raise ControlError(400, 'operation must be an operation name such as "Sign", or "*"')
    error = body.get("error")
    if error is not None and (not isinstance(error, str) or not error):
        raise ControlError(400, "error must be an AWS error code or null")
    message = body.get("message")
    if message is None:
        message = "Injected by the KMS emulator"
    if not isinstance(message, str):
        raise ControlError(400, "message must be a string")
    status = _int_field(body, "status", 400)
    raw_body = body.get("body")
    # A raw body may come with a success status: a proxy's HTML page is often a 200.
    lowest = 200 if raw_body is not None else 400
    if not lowest <= status <= 599:
        raise ControlError(400, f"status must be an HTTP status from {lowest} to 599")
    count = _int_field(body, "count", 1)
    if count != -1 and count < 1:
        raise ControlError(400, "count must be >= 1, or -1 for until cleared")
    delay_ms = _int_field(body, "delay_ms", 0)
    if not 0 <= delay_ms <= _MAX_DELAY_MS:
        raise ControlError(400, f"delay_ms must be between 0 and {_MAX_DELAY_MS}")
    if raw_body is not None and not isinstance(raw_body, str):
        raise ControlError(400, "body must be a string")
    if raw_body is not None and error is not None:
        raise ControlError(400, "a fault has an error or a raw body, not both")
    if error is None and raw_body is None and delay_ms == 0:
        raise ControlError(400, "a fault needs an error, a body, a delay_ms, or a delay and one of them")
    probability = body.get("probability", 1.0)
    if isinstance(probability, bool) or not isinstance(probability, int | float) or not 0 < probability <= 1:
        raise ControlError(400, "probability must be a number in (0, 1]")
    return Fault(operation, error, status, message, count, delay_ms, float(probability), raw_body)


class EmulatorMiddleware:
    """Wraps the moto WSGI app.

    moto's backends are not thread-safe (a ListKeys iterating the key table while a CreateKey adds to it
    fails), and the server is threaded, so calls into moto are serialised with one lock. Injected delays
    sleep outside that lock so a slow call does not stall the others.
    """

    def __init__(self, app: WSGIApp, clock: EmulatorClock, reset_backends: Callable[[], None]) -> None:
        self._app = app
        self._clock = clock
        self._reset_backends = reset_backends
        self._moto_lock = threading.RLock()
        self.faults = FaultQueue()
        self.calls = CallCounter()
        self.callers = CallerLog()
        self.sts_duration_seconds: int | None = None

    def __call__(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        path = str(environ.get("PATH_INFO", ""))
        if path.startswith(CONTROL_PREFIX) or path == CONTROL_PREFIX.rstrip("/"):
            return self._control(environ, start_response, path)

        operation = aws_operation(environ)
        caller: Caller | None = None
        if operation is not None:
            self.calls.increment(operation)  # faulted calls count too: the client did send them
            caller = caller_of(environ, operation)
            self.callers.add(caller)
            if operation in _ROLE_OPERATIONS and self.sts_duration_seconds is not None:
                _set_form_param(environ, "DurationSeconds", str(self.sts_duration_seconds))
            fault = self.faults.take(operation)
            if fault is not None:
                if fault.delay_ms:
                    time.sleep(fault.delay_ms / 1000.0)
                if fault.body is not None:
                    raw = fault.body.encode("utf-8")
                    headers = [("Content-Type", "text/html"), ("Content-Length", str(len(raw)))]
                    start_response(_status_line(fault.status), headers)
                    return [raw]
                if fault.error is not None:
                    status, headers, body = _aws_error_response(environ, fault)
                    start_response(status, headers)
                    return [body]
        answer = self._call_moto(environ, start_response)
        if caller is not None and caller.operation.startswith(("AssumeRole", "GetSessionToken")):
            body = b"".join(answer)
            issued = _ISSUED_ACCESS_KEY.search(body)
            caller.issued_access_key_id = issued.group(1).decode() if issued else None
            secret = _ISSUED_SECRET_KEY.search(body)
            if secret is not None:
                caller.issued_secret_access_key_sha256 = hashlib.sha256(secret.group(1)).hexdigest()
        return answer

    def _call_moto(self, environ: WSGIEnviron, start_response: StartResponse) -> Iterable[bytes]:
        if _is_json_protocol(environ):
            start_response = _with_json_content_type(start_response)
        with self._moto_lock:
            result = self._app(environ, start_response)
            try:
                # Materialise under the lock: Flask may still be producing the body while iterating.
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()

    # ----------------------------------------------------------------------------------------------

    def _control(self, environ: WSGIEnviron, start_response: StartResponse, path: str) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        resource = path[len(CONTROL_PREFIX) :].strip("/")
        try:
            status, payload = self._dispatch_control(method, resource, environ)
            headers: list[tuple[str, str]] = []
        except ControlError as exc:
            status, payload, headers = exc.status, {"error": exc.message}, exc.headers
        body = json.dumps(payload).encode("utf-8")
        headers = [*headers, ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response(_status_line(status), headers)
        return [body]

    def _dispatch_control(self, method: str, resource: str, environ: WSGIEnviron) -> tuple[int, Any]:
        routes: dict[str, dict[str, Callable[[WSGIEnviron], Any]]] = {
            "health": {"GET": lambda _: {"status": "ok"}},
            "faults": {
                "GET": lambda _: {"faults": self.faults.snapshot()},
                "POST": self._post_fault,
                "DELETE": self._delete_faults,
            },
            "calls": {"GET": lambda _: self.calls.snapshot(), "DELETE": self._delete_calls},
            "callers": {"GET": lambda _: self.callers.snapshot()},
            "reset": {"POST": self._post_reset},
            "clock": {"GET": lambda _: self._clock_state(), "POST": self._post_clock},
            "sts": {"GET": lambda _: self._sts_state(), "POST": self._post_sts},
        }
        handlers = routes.get(resource)
        if handlers is None:
            raise ControlError(404, f"no such emulator resource: {CONTROL_PREFIX}{resource}")
        handler = handlers.get(method)
        if handler is None:
            allowed = ", ".join(sorted(handlers))
            raise ControlError(405, f"{method} not allowed here; use {allowed}", [("Allow", allowed)])
        return 200, handler(environ)

    @staticmethod
    def _json_body(environ: WSGIEnviron) -> Any:
        raw = _read_body(environ, _MAX_FORM_BODY)
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ControlError(400, f"body is not JSON: {exc}") from exc

    def _post_fault(self, environ: WSGIEnviron) -> Any:
        self.faults.add(parse_fault(self._json_body(environ)))
        return {"faults": self.faults.snapshot()}

    def _delete_faults(self, _: WSGIEnviron) -> Any:
        self.faults.clear()
        return {"faults": []}

    def _delete_calls(self, _: WSGIEnviron) -> Any:
        self.calls.reset()
        self.callers.reset()
        return {}

    def _post_reset(self, _: WSGIEnviron) -> Any:
        self.faults.clear()
        with self._moto_lock:
            self._reset_backends()
        self._clock.reset()
        self.calls.reset()
        self.callers.reset()
        self.sts_duration_seconds = None
        return {"reset": True}

    def _clock_state(self) -> dict[str, float]:
        return {"offset_seconds": self._clock.offset_seconds, "now": self._clock.now()}

    def _post_clock(self, environ: WSGIEnviron) -> Any:
        body = self._json_body(environ)
        offset = body.get("offset_seconds") if isinstance(body, dict) else None
        if isinstance(offset, bool) or not isinstance(offset, int | float):
            raise ControlError(400, "offset_seconds must be a number")
        self._clock.set_offset(float(offset))
        return self._clock_state()

    def _sts_state(self) -> dict[str, int | None]:
        return {"duration_seconds": self.sts_duration_seconds}

    def _post_sts(self, environ: WSGIEnviron) -> Any:
        body = self._json_body(environ)
        if not isinstance(body, dict) or "duration_seconds" not in body:
            raise ControlError(400, 'expected {"duration_seconds": N or null}')
        duration = body["duration_seconds"]
        if duration is not None:
            # STS's own bounds for a role session: 15 minutes to 12 hours.
            duration = _int_field(body, "duration_seconds", 0)
            if not 900 <= duration <= 43200:
                raise ControlError(400, "duration_seconds must be from 900 to 43200, or null")
        self.sts_duration_seconds = duration
        return self._sts_state()

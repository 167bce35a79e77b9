"""Fake AWS credential sources on 127.0.0.1, for the default credential chain of the frozen binary:

- `FakeIMDS`: the EC2 instance metadata service, IMDSv2 only (as with `HttpTokens=required`): a session
  token from `PUT /latest/api/token`, then the role name from
  `GET /latest/meta-data/iam/security-credentials/` and its credentials from `GET .../<role>`. Point
  botocore at it with `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
- `FakeContainerCredentials`: the EKS Pod Identity agent (and ECS's endpoint): `GET <path>` answers
  credentials only when the `Authorization` header is the pod's token. Point botocore at it with
  `AWS_CONTAINER_CREDENTIALS_FULL_URI` and `AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE`.

Each fetch of credentials hands out a new set (`served`), with recognisable, unique values, so a test can
tell which set a KMS call was signed with (the emulator's `callers`). The first set lives `first_lifetime`,
the later ones `later_lifetime`: a first set close to botocore's refresh window makes the client fetch a
second one after a short wait. Every server started is stopped by `stop()` or the `with` block.
"""

from __future__ import annotations

import json
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

HOST = "127.0.0.1"
ACCOUNT_ID = "123456789012"
INSTANCE_ROLE = "spire-server-node"
# botocore refreshes credentials that expire within 15 minutes (its advisory window) when next used.
BOTOCORE_REFRESH_WINDOW = timedelta(minutes=15)
LONG_LIFETIME = timedelta(hours=6)


def _expiration(at: datetime) -> str:
    # As IMDS and the Pod Identity agent write it: ISO 8601, UTC, whole seconds, Z.
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CredentialSet:
    """One set of temporary credentials a source handed out."""

    number: int  # 1 for the first set handed out
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime

    @property
    def secrets(self) -> tuple[str, str]:
        """What must never appear in a log."""
        return self.secret_access_key, self.session_token


class _Sets:
    """Mints a new set per fetch and remembers what was served."""

    def __init__(self, tag: str, first_lifetime: timedelta, later_lifetime: timedelta) -> None:
        self._tag = tag
        self._first = first_lifetime
        self._later = later_lifetime
        self._lock = threading.Lock()
        self.served: list[CredentialSet] = []

    def next(self) -> CredentialSet:
        with self._lock:
            number = len(self.served) + 1
            lifetime = self._first if number == 1 else self._later
            served = CredentialSet(
                number=number,
                # ASIA + 16 characters, as temporary access key ids are; the tag and number make it readable.
                access_key_id=f"ASIA{self._tag}{number:04d}".ljust(20, "X")[:20],
                secret_access_key=secrets.token_urlsafe(30)[:40],
                session_token=f"{self._tag}-session-{number}-{secrets.token_urlsafe(48)}",
                expiration=datetime.now(UTC) + lifetime,
            )
            self.served.append(served)
            return served


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)


class _Server:
    """A threaded HTTP server on 127.0.0.1 (any free port) serving `self._answer`."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with outer._lock:
                    outer.requests.append(Request(self.command, self.path, dict(self.headers.items())))
                status, content_type, body = outer._answer(self.command, self.path, self.headers)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_PUT = _serve

            def log_message(self, format: str, *args: Any) -> None:
                # Quiet: request lines would only repeat what `requests` records.
                return

        self._httpd = ThreadingHTTPServer((HOST, 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._httpd.server_address[1]}"

    def _answer(self, method: str, path: str, headers: Any) -> tuple[int, str, bytes]:
        raise NotImplementedError

    def stop(self) -> None:
        """Stop serving and wait for the server's thread; safe to call twice."""
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._httpd.server_close()

    def __enter__(self) -> _Server:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _text(status: int, text: str) -> tuple[int, str, bytes]:
    return status, "text/plain", text.encode()


class FakeIMDS(_Server):
    """EC2's instance metadata service, IMDSv2 only, with one instance role."""

    TOKEN_PATH = "/latest/api/token"
    CREDENTIALS_PATH = "/latest/meta-data/iam/security-credentials/"

    def __init__(
        self,
        role: str = INSTANCE_ROLE,
        first_lifetime: timedelta = LONG_LIFETIME,
        later_lifetime: timedelta = LONG_LIFETIME,
    ) -> None:
        self.role = role
        self._sets = _Sets("IMDS", first_lifetime, later_lifetime)
        self._tokens: set[str] = set()
        super().__init__()

    @property
    def served(self) -> list[CredentialSet]:
        return list(self._sets.served)

    def _answer(self, method: str, path: str, headers: Any) -> tuple[int, str, bytes]:
        if path == self.TOKEN_PATH:
            if method != "PUT":
                return _text(405, "")
            if not headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                return _text(400, "")  # IMDS refuses a token request without a TTL
            token = secrets.token_urlsafe(32)
            self._tokens.add(token)
            return _text(200, token)
        if method != "GET":
            return _text(405, "")
        if headers.get("X-aws-ec2-metadata-token") not in self._tokens:
            return _text(401, "")  # IMDSv1 is off: no session token, no answer
        if path == self.CREDENTIALS_PATH:
            return _text(200, self.role)
        if path == self.CREDENTIALS_PATH + self.role:
            served = self._sets.next()
            # The document EC2 returns (AWS's "Retrieve security credentials from instance metadata").
            body = {
                "Code": "Success",
                "LastUpdated": _expiration(datetime.now(UTC)),
                "Type": "AWS-HMAC",
                "AccessKeyId": served.access_key_id,
                "SecretAccessKey": served.secret_access_key,
                "Token": served.session_token,
                "Expiration": _expiration(served.expiration),
            }
            return 200, "text/plain", json.dumps(body, indent=2).encode()
        return _text(404, "")

    def __enter__(self) -> FakeIMDS:
        return self


class FakeContainerCredentials(_Server):
    """The EKS Pod Identity agent: credentials for the pod whose token comes in `Authorization`."""

    PATH = "/v1/credentials"

    def __init__(
        self,
        authorization_token: str,
        first_lifetime: timedelta = LONG_LIFETIME,
        later_lifetime: timedelta = LONG_LIFETIME,
    ) -> None:
        self.authorization_token = authorization_token
        self._sets = _Sets("POD", first_lifetime, later_lifetime)
        super().__init__()

    @property
    def served(self) -> list[CredentialSet]:
        return list(self._sets.served)

    @property
    def full_uri(self) -> str:
        return self.url + self.PATH

    def _answer(self, method: str, path: str, headers: Any) -> tuple[int, str, bytes]:
        if method != "GET" or path != self.PATH:
            return _text(404, "")
        if headers.get("Authorization") != self.authorization_token:
            body = {"code": "AccessDeniedException", "message": "the service account token is not valid"}
            return 401, "application/json", json.dumps(body).encode()
        served = self._sets.next()
        # The Pod Identity agent's answer, the container credentials provider's format.
        body = {
            "AccessKeyId": served.access_key_id,
            "SecretAccessKey": served.secret_access_key,
            "Token": served.session_token,
            "AccountId": ACCOUNT_ID,
            "Expiration": _expiration(served.expiration),
        }
        return 200, "application/json", json.dumps(body).encode()

    def __enter__(self) -> FakeContainerCredentials:
        return self

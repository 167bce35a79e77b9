"""KMS Sign, the one call on SPIRE's hot path, as one prepared request over kept-alive connections.

Through a botocore client a Sign costs about as much CPU again as everything else the plugin does per
SignData: endpoint rules, a dozen event emissions, parameter validation, serialisation and parsing by
the service model, and urllib3. None of it varies between two Signs of one configuration, so this path
resolves it once, with botocore, and per call only writes a small JSON body, signs it with botocore's own
SigV4 signer and credentials (which refresh themselves: assumed roles, instance and pod roles), and reads
the one field it needs. Everything that is not a plain success goes to the same rules as every other
call (`plugin.awsclient`): the retry verdict, the deadline, the breaker, error answers parsed by botocore's
own parser, the same codes and messages.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import botocore.auth
import botocore.awsrequest
import botocore.exceptions
import botocore.httpsession
import botocore.parsers
import botocore.utils

from plugin import PLUGIN_NAME, __version__, deadline
from plugin.awsclient import (
    CONNECT_TIMEOUT_SECONDS,
    Breaker,
    GuardedParser,
    attempt_fits,
    backoff_seconds,
    bounded,
    is_retryable,
    read_timeout_for,
    retry_delay,
    unparseable_error,
)
from plugin.kmsapi import UNPARSEABLE, KmsError, is_throttling
from plugin.log import get_logger
from plugin.metrics import NO_METRICS, Metrics, observe_failed_attempt

log = get_logger("aws")

_OPERATION = "Sign"
_TARGET = "TrentService.Sign"
_CONTENT_TYPE = "application/x-amz-json-1.1"
# Idle connections kept for reuse: SPIRE signs from a handful of goroutines at once.
MAX_IDLE_CONNECTIONS = 16


@dataclass(frozen=True)
class _Answer:
    """What `plugin.awsclient.is_retryable` reads of an HTTP answer."""

    status_code: int


class _Connections:
    """A small pool of HTTP(S) connections to one endpoint, each used by one call at a time."""

    def __init__(self, url: str, verify: Any) -> None:
        parts = urlsplit(url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if self._https else 80)
        self._context: ssl.SSLContext | None = None
        if self._https:
            self._context = ssl.create_default_context(cafile=botocore.httpsession.get_cert_path(verify))
            if verify is False:
                self._context.check_hostname = False
                self._context.verify_mode = ssl.CERT_NONE
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was used before (a kept-alive one the server may have closed)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        if self._https:
            return (
                http.client.HTTPSConnection(
                    self._host, self._port, timeout=CONNECT_TIMEOUT_SECONDS, context=self._context
                ),
                False,
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=CONNECT_TIMEOUT_SECONDS), False

    def give_back(self, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < MAX_IDLE_CONNECTIONS:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


class _ConnectFailed(Exception):
    """The connection could not be made (`cause` says why); nothing was sent."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class LeanSigner:
    """KMS Sign for one KMS client's endpoint, region and credentials."""

    def __init__(
        self, client: Any, credentials: Any, breaker: Breaker, metrics: Metrics = NO_METRICS
    ) -> None:
        self._metrics = metrics
        self._operation_model = client.meta.service_model.operation_model(_OPERATION)
        self._url = resolved_endpoint(client)
        self._path = urlsplit(self._url).path or "/"
        self._credentials = credentials
        self._region = client.meta.region_name
        self._signing_name = client.meta.service_model.signing_name
        self._breaker = breaker
        self._parser = GuardedParser(botocore.parsers.create_parser("json"), "json")
        self._connections = _Connections(self._url, _verify_value(client))
        self._host = _canonical_host(self._url)
        self._user_agent = f"{PLUGIN_NAME}/{__version__} botocore/{botocore.__version__}"

    @classmethod
    def for_client(
        cls, client: Any, credentials: Any, breaker: Breaker, metrics: Metrics = NO_METRICS
    ) -> LeanSigner | None:
        """The lean path for `client`'s Sign, or None where it would not behave as botocore does: a proxy
        between us and KMS, an endpoint whose rules ask for another signer."""
        try:
            url = resolved_endpoint(client)
        except Exception:
            return None
        if botocore.utils.get_environ_proxies(url) or client.meta.config.proxies:
            return None
        return cls(client, credentials, breaker, metrics)

    def close(self) -> None:
        self._connections.close()

    def sign(self, key_id: str, message: bytes, signing_algorithm: str) -> bytes:
        body = json.dumps(
            {
                "KeyId": key_id,
                "Message": base64.b64encode(message).decode("ascii"),
                "MessageType": "DIGEST",
                "SigningAlgorithm": signing_algorithm,
            }
        ).encode("ascii")
        attempts = 0
        last_failure: tuple[str, str] | None = None
        while True:
            if not self._breaker.allow():
                raise KmsError(_OPERATION, "Unreachable", f"KMS is unreachable ({self._breaker.last_error})")
            remaining = deadline.remaining()
            if not attempt_fits(remaining):
                if last_failure is not None:
                    code, text = last_failure
                    raise KmsError(_OPERATION, code, f"{text} (no time left to try again)".lstrip())
                raise KmsError(_OPERATION, "Timeout", "no time left before the caller's deadline")
            attempts += 1
            outcome = self._attempt(body, attempts, read_timeout_for(remaining))
            if isinstance(outcome, bytes):
                return outcome
            code, text, retryable = outcome
            delay = retry_delay(retryable, attempts, deadline.remaining(), backoff_seconds(attempts))
            observe_failed_attempt(self._metrics, _OPERATION, code, is_throttling(code), delay is not None)
            if delay is None:
                raise KmsError(_OPERATION, code, text)
            log.debug("Retrying KMS call", code=code, attempt=attempts, delay_seconds=round(delay, 3))
            last_failure = (code, text)
            time.sleep(delay)

    def _attempt(self, body: bytes, attempts: int, read_timeout: float) -> bytes | tuple[str, str, bool]:
        """One attempt: the signature, or (code, message, worth another attempt)."""
        # Outside the transport failures below: credentials that cannot be had (a token file not mounted,
        # a source refusing) are no sign that KMS is unreachable, and `translate` codes them.
        signed = self._signed_headers(body)
        try:
            status, headers, answer = self._exchange(body, signed, read_timeout)
        except _ConnectFailed as failed:
            return self._transport_failure(failed.cause, connecting=True)
        except (OSError, http.client.HTTPException) as err:
            return self._transport_failure(err, connecting=False)
        if status == 200:
            signature = _signature(answer)
            if signature is not None:
                self._breaker.success()
                return signature
        response = {
            "status_code": status,
            "headers": botocore.awsrequest.HeadersDict(headers),
            "body": answer,
            "context": {"operation_name": _OPERATION},
        }
        parsed = self._parser.parse(response, self._operation_model.output_shape)
        not_aws = unparseable_error(parsed, self._operation_model)
        if not_aws is not None:
            # Worth another attempt whatever its status, and not counted by the breaker, as elsewhere.
            code, text = not_aws
            return code, text, True
        if status == 200:
            # JSON, but no signature in it: no KMS answer either.
            return UNPARSEABLE, "the answer has no Signature: it is not a KMS answer", False
        self._breaker.success()
        error = parsed.get("Error", {})
        code = str(error.get("Code") or status)
        text = bounded(str(error.get("Message") or ""))
        return code, text, is_retryable(attempts, _Answer(status), parsed, None, self._operation_model)

    def _transport_failure(self, err: BaseException, connecting: bool) -> tuple[str, str, bool]:
        timed_out = isinstance(err, TimeoutError | socket.timeout)
        code = "Timeout" if timed_out else "Unreachable"
        if timed_out:
            text = f'{"Connect" if connecting else "Read"} timeout on endpoint URL: "{self._url}"'
        elif connecting:
            text = f'Could not connect to the endpoint URL: "{self._url}"'
        else:
            text = f'Connection was closed before a valid response from endpoint URL: "{self._url}"'
        text = bounded(f"{text} ({err})" if str(err) else text)
        self._breaker.failure(f"{code}: {text}")
        return code, text, not self._breaker.is_open

    def _exchange(
        self, body: bytes, headers: dict[str, str], read_timeout: float
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        while True:
            connection, reused = self._connections.take()
            try:
                if connection.sock is None:
                    try:
                        connection.connect()
                    except OSError as err:
                        raise _ConnectFailed(err) from err
                assert connection.sock is not None
                connection.sock.settimeout(read_timeout)
                connection.request("POST", self._path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                connection.close()
                if reused:
                    # A kept-alive connection the server closed while it was idle: nothing was answered,
                    # and a fresh connection is not another attempt.
                    continue
                raise
            except BaseException:
                connection.close()
                raise
            if response.will_close:
                connection.close()
            else:
                self._connections.give_back(connection)
            return response.status, response.getheaders(), answer

    def _signed_headers(self, body: bytes) -> dict[str, str]:
        request = botocore.awsrequest.AWSRequest(
            method="POST",
            url=self._url,
            data=body,
            headers={
                "Host": self._host,
                "Content-Type": _CONTENT_TYPE,
                "X-Amz-Target": _TARGET,
                "User-Agent": self._user_agent,
            },
        )
        if self._credentials is None:
            raise botocore.exceptions.NoCredentialsError()
        frozen = self._credentials.get_frozen_credentials()
        botocore.auth.SigV4Auth(frozen, self._signing_name, self._region).add_auth(request)
        return dict(request.headers.items())


def resolved_endpoint(client: Any) -> str:
    """The URL botocore's endpoint rules give `client`'s Sign (region, FIPS, a custom endpoint), refusing
    one whose rules carry signing properties of their own (another region or signer)."""
    operation_model = client.meta.service_model.operation_model(_OPERATION)
    endpoint = client._ruleset_resolver.construct_endpoint(
        operation_model=operation_model, call_args={}, request_context={}
    )
    if endpoint.properties or endpoint.headers:
        raise ValueError("the endpoint's rules ask for signing properties of their own")
    return str(endpoint.url)


def _verify_value(client: Any) -> Any:
    # What botocore's HTTP session of `client` verifies TLS against: AWS_CA_BUNDLE or the profile's
    # ca_bundle, else its bundled CA certificates.
    return client._endpoint.http_session._verify


def _canonical_host(url: str) -> str:
    parts = urlsplit(url)
    default_port = 443 if parts.scheme == "https" else 80
    host = parts.hostname or ""
    return host if parts.port in (None, default_port) else f"{host}:{parts.port}"


def _signature(answer: bytes) -> bytes | None:
    try:
        value = json.loads(answer)["Signature"]
        return base64.b64decode(value, validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error):
        return None

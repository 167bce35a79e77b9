"""How the KMS client is built and how it behaves when KMS misbehaves.

Credentials (static keys, the SDK's default chain, or an assumed role refreshed before it expires),
endpoints (custom / VPC endpoint URLs, FIPS), and one retry policy for every KMS call: throttling and
transient failures are retried with jittered exponential backoff, every attempt and every pause fits in
the time SPIRE gave the request (`plugin.deadline`), and while KMS is unreachable requests fail fast
instead of each waiting out its own timeouts. The policy hooks into botocore's own events, so every
method of the adapter gets it without wrapping each call.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import botocore.config
import botocore.credentials
import botocore.exceptions
import botocore.parsers
import botocore.session
import botocore.utils
from botocore.retries import standard

from plugin import PLUGIN_NAME, __version__, deadline
from plugin import metrics as plugin_metrics
from plugin.errors import one_line, quoted
from plugin.kmsapi import UNPARSEABLE, KmsError, is_throttling
from plugin.log import get_logger
from plugin.metrics import NO_METRICS, Metrics, observe_failed_attempt

log = get_logger("aws")

CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 8.0
# Without a deadline (start-up, background work) a call gives up after this many attempts.
MAX_ATTEMPTS_WITHOUT_DEADLINE = 6
BASE_BACKOFF_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 4.0
# Never start an attempt with less time left than this; SPIRE would rather get an answer.
MIN_ATTEMPT_SECONDS = 0.3
SAFETY_MARGIN_SECONDS = 0.2
ROLE_SESSION_SECONDS = 3600
DEFAULT_ROLE_SESSION_NAME = "spire-server-keymanager"

# Whether a failure is worth another attempt is botocore's standard judgement (transient error codes and
# HTTP statuses 500/502/503/504, throttling codes and 429, errors the service model marks retryable,
# connection errors and timeouts); when, and whether there is time for it, is ours.
_RETRYABLE = standard.OrRetryChecker(
    [
        standard.TransientRetryableChecker(),
        standard.ThrottledRetryableChecker(),
        standard.ThrottlingStatusCodeChecker(),
        standard.ModeledRetryableChecker(),
    ]
)


@dataclass(frozen=True)
class AssumeRole:
    role_arn: str
    external_id: str | None = None
    session_name: str = DEFAULT_ROLE_SESSION_NAME


@dataclass(frozen=True)
class ClientSettings:
    region: str
    access_key_id: str | None = None
    secret_access_key: str | None = None
    endpoint: str | None = None
    use_fips_endpoint: bool = False
    assume_role: AssumeRole | None = None


def backoff_seconds(attempts: int, rand: Callable[[], float] = random.random) -> float:
    """Pause after `attempts` failed attempts: exponential, capped, with jitter in its upper half so
    replicas throttled together do not retry together."""
    ceiling = min(MAX_BACKOFF_SECONDS, BASE_BACKOFF_SECONDS * 2.0 ** (attempts - 1))
    return float(ceiling * (0.5 + 0.5 * rand()))


def is_retryable(
    attempts: int,
    http_response: Any = None,
    parsed: dict[str, Any] | None = None,
    caught_exception: BaseException | None = None,
    operation_model: Any = None,
) -> bool:
    """botocore's standard verdict on one failed attempt: an answer (`http_response` and its `parsed`
    body) or an exception."""
    context = standard.RetryContext(
        attempt_number=attempts,
        operation_model=operation_model,
        parsed_response=parsed,
        http_response=http_response,
        caught_exception=caught_exception,
    )
    return bool(_RETRYABLE.is_retryable(context))


def retry_delay(retryable: bool, attempts: int, remaining: float | None, pause: float) -> float | None:
    """How long to wait before another attempt, or None to give up."""
    if not retryable:
        return None
    if remaining is None:
        return pause if attempts < MAX_ATTEMPTS_WITHOUT_DEADLINE else None
    return pause if attempt_fits(remaining - pause) else None


def read_timeout_for(remaining: float | None) -> float:
    """The read timeout of the next attempt: the usual one, or whatever is left of the deadline."""
    if remaining is None:
        return READ_TIMEOUT_SECONDS
    return max(0.0, min(READ_TIMEOUT_SECONDS, remaining - CONNECT_TIMEOUT_SECONDS - SAFETY_MARGIN_SECONDS))


def attempt_fits(remaining: float | None) -> bool:
    """Whether an attempt started now can finish before the deadline."""
    return remaining is None or read_timeout_for(remaining) >= MIN_ATTEMPT_SECONDS


class Breaker:
    """Opens after consecutive transport failures (KMS unreachable or timing out); while open, requests
    fail at once except one probe per interval, and any answer from KMS closes it again."""

    def __init__(
        self,
        threshold: int = 3,
        probe_interval: float = 1.0,
        now: Callable[[], float] = time.monotonic,
        on_change: Callable[[bool], None] = lambda is_open: None,
    ) -> None:
        self._on_change = on_change
        self._threshold = threshold
        self._probe_interval = probe_interval
        self._now = now
        self._lock = threading.Lock()
        self._failures = 0
        self._next_probe = 0.0
        self.last_error = ""

    @property
    def is_open(self) -> bool:
        return self._failures >= self._threshold

    def allow(self) -> bool:
        with self._lock:
            if self._failures < self._threshold:
                return True
            now = self._now()
            if now >= self._next_probe:
                self._next_probe = now + self._probe_interval
                return True
            return False

    def failure(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            self.last_error = error
            if self._failures == self._threshold:
                self._next_probe = self._now() + self._probe_interval
                log.warn("KMS is unreachable; failing fast until it answers again", error=error)
                self._on_change(True)

    def success(self) -> None:
        with self._lock:
            if self._failures >= self._threshold:
                log.info("KMS is reachable again")
                self._on_change(False)
            self._failures = 0


def transport_code(exception: BaseException) -> str | None:
    if isinstance(exception, botocore.exceptions.ConnectTimeoutError | botocore.exceptions.ReadTimeoutError):
        return "Timeout"
    if isinstance(
        exception, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectionError
    ):
        return "Unreachable"
    return None


# Request-context entry: the failure a retry follows, reported if the deadline leaves no time for it.
_LAST_FAILURE = "aws_kms_keymanager_last_failure"

# An answer that is not an AWS answer (a proxy's page, a wrong endpoint) is quoted at most this long.
EXCERPT_CHARS = 80
# Parsed-answer entry marking an answer `GuardedParser` could not read: {"status": int, "excerpt": str}.
_UNPARSEABLE_ANSWER = "aws_kms_keymanager_unparseable"
_JSON_PROTOCOLS = {"json", "rest-json"}


def excerpt(body: bytes | str) -> str:
    """A short, printable quotation of what came back: enough to recognise a proxy's page, never all of
    it (it could be large, or carry what it should not)."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return json.dumps(one_line(text, EXCERPT_CHARS), ensure_ascii=False)


# What any failure's message may add to an error SPIRE logs and shows its callers. AWS's own messages
# are a sentence; anything longer is a body that only looks like an error (a proxy's JSON, an SDK's
# dump of the request) and is cut short.
MAX_MESSAGE_CHARS = 240


def bounded(message: str) -> str:
    """`message` on one line, cut at MAX_MESSAGE_CHARS."""
    return one_line(message, MAX_MESSAGE_CHARS)


def _is_json(body: Any) -> bool:
    # botocore's JSON parser turns a body that is not JSON into {"message": body} and carries on, so a
    # proxy's HTML page would pass for an answer with every field missing. JSON of the wrong shape (an
    # array for an object) makes the parser itself fail.
    if not isinstance(body, bytes) or not body.strip():
        return True
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def _unparseable_answer(response: dict[str, Any]) -> dict[str, Any]:
    status = int(response.get("status_code") or 0)
    quoted = excerpt(response.get("body") or b"")
    return {
        # A 5xx keeps its status as the code, as botocore codes a bare error page: the status is the news.
        "Error": {"Code": str(status) if status >= 500 else UNPARSEABLE, "Message": quoted},
        "ResponseMetadata": {
            "HTTPStatusCode": status,
            "HTTPHeaders": {str(k).lower(): v for k, v in (response.get("headers") or {}).items()},
        },
        _UNPARSEABLE_ANSWER: {"status": status, "excerpt": quoted},
    }


class GuardedParser:
    """botocore's parser for one protocol, except that an answer it cannot read becomes an error answer
    marked unparseable instead of an exception. botocore parses outside the part of an attempt whose
    failures reach the retry handlers, so a ResponseParserError would end the call at once, unretried
    and naming neither service nor operation."""

    def __init__(self, parser: Any, protocol: str) -> None:
        self._parser = parser
        self._json = protocol in _JSON_PROTOCOLS

    def parse(self, response: dict[str, Any], shape: Any) -> Any:
        if self._json and not _is_json(response.get("body")):
            return _unparseable_answer(response)
        try:
            return self._parser.parse(response, shape)
        except Exception:
            # ResponseParserError, and what parsers trip over on a well-formed body of the wrong shape
            # (a KeyError on an XML page without the result element): either way, not an AWS answer.
            return _unparseable_answer(response)


class GuardedParserFactory(botocore.parsers.ResponseParserFactory):  # type: ignore[misc]
    def create_parser(self, protocol_name: str) -> GuardedParser:
        return GuardedParser(super().create_parser(protocol_name), protocol_name)


def unparseable_error(parsed: Any, operation: Any) -> tuple[str, str] | None:
    """(code, message) when `parsed` is an answer `GuardedParser` could not read, naming the service
    and operation that answered it (STS AssumeRole when a credential refresh got it, not KMS)."""
    detail = parsed.get(_UNPARSEABLE_ANSWER) if isinstance(parsed, dict) else None
    if detail is None:
        return None
    name = f"{operation.service_model.service_id} {operation.name}" if operation is not None else "AWS"
    message = f"{name} answered HTTP {detail['status']} with a body that is not an AWS answer: "
    return str(parsed["Error"]["Code"]), message + str(detail["excerpt"])


class _Policy:
    """botocore event handlers carrying the retry, deadline and fast-fail rules."""

    def __init__(self, breaker: Breaker, metrics: Metrics = NO_METRICS) -> None:
        self._breaker = breaker
        self._metrics = metrics
        self._service = ""

    def register(self, client: Any, service: str) -> None:
        self._service = service
        events = client.meta.events
        events.register(f"before-send.{service}", self.before_send)
        events.register(f"needs-retry.{service}", self.needs_retry)
        events.register(f"after-call.{service}", self.after_call)

    def before_send(self, request: Any, event_name: str = "", **_: Any) -> None:
        # `translate` names the adapter's operation in these errors, and the STS step of the credentials
        # when the call was STS's (as it does for STS's own answers); the request need not be parsed here.
        step = f"STS {event_name.rsplit('.', 1)[-1]}" if self._service == "sts" else "KMS"
        if not self._breaker.allow():
            raise KmsError(step, "Unreachable", f"KMS is unreachable ({self._breaker.last_error})")
        remaining = deadline.remaining()
        if not attempt_fits(remaining):
            last_failure = request.context.get(_LAST_FAILURE)
            if last_failure is not None:
                # The pause before this retry used up the deadline: what was said last is the news.
                code, message = last_failure
                raise KmsError(step, code, f"{message} (no time left to try again)".lstrip())
            raise KmsError(step, "Timeout", "no time left before the caller's deadline")
        read_timeout = read_timeout_for(remaining)
        if read_timeout < READ_TIMEOUT_SECONDS:
            # Only when it must shrink: a per-request timeout costs urllib3 work on every call.
            request.context["read_timeout"] = read_timeout

    def needs_retry(
        self,
        attempts: int,
        response: Any = None,
        caught_exception: BaseException | None = None,
        operation: Any = None,
        request_dict: dict[str, Any] | None = None,
        **_: Any,
    ) -> float | None:
        http, parsed = response if response is not None else (None, None)
        unparseable = unparseable_error(parsed, operation)
        if unparseable is not None:
            # Not counted by the breaker: the answer came at once, so failing fast would spare no one a
            # timeout, and "KMS is unreachable" would be untrue.
            code, message = unparseable
        elif caught_exception is not None:
            failure_code = transport_code(caught_exception)
            if failure_code is None:
                return None
            code = failure_code
            message = bounded(str(caught_exception))
            self._breaker.failure(f"{code}: {message}")
            if self._breaker.is_open:
                return None
        elif http is not None:
            error = (parsed or {}).get("Error", {})
            # The code `translate` gives the same answer when it is the last one.
            code = str(error.get("Code") or http.status_code)
            message = bounded(str(error.get("Message") or ""))
        else:
            return None
        # An answer that is not an AWS answer is worth another attempt whatever its status (a proxy
        # between deployments, a wrong backend behind a load balancer); botocore would judge only a 5xx.
        retryable = unparseable is not None or is_retryable(
            attempts, http, parsed, caught_exception, operation
        )
        delay = retry_delay(retryable, attempts, deadline.remaining(), backoff_seconds(attempts))
        if operation is not None:
            throttled = http is not None and (http.status_code == 429 or is_throttling(code))
            observe_failed_attempt(self._metrics, operation.name, code, throttled, delay is not None)
        if delay is not None:
            log.debug("Retrying KMS call", code=code, attempt=attempts, delay_seconds=round(delay, 3))
            if request_dict is not None:
                request_dict["context"][_LAST_FAILURE] = (code, message)
        return delay

    def after_call(self, parsed: Any = None, model: Any = None, **_: Any) -> None:
        unparseable = unparseable_error(parsed, model)
        if unparseable is not None:
            # The last attempt's answer could not be read. It does not close the breaker either: it
            # was not KMS that answered. Raised here, before botocore would return a 200's stand-in as
            # a result, and as the ClientError botocore raises for other statuses.
            code, message = unparseable
            metadata = parsed["ResponseMetadata"]
            error = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": metadata}
            raise botocore.exceptions.ClientError(error, model.name)
        self._breaker.success()


def _client_config(settings: ClientSettings) -> botocore.config.Config:
    return botocore.config.Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        # Our policy decides retries; botocore's own would not know SPIRE's deadline.
        retries={"mode": "standard", "total_max_attempts": 1},
        max_pool_connections=32,
        use_fips_endpoint=settings.use_fips_endpoint,
    )


def utcnow() -> datetime.datetime:
    """The clock credential expiry is judged by (tests move it forward)."""
    return datetime.datetime.now(datetime.UTC)


class _AssumedRoleProvider(botocore.credentials.CredentialProvider):  # type: ignore[misc]
    """Credentials of an assumed role, renewed by botocore before they expire."""

    METHOD = "assume-role"

    def __init__(self, sts: Any, role: AssumeRole) -> None:
        self._sts = sts
        self._role = role

    def _fetch(self) -> dict[str, str]:
        request: dict[str, Any] = {
            "RoleArn": self._role.role_arn,
            "RoleSessionName": self._role.session_name,
            "DurationSeconds": ROLE_SESSION_SECONDS,
        }
        if self._role.external_id:
            request["ExternalId"] = self._role.external_id
        credentials = self._sts.assume_role(**request)["Credentials"]
        expiry = credentials["Expiration"]
        if isinstance(expiry, datetime.datetime):
            expiry = expiry.isoformat()
        log.debug("Assumed role", role_arn=self._role.role_arn, expires=expiry)
        return {
            "access_key": credentials["AccessKeyId"],
            "secret_key": credentials["SecretAccessKey"],
            "token": credentials["SessionToken"],
            "expiry_time": expiry,
        }

    def load(self) -> botocore.credentials.RefreshableCredentials:
        # Deferred: the first KMS call assumes the role, so a refusal reaches SPIRE as that call's error.
        return botocore.credentials.DeferredRefreshableCredentials(
            refresh_using=self._fetch, method=self.METHOD, time_fetcher=lambda: utcnow()
        )


def _botocore_session(region: str) -> Any:
    # botocore alone, not boto3: boto3's session imports s3transfer and more, about 0.1 s of every start.
    session = botocore.session.get_session()
    session.register_component("response_parser_factory", GuardedParserFactory())
    # What AWS (CloudTrail's userAgent) shows for every call but Sign, whose path says the same itself.
    session.user_agent_name = PLUGIN_NAME
    session.user_agent_version = __version__
    session.set_config_variable("region", region)
    return session


def _base_session(settings: ClientSettings) -> Any:
    session = _botocore_session(settings.region)
    if settings.access_key_id or settings.secret_access_key:
        session.set_credentials(settings.access_key_id, settings.secret_access_key)
    return session


def _assumed_role_session(base: Any, settings: ClientSettings, breaker: Breaker, metrics: Metrics) -> Any:
    assert settings.assume_role is not None
    sts = base.create_client("sts", config=_client_config(settings))
    _Policy(breaker, metrics).register(sts, "sts")
    session = _botocore_session(settings.region)
    resolver = botocore.credentials.CredentialResolver(
        providers=[_AssumedRoleProvider(sts, settings.assume_role)]
    )
    session.register_component("credential_provider", resolver)
    return session


class AwsClients:
    """The clients of one configuration: KMS, and on demand the other services the plugin calls (STS,
    the tagging API), all with the same credentials and failure policy. Only KMS takes `endpoint`."""

    def __init__(self, settings: ClientSettings, metrics: Metrics = NO_METRICS) -> None:
        self._settings = settings
        self._metrics = metrics
        self._session = _base_session(settings)
        if settings.assume_role is not None:
            self._session = _assumed_role_session(self._session, settings, Breaker(), metrics)

        def breaker_changed(is_open: bool) -> None:
            metrics.set_gauge(plugin_metrics.CIRCUIT_BREAKER_OPEN, 1.0 if is_open else 0.0)

        # Shared with the lean Sign path (`plugin.signpath`): one endpoint, one judgement of whether it is up.
        self.kms_breaker = Breaker(on_change=breaker_changed)
        breaker_changed(False)
        self.kms = self._make("kms", settings.endpoint, self.kms_breaker)
        self._others: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _make(self, service: str, endpoint: str | None = None, breaker: Breaker | None = None) -> Any:
        client = self._session.create_client(
            service, endpoint_url=endpoint, config=_client_config(self._settings)
        )
        _Policy(breaker or Breaker(), self._metrics).register(
            client, client.meta.service_model.service_id.hyphenize()
        )
        return client

    def client(self, service: str) -> Any:
        with self._lock:
            if service not in self._others:
                self._others[service] = self._make(service)
            return self._others[service]

    def credentials(self) -> Any:
        """The clients' botocore credentials (they renew themselves where they can), or None."""
        return self._session.get_credentials()

    def credential_method(self) -> str | None:
        """How botocore found the credentials (explicit, env, shared-credentials-file,
        assume-role-with-web-identity, iam-role, container-role, ...), resolving them if need be; None when
        it found none. For the operator commands, which say where the credentials came from."""
        credentials = self.credentials()
        return None if credentials is None else str(credentials.method)


def kms_client(settings: ClientSettings) -> Any:
    """A botocore KMS client with the plugin's credentials, endpoint and failure policy."""
    return AwsClients(settings).kms


# How botocore's container credentials provider (EKS Pod Identity agent, ECS) words an answer other than 200.
_CONTAINER_STATUS = re.compile(r"Received non 200 response (\d{3}) from container metadata: (.*)", re.DOTALL)
_CONTAINER_UNPARSEABLE = "Unable to parse JSON returned from container metadata"


def _causes(err: BaseException) -> list[BaseException]:
    """`err`'s context chain: what botocore was handling when it raised `err`, and so on."""
    chain: list[BaseException] = []
    cause = err.__cause__ or err.__context__
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    return chain


def _error_body(body: str) -> tuple[str, str] | None:
    """(code, message) of a JSON error body such as `{"code": "AccessDeniedException", "message": ...}`."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    code = answer.get("code") or answer.get("Code")
    if not isinstance(code, str) or not code:
        return None
    return code, str(answer.get("message") or answer.get("Message") or "")


def credential_failure(err: botocore.exceptions.CredentialRetrievalError) -> tuple[str, str, str]:
    """(step, code, message) for a credential provider that failed to hand out credentials. botocore
    raises one exception for every failure of a provider; the code tells a refusal (`AccessDeniedException`
    or the status the source answered, 401 or 403) from a source that could not be reached (`Unreachable`,
    `Timeout`: what botocore was handling when it gave up) or answered something else (a 5xx, an answer
    that is not JSON)."""
    provider = str(err.kwargs.get("provider") or "the credential chain")
    step = f"credentials from {provider}"
    detail = str(err.kwargs.get("error_msg") or err)
    for cause in _causes(err):
        if isinstance(cause, botocore.utils.RETRYABLE_HTTP_ERRORS):
            return step, transport_code(cause) or "Unreachable", bounded(detail)
    answered = _CONTAINER_STATUS.search(detail)
    if answered is not None:
        status, body = answered.groups()
        coded = _error_body(body)
        code, text = coded if coded is not None else (status, excerpt(body))
        return step, code, bounded(f"the credentials endpoint answered HTTP {status}: {text}")
    if _CONTAINER_UNPARSEABLE in detail:
        return step, UNPARSEABLE, bounded(detail)
    return step, "CredentialRetrievalError", bounded(detail)


# Token files botocore's default chain reads for EKS (IRSA, Pod Identity) and lets a failure to read through.
_TOKEN_FILES = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")


def unreadable_token_file(err: OSError) -> tuple[str, str] | None:
    """(step, message) when `err` is the failure to read a credential token file named in the environment
    (the projected service account token not mounted); None for any other OSError."""
    if err.filename is None:
        return None
    for variable in _TOKEN_FILES:
        path = os.environ.get(variable)
        if path and os.fspath(err.filename) == path:
            reason = err.strerror or type(err).__name__
            return f"credentials from {variable}", f"cannot read {variable} {quoted(path, 256)}: {reason}"
    return None


def translate(operation: str, fn: Callable[[], Any]) -> Any:
    """Run one adapter call, turning botocore's failures into `KmsError` with the AWS error code."""
    try:
        return fn()
    except botocore.exceptions.ClientError as err:
        error = err.response.get("Error", {})
        code = str(error.get("Code") or err.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if err.operation_name and err.operation_name != operation:
            # A credential step failed on the way (STS AssumeRole): say so rather than blame KMS.
            operation = f"{operation} (STS {err.operation_name})"
        raise KmsError(operation, code or "Unknown", bounded(str(error.get("Message", "")))) from None
    except botocore.exceptions.NoCredentialsError:
        raise KmsError(
            operation, "NoCredentials", "no AWS credentials were found in the configuration or environment"
        ) from None
    except botocore.exceptions.CredentialRetrievalError as err:
        # A link of the default chain (the Pod Identity agent, a credential process) failed: say which.
        step, code, message = credential_failure(err)
        raise KmsError(f"{operation} ({step})", code, message) from None
    except KmsError as err:
        if err.operation.startswith("STS "):
            # Raised before an STS call of a credential step: name it, as for STS's own answers.
            operation = f"{operation} ({err.operation})"
        raise KmsError(operation, err.code, err.message) from None
    except botocore.parsers.ResponseParserError as err:
        # Only from a client without `GuardedParser`; botocore's message quotes the whole body.
        message = f"the answer could not be parsed: {excerpt(str(err))}"
        raise KmsError(operation, UNPARSEABLE, message) from None
    except botocore.exceptions.BotoCoreError as err:
        code = transport_code(err) or type(err).__name__
        raise KmsError(operation, code, bounded(str(err))) from None
    except OSError as err:
        # Last: botocore's SSL and timeout errors are OSErrors too (through requests' exceptions).
        unreadable = unreadable_token_file(err)
        if unreadable is None:
            raise
        step, message = unreadable
        raise KmsError(f"{operation} ({step})", "NoCredentials", message) from None

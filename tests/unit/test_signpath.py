"""The lean Sign path against a small HTTP/1.1 server on loopback that, unlike the emulator, keeps
connections alive as KMS does: the request it sends, connection reuse, a kept-alive connection the server
dropped, and KMS's error answers."""

from __future__ import annotations

import base64
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from plugin.awsclient import ClientSettings
from plugin.kms import BotocoreKms
from plugin.kmsapi import KmsError

SIGNATURE = b"\x30\x44" + b"\x01" * 68
KEY_ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@dataclass
class Script:
    """What the server answers, in order (then the last one again), and what it saw."""

    answers: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    peers: list[tuple[str, int]] = field(default_factory=list)
    close_after_each: bool = False


def _server(script: Script) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            script.requests.append({"headers": dict(self.headers), "body": json.loads(body)})
            script.peers.append(self.client_address)
            index = min(len(script.requests), len(script.answers)) - 1
            status, answer = script.answers[index]
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            if script.close_after_each:
                # Closed without "Connection: close": as a server closes an idle kept-alive connection.
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

        def log_message(self, *args: Any) -> None:
            pass

    return ThreadingHTTPServer(("127.0.0.1", 0), Handler)


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def kms(script: Script, monkeypatch: pytest.MonkeyPatch) -> Iterator[BotocoreKms]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = _server(script)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield BotocoreKms(
            ClientSettings(
                region="us-east-1",
                access_key_id="AKIDEXAMPLE",
                secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                endpoint=f"http://127.0.0.1:{server.server_address[1]}",
            )
        )
    finally:
        server.shutdown()
        server.server_close()


def _signed(script: Script) -> None:
    script.answers.append((200, {"KeyId": KEY_ARN, "Signature": base64.b64encode(SIGNATURE).decode()}))


def test_a_sign_is_one_sigv4_signed_json_request_and_returns_the_signature(
    kms: BotocoreKms, script: Script
) -> None:
    _signed(script)
    assert kms.sign(KEY_ARN, b"\x11" * 32, "ECDSA_SHA_256") == SIGNATURE
    (request,) = script.requests
    assert request["body"] == {
        "KeyId": KEY_ARN,
        "Message": base64.b64encode(b"\x11" * 32).decode(),
        "MessageType": "DIGEST",
        "SigningAlgorithm": "ECDSA_SHA_256",
    }
    headers = request["headers"]
    assert headers["X-Amz-Target"] == "TrentService.Sign"
    assert headers["Content-Type"] == "application/x-amz-json-1.1"
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/us-east-1/kms/aws4_request" in headers["Authorization"]
    assert "wJalrXUtnFEMI" not in json.dumps(request)


def test_every_call_names_the_plugin_as_its_user_agent(kms: BotocoreKms, script: Script) -> None:
    # What CloudTrail shows an operator as the caller's userAgent: the plugin and its version, for Sign
    # (the lean path) as for every other call (botocore's client).
    script.answers.append((200, {"Aliases": []}))
    assert list(kms.list_aliases()) == []
    _signed(script)
    kms.sign(KEY_ARN, b"\x11" * 32, "ECDSA_SHA_256")
    agents = [request["headers"]["User-Agent"] for request in script.requests]
    assert [agent.split(" ")[0] for agent in agents] == ["aws-kms-keymanager/0.1.0"] * 2


def test_signatures_in_a_row_share_one_kept_alive_connection(kms: BotocoreKms, script: Script) -> None:
    _signed(script)
    for _ in range(5):
        kms.sign(KEY_ARN, b"\x11" * 32, "ECDSA_SHA_256")
    assert len(script.requests) == 5
    assert len(set(script.peers)) == 1


def test_a_kept_alive_connection_the_server_closed_is_replaced_without_an_error(
    kms: BotocoreKms, script: Script
) -> None:
    _signed(script)
    script.close_after_each = True
    for _ in range(3):
        assert kms.sign(KEY_ARN, b"\x11" * 32, "ECDSA_SHA_256") == SIGNATURE
    assert len(script.requests) == 3
    assert len(set(script.peers)) == 3


def test_kms_refusal_is_reported_with_its_code_and_message_unretried(
    kms: BotocoreKms, script: Script
) -> None:
    script.answers.append(
        (400, {"__type": "NotFoundException", "message": f"Key '{KEY_ARN}' does not exist"})
    )
    with pytest.raises(KmsError) as raised:
        kms.sign(KEY_ARN, b"\x11" * 32, "ECDSA_SHA_256")
    assert (raised.value.operation, raised.value.code) == ("Sign", "NotFoundException")
    assert raised.value.message == f"Key '{KEY_ARN}' does not exist"
    assert len(script.requests) == 1


def test_throttling_is_retried_until_kms_signs(kms: BotocoreKms, script: Script) -> None:
    throttled = (400, {"__type": "ThrottlingException", "message": "Rate exceeded"})
    script.answers.extend([throttled, throttled])
    _signed(script)
    assert kms.sign(KEY_ARN, b"\x11" * 32, "ECDSA_SHA_256") == SIGNATURE
    assert len(script.requests) == 3


def test_a_200_without_a_signature_is_no_kms_answer(kms: BotocoreKms, script: Script) -> None:
    script.answers.append((200, {"KeyId": KEY_ARN}))
    with pytest.raises(KmsError) as raised:
        kms.sign(KEY_ARN, b"\x11" * 32, "ECDSA_SHA_256")
    assert raised.value.code == "UnparseableResponse"

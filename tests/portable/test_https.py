"""HTTPS to KMS from inside the empty root: no system CA store exists there, so the binary must carry its
own bundle, and AWS_CA_BUNDLE must reach a CA the operator mounts (a TLS-inspecting proxy, a private
endpoint). The emulator is served over TLS on loopback by a test CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import COMMUNITY_CONFIG
from tests.portable.conftest import MakeBox, container_env
from tests.support.container import Bind
from tests.support.kms_emulator import EmulatorControl
from tests.support.loopback_ca import LoopbackCa, make_loopback_ca
from tests.support.signatures import digest_of, verify
from tests.support.tcp_proxy import TcpProxy

CA_IN_CONTAINER = "/etc/spire/kms-ca.pem"


@pytest.fixture
def loopback_ca(base: Path) -> LoopbackCa:
    return make_loopback_ca(base / "ca")


@pytest.fixture
def https_kms(emulator: EmulatorControl, loopback_ca: LoopbackCa) -> Iterator[str]:
    """The emulator behind TLS on loopback, signed by the test CA; its https:// URL."""
    target = urlsplit(emulator.url)
    assert target.hostname and target.port
    with TcpProxy(target.hostname, target.port, tls=loopback_ca.server_context()) as proxy:
        yield proxy.url


def test_aws_ca_bundle_names_the_ca_that_kms_presents(
    make_box: MakeBox, https_kms: str, loopback_ca: LoopbackCa
) -> None:
    box = make_box("empty", Bind(loopback_ca.ca_pem, CA_IN_CONTAINER, read_only=True))
    with box.start(container_env(https_kms, AWS_CA_BUNDLE=CA_IN_CONTAINER)) as plugin:
        plugin.configure(COMMUNITY_CONFIG)
        public = plugin.generate_key("x509-CA-A", km.EC_P256).public_key
        signature = plugin.sign_data("x509-CA-A", digest_of(km.SHA256), km.SHA256).signature
        verify(public.pkix_data, signature, km.SHA256, None)
        assert plugin.shutdown() == 0


def test_without_aws_ca_bundle_the_binarys_own_bundle_judges_the_certificate(
    make_box: MakeBox, https_kms: str
) -> None:
    # Nothing in the root to trust: the certificate is checked against the bundle inside the binary
    # (botocore's cacert.pem, public CAs only), which does not hold the test CA. A binary without a bundle
    # would fail differently ("Could not find a suitable TLS CA certificate bundle").
    box = make_box("empty")
    with box.start(container_env(https_kms)) as plugin:
        with pytest.raises(grpc.RpcError) as refused:
            plugin.configure(COMMUNITY_CONFIG)  # it lists the keys it has in KMS
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        assert "CERTIFICATE_VERIFY_FAILED" in (refused.value.details() or "")
        assert plugin.shutdown() == 0

"""Every CA key type, each with another JWT key type: SPIRE starts on our plugin, its CA key is the KMS key
behind its x509-CA-A alias, and what it mints verifies against its bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.e2e.conftest import COMMUNITY_PREFIX, MakeServer, ours
from tests.support.spire_server import (
    ServerSettings,
    alias_public_key,
    spki_der,
    verify_jwt_svid,
    verify_x509_svid,
)

KEY_SPECS = {
    "ec-p256": "ECC_NIST_P256",
    "ec-p384": "ECC_NIST_P384",
    "rsa-2048": "RSA_2048",
    "rsa-4096": "RSA_4096",
}
KEY_SIZES = {"ec-p256": 256, "ec-p384": 384, "rsa-2048": 2048, "rsa-4096": 4096}
JWS_ALGORITHMS = {"ec-p256": "ES256", "ec-p384": "ES384", "rsa-2048": "RS256", "rsa-4096": "RS256"}
WORKLOAD = "spiffe://example.org/workload"
AUDIENCE = "e2e-audience"


def _key_size(key: Any) -> int:
    assert isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    return int(key.key_size) if isinstance(key, rsa.RSAPublicKey) else int(key.curve.key_size)


@pytest.mark.parametrize(
    ("ca_key_type", "jwt_key_type"),
    [("ec-p256", "rsa-4096"), ("ec-p384", "rsa-2048"), ("rsa-2048", "ec-p384"), ("rsa-4096", "ec-p256")],
)
def test_spire_signs_with_the_kms_keys(
    make_server: MakeServer, plugin_binary: Path, kms: Any, ca_key_type: str, jwt_key_type: str
) -> None:
    server = make_server(
        ours(plugin_binary), ServerSettings(ca_key_type=ca_key_type, jwt_key_type=jwt_key_type)
    ).start()

    assert "Server is healthy" in server.healthcheck().stdout

    # The CA certificate in the bundle carries the public half of the KMS key behind x509-CA-A.
    bundle = server.bundle()
    assert len(bundle.x509_authorities) == 1
    ca = bundle.x509_authorities[0]
    ca_alias = COMMUNITY_PREFIX + "x509-CA-A"
    assert spki_der(ca.public_key()) == alias_public_key(kms, ca_alias)
    assert kms.describe_key(KeyId=ca_alias)["KeyMetadata"]["KeySpec"] == KEY_SPECS[ca_key_type]

    # An X509-SVID minted now chains to that CA, and its signature (made in KMS) verifies.
    svid = server.mint_x509(WORKLOAD)
    assert verify_x509_svid(svid.chain, bundle.x509_authorities, WORKLOAD) == ca
    assert svid.root_cas == bundle.x509_authorities

    # The JWT key in the bundle is the KMS key behind JWT-Signer-A, and a minted JWT-SVID verifies with it.
    jwt_alias = COMMUNITY_PREFIX + "JWT-Signer-A"
    assert list(bundle.jwt_authorities.values()) == [alias_public_key(kms, jwt_alias)]
    assert kms.describe_key(KeyId=jwt_alias)["KeyMetadata"]["KeySpec"] == KEY_SPECS[jwt_key_type]
    token = server.mint_jwt(WORKLOAD, AUDIENCE)
    verified = verify_jwt_svid(token, server.bundle_jwks(), WORKLOAD, AUDIENCE)
    assert verified.header["alg"] == JWS_ALGORITHMS[jwt_key_type]
    assert verified.header["kid"] in bundle.jwt_authorities
    assert spki_der(verified.key) == alias_public_key(kms, jwt_alias)
    assert _key_size(verified.key) == KEY_SIZES[jwt_key_type]
    assert _key_size(ca.public_key()) == KEY_SIZES[ca_key_type]

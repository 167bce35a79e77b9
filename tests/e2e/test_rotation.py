"""Rotation driven by an operator: `spire-server localauthority x509|jwt prepare / activate / taint / revoke`.

SPIRE keeps two slots per kind (A and B). Preparing fills the other slot with a new KMS key; activating
makes it sign; tainting and revoking retire the old authority. The KMS key of a retired authority is
replaced only when its slot is prepared again: that is when our plugin schedules it for deletion, with the
configured deletion_window_days.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import COMMUNITY_SAMPLE, MakeServer, ours
from tests.support.spire_server import (
    ServerSettings,
    SpireServer,
    alias_public_key,
    alias_target,
    spki_der,
    subject_key_id,
    verify_jwt_svid,
    verify_x509_svid,
)

PREFIX = "e2e-rotation/"
ALIAS_PREFIX = f"alias/{PREFIX}"
WINDOW_DAYS = 9  # not the default (7), so the test sees the configured value
WORKLOAD = "spiffe://example.org/rotated"
AUDIENCE = "rotation"


def _deletion_window_days(kms: Any, key_arn: str, timeout: float = 15.0) -> float:
    """Waits for the key to be PendingDeletion (our plugin schedules it in the background) and returns how
    many days from now KMS will delete it."""
    deadline = time.monotonic() + timeout
    while True:
        metadata = kms.describe_key(KeyId=key_arn)["KeyMetadata"]
        if metadata["KeyState"] == "PendingDeletion":
            remaining = metadata["DeletionDate"] - datetime.datetime.now(datetime.UTC)
            return float(remaining.total_seconds()) / 86400
        assert time.monotonic() < deadline, f"{key_arn} is {metadata['KeyState']}, not PendingDeletion"
        time.sleep(0.2)


def _server(make_server: MakeServer, plugin_binary: Path) -> SpireServer:
    data = {**COMMUNITY_SAMPLE, "key_prefix": PREFIX, "deletion_window_days": WINDOW_DAYS}
    return make_server(ours(plugin_binary, data), ServerSettings(ca_key_type="ec-p256")).start()


def test_x509_authority_rotation(make_server: MakeServer, plugin_binary: Path, kms: Any) -> None:
    server = _server(make_server, plugin_binary)
    first = server.authority_state("x509")
    assert first.active and not first.prepared
    old_ca = server.bundle().x509_authorities[0]
    assert subject_key_id(old_ca) == first.active
    old_key_arn = alias_target(kms, ALIAS_PREFIX + "x509-CA-A")

    prepared = server.localauthority("x509", "prepare")["prepared_authority"]["authority_id"]
    bundle = server.bundle()
    new_ca = next(ca for ca in bundle.x509_authorities if subject_key_id(ca) == prepared)
    # The prepared authority is a new KMS key, in slot B.
    assert spki_der(new_ca.public_key()) == alias_public_key(kms, ALIAS_PREFIX + "x509-CA-B")
    assert spki_der(new_ca.public_key()) != spki_der(old_ca.public_key())

    activated = server.localauthority("x509", "activate", prepared)
    assert activated["activated_authority"]["authority_id"] == prepared
    svid = server.mint_x509(WORKLOAD)
    assert verify_x509_svid(svid.chain, server.bundle().x509_authorities, WORKLOAD) == new_ca

    tainted = server.localauthority("x509", "taint", first.active)
    assert tainted["tainted_authority"]["authority_id"] == first.active
    revoked = server.localauthority("x509", "revoke", first.active)
    assert revoked["revoked_authority"]["authority_id"] == first.active

    # The revoked CA is gone from the bundle; what SPIRE mints chains to the new one only.
    bundle = server.bundle()
    assert [subject_key_id(ca) for ca in bundle.x509_authorities] == [prepared]
    svid = server.mint_x509(WORKLOAD)
    assert verify_x509_svid(svid.chain, bundle.x509_authorities, WORKLOAD) == new_ca

    # The next rotation regenerates slot A: the retired key is replaced, and scheduled for deletion.
    server.localauthority("x509", "prepare")
    assert alias_target(kms, ALIAS_PREFIX + "x509-CA-A") != old_key_arn
    assert abs(_deletion_window_days(kms, old_key_arn) - WINDOW_DAYS) < 0.01
    # The key in use is untouched.
    assert kms.describe_key(KeyId=ALIAS_PREFIX + "x509-CA-B")["KeyMetadata"]["KeyState"] == "Enabled"
    svid = server.mint_x509(WORKLOAD)
    assert verify_x509_svid(svid.chain, server.bundle().x509_authorities, WORKLOAD) == new_ca


def test_jwt_authority_rotation(make_server: MakeServer, plugin_binary: Path, kms: Any) -> None:
    server = _server(make_server, plugin_binary)
    first = server.authority_state("jwt")
    assert first.active and not first.prepared
    assert list(server.bundle().jwt_authorities) == [first.active]
    old_key_arn = alias_target(kms, ALIAS_PREFIX + "JWT-Signer-A")

    prepared = server.localauthority("jwt", "prepare")["prepared_authority"]["authority_id"]
    bundle = server.bundle()
    assert set(bundle.jwt_authorities) == {first.active, prepared}
    assert bundle.jwt_authorities[prepared] == alias_public_key(kms, ALIAS_PREFIX + "JWT-Signer-B")

    activated = server.localauthority("jwt", "activate", prepared)
    assert activated["activated_authority"]["authority_id"] == prepared
    token = server.mint_jwt(WORKLOAD, AUDIENCE)
    assert verify_jwt_svid(token, server.bundle_jwks(), WORKLOAD, AUDIENCE).header["kid"] == prepared

    tainted = server.localauthority("jwt", "taint", first.active)
    assert tainted["tainted_authority"]["authority_id"] == first.active
    revoked = server.localauthority("jwt", "revoke", first.active)
    assert revoked["revoked_authority"]["authority_id"] == first.active

    jwks = server.bundle_jwks()
    assert [k["kid"] for k in jwks["keys"] if k.get("use") == "jwt-svid"] == [prepared]
    token = server.mint_jwt(WORKLOAD, AUDIENCE)
    assert verify_jwt_svid(token, jwks, WORKLOAD, AUDIENCE).header["kid"] == prepared

    server.localauthority("jwt", "prepare")
    assert alias_target(kms, ALIAS_PREFIX + "JWT-Signer-A") != old_key_arn
    assert abs(_deletion_window_days(kms, old_key_arn) - WINDOW_DAYS) < 0.01
    assert kms.describe_key(KeyId=ALIAS_PREFIX + "JWT-Signer-B")["KeyMetadata"]["KeyState"] == "Enabled"
    token = server.mint_jwt(WORKLOAD, AUDIENCE)
    assert verify_jwt_svid(token, server.bundle_jwks(), WORKLOAD, AUDIENCE).header["kid"] == prepared

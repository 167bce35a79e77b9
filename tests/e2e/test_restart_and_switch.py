"""Keys survive a restart, and a switch between SPIRE's built-in aws_kms and our plugin in either direction:
same CA, same JWT keys, and not one CreateKey at the KMS."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import COMMUNITY_SAMPLE, MakeServer, builtin_alias_prefix, ours
from tests.support.kms_emulator import EmulatorControl
from tests.support.spire_server import (
    REGION,
    Bundle,
    KeyManagerBlock,
    SpireServer,
    aliases_under,
    spki_der,
    subject_key_id,
    verify_jwt_svid,
    verify_x509_svid,
)

WORKLOAD = "spiffe://example.org/restarted"
AUDIENCE = "restart"
SERVER_ID = "e2e-server-1"


def _check_signs_with(server: SpireServer, bundle: Bundle) -> None:
    """What the server mints now verifies against `bundle` (the keys it had before)."""
    svid = server.mint_x509(WORKLOAD)
    verify_x509_svid(svid.chain, bundle.x509_authorities, WORKLOAD)
    token = server.mint_jwt(WORKLOAD, AUDIENCE)
    verified = verify_jwt_svid(token, server.bundle_jwks(), WORKLOAD, AUDIENCE)
    assert bundle.jwt_authorities[verified.header["kid"]] == spki_der(verified.key)


def _restart_keeps_keys(
    make_server: MakeServer, emulator: EmulatorControl, first: KeyManagerBlock, second: KeyManagerBlock
) -> tuple[SpireServer, SpireServer]:
    """Run `first`, with a prepared next authority of each kind (keys in both slots), stop it, then run
    `second` on the same data dir: the same authorities, and signing with the same keys, without one
    CreateKey."""
    before = make_server(first).start()
    before.localauthority("x509", "prepare")
    before.localauthority("jwt", "prepare")
    bundle = before.bundle()
    x509_state, jwt_state = before.authority_state("x509"), before.authority_state("jwt")
    assert x509_state.prepared and jwt_state.prepared
    _check_signs_with(before, bundle)
    assert before.stop() == 0
    calls = emulator.calls()
    # x509-CA-A/B and JWT-Signer-A/B. "At least": an SDK may retry a CreateKey whose answer it lost, and
    # the emulator counts every request it gets.
    assert calls.get("CreateKey", 0) >= 4, calls

    emulator.reset_calls()
    after = make_server(second).start()  # same workdir: same data dir and datastore
    assert after.bundle() == bundle
    assert after.authority_state("x509") == x509_state
    assert after.authority_state("jwt") == jwt_state
    _check_signs_with(after, bundle)
    # The prepared authorities were found too: activating them works and signs with their keys.
    after.localauthority("x509", "activate", x509_state.prepared)
    after.localauthority("jwt", "activate", jwt_state.prepared)
    svid = after.mint_x509(WORKLOAD)
    assert (
        subject_key_id(verify_x509_svid(svid.chain, bundle.x509_authorities, WORKLOAD)) == x509_state.prepared
    )
    token = after.mint_jwt(WORKLOAD, AUDIENCE)
    assert verify_jwt_svid(token, after.bundle_jwks(), WORKLOAD, AUDIENCE).header["kid"] == jwt_state.prepared
    calls = emulator.calls()
    assert calls.get("CreateKey", 0) == 0, calls
    assert calls.get("Sign", 0) >= 4  # it did sign, with the keys it found
    assert after.stop() == 0
    return before, after


def test_restart_keeps_the_ca_and_creates_no_key(
    make_server: MakeServer, plugin_binary: Path, emulator: EmulatorControl
) -> None:
    block = ours(plugin_binary)
    _restart_keeps_keys(make_server, emulator, block, block)


@pytest.mark.parametrize("server_id_from", ["key_identifier_value", "key_identifier_file"])
@pytest.mark.parametrize("direction", ["builtin-to-ours", "ours-to-builtin"])
def test_switching_with_the_builtin_keeps_the_keys(
    make_server: MakeServer,
    plugin_binary: Path,
    emulator: EmulatorControl,
    kms: Any,
    workdir: Path,
    direction: str,
    server_id_from: str,
) -> None:
    # The same server id for both: a fixed value, or the file the first one creates (a new UUID).
    id_file = workdir / "server-id"
    source = (
        {"key_identifier_value": SERVER_ID}
        if server_id_from == "key_identifier_value"
        else {"key_identifier_file": str(id_file)}
    )
    builtin = KeyManagerBlock.builtin({"region": REGION, **source})
    external = ours(plugin_binary, {**COMMUNITY_SAMPLE, **source})
    first, second = (builtin, external) if direction == "builtin-to-ours" else (external, builtin)
    before, after = _restart_keeps_keys(make_server, emulator, first, second)

    # Both name the keys alike: the built-in's alias scheme, under this server's id.
    server_id = SERVER_ID if server_id_from == "key_identifier_value" else id_file.read_text().strip()
    prefix = builtin_alias_prefix(server_id)
    aliases = aliases_under(kms, prefix)
    assert sorted(aliases) == [prefix + k for k in ("JWT-Signer-A", "JWT-Signer-B", "x509-CA-A", "x509-CA-B")]
    # The plugin actually in use each time: an external process for ours, none for the built-in.
    external_run = before if first is external else after
    assert any(
        e.get("external") is True and e.get("plugin_name") == "aws_kms" for e in external_run.log_entries()
    )
    builtin_run = after if first is external else before
    assert not any(e.get("external") is True for e in builtin_run.log_entries())

"""What only today's SPIRE (v1.14 and later) asks of a key manager, on v1.15.3: `spire-server validate`
with our plugin, WIT-SVID signing keys, and a server that issues no JWT-SVIDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from tests.e2e.conftest import COMMUNITY_PREFIX, COMMUNITY_SAMPLE, MakeServer, builtin_alias_prefix, ours
from tests.support.kms_emulator import EmulatorControl
from tests.support.spire_server import ServerSettings, alias_public_key, verify_jws, verify_x509_svid

pytestmark = pytest.mark.parametrize("spire_version", ["v1.15.3"], indirect=True)

WORKLOAD = "spiffe://example.org/workload"
WIT = ServerSettings(extra={"experimental": {"feature_flags": ["wit-svid"], "wit_key_type": "ec-p256"}})


def test_validate_accepts_a_good_configuration(make_server: MakeServer, plugin_binary: Path) -> None:
    result = make_server(ours(plugin_binary)).validate()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SPIRE server configuration file is valid." in result.stdout


def test_validate_lists_every_problem_each_naming_its_key(
    make_server: MakeServer, plugin_binary: Path
) -> None:
    broken = """
        region = "us-east-1"
        deletion_window_days = 3
        key_prefix = "team-a/"
        key_identifier_value = "server-1"
        key_tagz = "typo"
    """
    result = make_server(ours(plugin_binary, broken)).validate()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "SPIRE server configuration file is invalid." in result.stderr
    problems = [line.strip() for line in result.stderr.splitlines() if line.startswith("\t\t")]
    assert len(problems) == 3, result.stderr
    for key in ("deletion_window_days", "key_prefix", "key_tagz"):
        assert sum(key in problem for problem in problems) == 1, (key, problems)


def test_wit_svids_are_signed_by_a_kms_key_that_a_restart_keeps(
    make_server: MakeServer, plugin_binary: Path, kms: Any, emulator: EmulatorControl
) -> None:
    server = make_server(ours(plugin_binary), WIT).start()
    alias = COMMUNITY_PREFIX + "WIT-Signer-A"
    key = serialization.load_der_public_key(alias_public_key(kms, alias))
    header, claims = verify_jws(server.mint_wit(WORKLOAD), key)
    assert (header["alg"], claims["sub"]) == ("ES256", WORKLOAD)
    assert server.stop() == 0

    emulator.reset_calls()
    restarted = make_server(ours(plugin_binary), WIT).start()
    assert emulator.calls().get("CreateKey", 0) == 0, emulator.calls()
    _, claims = verify_jws(restarted.mint_wit(WORKLOAD), key)
    assert claims["sub"] == WORKLOAD


def test_wit_keys_are_named_and_kept_as_the_others(
    make_server: MakeServer, plugin_binary: Path, kms: Any
) -> None:
    # With the built-in naming scheme, the WIT key lives beside the CA and JWT keys of this server, so the
    # heartbeat and disposal treat it the same way.
    data = {**COMMUNITY_SAMPLE, "key_identifier_value": "server-1"}
    make_server(ours(plugin_binary, data), WIT).start()
    prefix = builtin_alias_prefix("server-1")
    names = sorted(a["AliasName"] for a in kms.list_aliases()["Aliases"] if a["AliasName"].startswith(prefix))
    assert names == [prefix + "JWT-Signer-A", prefix + "WIT-Signer-A", prefix + "x509-CA-A"]


def test_a_server_without_jwt_svids_makes_no_jwt_key(
    make_server: MakeServer, plugin_binary: Path, kms: Any
) -> None:
    settings = ServerSettings(extra={"disable_jwt_svids": True})
    server = make_server(ours(plugin_binary), settings).start()
    names = [a["AliasName"] for a in kms.list_aliases()["Aliases"]]
    ours_only = sorted(name for name in names if name.startswith(COMMUNITY_PREFIX))
    assert ours_only == [COMMUNITY_PREFIX + "x509-CA-A"]
    bundle = server.bundle()
    assert bundle.jwt_authorities == {}
    svid = server.mint_x509(WORKLOAD)
    verify_x509_svid(svid.chain, bundle.x509_authorities, WORKLOAD)

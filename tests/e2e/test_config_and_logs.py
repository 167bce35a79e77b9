"""What an operator sees: the community plugin's sample configuration works as it is, SPIRE refuses a binary
that does not match plugin_checksum and a configuration that is wrong (saying which key), and the plugin's
log lines arrive in SPIRE's log as structured entries at their levels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import COMMUNITY_PREFIX, COMMUNITY_SAMPLE, MakeServer, ours
from tests.support.kms_emulator import EmulatorControl
from tests.support.spire_server import (
    KeyManagerBlock,
    LogEntry,
    ServerSettings,
    SpireServer,
    aliases_under,
    aws_env,
    verify_jwt_svid,
    verify_x509_svid,
    wait_gone,
)

WORKLOAD = "spiffe://example.org/config"
EXIT_TIMEOUT = 60.0
# SPIRE logs what a plugin writes on stderr under "<plugin name>.<binary name>".
PLUGIN_SUBSYSTEM = "aws_kms.aws-kms-keymanager"


def _from_plugin(entry: LogEntry) -> bool:
    """A line our plugin wrote on its stderr, as SPIRE logged it."""
    return entry.get("subsystem_name") == PLUGIN_SUBSYSTEM


def _refused(server: SpireServer) -> list[str]:
    """Start a server that must refuse to start; returns the errors it stopped with. Nothing of the plugin
    may remain."""
    server.launch()
    status = server.wait_exit(EXIT_TIMEOUT)
    assert status != 0, "spire-server started"
    assert wait_gone(server.processes_in_workdir(), 5.0) == []
    assert not list(server.tmpdir.glob("staticx-*"))
    fatal = [
        str(e.get("error"))
        for e in server.log_entries()
        if e.get("msg") == "Fatal run error" and e.get("level") == "error"
    ]
    assert fatal, server.log_tail()
    return fatal


def test_community_sample_configuration_works_unchanged(
    make_server: MakeServer, plugin_binary: Path, emulator: EmulatorControl, kms: Any
) -> None:
    # Only what the community plugin's sample sets: static credentials and a region. No AWS credentials in
    # the environment, so the plugin can only be using the configured ones.
    block = KeyManagerBlock.external(plugin_binary, dict(COMMUNITY_SAMPLE))
    assert set(COMMUNITY_SAMPLE) == {"access_key_id", "secret_access_key", "region"}
    server = make_server(
        block, ServerSettings(log_level="INFO"), env=aws_env(emulator.url, credentials=False)
    ).start()

    assert sorted(aliases_under(kms, COMMUNITY_PREFIX)) == [
        COMMUNITY_PREFIX + "JWT-Signer-A",
        COMMUNITY_PREFIX + "x509-CA-A",
    ]
    svid = server.mint_x509(WORKLOAD)
    verify_x509_svid(svid.chain, server.bundle().x509_authorities, WORKLOAD)
    verify_jwt_svid(server.mint_jwt(WORKLOAD, "a"), server.bundle_jwks(), WORKLOAD, "a")
    # At SPIRE's INFO level the plugin's debug lines are filtered out, its info lines are not.
    plugin_lines = [e for e in server.log_entries() if _from_plugin(e)]
    assert {e["level"] for e in plugin_lines} == {"info"}
    assert any(e["msg"] == "Configured" for e in plugin_lines)


def test_wrong_plugin_checksum_is_refused(make_server: MakeServer, plugin_binary: Path) -> None:
    block = KeyManagerBlock.external(plugin_binary, dict(COMMUNITY_SAMPLE), checksum="ab" * 32)
    (error,) = _refused(make_server(block))
    assert error == 'failed to load plugin "aws_kms": failed to launch plugin: checksums did not match'


@pytest.mark.parametrize(
    ("plugin_data", "expected"),
    [
        pytest.param(
            {**COMMUNITY_SAMPLE, "deletion_window_days": 3},
            "deletion_window_days must be between 7 and 30, not 3",
            id="deletion_window_days",
        ),
        pytest.param(
            'regoin = "us-east-1"',
            'unknown configuration key "regoin" (did you mean "region"?)',
            id="unknown-key",
        ),
        pytest.param(
            {**COMMUNITY_SAMPLE, "key_prefix": "bad prefix!"},
            'key_prefix "bad prefix!" is invalid',
            id="key_prefix",
        ),
    ],
)
def test_bad_plugin_data_stops_spire_naming_the_key(
    make_server: MakeServer, plugin_binary: Path, plugin_data: dict[str, Any] | str, expected: str
) -> None:
    (error,) = _refused(make_server(ours(plugin_binary, plugin_data)))
    assert error.startswith('failed to configure plugin "aws_kms": rpc error: code = InvalidArgument desc = ')
    assert expected in error


def test_plugin_logs_are_structured_spire_entries(
    make_server: MakeServer, plugin_binary: Path, workdir: Path
) -> None:
    # key_metadata_file is accepted with a deprecation warning: one line at each of SPIRE's levels.
    id_file = workdir / "server-id"
    data = {**COMMUNITY_SAMPLE, "key_metadata_file": str(id_file)}
    server = make_server(ours(plugin_binary, data), ServerSettings(log_level="DEBUG")).start()
    server_id = id_file.read_text().strip()

    def one(message: str) -> LogEntry:
        matches = [e for e in server.log_entries() if _from_plugin(e) and e.get("msg") == message]
        assert len(matches) >= 1, f"no plugin line {message!r}:\n{server.log_tail()}"
        return matches[0]

    configured = one("Configured")
    assert configured["level"] == "info"
    assert configured["plugin_type"] == "KeyManager"
    assert configured["external"] is True
    assert configured["subsystem_name"] == PLUGIN_SUBSYSTEM
    assert configured["region"] == "us-east-1"
    assert configured["trust_domain"] == "example.org"
    assert configured["alias_prefix"] == f"alias/SPIRE_SERVER/example_org/{server_id}/"

    deprecated = one("key_metadata_file is deprecated: use key_identifier_file instead")
    assert deprecated["level"] == "warning"
    generated = one("Key generated")
    assert generated["level"] == "info"
    assert {e["key_id"] for e in server.log_entries() if e.get("msg") == "Key generated"} == {
        "x509-CA-A",
        "JWT-Signer-A",
    }
    assert one("Plugin serving")["level"] == "debug"

    # Every line the plugin wrote reached SPIRE as JSON: none was logged raw (SPIRE logs a non-JSON line
    # of plugin output at debug, as its message, without the plugin's fields).
    from_stderr = [e for e in server.log_entries() if e.get("subsystem_name") == PLUGIN_SUBSYSTEM]
    assert len(from_stderr) >= 5
    assert [e for e in from_stderr if "@module" not in e] == []

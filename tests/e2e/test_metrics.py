"""The plugin's metrics in a real SPIRE Server's telemetry: SPIRE serves its Metrics host service to the
plugin, and its Prometheus endpoint on loopback shows what the plugin reported, under SPIRE's prefix and
beside SPIRE's own KeyManager metrics."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.e2e.conftest import COMMUNITY_PREFIX, MakeServer, ours
from tests.support.kms_emulator import EmulatorControl
from tests.support.spire_server import REGION, ServerSettings, SpireServer, aliases_under, free_port

Samples = dict[str, list[tuple[dict[str, str], float]]]

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> Samples:
    samples: Samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        samples.setdefault(name, []).append((dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample of `name` whose labels include `labels` (SPIRE adds `host`)."""
    found = [v for ls, v in samples.get(name, []) if all(ls.get(k) == want for k, want in labels.items())]
    assert len(found) <= 1, (name, labels, samples.get(name))
    return found[0] if found else None


def scrape_until(server: SpireServer, condition: Callable[[Samples], bool], timeout: float = 30.0) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = parse_prometheus(server.prometheus_metrics())
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            ours_only = sorted(name for name in samples if "aws_kms" in name)
            raise AssertionError(f"SPIRE's /metrics not as expected within {timeout:g} s; ours: {ours_only}")
        time.sleep(0.5)


def test_spire_shows_the_plugins_metrics(
    make_server: MakeServer, plugin_binary: Path, emulator: EmulatorControl, kms: Any
) -> None:
    server = make_server(ours(plugin_binary), settings=ServerSettings(prometheus_port=free_port())).start()
    server.mint_x509("spiffe://example.org/workload")
    aliases = aliases_under(kms, COMMUNITY_PREFIX)

    samples = scrape_until(
        server,
        lambda s: (
            value(s, "spire_server_server_key_manager_aws_kms_keys") == len(aliases)
            and (value(s, "spire_server_server_key_manager_aws_kms_kms_sign", status="OK") or 0) >= 2
            # Samples reach SPIRE apart from the counters: wait for both, not the first to arrive.
            and (
                value(s, "spire_server_server_key_manager_aws_kms_kms_sign_elapsed_time_count", status="OK")
                or 0
            )
            >= 2
        ),
    )
    # The plugin's keys: x509-CA-A and JWT-Signer-A on a fresh start.
    assert len(aliases) == 2
    assert value(samples, "spire_server_server_key_manager_aws_kms_kms_create_key", status="OK") == 2.0
    assert value(samples, "spire_server_server_key_manager_aws_kms_deletions_pending") == 0.0
    assert value(samples, "spire_server_server_key_manager_aws_kms_kms_circuit_breaker_open") == 0.0
    # Latency as a summary in milliseconds, as SPIRE's own elapsed_time metrics.
    count = value(samples, "spire_server_server_key_manager_aws_kms_kms_sign_elapsed_time_count", status="OK")
    assert count is not None and count >= 2.0
    assert value(
        samples, "spire_server_server_key_manager_aws_kms_kms_sign_elapsed_time", status="OK", quantile="0.5"
    )
    # Beside SPIRE's own metrics of the same KeyManager calls, named alike (SPIRE's signatures by the
    # keys GenerateKey returned are not wrapped by its telemetry, so it has no sign_data of its own here).
    assert value(samples, "spire_server_server_key_manager_generate_key", status="OK") == 2.0

    emulator.add_fault("Sign", count=2)
    server.mint_x509("spiffe://example.org/throttled")
    samples = scrape_until(
        server, lambda s: value(s, "spire_server_server_key_manager_aws_kms_kms_sign_throttle") == 2.0
    )
    assert (
        value(samples, "spire_server_server_key_manager_aws_kms_kms_sign_retry", status="ThrottlingException")
        == 2.0
    )

    emulator.add_fault("Sign", error="AccessDeniedException", message="not allowed", count=1)
    server.cli("x509", "mint", "-spiffeID", "spiffe://example.org/denied", check=False)
    samples = scrape_until(
        server,
        lambda s: (
            value(s, "spire_server_server_key_manager_aws_kms_kms_sign", status="AccessDeniedException")
            == 1.0
        ),
    )
    assert server.stop() == 0


def test_spire_shows_the_heartbeat_and_disposal_passes(make_server: MakeServer, plugin_binary: Path) -> None:
    plugin_data = {"region": REGION, "key_identifier_value": "server1"}
    settings = ServerSettings(prometheus_port=free_port())
    server = make_server(ours(plugin_binary, plugin_data), settings=settings).start()
    samples = scrape_until(
        server,
        lambda s: (
            value(s, "spire_server_server_key_manager_aws_kms_heartbeat", status="OK") == 1.0
            and value(s, "spire_server_server_key_manager_aws_kms_disposal", status="OK") == 1.0
        ),
    )
    assert value(samples, "spire_server_server_key_manager_aws_kms_disposal_keys_scheduled") == 0.0
    assert (
        value(samples, "spire_server_server_key_manager_aws_kms_heartbeat_elapsed_time_count", status="OK")
        == 1.0
    )
    assert server.stop() == 0

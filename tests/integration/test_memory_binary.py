"""Memory stays bounded under hostile traffic: the frozen binary's process tree grows by no more than
10 MB over 40,000 fuzzed requests after warm-up (huge and made-up key ids, wrong digests and hashes,
refused key ids, bytes that are no message at all, and real signatures in between)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path

import grpc

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import StartPlugin
from tests.support.plugin_host import PluginProcess
from tests.support.signatures import digest_of, verify

WARM_UP = 4_000
FUZZED = 40_000
CALLERS = 4
GROWTH_BOUND = 10 * 1024 * 1024
KEYS = {"x509-CA-A": km.EC_P256, "JWT-Signer-A": km.RSA_2048}
SIGN_DATA = "/spire.plugin.server.keymanager.v1.KeyManager/SignData"


def tree_rss(plugin: PluginProcess) -> int:
    total = 0
    for pid in plugin.all_pids():
        status = Path(f"/proc/{pid}/status").read_text()
        (line,) = [line for line in status.splitlines() if line.startswith("VmRSS:")]
        total += int(line.split()[1]) * 1024
    return total


def fuzzed_request(
    rng: random.Random, plugin: PluginProcess, raw: Callable[[bytes], bytes], huge: bool = False
) -> None:
    """One request of the mix (`huge`: the largest one); every answer but the expected refusals is a
    failure."""
    kind = 5 if huge else rng.randrange(100)
    try:
        if kind < 5:
            key_id = rng.choice(list(KEYS))
            answer = plugin.sign_data(key_id, digest_of(km.SHA256), km.SHA256)
            assert answer.signature
            return
        if kind < 35:
            # A made-up id each time: nothing about it may be kept.
            key_id = "".join(rng.choice("abcxyz-.+/é ") for _ in range(rng.randrange(1, 200)))
            if huge or rng.random() < 0.002:
                key_id = "é" * 1_000_000
            plugin.sign_data(key_id, rng.randbytes(rng.choice([0, 20, 32, 48, 64])), rng.randrange(-3, 20))
        elif kind < 60:
            plugin.get_public_key(f"bundle-acme-{rng.getrandbits(64):x}")
            return
        elif kind < 75:
            plugin.generate_key(f"bad id {rng.getrandbits(64):x}", rng.randrange(0, 6))
        elif kind < 90:
            plugin.sign_data(
                rng.choice(list(KEYS)), rng.randbytes(rng.randrange(0, 80)), rng.randrange(-3, 20)
            )
        else:
            raw(rng.randbytes(rng.randrange(1, 64)))
    except grpc.RpcError as err:
        assert err.code() in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.NOT_FOUND,
        ), f"{err.code().name}: {(err.details() or '')[:200]}"


def storm(plugin: PluginProcess, requests: int, seed: int, huge_first: bool = False) -> None:
    raw = plugin.channel.unary_unary(SIGN_DATA, request_serializer=None, response_deserializer=None)
    failures: list[BaseException] = []

    def caller(n: int) -> None:
        rng = random.Random(seed * 100 + n)
        try:
            if huge_first:
                # The largest requests of the mix, all callers at once: the high-water mark the fuzzed
                # traffic may reach again but must not raise.
                for _ in range(3):
                    fuzzed_request(random.Random(0), plugin, lambda data: raw(data, timeout=30), huge=True)
            for _ in range(requests // CALLERS):
                fuzzed_request(rng, plugin, lambda data: raw(data, timeout=30))
        except BaseException as err:
            failures.append(err)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(CALLERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def test_rss_stays_bounded_over_forty_thousand_fuzzed_requests(plugin: PluginProcess) -> None:
    published = {
        key_id: plugin.generate_key(key_id, key_type).public_key for key_id, key_type in KEYS.items()
    }
    storm(plugin, WARM_UP, seed=1, huge_first=True)
    warm = tree_rss(plugin)
    storm(plugin, FUZZED, seed=2)
    after = tree_rss(plugin)
    print(f"plugin tree RSS: {warm / 2**20:.1f} MiB after warm-up, {after / 2**20:.1f} MiB after {FUZZED}")
    assert after - warm <= GROWTH_BOUND
    for key_id, key in published.items():
        answer = plugin.sign_data(key_id, digest_of(km.SHA256), km.SHA256)
        verify(key.pkix_data, answer.signature, km.SHA256, None)


def test_the_binary_sets_glibcs_allocator_at_start_and_says_so_at_debug_level(start: StartPlugin) -> None:
    entry = start().wait_for_log("Memory allocator")
    assert entry["@message"] == "Memory allocator set"
    assert entry["@level"] == "debug"
    assert (entry["mmap_threshold_bytes"], entry["arena_max"]) == (131072, 2)


def test_an_operators_own_allocator_setting_is_left_alone(start: StartPlugin) -> None:
    entry = start(MALLOC_ARENA_MAX="4").wait_for_log("Memory allocator")
    assert entry["@message"] == "Memory allocator left as the environment sets it"
    assert entry["variables"] == "MALLOC_ARENA_MAX"

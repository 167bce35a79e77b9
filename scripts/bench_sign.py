"""Benchmark: the frozen plugin next to a direct boto3 client, against the same KMS emulator, in one run.

Prints the binary's size, spawn-to-handshake time, and SignData latency through the plugin (gRPC over
its unix socket, as SPIRE calls it) beside boto3's `kms.sign` on the same key. The emulator dominates
both; the difference is what the plugin adds. Run: .venv/bin/python scripts/bench_sign.py [--signs N]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proto_gen.spire.keymanager import keymanager_pb2 as km  # noqa: E402
from tests.conftest import BINARY  # noqa: E402
from tests.integration.conftest import COMMUNITY_CONFIG, plugin_env  # noqa: E402
from tests.support.kms_emulator import start_emulator_process  # noqa: E402
from tests.support.plugin_host import start_plugin  # noqa: E402


def timed(call: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    p50, mean = statistics.median(ordered), statistics.fmean(ordered)
    return f"p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   mean {mean:6.2f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--signs", type=int, default=300, help="signatures per row (default 300)")
    parser.add_argument("--starts", type=int, default=5, help="plugin starts to time (default 5)")
    args = parser.parse_args()
    if not BINARY.is_file():
        print(f"{BINARY} is missing: run scripts/build.sh first", file=sys.stderr)
        return 1

    print(f"binary: {BINARY} {BINARY.stat().st_size / 1e6:.1f} MB")
    with start_emulator_process() as emulator, tempfile.TemporaryDirectory() as tmp:
        env = plugin_env(emulator.url, Path(tmp))
        handshakes = []
        for _ in range(args.starts):
            with start_plugin([str(BINARY)], env=env) as plugin:
                handshakes.append((plugin.handshake_seconds or 0) * 1000)
                plugin.shutdown()
        median_start = statistics.median(handshakes)
        print(f"spawn to handshake line over {args.starts} starts: median {median_start:.0f} ms")

        kms = emulator.control().kms_client()
        with start_plugin([str(BINARY)], env=env) as plugin:
            plugin.configure(COMMUNITY_CONFIG)
            print(f"\nSignData, {args.signs} sequential signatures per row")
            print(f"{'key':<10} {'path':<22} latency")
            for key_type, hash_algorithm, algorithm in [
                (km.EC_P256, km.SHA256, "ECDSA_SHA_256"),
                (km.RSA_2048, km.SHA256, "RSASSA_PKCS1_V1_5_SHA_256"),
            ]:
                name = km.KeyType.Name(key_type)
                plugin.generate_key(f"bench-{name}", key_type)
                arn = kms.describe_key(KeyId=f"alias/SPIRE_SERVER_KEY/bench-{name}")["KeyMetadata"]["Arn"]
                digest = hashlib.sha256(b"benchmark").digest()
                through_plugin = timed(
                    lambda n=name, d=digest, h=hash_algorithm: plugin.sign_data(
                        f"bench-{n}", d, hash_algorithm=h
                    ),
                    args.signs,
                )
                direct = timed(
                    lambda a=arn, d=digest, alg=algorithm: kms.sign(
                        KeyId=a, Message=d, MessageType="DIGEST", SigningAlgorithm=alg
                    ),
                    args.signs,
                )
                print(f"{name:<10} {'plugin (gRPC + boto3)':<22} {summary(through_plugin)}")
                print(f"{name:<10} {'boto3 direct':<22} {summary(direct)}")
                overhead = statistics.median(through_plugin) - statistics.median(direct)
                print(f"{name:<10} {'plugin overhead p50':<22} {overhead:+6.2f} ms")
            plugin.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

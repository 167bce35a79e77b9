"""Benchmark: sustained signing through the frozen plugin with 20% of KMS Sign calls throttled, next to
the same run without faults, against one KMS emulator in one run.

Prints success rate, throughput and p50/p99 latency of SignData as SPIRE sees it (30 s deadline).
Run: .venv/bin/python scripts/bench_throttle.py [--seconds S] [--workers N] [--throttled 0.2]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from proto_gen.spire.keymanager import keymanager_pb2 as km  # noqa: E402
from tests.conftest import BINARY  # noqa: E402
from tests.integration.conftest import COMMUNITY_CONFIG, plugin_env  # noqa: E402
from tests.support.kms_emulator import EmulatorControl, start_emulator_process  # noqa: E402
from tests.support.plugin_host import PluginProcess, start_plugin  # noqa: E402


@dataclass
class Run:
    latencies_ms: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def row(self, name: str, kms_calls: int) -> str:
        total = len(self.latencies_ms) + sum(self.failures.values())
        ok = len(self.latencies_ms)
        ordered = sorted(self.latencies_ms) or [0.0]
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        return (
            f"{name:<22} {total:>7} {100 * ok / max(total, 1):>8.2f}% {ok / self.elapsed:>8.1f}/s "
            f"{statistics.median(ordered):>8.2f} {p99:>8.2f} {kms_calls:>9}  {self.failures or ''}"
        )


def sustained(plugin: PluginProcess, seconds: float, workers: int) -> Run:
    run = Run()
    digest = hashlib.sha256(b"sustained").digest()
    stop_at = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < stop_at:
            started = time.perf_counter()
            try:
                plugin.sign_data("x509-CA-A", digest, hash_algorithm=km.SHA256)
                with run.lock:
                    run.latencies_ms.append((time.perf_counter() - started) * 1000)
            except grpc.RpcError as err:
                with run.lock:
                    run.failures[err.code().name] = run.failures.get(err.code().name, 0) + 1

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.elapsed = time.monotonic() - began
    return run


def measure(plugin: PluginProcess, control: EmulatorControl, seconds: float, workers: int) -> tuple[Run, int]:
    control.reset_calls()
    run = sustained(plugin, seconds, workers)
    return run, control.calls().get("Sign", 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run (default 20)")
    parser.add_argument("--workers", type=int, default=4, help="concurrent SignData callers (default 4)")
    parser.add_argument("--throttled", type=float, default=0.2, help="share of Sign calls throttled (0.2)")
    args = parser.parse_args()
    if not BINARY.is_file():
        print(f"{BINARY} is missing: run scripts/build.sh first", file=sys.stderr)
        return 1

    with start_emulator_process() as emulator, tempfile.TemporaryDirectory() as tmp:
        control = emulator.control()
        with start_plugin([str(BINARY)], env=plugin_env(emulator.url, Path(tmp))) as plugin:
            plugin.configure(COMMUNITY_CONFIG)
            plugin.generate_key("x509-CA-A", km.EC_P256)
            clean, clean_calls = measure(plugin, control, args.seconds, args.workers)
            control.add_fault("Sign", count=-1, probability=args.throttled)
            faulty, faulty_calls = measure(plugin, control, args.seconds, args.workers)
            control.clear_faults()
            plugin.shutdown()

    print(f"SignData through the plugin, {args.workers} concurrent callers, {args.seconds:g} s per run")
    print(f"{'run':<22} {'calls':>7} {'success':>9} {'rate':>10} {'p50 ms':>8} {'p99 ms':>8} {'KMS Sign':>9}")
    print(clean.row("no faults", clean_calls))
    print(faulty.row(f"{args.throttled:.0%} Sign throttled", faulty_calls))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: what reporting metrics to SPIRE costs SignData. The frozen plugin signs the same way twice
against the KMS emulator, once started as by a host without the Metrics host service and once with the
test host serving it (as SPIRE does), and prints CPU per signature of the plugin's process tree, latency
p50/p99, and what reached the host service.

    .venv/bin/python scripts/bench_metrics.py [--signs N] [--callers N]

Needs dist/aws-kms-keymanager.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench import BINARY, WARMUP, Run, timed_calls, tree_cpu  # noqa: E402

from proto_gen.spire.keymanager import keymanager_pb2 as km  # noqa: E402
from tests.integration.conftest import COMMUNITY_CONFIG, plugin_env  # noqa: E402
from tests.support.host_services import HostServices  # noqa: E402
from tests.support.kms_emulator import start_emulator_process  # noqa: E402
from tests.support.plugin_host import PluginProcess, start_plugin  # noqa: E402

SIGN = ("server_key_manager", "aws_kms", "kms", "sign")


def run(plugin: PluginProcess, signs: int, callers: int) -> Run:
    plugin.configure(COMMUNITY_CONFIG)
    plugin.generate_key("bench", km.EC_P256)
    digest = hashlib.sha256(b"benchmark").digest()

    def sign() -> object:
        return plugin.sign_data("bench", digest, hash_algorithm=km.SHA256)

    timed_calls(sign, WARMUP, callers)
    before = tree_cpu(plugin.pid)
    latencies = timed_calls(sign, signs, callers)
    return Run(cpu=tree_cpu(plugin.pid) - before, latencies=latencies)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--signs", type=int, default=2000, help="signatures per run (2000)")
    parser.add_argument("--callers", type=int, default=16, help="concurrent callers (16)")
    args = parser.parse_args(argv)
    if not BINARY.is_file():
        print(f"{BINARY} is missing: run scripts/build.sh first", file=sys.stderr)
        return 1
    print(f"SignData, EC P-256, {args.signs} calls from {args.callers} callers; CPU of the plugin's tree")
    print(f"{'host':<28} {'cpu per call':>12}  {'p50/p99 ms':>14}")
    with start_emulator_process() as emulator, tempfile.TemporaryDirectory() as tmp:
        env = plugin_env(emulator.url, Path(tmp))
        rows: list[tuple[str, Run]] = []
        with start_plugin([str(BINARY)], env=env) as plugin:
            rows.append(("without Metrics host service", run(plugin, args.signs, args.callers)))
            plugin.shutdown()
        emulator.control().reset()
        with HostServices() as host, start_plugin([str(BINARY)], env=env, **host.plugin_args()) as plugin:
            rows.append(("with Metrics host service", run(plugin, args.signs, args.callers)))
            expected = float(args.signs + WARMUP)
            host.metrics.wait_for(lambda m: m.counter(SIGN, {"status": "OK"}) == expected, timeout=30)
            calls = len(host.metrics.snapshot())
            plugin.shutdown()
        for name, result in rows:
            print(
                f"{name:<28} {result.cpu_ms():>9.3f} ms"
                f"  {result.percentile_ms(0.5):>6.2f}/{result.percentile_ms(0.99):<7.2f}"
            )
        print(f"the host service got {calls} calls for {int(expected)} signatures, all of them counted")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

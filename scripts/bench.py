"""Benchmark: the frozen plugin next to a direct boto3 client, against the same KMS emulator, in one run.

Prints side by side, for EC P-256 and RSA-2048 keys and 1 and 16 callers:

- CPU per signature: of the whole plugin process tree (launchers included) per SignData, against a
  separate Python process calling boto3's `kms.sign` on the same key, per call;
- latency p50/p99 of SignData through the plugin's unix socket and of boto3's Sign.

The plugin is called as SPIRE calls it: by a Go program (scripts/benchclient, built here with Go's caches)
using grpc-go and the SPIRE plugin SDK's client. Each row alternates blocks of the plugin's calls with
blocks of boto3's, so that a change in the machine's speed during the row falls on both sides alike.
Then what a signature costs SPIRE three ways: with its built-in aws_kms (aws-sdk-go-v2 in SPIRE's process),
with a grpc-go plugin that signs with aws-sdk-go-v2 (benchclient -serve: what a Go plugin adds), and
with this plugin; GetPublicKey(s) latency next to that grpc-go plugin's, and the KMS calls they made;
spawn-to-handshake time, binary size and the RSS of the plugin tree. `--spire` runs the SPIRE workload
instead (`scripts/bench_spire.py`: mints with SPIRE's built-in aws_kms, with the same aws_kms code served as
an external plugin, and with this plugin; start to healthy).

    .venv/bin/python scripts/bench.py [--signs N] [--blocks N] [--starts N] [--callers 1,16]
    .venv/bin/python scripts/bench.py --spire [bench_spire.py's options]

The emulator answers each request on a new connection (werkzeug closes every one), so both sides pay a
TCP connect per call; against KMS both would reuse connections. Needs dist/aws-kms-keymanager-linux-amd64.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gobuild import go_build  # noqa: E402

from proto_gen.spire.keymanager import keymanager_pb2 as km  # noqa: E402
from tests.conftest import BINARY  # noqa: E402
from tests.integration.conftest import COMMUNITY_CONFIG, plugin_env  # noqa: E402
from tests.support.kms_emulator import start_emulator_process  # noqa: E402
from tests.support.plugin_host import PluginProcess, start_plugin  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
KEYS = [(km.EC_P256, "ECDSA_SHA_256"), (km.RSA_2048, "RSASSA_PKCS1_V1_5_SHA_256")]
WARMUP = 50


@dataclass
class Run:
    """One side of one row: CPU seconds spent and each call's latency in seconds."""

    cpu: float
    latencies: list[float]

    def cpu_ms(self) -> float:
        return 1000 * self.cpu / len(self.latencies)

    def __add__(self, other: Run) -> Run:
        return Run(self.cpu + other.cpu, self.latencies + other.latencies)

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def tree_pids(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def _stat_fields(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def tree_cpu(root: int) -> float:
    """User and system CPU seconds of `root` and every descendant, all threads."""
    total = 0
    for pid in tree_pids(root):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def tree_rss_mb(root: int) -> float:
    total = 0
    for pid in tree_pids(root):
        try:
            total += int(_stat_fields(pid)[21])
        except OSError:
            continue
    return total * PAGE / 1e6


def timed_calls(call: Callable[[], object], count: int, callers: int) -> list[float]:
    """`count` calls spread over `callers` threads; each call's latency."""
    latencies: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        started = time.perf_counter()
        call()
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)

    with ThreadPoolExecutor(max_workers=callers) as pool:
        list(pool.map(one, range(count)))
    return latencies


def boto3_worker(argv: list[str]) -> int:
    """The baseline, in a process of its own so that its CPU is counted as the plugin's is. Its argument
    is the emulator's URL; then, one job per line on stdin ({"arn", "algorithm", "count", "callers"}),
    it answers one line {"cpu", "latencies"} on stdout. It lives for the whole run, so that its blocks of
    calls can alternate with the plugin's."""
    import boto3
    import botocore.config

    client = boto3.client(
        "kms",
        region_name="us-east-1",
        endpoint_url=argv[0],
        aws_access_key_id="AKIAIOSFODNN7EXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        config=botocore.config.Config(max_pool_connections=32, retries={"total_max_attempts": 1}),
    )
    digest = hashlib.sha256(b"benchmark").digest()
    warmed: set[tuple[str, int]] = set()
    for line in sys.stdin:
        job = json.loads(line)
        request = {
            "KeyId": job["arn"],
            "Message": digest,
            "MessageType": "DIGEST",
            "SigningAlgorithm": job["algorithm"],
        }

        def sign(request: dict[str, object] = request) -> object:
            return client.sign(**request)

        if (job["arn"], job["callers"]) not in warmed:
            timed_calls(sign, WARMUP, job["callers"])
            warmed.add((job["arn"], job["callers"]))
        before = resource.getrusage(resource.RUSAGE_SELF)
        latencies = timed_calls(sign, job["count"], job["callers"])
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
        print(json.dumps({"cpu": cpu, "latencies": latencies}), flush=True)
    return 0


class Baseline:
    """The boto3 worker process (`boto3_worker`)."""

    def __init__(self, url: str) -> None:
        self._process = subprocess.Popen(
            [sys.executable, __file__, "--boto3-worker", url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, arn: str, algorithm: str, count: int, callers: int) -> Run:
        assert self._process.stdin is not None and self._process.stdout is not None
        job = {"arn": arn, "algorithm": algorithm, "count": count, "callers": callers}
        self._process.stdin.write(json.dumps(job) + "\n")
        self._process.stdin.flush()
        answer = json.loads(self._process.stdout.readline())
        return Run(cpu=answer["cpu"], latencies=answer["latencies"])

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=30)


def run_client(client: Path, *args: str) -> Run:
    """One block of calls by scripts/benchclient; `cpu` is the client's own."""
    result = subprocess.run([str(client), *args], capture_output=True, text=True, check=True)
    answer = json.loads(result.stdout)
    return Run(cpu=answer["cpu_seconds"], latencies=answer["latencies"])


@dataclass(frozen=True)
class Caller:
    """Calls the plugin as SPIRE does (scripts/benchclient: grpc-go and the plugin SDK's client)."""

    client: Path
    plugin: PluginProcess

    def calls(
        self, method: str, count: int, callers: int = 1, key_id: str = "", warmup: int = 0, socket: str = ""
    ) -> Run:
        """A block of calls to the plugin, or to another KeyManager server on `socket`."""
        return run_client(
            self.client,
            f"-socket={socket or self.plugin.socket_path}",
            f"-method={method}",
            f"-key={key_id}",
            f"-count={count}",
            f"-callers={callers}",
            f"-warmup={warmup}",
        )

    def sign_run(
        self, key_id: str, count: int, callers: int, warm: bool, target: GoPlugin | None = None
    ) -> tuple[Run, float]:
        """A block of SignData calls to the plugin (or to `target`): the server tree's CPU and latencies,
        and the caller's CPU seconds. Warm-up calls are made apart, so that their CPU is not counted."""
        socket, pid = (target.socket, target.pid) if target else ("", self.plugin.pid)
        if warm:
            self.calls("sign", WARMUP, callers, key_id, socket=socket)
        before = tree_cpu(pid)
        run = self.calls("sign", count, callers, key_id, socket=socket)
        return Run(cpu=tree_cpu(pid) - before, latencies=run.latencies), run.cpu


def startup_ms(env: dict[str, str], starts: int) -> float:
    handshakes = []
    for _ in range(starts):
        with start_plugin([str(BINARY)], env=env) as plugin:
            handshakes.append((plugin.handshake_seconds or 0) * 1000)
            plugin.shutdown()
    return statistics.median(handshakes)


@dataclass(frozen=True)
class GoPlugin:
    """benchclient -serve: a grpc-go KeyManager that answers GetPublicKey(s) from memory and signs with
    aws-sdk-go-v2: what a Go plugin costs SPIRE through a socket on this machine."""

    socket: str
    pid: int


@contextmanager
def go_plugin(client: Path, endpoint: str = "", arn: str = "", algorithm: str = "") -> Iterator[GoPlugin]:
    with tempfile.TemporaryDirectory() as tmp:
        socket = f"{tmp}/go-plugin.sock"
        command = [str(client), "-serve", f"-socket={socket}"]
        if endpoint:
            command += [f"-endpoint={endpoint}", f"-key={arn}", f"-algorithm={algorithm}"]
        server = subprocess.Popen(command)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(socket) and time.monotonic() < deadline:
                time.sleep(0.01)
            yield GoPlugin(socket, server.pid)
        finally:
            server.kill()
            server.wait()


def public_key_table(caller: Caller, key_id: str, count: int, blocks: int) -> None:
    """GetPublicKey(s) p50 through the plugin's socket, alternating with the grpc-go plugin's."""
    with go_plugin(caller.client) as floor_plugin:
        print(f"\n{'':<14}  {'plugin p50':>10}  {'grpc-go plugin p50':>18}")
        for method, label in (("getpublickey", "GetPublicKey"), ("getpublickeys", "GetPublicKeys")):
            ours, floor = Run(0.0, []), Run(0.0, [])
            for block in range(blocks):
                warmup = WARMUP if block == 0 else 0
                ours += caller.calls(method, count // blocks, key_id=key_id, warmup=warmup)
                floor += caller.calls(
                    method, count // blocks, key_id=key_id, warmup=warmup, socket=floor_plugin.socket
                )
            print(f"{label:<14}  {ours.percentile_ms(0.5):>7.3f} ms  {floor.percentile_ms(0.5):>15.3f} ms")


def sign_table(
    caller: Caller, baseline: Baseline, kms: object, signs: int, callers_list: list[int], blocks: int
) -> None:
    print(
        f"\nSign: {signs} calls per row, in {blocks} blocks alternating between the plugin and boto3 (so "
        "that a change in the machine's speed falls on both);\nCPU per call (plugin: its whole process tree)"
    )
    header = (
        f"{'key':<9} {'callers':>7}  {'plugin cpu':>10} {'boto3 cpu':>9} {'ratio':>6}"
        f"  {'plugin p50/p99 ms':>17}  {'boto3 p50/p99 ms':>16}  {'+p50 ms':>7}"
    )
    print(header)
    for key_type, algorithm in KEYS:
        name = km.KeyType.Name(key_type)
        key_id = f"bench-{name}"
        arn = kms.describe_key(KeyId=f"alias/SPIRE_SERVER_KEY/{key_id}")["KeyMetadata"]["Arn"]  # type: ignore[attr-defined]
        for callers in callers_list:
            ours, direct = Run(0.0, []), Run(0.0, [])
            for block in range(blocks):
                ours += caller.sign_run(key_id, signs // blocks, callers, warm=block == 0)[0]
                direct += baseline.run(arn, algorithm, signs // blocks, callers)
            print(
                f"{name:<9} {callers:>7}  {ours.cpu_ms():>7.3f} ms {direct.cpu_ms():>6.3f} ms"
                f" {ours.cpu_ms() / direct.cpu_ms():>6.2f}"
                f"  {ours.percentile_ms(0.5):>8.2f}/{ours.percentile_ms(0.99):<8.2f}"
                f"  {direct.percentile_ms(0.5):>7.2f}/{direct.percentile_ms(0.99):<8.2f}"
                f"  {ours.percentile_ms(0.5) - direct.percentile_ms(0.5):>+7.2f}"
            )


def builtin_table(caller: Caller, kms: object, endpoint: str, signs: int, blocks: int) -> None:
    """What a signature costs SPIRE, one caller, three ways in alternating blocks: its built-in aws_kms
    (aws-sdk-go-v2 in SPIRE's process), the grpc-go plugin (what a Go plugin adds), this plugin."""
    print(
        "\nWhat a signature costs SPIRE, 1 caller: the built-in aws_kms signs with aws-sdk-go-v2 in SPIRE's"
        "\nprocess; a plugin is a gRPC call away. CPU per call: the Go caller's + the plugin process tree's."
    )
    print(f"{'key':<9}  {'signer':<36}  {'cpu per call':>20}  {'p50/p99 ms':>12}  {'+p50 ms':>7}")
    for key_type, algorithm in KEYS:
        name = km.KeyType.Name(key_type)
        key_id = f"bench-{name}"
        arn = kms.describe_key(KeyId=f"alias/SPIRE_SERVER_KEY/{key_id}")["KeyMetadata"]["Arn"]  # type: ignore[attr-defined]
        builtin, go, ours = Run(0.0, []), Run(0.0, []), Run(0.0, [])
        go_caller_cpu = ours_caller_cpu = 0.0
        with go_plugin(caller.client, endpoint, arn, algorithm) as floor_plugin:
            for block in range(blocks):
                count, warmup = signs // blocks, WARMUP if block == 0 else 0
                builtin += run_client(
                    caller.client,
                    "-method=awssdk-sign",
                    f"-endpoint={endpoint}",
                    f"-key={arn}",
                    f"-algorithm={algorithm}",
                    f"-count={count}",
                    f"-warmup={warmup}",
                )
                run, cpu = caller.sign_run(key_id, count, 1, warm=block == 0, target=floor_plugin)
                go, go_caller_cpu = go + run, go_caller_cpu + cpu
                run, cpu = caller.sign_run(key_id, count, 1, warm=block == 0)
                ours, ours_caller_cpu = ours + run, ours_caller_cpu + cpu
        base = builtin.percentile_ms(0.5)
        for label, side, caller_cpu in (
            ("built-in aws_kms (inside SPIRE)", builtin, None),
            ("grpc-go plugin with aws-sdk-go-v2", go, go_caller_cpu),
            ("this plugin", ours, ours_caller_cpu),
        ):
            if caller_cpu is None:
                cpu = f"{side.cpu_ms():.3f} ms"
            else:
                caller_ms = 1000 * caller_cpu / len(side.latencies)
                cpu = f"{caller_ms:.3f}+{side.cpu_ms():.3f}={caller_ms + side.cpu_ms():.3f} ms"
            p50 = side.percentile_ms(0.5)
            print(
                f"{name if side is builtin else '':<9}  {label:<36}  {cpu:>20}"
                f"  {p50:>5.2f}/{side.percentile_ms(0.99):<6.2f}  {p50 - base:>+7.2f}"
            )


def main(argv: list[str]) -> int:
    if argv[:1] == ["--boto3-worker"]:
        return boto3_worker(argv[1:])
    if argv[:1] == ["--spire"]:
        import bench_spire

        sys.argv = [str(Path(__file__).with_name("bench_spire.py")), *argv[1:]]
        return int(bench_spire.main())
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--signs", type=int, default=1000, help="signatures per row (1000)")
    parser.add_argument("--starts", type=int, default=5, help="plugin starts to time (5)")
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks per row (10)")
    parser.add_argument(
        "--callers", default="1,16", help="concurrent callers per row, comma-separated (1,16)"
    )
    args = parser.parse_args(argv)
    if not BINARY.is_file():
        print(f"{BINARY} is missing: run scripts/build.sh first", file=sys.stderr)
        return 1
    callers_list = [int(value) for value in args.callers.split(",")]
    client = go_build("benchclient")

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    )
    print(f"commit {commit.stdout.strip()}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}")
    print(f"binary: {BINARY} {BINARY.stat().st_size / 1e6:.1f} MB")
    with start_emulator_process() as emulator, tempfile.TemporaryDirectory() as tmp:
        env = plugin_env(emulator.url, Path(tmp))
        print(
            f"spawn to handshake line: median {startup_ms(env, args.starts):.0f} ms of {args.starts} starts"
        )
        control = emulator.control()
        kms = control.kms_client()
        with start_plugin([str(BINARY)], env=env) as plugin:
            plugin.configure(COMMUNITY_CONFIG)
            for key_type, _ in KEYS:
                plugin.generate_key(f"bench-{km.KeyType.Name(key_type)}", key_type)
            print(f"plugin tree RSS after Configure and two keys: {tree_rss_mb(plugin.pid):.1f} MB")
            caller = Caller(client, plugin)
            baseline = Baseline(emulator.url)
            try:
                sign_table(caller, baseline, kms, args.signs, callers_list, args.blocks)
            finally:
                baseline.close()
            builtin_table(caller, kms, emulator.url, args.signs, args.blocks)
            control.reset_calls()
            public_key_table(caller, "bench-EC_P256", 2000, args.blocks)
            print(f"KMS calls for public keys: {sum(control.calls().values())}")
            print(f"plugin tree RSS after the run: {tree_rss_mb(plugin.pid):.1f} MB")
            plugin.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

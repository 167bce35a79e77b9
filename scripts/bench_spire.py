"""Benchmark: one SPIRE Server workload with SPIRE's built-in aws_kms KeyManager, with the same aws_kms code
served as an external plugin, and with our plugin, against the same KMS emulator, in one run, side by side.

The workload mints X509-SVIDs and JWT-SVIDs through SPIRE's server API on its admin socket (what
`spire-server x509 mint` / `jwt mint` call, without paying for a CLI process per call), one at a time and
from concurrent clients. Every mint is one KeyManager SignData and one KMS Sign. Every server runs the same
spire-server binary, configuration and key types; only the KeyManager block differs. The middle one,
scripts/builtinplugin, is SPIRE's own aws_kms package behind SPIRE's plugin SDK: what it loses against the
built-in is what being out of process costs SPIRE's own code, the reference for ours. Each round starts
every server (timed from launch to healthy, as `spire-server healthcheck` asks) and runs each workload in
blocks alternating between them, so that a change in the machine's speed falls on all alike. The emulator
(moto) dominates the absolute numbers: the ratios are what a plugin costs.

    .venv/bin/python scripts/bench_spire.py [--sequential N] [--concurrent N] [--workers N] [--key-type T]
                                            [--rounds N] [--blocks N]

Needs dist/aws-kms-keymanager-linux-amd64 (scripts/build.sh) and Go; installs spire-server with
scripts/install_spire.sh (cached; the first install compiles SPIRE and takes minutes), whose Go caches
then build scripts/builtinplugin in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402
from gobuild import go_build  # noqa: E402

from tests.conftest import BINARY  # noqa: E402
from tests.support.kms_emulator import (  # noqa: E402
    DUMMY_ACCESS_KEY_ID,
    DUMMY_SECRET_ACCESS_KEY,
    start_emulator_process,
)
from tests.support.spire_server import (  # noqa: E402
    KEY_TYPES,
    REGION,
    SPIRE_VERSION,
    TRUST_DOMAIN,
    KeyManagerBlock,
    ServerSettings,
    SpireServer,
    aws_env,
    install_spire,
    verify_jwt_svid,
    verify_x509_svid,
)

# dist/aws-kms-keymanager-linux-amd64, or the binary PLUGIN_BINARY names.
PLUGIN = BINARY
SPIFFE_PATH = "/bench"
SPIFFE_ID = f"spiffe://{TRUST_DOMAIN}{SPIFFE_PATH}"
AUDIENCE = "bench"
MINT_X509 = "/spire.api.server.svid.v1.SVID/MintX509SVID"
MINT_JWT = "/spire.api.server.svid.v1.SVID/MintJWTSVID"
CALL_TIMEOUT = 30.0


# --------------------------------------------------------------------------------------------------------
# The few protobuf messages of SPIRE's SVID API we need, encoded by hand (wire format: tag, length, bytes).


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def _length_delimited(data: bytes, wanted: int) -> Iterator[bytes]:
    """The values of length-delimited field `wanted` in a message; other fields are skipped."""
    at = 0
    while at < len(data):
        tag, at = _read_varint(data, at)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            _, at = _read_varint(data, at)
        elif wire_type == 1:
            at += 8
        elif wire_type == 5:
            at += 4
        elif wire_type == 2:
            length, at = _read_varint(data, at)
            if number == wanted:
                yield data[at : at + length]
            at += length
        else:
            raise ValueError(f"unexpected wire type {wire_type}")


def mint_x509_request(csr_der: bytes) -> bytes:
    return _bytes_field(1, csr_der)  # MintX509SVIDRequest.csr


def mint_jwt_request() -> bytes:
    spiffe_id = _bytes_field(1, TRUST_DOMAIN.encode()) + _bytes_field(2, SPIFFE_PATH.encode())
    return _bytes_field(1, spiffe_id) + _bytes_field(2, AUDIENCE.encode())  # id, audience


def x509_chain(response: bytes) -> list[bytes]:
    svid = next(_length_delimited(response, 1))  # MintX509SVIDResponse.svid
    return list(_length_delimited(svid, 1))  # X509SVID.cert_chain


def jwt_token(response: bytes) -> str:
    svid = next(_length_delimited(response, 1))  # MintJWTSVIDResponse.svid
    return next(_length_delimited(svid, 1)).decode()  # JWTSVID.token


def _identity(data: bytes) -> bytes:
    return data


# --------------------------------------------------------------------------------------------------------
# Measuring


@dataclass(frozen=True)
class Result:
    operations: int
    seconds: float
    latencies_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.operations / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]

    @property
    def p50(self) -> float:
        return statistics.median(self.latencies_ms)

    def __add__(self, other: Result) -> Result:
        return Result(
            self.operations + other.operations,
            self.seconds + other.seconds,
            self.latencies_ms + other.latencies_ms,
        )


def run_workload(call: Callable[[], object], operations: int, workers: int) -> Result:
    latencies: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        started = time.perf_counter()
        call()
        elapsed = (time.perf_counter() - started) * 1000
        with lock:
            latencies.append(elapsed)

    started = time.perf_counter()
    if workers == 1:
        for index in range(operations):
            one(index)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, range(operations)))
    return Result(operations, time.perf_counter() - started, latencies)


@dataclass(frozen=True)
class Variant:
    name: str
    label: str
    keymanager: KeyManagerBlock


BUILTIN, AS_PLUGIN, OURS = "builtin", "builtin-as-plugin", "ours"


WORKLOADS = ("x509 sequential", "x509 concurrent", "jwt sequential", "jwt concurrent")


@dataclass
class Running:
    """One variant's server during a round, and its two mint calls."""

    server: SpireServer
    x509: Callable[[], bytes]
    jwt: Callable[[], bytes]


def start_variant(
    variant: Variant, binary: Path, workdir: Path, emulator_url: str, args: argparse.Namespace, csr_der: bytes
) -> Running:
    """Start `variant`'s server and check one mint of each kind against its bundle."""
    settings = ServerSettings(ca_key_type=args.key_type, jwt_key_type=args.key_type, log_level="INFO")
    server = SpireServer(binary, workdir, variant.keymanager, aws_env(emulator_url), settings)
    server.start()
    channel = grpc.insecure_channel(f"unix://{server.socket_path}")
    mint_x509 = channel.unary_unary(MINT_X509, request_serializer=_identity, response_deserializer=_identity)
    mint_jwt = channel.unary_unary(MINT_JWT, request_serializer=_identity, response_deserializer=_identity)
    x509_request, jwt_request = mint_x509_request(csr_der), mint_jwt_request()
    running = Running(
        server,
        lambda: bytes(mint_x509(x509_request, timeout=CALL_TIMEOUT)),
        lambda: bytes(mint_jwt(jwt_request, timeout=CALL_TIMEOUT)),
    )
    # What is minted is real: check one of each against the server's bundle first.
    bundle = server.bundle()
    chain = [x509.load_der_x509_certificate(c) for c in x509_chain(running.x509())]
    verify_x509_svid(chain, bundle.x509_authorities, SPIFFE_ID)
    verify_jwt_svid(jwt_token(running.jwt()), server.bundle_jwks(), SPIFFE_ID, AUDIENCE)
    run_workload(running.x509, args.warmup, 1)
    run_workload(running.jwt, args.warmup, 1)
    return running


def start_times(
    variants: list[Variant], binary: Path, emulator_url: str, args: argparse.Namespace
) -> dict[str, Result]:
    """`args.starts` starts of each server, alternating, each timed from launch to healthy, then stopped."""
    settings = ServerSettings(ca_key_type=args.key_type, jwt_key_type=args.key_type, log_level="INFO")
    times: dict[str, Result] = {}
    for index in range(args.starts):
        for variant in variants if index % 2 == 0 else variants[::-1]:
            with tempfile.TemporaryDirectory(prefix="spire-bench-") as workdir:
                server = SpireServer(
                    binary, Path(workdir), variant.keymanager, aws_env(emulator_url), settings
                )
                with server:
                    started = time.perf_counter()
                    server.start()
                    elapsed = time.perf_counter() - started
                    server.stop()
            one = Result(1, elapsed, [elapsed * 1e3])
            times[variant.name] = times[variant.name] + one if variant.name in times else one
    return times


def bench_round(
    variants: list[Variant], binary: Path, emulator_url: str, args: argparse.Namespace, csr_der: bytes
) -> dict[str, dict[str, Result]]:
    """Every server up at once, each workload in blocks alternating between them: a change in the
    machine's speed during the round falls on all alike."""
    results: dict[str, dict[str, Result]] = {variant.name: {} for variant in variants}
    running: dict[str, Running] = {}
    with tempfile.TemporaryDirectory(prefix="spire-bench-") as top:
        try:
            for variant in variants:
                workdir = Path(top) / variant.name
                workdir.mkdir()
                running[variant.name] = start_variant(variant, binary, workdir, emulator_url, args, csr_der)
            for name in WORKLOADS:
                count, workers = (
                    (args.sequential, 1) if name.endswith("sequential") else (args.concurrent, args.workers)
                )
                for block in range(args.blocks):
                    order = variants if block % 2 == 0 else variants[::-1]
                    for variant in order:
                        mint = (
                            running[variant.name].x509
                            if name.startswith("x509")
                            else running[variant.name].jwt
                        )
                        measured = run_workload(mint, count // args.blocks, workers)
                        so_far = results[variant.name]
                        so_far[name] = so_far[name] + measured if name in so_far else measured
        finally:
            for variant_name, each in running.items():
                if each.server.stop() != 0:
                    raise RuntimeError(
                        f"{variant_name}: spire-server did not stop cleanly:\n{each.server.log_tail()}"
                    )
    return results


def make_csr() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")]))
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(SPIFFE_ID)]), False)
        .sign(key, hashes.SHA256())
    )
    return request.public_bytes(serialization.Encoding.DER)


def print_table(
    variants: list[Variant], results: dict[str, dict[str, Result]], args: argparse.Namespace
) -> None:
    builtin = results[BUILTIN]
    print()
    print(
        f"SPIRE Server {SPIRE_VERSION}, {args.key_type} keys, {args.rounds} round(s) with every server up, "
        f"each: {args.sequential} sequential mints, {args.concurrent} from {args.workers} concurrent "
        f"clients, in {args.blocks} alternating blocks; start to healthy: median of {args.starts} starts"
    )
    header = (
        f"{'workload':<17} {'KeyManager':<30} {'ops/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'ops/s / built-in':>17} {'/ as a plugin':>14}"
    )
    print(header)
    print("-" * len(header))
    for name in WORKLOADS:
        for index, variant in enumerate(variants):
            measured = results[variant.name][name]
            against_plugin = ""
            if variant.name == OURS:
                against_plugin = f"{measured.throughput / results[AS_PLUGIN][name].throughput:.2f}"
            print(
                f"{name if index == 0 else '':<17} {variant.label:<30} {measured.throughput:>8.1f} "
                f"{measured.p50:>8.2f} {measured.percentile(0.99):>8.2f} "
                f"{measured.throughput / builtin[name].throughput:>17.2f} {against_plugin:>14}"
            )
    print("start to healthy (median)")
    for variant in variants:
        seconds = results[variant.name]["start"].p50 / 1000
        added = seconds - builtin["start"].p50 / 1000
        print(f"{'':<17} {variant.label:<30} {seconds:>7.2f} s {added:>+8.2f} s")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sequential", type=int, default=300, help="mints per sequential row per round (300)"
    )
    parser.add_argument(
        "--concurrent", type=int, default=600, help="mints per concurrent row per round (600)"
    )
    parser.add_argument("--workers", type=int, default=8, help="concurrent clients (8)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed mints of each kind first (20)")
    parser.add_argument("--key-type", choices=KEY_TYPES, default="ec-p256", help="CA and JWT key type")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each starting every server afresh (2)")
    parser.add_argument("--starts", type=int, default=6, help="timed starts of each server (6)")
    parser.add_argument(
        "--blocks", type=int, default=6, help="blocks per workload and round, alternating servers (6)"
    )
    args = parser.parse_args()
    if not PLUGIN.is_file():
        print(f"{PLUGIN} is missing: run scripts/build.sh first", file=sys.stderr)
        return 1

    print("installing spire-server (cached after the first time) ...", file=sys.stderr)
    binary = install_spire().binary
    csr_der = make_csr()
    # SPIRE's own aws_kms code served as an external plugin: what being out of process alone costs.
    as_plugin = go_build("builtinplugin")
    variants = [
        Variant(
            BUILTIN,
            "built-in aws_kms",
            KeyManagerBlock.builtin({"region": REGION, "key_identifier_value": "bench-builtin"}),
        ),
        Variant(
            AS_PLUGIN,
            "built-in's code as a plugin",
            KeyManagerBlock.external(
                as_plugin, {"region": REGION, "key_identifier_value": "bench-builtin-as-plugin"}
            ),
        ),
        Variant(
            OURS,
            "this plugin",
            KeyManagerBlock.external(
                PLUGIN,
                {
                    "access_key_id": DUMMY_ACCESS_KEY_ID,
                    "secret_access_key": DUMMY_SECRET_ACCESS_KEY,
                    "region": REGION,
                    "key_identifier_value": "bench-ours",
                },
            ),
        ),
    ]
    started = time.perf_counter()
    results: dict[str, dict[str, Result]] = {}
    with start_emulator_process() as emulator:
        print(f"starting each server {args.starts} times ...", file=sys.stderr)
        for variant_name, timed in start_times(variants, binary, emulator.url, args).items():
            results.setdefault(variant_name, {})["start"] = timed
        for round_number in range(args.rounds):
            # Which server starts first alternates too: the second starts on a busier machine.
            order = variants if round_number % 2 == 0 else variants[::-1]
            print(f"round {round_number + 1}: every server, blocks alternating ...", file=sys.stderr)
            measured = bench_round(order, binary, emulator.url, args, csr_der)
            for variant_name, by_workload in measured.items():
                so_far = results.setdefault(variant_name, {})
                for name, result in by_workload.items():
                    so_far[name] = so_far[name] + result if name in so_far else result
    print_table(variants, results, args)
    print(f"\n(total {time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

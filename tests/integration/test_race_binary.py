"""A storm through the frozen binary: Configure again and again while GenerateKey rotates keys and eight
callers sign. Whatever interleaving happens, each signature verifies under the key whose fingerprint came
with it, and afterwards every key id serves the key it was last given."""

from __future__ import annotations

import hashlib
import threading
import time

import grpc

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import COMMUNITY_CONFIG
from tests.support.plugin_host import PluginProcess
from tests.support.signatures import digest_of, verify

ROTATED = {"x509-CA-B": km.EC_P256, "JWT-Signer-B": km.EC_P384}
STEADY = {"x509-CA-A": km.EC_P256, "JWT-Signer-A": km.RSA_2048}
ROTATIONS = 60
SIGNERS = 8


def test_configure_and_rotation_racing_signers_lose_no_key(plugin: PluginProcess) -> None:
    published: dict[str, bytes] = {}  # fingerprint -> the public key that came with it
    newest: dict[str, km.PublicKey] = {}
    for key_id, key_type in {**STEADY, **ROTATED}.items():
        key = plugin.generate_key(key_id, key_type).public_key
        published[key.fingerprint] = key.pkix_data
        newest[key_id] = key

    storm_over = threading.Event()
    problems: list[str] = []
    counts = {"signed": 0, "retired under the signer": 0, "configures": 0}
    lock = threading.Lock()
    digest = digest_of(km.SHA256)

    def sign_until_over(worker: int) -> None:
        ids = list({**STEADY, **ROTATED})
        turn = worker
        while not storm_over.is_set():
            key_id = ids[turn % len(ids)]
            turn += 1
            try:
                answer = plugin.sign_data(key_id, digest, km.SHA256)
            except grpc.RpcError as err:
                # A key rotated away while its Sign was in flight is pending deletion in KMS: SPIRE never
                # signs with the slot it regenerates, but the answer must still be this one.
                if key_id in ROTATED and err.code() is grpc.StatusCode.FAILED_PRECONDITION:
                    with lock:
                        counts["retired under the signer"] += 1
                    continue
                with lock:
                    problems.append(f"{key_id}: {err.code().name}: {err.details()}")
                continue
            with lock:
                pkix = published.get(answer.key_fingerprint)
            if pkix is None:
                problems.append(f"{key_id}: signed under unpublished fingerprint {answer.key_fingerprint}")
                continue
            try:
                verify(pkix, answer.signature, km.SHA256, None)
            except Exception as err:
                problems.append(f"{key_id}: signature does not verify under its fingerprint: {err!r}")
            with lock:
                counts["signed"] += 1

    def configure_until_over() -> None:
        while not storm_over.is_set():
            try:
                plugin.configure(COMMUNITY_CONFIG)
            except grpc.RpcError as err:
                problems.append(f"Configure: {err.code().name}: {err.details()}")
            with lock:
                counts["configures"] += 1

    workers = [threading.Thread(target=sign_until_over, args=(n,)) for n in range(SIGNERS)]
    workers.append(threading.Thread(target=configure_until_over))
    for worker in workers:
        worker.start()
    started = time.monotonic()
    try:
        for rotation in range(ROTATIONS):
            key_id = list(ROTATED)[rotation % len(ROTATED)]
            key = plugin.generate_key(key_id, ROTATED[key_id]).public_key
            with lock:
                published[key.fingerprint] = key.pkix_data
            newest[key_id] = key
    finally:
        storm_over.set()
        for worker in workers:
            worker.join(60)
    print(f"storm: {ROTATIONS} rotations in {time.monotonic() - started:.1f} s, {counts}")

    assert problems == []
    assert counts["signed"] > ROTATIONS and counts["configures"] > 1
    plugin.configure(COMMUNITY_CONFIG)
    served = {key.id: key for key in plugin.get_public_keys().public_keys}
    assert served == newest
    for key_id, key in newest.items():
        assert plugin.get_public_key(key_id).public_key == key
        answer = plugin.sign_data(key_id, digest, km.SHA256)
        assert answer.key_fingerprint == key.fingerprint == hashlib.sha256(key.pkix_data).hexdigest()
        verify(key.pkix_data, answer.signature, km.SHA256, None)

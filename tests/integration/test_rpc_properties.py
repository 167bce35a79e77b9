"""Every KeyManager RPC under generated input, through the frozen binary against the KMS emulator: each
answer is deliberate (only the codes the wire spec allows, a bounded message), each call is bounded in
time, and every signature the plugin hands out verifies under the public key it published."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from hypothesis import given, settings
from hypothesis import strategies as st

from proto_gen.spire.keymanager import keymanager_pb2 as km
from tests.integration.conftest import COMMUNITY_CONFIG
from tests.support.kms_emulator import EmulatorControl
from tests.support.plugin_host import PluginProcess

# Go's crypto.Hash numbers (wire spec section 6) and the hash each stands for.
WIRE_HASHES: dict[int, hashes.HashAlgorithm] = {
    4: hashes.SHA224(),
    5: hashes.SHA256(),
    6: hashes.SHA384(),
    7: hashes.SHA512(),
    10: hashes.SHA3_224(),
    11: hashes.SHA3_256(),
    12: hashes.SHA3_384(),
    13: hashes.SHA3_512(),
    14: hashes.SHA512_224(),
    15: hashes.SHA512_256(),
}
# The keys the signing properties use, made once per test: one per key type, plus an id never made.
KNOWN_KEYS = {"x509-CA-A": 1, "x509-CA-B": 2, "JWT-Signer-A": 3, "JWT-Signer-B": 4}
UNKNOWN_KEY = "WIT-Signer-A"
CALL_BOUND_SECONDS = 5.0
MESSAGE_BOUND = 400

key_ids = st.one_of(
    st.sampled_from([*KNOWN_KEYS, UNKNOWN_KEY, "bundle-acme-example.org+1", ""]),
    st.text(max_size=300),
    st.builds(lambda c, n: c * n, st.characters(), st.integers(10_000, 1_000_000)),
)
# Mostly the lengths real digests have, so that most requests get as far as KMS.
digests = st.one_of(
    st.sampled_from([28, 32, 48, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    st.binary(max_size=100),
)
hash_numbers = st.one_of(st.sampled_from([0, *WIRE_HASHES]), st.integers(-(2**31), 2**31 - 1))
signer_opts = st.one_of(
    st.none(),
    st.tuples(st.just("hash"), hash_numbers),
    st.tuples(
        st.just("pss"),
        st.tuples(st.one_of(st.sampled_from([-1, 0, 32]), st.integers(-(2**31), 2**31 - 1)), hash_numbers),
    ),
)

# What SPIRE sends: a key it made, a digest of the length its hash gives, any hash and any PSS salt.
well_formed_signing = st.tuples(
    st.sampled_from(list(KNOWN_KEYS)),
    # The hashes KMS signs with half the time, any other the rest.
    st.one_of(st.sampled_from([5, 6, 7]), st.sampled_from(list(WIRE_HASHES))),
    st.one_of(st.none(), st.none(), st.sampled_from([-1, 0, 20, 32, 64]), st.integers(-(2**31), 2**31 - 1)),
).flatmap(
    lambda chosen: st.tuples(
        st.just(chosen[0]),
        st.binary(min_size=WIRE_HASHES[chosen[1]].digest_size, max_size=WIRE_HASHES[chosen[1]].digest_size),
        st.just(("hash", chosen[1]) if chosen[2] is None else ("pss", (chosen[2], chosen[1]))),
    )
)


def answer(call: Callable[[], Any]) -> tuple[grpc.StatusCode, Any]:
    """The code and the response (OK) or the status message (any other code), timed."""
    started = time.monotonic()
    try:
        response = call()
        code, result = grpc.StatusCode.OK, response
    except grpc.RpcError as err:
        code, result = err.code(), err.details() or ""
        assert len(result) <= MESSAGE_BOUND, f"{code.name} echoes {len(result)} characters"
    elapsed = time.monotonic() - started
    assert elapsed < CALL_BOUND_SECONDS, f"answered {code.name} after {elapsed:.1f} s"
    return code, result


def fitted_to_curve(digest: bytes, curve_bytes: int) -> bytes:
    # ECDSA signs the leftmost bits of a longer digest; a shorter one is the same integer zero-padded.
    return digest[:curve_bytes] if len(digest) >= curve_bytes else digest.rjust(curve_bytes, b"\0")


def check_signature(pkix: bytes, signature: bytes, digest: bytes, opts: tuple[str, Any]) -> None:
    public = serialization.load_der_public_key(pkix)
    kind, value = opts
    if isinstance(public, ec.EllipticCurvePublicKey):
        assert kind == "hash", "PSS on an EC key must be refused"
        curve_hash: hashes.HashAlgorithm = (
            hashes.SHA256() if public.curve.key_size == 256 else hashes.SHA384()
        )
        fitted = fitted_to_curve(digest, curve_hash.digest_size)
        public.verify(signature, fitted, ec.ECDSA(utils.Prehashed(curve_hash)))
        return
    assert isinstance(public, rsa.RSAPublicKey)
    if kind == "hash":
        public.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(WIRE_HASHES[value]))
    else:
        chosen = WIRE_HASHES[value[1]]
        pss = padding.PSS(mgf=padding.MGF1(chosen), salt_length=padding.PSS.AUTO)
        public.verify(signature, digest, pss, utils.Prehashed(chosen))


@pytest.fixture
def keyed_plugin(plugin: PluginProcess) -> tuple[PluginProcess, dict[str, km.PublicKey]]:
    published = {
        key_id: plugin.generate_key(key_id, key_type).public_key for key_id, key_type in KNOWN_KEYS.items()
    }
    return plugin, published


def test_sign_data_answers_every_request_deliberately(
    keyed_plugin: tuple[PluginProcess, dict[str, km.PublicKey]],
) -> None:
    plugin, published = keyed_plugin
    outcomes: dict[str, int] = {}

    @settings(max_examples=500)
    @given(request=st.one_of(well_formed_signing, st.tuples(key_ids, digests, signer_opts)))
    def sign(request: tuple[str, bytes, tuple[str, Any] | None]) -> None:
        key_id, digest, opts = request
        message = km.SignDataRequest(key_id=key_id, data=digest)
        if opts is not None and opts[0] == "hash":
            message.hash_algorithm = opts[1]
        elif opts is not None:
            salt, pss_hash = opts[1]
            message.pss_options.salt_length = salt
            message.pss_options.hash_algorithm = pss_hash
        code, result = answer(lambda: plugin.keymanager.SignData(message, timeout=30))
        outcomes[code.name] = outcomes.get(code.name, 0) + 1
        if code is grpc.StatusCode.OK:
            assert opts is not None and key_id in published
            assert result.key_fingerprint == published[key_id].fingerprint
            check_signature(published[key_id].pkix_data, result.signature, digest, opts)
        elif code is grpc.StatusCode.NOT_FOUND:
            assert key_id not in published and key_id
            assert result.startswith("no such key ")
        else:
            assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {result}"

    sign()
    print(f"SignData outcomes: {outcomes}")
    assert outcomes.get("OK", 0) > 50, "the strategies must reach KMS often enough to judge signatures"


@settings(max_examples=60)
@given(key_id=key_ids, key_type=st.one_of(st.sampled_from([0, 1, 2, 3, 4]), st.integers(-(2**31), 2**31 - 1)))
def test_generate_key_answers_every_request_deliberately(
    plugin: PluginProcess, emulator: EmulatorControl, key_id: str, key_type: int
) -> None:
    created_before = emulator.calls().get("CreateKey", 0)
    request = km.GenerateKeyRequest(key_id=key_id, key_type=key_type)  # type: ignore[arg-type]
    code, result = answer(lambda: plugin.keymanager.GenerateKey(request, timeout=30))
    if code is not grpc.StatusCode.OK:
        assert code is grpc.StatusCode.INVALID_ARGUMENT, f"{code.name}: {result}"
        assert emulator.calls().get("CreateKey", 0) == created_before, "a refused request cost a key"
        return
    key = result.public_key
    assert (key.id, key.type) == (key_id, key_type)
    assert key.fingerprint == hashlib.sha256(key.pkix_data).hexdigest()
    public = serialization.load_der_public_key(key.pkix_data)
    size = public.curve.key_size if isinstance(public, ec.EllipticCurvePublicKey) else public.key_size
    assert size == {1: 256, 2: 384, 3: 2048, 4: 4096}[key_type]
    assert plugin.get_public_key(key_id).public_key == key
    assert key in plugin.get_public_keys().public_keys


@given(key_id=key_ids)
def test_get_public_key_answers_every_id(
    keyed_plugin: tuple[PluginProcess, dict[str, km.PublicKey]], key_id: str
) -> None:
    plugin, published = keyed_plugin
    code, result = answer(
        lambda: plugin.keymanager.GetPublicKey(km.GetPublicKeyRequest(key_id=key_id), timeout=30)
    )
    if not key_id:
        assert (code, result) == (grpc.StatusCode.INVALID_ARGUMENT, "key id is required")
        return
    assert code is grpc.StatusCode.OK
    if key_id in published:
        assert result.public_key == published[key_id]
    else:
        assert not result.HasField("public_key")


@settings(max_examples=100)
@given(text=st.one_of(st.text(max_size=2000), st.sampled_from([COMMUNITY_CONFIG, '{"region": "\\ud800"}'])))
def test_configuration_text_is_answered_deliberately(plugin: PluginProcess, text: str) -> None:
    # Through the real wire: a note or message protobuf cannot encode would fail here, not in-process.
    code, result = answer(lambda: plugin.validate(text))
    assert code is grpc.StatusCode.OK
    assert result.valid == (not result.notes)
    # A configuration that parses may name a region or endpoint that does not answer: UNAVAILABLE, or the
    # caller's deadline, are deliberate answers too.
    code, result = answer(lambda: plugin.configure(text, timeout=3))
    allowed = (grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAVAILABLE)
    assert code in (*allowed, grpc.StatusCode.DEADLINE_EXCEEDED), f"{code.name}: {result}"
    answer(lambda: plugin.configure(COMMUNITY_CONFIG))
    assert answer(plugin.get_public_keys)[0] is grpc.StatusCode.OK

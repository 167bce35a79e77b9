"""Every (key type, hash, PSS option, digest length) SPIRE can send, against what KMS can sign."""

from __future__ import annotations

import hashlib
import itertools

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from plugin.algorithms import (
    HashAlgorithm,
    KeyType,
    SignRequest,
    fit_to_curve,
    key_spec_for,
    key_type_for_spec,
    parse_key_type,
    plan_signature,
)
from plugin.errors import InvalidArgument

SERVABLE = {
    # ECDSA signs any digest: KMS gets it fitted to the curve's own hash.
    **{(KeyType.EC_P256, hash_, False): "ECDSA_SHA_256" for hash_ in HashAlgorithm},
    **{(KeyType.EC_P384, hash_, False): "ECDSA_SHA_384" for hash_ in HashAlgorithm},
    **{
        (rsa, hash_, pss): f"RSASSA_{'PSS' if pss else 'PKCS1_V1_5'}_SHA_{bits}"
        for rsa in (KeyType.RSA_2048, KeyType.RSA_4096)
        for hash_, bits in (
            (HashAlgorithm.SHA256, 256),
            (HashAlgorithm.SHA384, 384),
            (HashAlgorithm.SHA512, 512),
        )
        for pss in (False, True)
    },
}


@pytest.mark.parametrize(
    ("key_type", "hash_algorithm", "pss"), list(itertools.product(KeyType, HashAlgorithm, (False, True)))
)
def test_every_combination_is_served_or_refused_with_a_reason(
    key_type: KeyType, hash_algorithm: HashAlgorithm, pss: bool
) -> None:
    request = SignRequest(key_type, hash_algorithm, bytes(hash_algorithm.digest_size), -1 if pss else None)
    expected = SERVABLE.get((key_type, hash_algorithm, pss))
    if expected is not None:
        assert plan_signature(request).algorithm == expected
        return
    with pytest.raises(InvalidArgument) as refused:
        plan_signature(request)
    message = refused.value.message
    if pss and not key_type.is_rsa:
        assert message == f"PSS options are not supported by {key_type.name} keys"
    else:
        assert message.startswith(f"KMS has no RSA signing algorithm for {hash_algorithm.name} digests")


@pytest.mark.parametrize("hash_algorithm", list(HashAlgorithm))
@pytest.mark.parametrize("delta", [-1, 1, -100])
def test_digest_length_must_match_the_hash(hash_algorithm: HashAlgorithm, delta: int) -> None:
    length = max(0, hash_algorithm.digest_size + delta)
    with pytest.raises(InvalidArgument, match=f"digest is {length} bytes but {hash_algorithm.name} digests"):
        plan_signature(SignRequest(KeyType.RSA_2048, hash_algorithm, bytes(length)))


@pytest.mark.parametrize(
    ("hash_algorithm", "salt", "served"),
    [
        (HashAlgorithm.SHA256, -1, True),
        (HashAlgorithm.SHA256, 0, True),
        (HashAlgorithm.SHA256, 32, True),
        (HashAlgorithm.SHA256, 20, False),
        (HashAlgorithm.SHA256, 48, False),
        (HashAlgorithm.SHA256, -2, False),
        (HashAlgorithm.SHA384, 48, True),
        (HashAlgorithm.SHA384, 32, False),
        (HashAlgorithm.SHA512, 64, True),
        (HashAlgorithm.SHA512, 222, False),
    ],
)
def test_pss_salt_lengths_kms_can_honour(hash_algorithm: HashAlgorithm, salt: int, served: bool) -> None:
    request = SignRequest(KeyType.RSA_4096, hash_algorithm, bytes(hash_algorithm.digest_size), salt)
    if served:
        assert plan_signature(request).algorithm.startswith("RSASSA_PSS_")
    else:
        with pytest.raises(InvalidArgument, match=f"PSS salt length {salt} is not supported"):
            plan_signature(request)


@pytest.mark.parametrize(("value", "message"), [(0, "hash algorithm is required"), (99, "unsupported hash")])
def test_unknown_or_missing_hash(value: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        plan_signature(SignRequest(KeyType.EC_P256, value, bytes(32)))


# SHA-512("abc") and SHA-256("abc"), FIPS 180-4's examples.
SHA512_ABC = bytes.fromhex(
    "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
    "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"
)
SHA256_ABC = bytes.fromhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")


def test_a_longer_ecdsa_digest_keeps_its_leftmost_bytes() -> None:
    plan = plan_signature(SignRequest(KeyType.EC_P256, HashAlgorithm.SHA512, SHA512_ABC))
    assert plan.algorithm == "ECDSA_SHA_256"
    assert plan.digest == bytes.fromhex("ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a")
    assert plan.fitted_from is HashAlgorithm.SHA512


def test_a_shorter_ecdsa_digest_gets_leading_zeros() -> None:
    plan = plan_signature(SignRequest(KeyType.EC_P384, HashAlgorithm.SHA256, SHA256_ABC))
    assert plan.algorithm == "ECDSA_SHA_384"
    assert plan.digest == bytes(16) + SHA256_ABC
    assert len(plan.digest) == 48
    assert plan.fitted_from is HashAlgorithm.SHA256


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.EC_P384])
def test_the_curves_own_hash_is_sent_as_it_is(key_type: KeyType) -> None:
    hash_algorithm = HashAlgorithm.SHA256 if key_type is KeyType.EC_P256 else HashAlgorithm.SHA384
    digest = bytes(range(hash_algorithm.digest_size))
    plan = plan_signature(SignRequest(key_type, hash_algorithm, digest))
    assert (plan.digest, plan.fitted_from) == (digest, None)


_CURVES = {
    KeyType.EC_P256: (ec.SECP256R1(), hashes.SHA256()),
    KeyType.EC_P384: (ec.SECP384R1(), hashes.SHA384()),
}
_HASHES = {
    HashAlgorithm.SHA224: hashes.SHA224(),
    HashAlgorithm.SHA256: hashes.SHA256(),
    HashAlgorithm.SHA384: hashes.SHA384(),
    HashAlgorithm.SHA512: hashes.SHA512(),
    HashAlgorithm.SHA3_224: hashes.SHA3_224(),
    HashAlgorithm.SHA3_256: hashes.SHA3_256(),
    HashAlgorithm.SHA3_384: hashes.SHA3_384(),
    HashAlgorithm.SHA3_512: hashes.SHA3_512(),
    HashAlgorithm.SHA512_224: hashes.SHA512_224(),
    HashAlgorithm.SHA512_256: hashes.SHA512_256(),
}


@pytest.mark.parametrize("key_type", list(_CURVES))
@pytest.mark.parametrize("hash_algorithm", list(HashAlgorithm))
def test_signing_the_fitted_digest_is_a_standard_ecdsa_signature_of_the_original(
    key_type: KeyType, hash_algorithm: HashAlgorithm
) -> None:
    # What KMS does with the plan (sign the fitted digest as the curve's own hash), done here with a local
    # key; the signature must verify as an ECDSA signature of the digest SPIRE sent, with its own hash.
    curve, curve_hash = _CURVES[key_type]
    private = ec.generate_private_key(curve)
    original = hashlib.new(_HASHES[hash_algorithm].name, b"SPIRE").digest()
    plan = plan_signature(SignRequest(key_type, hash_algorithm, original))
    signature = private.sign(plan.digest, ec.ECDSA(utils.Prehashed(curve_hash)))
    private.public_key().verify(signature, original, ec.ECDSA(utils.Prehashed(_HASHES[hash_algorithm])))


@pytest.mark.parametrize(
    ("digest", "size", "fitted"), [(b"\x01\x02\x03", 2, b"\x01\x02"), (b"\x07", 3, b"\x00\x00\x07")]
)
def test_fit_to_curve(digest: bytes, size: int, fitted: bytes) -> None:
    assert fit_to_curve(digest, size) == fitted


@pytest.mark.parametrize("key_type", list(KeyType))
def test_key_specs_round_trip(key_type: KeyType) -> None:
    assert key_type_for_spec(key_spec_for(key_type)) is key_type
    assert parse_key_type(int(key_type)) is key_type


@pytest.mark.parametrize("spec", ["SYMMETRIC_DEFAULT", "ECC_SECG_P256K1", "RSA_3072", "HMAC_256", ""])
def test_key_specs_spire_cannot_use(spec: str) -> None:
    assert key_type_for_spec(spec) is None


@pytest.mark.parametrize(("value", "message"), [(0, "key type is required"), (7, "unsupported key type 7")])
def test_bad_key_types(value: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_key_type(value)


def test_spire_hash_numbers_are_gos_crypto_hash() -> None:
    assert {h.name: int(h) for h in HashAlgorithm} == {
        "SHA224": 4, "SHA256": 5, "SHA384": 6, "SHA512": 7, "SHA3_224": 10, "SHA3_256": 11,
        "SHA3_384": 12, "SHA3_512": 13, "SHA512_224": 14, "SHA512_256": 15,
    }  # fmt: skip

"""Every (key type, hash, PSS option, digest length) SPIRE can send, against what KMS can sign."""

from __future__ import annotations

import itertools

import pytest

from plugin.algorithms import (
    HashAlgorithm,
    KeyType,
    SignRequest,
    key_spec_for,
    key_type_for_spec,
    parse_key_type,
    signing_algorithm,
)
from plugin.errors import InvalidArgument

SERVABLE = {
    (KeyType.EC_P256, HashAlgorithm.SHA256, False): "ECDSA_SHA_256",
    (KeyType.EC_P384, HashAlgorithm.SHA384, False): "ECDSA_SHA_384",
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
    request = SignRequest(key_type, hash_algorithm, hash_algorithm.digest_size, -1 if pss else None)
    expected = SERVABLE.get((key_type, hash_algorithm, pss))
    if expected is not None:
        assert signing_algorithm(request) == expected
        return
    with pytest.raises(InvalidArgument) as refused:
        signing_algorithm(request)
    message = refused.value.message
    if pss and not key_type.is_rsa:
        assert message == f"PSS options are not supported by {key_type.name} keys"
    else:
        assert hash_algorithm.name in message


@pytest.mark.parametrize("hash_algorithm", list(HashAlgorithm))
@pytest.mark.parametrize("delta", [-1, 1, -100])
def test_digest_length_must_match_the_hash(hash_algorithm: HashAlgorithm, delta: int) -> None:
    length = max(0, hash_algorithm.digest_size + delta)
    with pytest.raises(InvalidArgument, match=f"digest is {length} bytes but {hash_algorithm.name} digests"):
        signing_algorithm(SignRequest(KeyType.RSA_2048, hash_algorithm, length))


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
    request = SignRequest(KeyType.RSA_4096, hash_algorithm, hash_algorithm.digest_size, salt)
    if served:
        assert signing_algorithm(request).startswith("RSASSA_PSS_")
    else:
        with pytest.raises(InvalidArgument, match=f"PSS salt length {salt} is not supported"):
            signing_algorithm(request)


@pytest.mark.parametrize(("value", "message"), [(0, "hash algorithm is required"), (99, "unsupported hash")])
def test_unknown_or_missing_hash(value: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        signing_algorithm(SignRequest(KeyType.EC_P256, value, 32))


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

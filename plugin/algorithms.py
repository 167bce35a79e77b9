"""SPIRE key types and signing requests mapped to what KMS can do: pure functions, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from plugin.errors import InvalidArgument


class KeyType(enum.IntEnum):
    """SPIRE's KeyType numbers (keymanager.proto)."""

    EC_P256 = 1
    EC_P384 = 2
    RSA_2048 = 3
    RSA_4096 = 4

    @property
    def is_rsa(self) -> bool:
        return self in (KeyType.RSA_2048, KeyType.RSA_4096)


class HashAlgorithm(enum.IntEnum):
    """SPIRE's HashAlgorithm numbers, which are Go's crypto.Hash values."""

    SHA224 = 4
    SHA256 = 5
    SHA384 = 6
    SHA512 = 7
    SHA3_224 = 10
    SHA3_256 = 11
    SHA3_384 = 12
    SHA3_512 = 13
    SHA512_224 = 14
    SHA512_256 = 15

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZES[self]


_DIGEST_SIZES = {
    HashAlgorithm.SHA224: 28,
    HashAlgorithm.SHA256: 32,
    HashAlgorithm.SHA384: 48,
    HashAlgorithm.SHA512: 64,
    HashAlgorithm.SHA3_224: 28,
    HashAlgorithm.SHA3_256: 32,
    HashAlgorithm.SHA3_384: 48,
    HashAlgorithm.SHA3_512: 64,
    HashAlgorithm.SHA512_224: 28,
    HashAlgorithm.SHA512_256: 32,
}

_KEY_SPECS = {
    KeyType.EC_P256: "ECC_NIST_P256",
    KeyType.EC_P384: "ECC_NIST_P384",
    KeyType.RSA_2048: "RSA_2048",
    KeyType.RSA_4096: "RSA_4096",
}
_KEY_TYPES = {spec: key_type for key_type, spec in _KEY_SPECS.items()}

# The only hash KMS accepts for each curve; its digest is as long as the curve's order.
_ECDSA = {
    KeyType.EC_P256: (HashAlgorithm.SHA256, "ECDSA_SHA_256"),
    KeyType.EC_P384: (HashAlgorithm.SHA384, "ECDSA_SHA_384"),
}
_RSA_HASH_SUFFIX = {HashAlgorithm.SHA256: "256", HashAlgorithm.SHA384: "384", HashAlgorithm.SHA512: "512"}

# Go's rsa.PSSSaltLengthEqualsHash and rsa.PSSSaltLengthAuto.
PSS_SALT_EQUALS_HASH = -1
PSS_SALT_AUTO = 0


@dataclass(frozen=True)
class SignRequest:
    """What SPIRE asked for: a prehashed digest and either a hash (PKCS#1 v1.5 / ECDSA) or PSS options."""

    key_type: KeyType
    hash_algorithm: int
    digest: bytes
    pss_salt_length: int | None = None


@dataclass(frozen=True)
class SigningPlan:
    """What to ask KMS for: a SigningAlgorithm and the digest to sign as MessageType=DIGEST."""

    algorithm: str
    digest: bytes
    # The hash SPIRE named, when its digest was fitted to the curve's hash (ECDSA only).
    fitted_from: HashAlgorithm | None = None


def key_spec_for(key_type: KeyType) -> str:
    return _KEY_SPECS[key_type]


def key_type_for_spec(key_spec: str) -> KeyType | None:
    return _KEY_TYPES.get(key_spec)


def parse_key_type(value: int) -> KeyType:
    if value == 0:
        raise InvalidArgument("key type is required")
    try:
        return KeyType(value)
    except ValueError:
        raise InvalidArgument(f"unsupported key type {value}") from None


def _parse_hash(value: int) -> HashAlgorithm:
    if value == 0:
        raise InvalidArgument("hash algorithm is required")
    try:
        return HashAlgorithm(value)
    except ValueError:
        raise InvalidArgument(f"unsupported hash algorithm {value}") from None


def fit_to_curve(digest: bytes, size: int) -> bytes:
    """The digest ECDSA signs on a curve of `size` bytes: ECDSA uses only the leftmost curve-size bits of a
    digest (FIPS 186-5 6.4.1, SEC 1 4.1.3), and a shorter digest is the same number with leading zeros. So
    KMS, signing the fitted digest with the curve's own algorithm, gives a standard ECDSA signature of the
    original digest."""
    if len(digest) >= size:
        return digest[:size]
    return bytes(size - len(digest)) + digest


def plan_signature(request: SignRequest) -> SigningPlan:
    """How KMS can sign a request, or InvalidArgument saying why it cannot."""
    hash_algorithm = _parse_hash(request.hash_algorithm)
    if len(request.digest) != hash_algorithm.digest_size:
        raise InvalidArgument(
            f"digest is {len(request.digest)} bytes but {hash_algorithm.name} digests are "
            f"{hash_algorithm.digest_size} bytes"
        )
    key_type = request.key_type
    if not key_type.is_rsa:
        if request.pss_salt_length is not None:
            raise InvalidArgument(f"PSS options are not supported by {key_type.name} keys")
        curve_hash, algorithm = _ECDSA[key_type]
        if hash_algorithm is curve_hash:
            return SigningPlan(algorithm, request.digest)
        return SigningPlan(algorithm, fit_to_curve(request.digest, curve_hash.digest_size), hash_algorithm)

    suffix = _RSA_HASH_SUFFIX.get(hash_algorithm)
    if suffix is None:
        # Unlike ECDSA, an RSA signature carries the name of its hash: no other digest can stand in.
        raise InvalidArgument(
            f"KMS has no RSA signing algorithm for {hash_algorithm.name} digests (an RSA signature names "
            "its hash, so no other can stand in); use SHA256, SHA384 or SHA512"
        )
    if request.pss_salt_length is None:
        return SigningPlan(f"RSASSA_PKCS1_V1_5_SHA_{suffix}", request.digest)
    salt = request.pss_salt_length
    if salt not in (PSS_SALT_EQUALS_HASH, PSS_SALT_AUTO, hash_algorithm.digest_size):
        raise InvalidArgument(
            f"PSS salt length {salt} is not supported: KMS always uses a salt as long as the "
            f"hash ({hash_algorithm.digest_size} bytes for {hash_algorithm.name}); use -1, 0 or "
            f"{hash_algorithm.digest_size}"
        )
    return SigningPlan(f"RSASSA_PSS_SHA_{suffix}", request.digest)

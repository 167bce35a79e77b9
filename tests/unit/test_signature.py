"""`check` verifies KMS's test signature itself, with the binary's own small verifier: it must agree with
`cryptography` on every key type KMS has for SPIRE, and refuse what is not the key's signature."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from plugin.cli.signature import (
    P256,
    P384,
    BadSignature,
    EcPublicKey,
    Hash,
    load_public_key,
    multiply,
    verify,
)

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

KEYS: dict[str, PrivateKey] = {
    "P-256": ec.generate_private_key(ec.SECP256R1()),
    "P-384": ec.generate_private_key(ec.SECP384R1()),
    "RSA-2048": rsa.generate_private_key(65537, 2048),
    "RSA-4096": rsa.generate_private_key(65537, 4096),
}
HASHES = {Hash.SHA256: hashes.SHA256(), Hash.SHA384: hashes.SHA384(), Hash.SHA512: hashes.SHA512()}


def der(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(key: PrivateKey, digest: bytes, hash_algorithm: Hash) -> bytes:
    chosen = utils.Prehashed(HASHES[hash_algorithm])
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(digest, ec.ECDSA(chosen))
    return key.sign(digest, padding.PKCS1v15(), chosen)


CASES = [
    ("P-256", Hash.SHA256),
    ("P-384", Hash.SHA384),
    ("P-256", Hash.SHA512),  # a longer digest: its leftmost 256 bits are signed
    ("RSA-2048", Hash.SHA256),
    ("RSA-2048", Hash.SHA384),
    ("RSA-4096", Hash.SHA512),
]


@pytest.mark.parametrize(("name", "hash_algorithm"), CASES)
def test_signatures_cryptography_makes_verify(name: str, hash_algorithm: Hash) -> None:
    key = KEYS[name]
    for n in range(5):
        digest = hashlib.new(hash_algorithm.name.lower(), f"message {n}".encode()).digest()
        verify(load_public_key(der(key)), digest, sign(key, digest, hash_algorithm), hash_algorithm)


@pytest.mark.parametrize(("name", "hash_algorithm"), CASES)
def test_what_is_not_the_keys_signature_of_the_digest_is_refused(name: str, hash_algorithm: Hash) -> None:
    key = KEYS[name]
    public = load_public_key(der(key))
    digest = hashlib.new(hash_algorithm.name.lower(), b"signed").digest()
    signed = sign(key, digest, hash_algorithm)
    other = hashlib.new(hash_algorithm.name.lower(), b"not signed").digest()
    with pytest.raises(BadSignature):
        verify(public, other, signed, hash_algorithm)
    stranger = next(k for n, k in KEYS.items() if n != name and type(k) is type(key))
    with pytest.raises(BadSignature):
        verify(public, digest, sign(stranger, digest, hash_algorithm), hash_algorithm)
    tampered = bytearray(signed)
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(BadSignature):
        verify(public, digest, bytes(tampered), hash_algorithm)
    with pytest.raises(BadSignature):
        verify(public, digest[:-1], signed, hash_algorithm)


def test_the_curves_are_fips_186s() -> None:
    for name, curve in (("P-256", P256), ("P-384", P384)):
        private = KEYS[name]
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        numbers = private.private_numbers()
        assert multiply(curve, numbers.private_value, (curve.gx, curve.gy)) == (
            numbers.public_numbers.x,
            numbers.public_numbers.y,
        )
        assert multiply(curve, curve.n, (curve.gx, curve.gy)) is None, "the order of the generator"
        public = load_public_key(der(private))
        assert isinstance(public, EcPublicKey) and public.curve is curve


def test_malformed_keys_and_signatures_are_refused_not_crashed_on() -> None:
    key = KEYS["P-256"]
    digest = hashlib.sha256(b"x").digest()
    public = load_public_key(der(key))
    for broken in (
        b"",
        b"\x30",
        b"\x30\x81\x05",
        sign(key, digest, Hash.SHA256)[:-3],
        b"\x30\x06\x02\x01\x00\x02\x01\x01",
    ):
        with pytest.raises(BadSignature):
            verify(public, digest, broken, Hash.SHA256)
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    with pytest.raises(BadSignature, match="neither an EC nor an RSA key"):
        load_public_key(
            ed.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    p521 = ec.generate_private_key(ec.SECP521R1())
    with pytest.raises(BadSignature, match="other than P-256 and P-384"):
        load_public_key(der(p521))
    off_curve = bytearray(der(key))
    off_curve[-1] ^= 1
    with pytest.raises(BadSignature, match="not a point of P-256"):
        load_public_key(bytes(off_curve))
    with pytest.raises(BadSignature):
        load_public_key(der(key) + b"\x00")

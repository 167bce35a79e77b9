"""Checking the plugin's answers with `cryptography` alone: every signature against the public key the plugin
returned, never by the emulator."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from proto_gen.spire.keymanager import keymanager_pb2 as km

KEY_TYPES = {
    km.EC_P256: (ec.EllipticCurvePublicKey, 256),
    km.EC_P384: (ec.EllipticCurvePublicKey, 384),
    km.RSA_2048: (rsa.RSAPublicKey, 2048),
    km.RSA_4096: (rsa.RSAPublicKey, 4096),
}
# The hashes every key type can sign with (RSA: those KMS has an algorithm for).
HASHES = {km.SHA256: hashes.SHA256(), km.SHA384: hashes.SHA384(), km.SHA512: hashes.SHA512()}
_ALL_HASHES = {**HASHES, km.SHA224: hashes.SHA224()}
MESSAGE = b"SPIRE signs certificates and JWTs"


def digest_of(hash_algorithm: int) -> bytes:
    return hashlib.new(_ALL_HASHES[hash_algorithm].name, MESSAGE).digest()


def verify(pkix_der: bytes, signature: bytes, hash_algorithm: int, pss_salt: int | None) -> None:
    public = serialization.load_der_public_key(pkix_der)
    chosen = HASHES[hash_algorithm]
    digest = digest_of(hash_algorithm)
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, digest, ec.ECDSA(utils.Prehashed(chosen)))
    elif pss_salt is None:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(signature, digest, padding.PKCS1v15(), utils.Prehashed(chosen))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        pss = padding.PSS(mgf=padding.MGF1(chosen), salt_length=chosen.digest_size)
        public.verify(signature, digest, pss, utils.Prehashed(chosen))

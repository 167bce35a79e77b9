"""Checking a KMS signature here, against the public key KMS handed out, without asking KMS (its own Verify
would vouch for itself) and without a crypto library (the binary carries none): ECDSA on P-256 and P-384
(FIPS 186-5 6.4.2, SEC 1 4.1.4) and RSA PKCS #1 v1.5 (RFC 8017 8.2.2) over SHA-2 digests.

Only public data passes through here, so plain integer arithmetic, neither constant-time nor fast, is
enough: one verification takes tens of milliseconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BadSignature(Exception):
    """The signature does not verify, or the key or signature is malformed (the message says which)."""


@dataclass(frozen=True)
class Curve:
    name: str
    p: int
    b: int  # y^2 = x^3 - 3x + b (mod p)
    gx: int
    gy: int
    n: int

    @property
    def size(self) -> int:
        return (self.p.bit_length() + 7) // 8


# FIPS 186-5 / SP 800-186, section 3.2.1.3 and 3.2.1.4.
P256 = Curve(
    "P-256",
    p=0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
    b=0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
    gx=0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
    gy=0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5,
    n=0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
)
P384 = Curve(
    "P-384",
    p=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFFFF0000000000000000FFFFFFFF,
    b=0xB3312FA7E23EE7E4988E056BE3F82D19181D9C6EFE8141120314088F5013875AC656398D8A2ED19D2A85C8EDD3EC2AEF,
    gx=0xAA87CA22BE8B05378EB1C71EF320AD746E1D3B628BA79B9859F741E082542A385502F25DBF55296C3A545E3872760AB7,
    gy=0x3617DE4A96262C6F5D9E98BF9292DC29F8F41DBD289A147CE9DA3113B5F0B8C00A60B1CE1D7E819D7A431D7C90EA0E5F,
    n=0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973,
)

# DER encodings (tag, length, value) of the object identifiers a SubjectPublicKeyInfo names.
_ID_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")
_CURVES = {bytes.fromhex("06082a8648ce3d030107"): P256, bytes.fromhex("06052b81040022"): P384}
_RSA_ENCRYPTION = bytes.fromhex("06092a864886f70d010101")


class Hash(enum.Enum):
    """SHA-2 digests, with the DER DigestInfo prefix an RSA PKCS #1 v1.5 signature wraps them in."""

    SHA256 = (32, bytes.fromhex("3031300d060960864801650304020105000420"))
    SHA384 = (48, bytes.fromhex("3041300d060960864801650304020205000430"))
    SHA512 = (64, bytes.fromhex("3051300d060960864801650304020305000440"))

    @property
    def size(self) -> int:
        return self.value[0]

    @property
    def digest_info_prefix(self) -> bytes:
        return self.value[1]


@dataclass(frozen=True)
class EcPublicKey:
    curve: Curve
    x: int
    y: int


@dataclass(frozen=True)
class RsaPublicKey:
    n: int
    e: int


PublicKey = EcPublicKey | RsaPublicKey


def load_public_key(spki_der: bytes) -> PublicKey:
    """A DER SubjectPublicKeyInfo (what KMS GetPublicKey returns) of an EC P-256/P-384 or RSA key."""
    spki, rest = _element(spki_der, 0x30)
    _expect_end(rest, "SubjectPublicKeyInfo")
    algorithm, rest = _element(spki, 0x30)
    bits, rest = _element(rest, 0x03)
    _expect_end(rest, "SubjectPublicKeyInfo")
    if not bits or bits[0] != 0:
        raise BadSignature("the public key's bit string has unused bits")
    key = bits[1:]
    if algorithm.startswith(_ID_EC_PUBLIC_KEY):
        curve = _CURVES.get(algorithm[len(_ID_EC_PUBLIC_KEY) :])
        if curve is None:
            raise BadSignature("the EC public key is on a curve other than P-256 and P-384")
        return _ec_point(curve, key)
    if algorithm in (_RSA_ENCRYPTION + b"\x05\x00", _RSA_ENCRYPTION):
        numbers, rest = _element(key, 0x30)
        _expect_end(rest, "RSAPublicKey")
        n, rest = _integer(numbers)
        e, rest = _integer(rest)
        _expect_end(rest, "RSAPublicKey")
        if n <= 0 or e <= 1 or e % 2 == 0:
            raise BadSignature("the RSA public key is malformed")
        return RsaPublicKey(n, e)
    raise BadSignature("the public key is neither an EC nor an RSA key")


def verify(public_key: PublicKey, digest: bytes, signature: bytes, hash_algorithm: Hash) -> None:
    """Raises BadSignature unless `signature` is the key's signature of `digest` (ECDSA: DER r and s;
    RSA: PKCS #1 v1.5)."""
    if len(digest) != hash_algorithm.size:
        raise BadSignature(f"the digest has {len(digest)} bytes, not {hash_algorithm.size}")
    if isinstance(public_key, EcPublicKey):
        _verify_ecdsa(public_key, digest, signature)
    else:
        _verify_pkcs1(public_key, digest, signature, hash_algorithm)


def _verify_ecdsa(key: EcPublicKey, digest: bytes, signature: bytes) -> None:
    curve = key.curve
    sequence, rest = _element(signature, 0x30)
    _expect_end(rest, "ECDSA signature")
    r, rest = _integer(sequence)
    s, rest = _integer(rest)
    _expect_end(rest, "ECDSA signature")
    if not (0 < r < curve.n and 0 < s < curve.n):
        raise BadSignature("the ECDSA signature is out of range")
    # The leftmost bits of the digest, as many as the order has.
    e = int.from_bytes(digest, "big") >> max(0, 8 * len(digest) - curve.n.bit_length())
    w = pow(s, -1, curve.n)
    point = _add(
        curve,
        _multiply(curve, e * w % curve.n, (curve.gx, curve.gy)),
        _multiply(curve, r * w % curve.n, (key.x, key.y)),
    )
    if point is None or point[0] % curve.n != r:
        raise BadSignature("the ECDSA signature does not verify")


def _verify_pkcs1(key: RsaPublicKey, digest: bytes, signature: bytes, hash_algorithm: Hash) -> None:
    size = (key.n.bit_length() + 7) // 8
    if len(signature) != size:
        raise BadSignature(f"the RSA signature has {len(signature)} bytes, not {size}")
    value = int.from_bytes(signature, "big")
    if value >= key.n:
        raise BadSignature("the RSA signature is out of range")
    encoded = pow(value, key.e, key.n).to_bytes(size, "big")
    info = hash_algorithm.digest_info_prefix + digest
    padding = size - 3 - len(info)
    if padding < 8:
        raise BadSignature("the RSA key is too small for the digest")
    if encoded != b"\x00\x01" + b"\xff" * padding + b"\x00" + info:
        raise BadSignature("the RSA signature does not verify")


# -- elliptic curve arithmetic (affine coordinates; None is the point at infinity) ---------------------

Point = tuple[int, int] | None


def on_curve(curve: Curve, x: int, y: int) -> bool:
    return 0 <= x < curve.p and 0 <= y < curve.p and (y * y - (x * x * x - 3 * x + curve.b)) % curve.p == 0


def _ec_point(curve: Curve, encoded: bytes) -> EcPublicKey:
    size = curve.size
    if len(encoded) != 1 + 2 * size or encoded[0] != 4:
        raise BadSignature(f"the {curve.name} public key is not an uncompressed point")
    x = int.from_bytes(encoded[1 : 1 + size], "big")
    y = int.from_bytes(encoded[1 + size :], "big")
    if not on_curve(curve, x, y):
        raise BadSignature(f"the public key is not a point of {curve.name}")
    return EcPublicKey(curve, x, y)


def _add(curve: Curve, one: Point, other: Point) -> Point:
    if one is None:
        return other
    if other is None:
        return one
    p = curve.p
    (x1, y1), (x2, y2) = one, other
    if x1 == x2:
        if (y1 + y2) % p == 0:
            return None
        slope = (3 * x1 * x1 - 3) * pow(2 * y1, -1, p) % p
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, p) % p
    x3 = (slope * slope - x1 - x2) % p
    return x3, (slope * (x1 - x3) - y1) % p


def _multiply(curve: Curve, scalar: int, point: Point) -> Point:
    result: Point = None
    addend = point
    while scalar:
        if scalar & 1:
            result = _add(curve, result, addend)
        addend = _add(curve, addend, addend)
        scalar >>= 1
    return result


def multiply(curve: Curve, scalar: int, point: tuple[int, int]) -> Point:
    """scalar * point on the curve (tests derive public keys with it)."""
    return _multiply(curve, scalar, point)


# -- DER ----------------------------------------------------------------------------------------------


def _element(data: bytes, tag: int) -> tuple[bytes, bytes]:
    """The content of the DER element at the start of `data`, which must have `tag`, and what follows."""
    if len(data) < 2 or data[0] != tag:
        raise BadSignature(f"malformed DER: expected tag {tag:#04x}")
    length = data[1]
    start = 2
    if length & 0x80:
        count = length & 0x7F
        if not 1 <= count <= 4 or len(data) < 2 + count:
            raise BadSignature("malformed DER: bad length")
        length = int.from_bytes(data[2 : 2 + count], "big")
        start = 2 + count
        if length < 0x80 or data[2] == 0:
            raise BadSignature("malformed DER: length not in its shortest form")
    if len(data) < start + length:
        raise BadSignature("malformed DER: truncated")
    return data[start : start + length], data[start + length :]


def _integer(data: bytes) -> tuple[int, bytes]:
    content, rest = _element(data, 0x02)
    if not content:
        raise BadSignature("malformed DER: empty integer")
    if content[0] & 0x80:
        raise BadSignature("malformed DER: negative integer")
    if len(content) > 1 and content[0] == 0 and not content[1] & 0x80:
        raise BadSignature("malformed DER: integer not in its shortest form")
    return int.from_bytes(content, "big"), rest


def _expect_end(rest: bytes, what: str) -> None:
    if rest:
        raise BadSignature(f"malformed DER: bytes after the {what}")

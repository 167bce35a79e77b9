from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KeyType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNSPECIFIED_KEY_TYPE: _ClassVar[KeyType]
    EC_P256: _ClassVar[KeyType]
    EC_P384: _ClassVar[KeyType]
    RSA_2048: _ClassVar[KeyType]
    RSA_4096: _ClassVar[KeyType]

class HashAlgorithm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNSPECIFIED_HASH_ALGORITHM: _ClassVar[HashAlgorithm]
    SHA224: _ClassVar[HashAlgorithm]
    SHA256: _ClassVar[HashAlgorithm]
    SHA384: _ClassVar[HashAlgorithm]
    SHA512: _ClassVar[HashAlgorithm]
    SHA3_224: _ClassVar[HashAlgorithm]
    SHA3_256: _ClassVar[HashAlgorithm]
    SHA3_384: _ClassVar[HashAlgorithm]
    SHA3_512: _ClassVar[HashAlgorithm]
    SHA512_224: _ClassVar[HashAlgorithm]
    SHA512_256: _ClassVar[HashAlgorithm]
UNSPECIFIED_KEY_TYPE: KeyType
EC_P256: KeyType
EC_P384: KeyType
RSA_2048: KeyType
RSA_4096: KeyType
UNSPECIFIED_HASH_ALGORITHM: HashAlgorithm
SHA224: HashAlgorithm
SHA256: HashAlgorithm
SHA384: HashAlgorithm
SHA512: HashAlgorithm
SHA3_224: HashAlgorithm
SHA3_256: HashAlgorithm
SHA3_384: HashAlgorithm
SHA3_512: HashAlgorithm
SHA512_224: HashAlgorithm
SHA512_256: HashAlgorithm

class PublicKey(_message.Message):
    __slots__ = ("id", "type", "pkix_data", "fingerprint")
    ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PKIX_DATA_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    id: str
    type: KeyType
    pkix_data: bytes
    fingerprint: str
    def __init__(self, id: _Optional[str] = ..., type: _Optional[_Union[KeyType, str]] = ..., pkix_data: _Optional[bytes] = ..., fingerprint: _Optional[str] = ...) -> None: ...

class GenerateKeyRequest(_message.Message):
    __slots__ = ("key_id", "key_type")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_TYPE_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    key_type: KeyType
    def __init__(self, key_id: _Optional[str] = ..., key_type: _Optional[_Union[KeyType, str]] = ...) -> None: ...

class GenerateKeyResponse(_message.Message):
    __slots__ = ("public_key",)
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    public_key: PublicKey
    def __init__(self, public_key: _Optional[_Union[PublicKey, _Mapping]] = ...) -> None: ...

class GetPublicKeyRequest(_message.Message):
    __slots__ = ("key_id",)
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    def __init__(self, key_id: _Optional[str] = ...) -> None: ...

class GetPublicKeyResponse(_message.Message):
    __slots__ = ("public_key",)
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    public_key: PublicKey
    def __init__(self, public_key: _Optional[_Union[PublicKey, _Mapping]] = ...) -> None: ...

class GetPublicKeysRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetPublicKeysResponse(_message.Message):
    __slots__ = ("public_keys",)
    PUBLIC_KEYS_FIELD_NUMBER: _ClassVar[int]
    public_keys: _containers.RepeatedCompositeFieldContainer[PublicKey]
    def __init__(self, public_keys: _Optional[_Iterable[_Union[PublicKey, _Mapping]]] = ...) -> None: ...

class SignDataRequest(_message.Message):
    __slots__ = ("key_id", "data", "hash_algorithm", "pss_options")
    class PSSOptions(_message.Message):
        __slots__ = ("salt_length", "hash_algorithm")
        SALT_LENGTH_FIELD_NUMBER: _ClassVar[int]
        HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
        salt_length: int
        hash_algorithm: HashAlgorithm
        def __init__(self, salt_length: _Optional[int] = ..., hash_algorithm: _Optional[_Union[HashAlgorithm, str]] = ...) -> None: ...
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    HASH_ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    PSS_OPTIONS_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    data: bytes
    hash_algorithm: HashAlgorithm
    pss_options: SignDataRequest.PSSOptions
    def __init__(self, key_id: _Optional[str] = ..., data: _Optional[bytes] = ..., hash_algorithm: _Optional[_Union[HashAlgorithm, str]] = ..., pss_options: _Optional[_Union[SignDataRequest.PSSOptions, _Mapping]] = ...) -> None: ...

class SignDataResponse(_message.Message):
    __slots__ = ("signature", "key_fingerprint")
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    signature: bytes
    key_fingerprint: str
    def __init__(self, signature: _Optional[bytes] = ..., key_fingerprint: _Optional[str] = ...) -> None: ...

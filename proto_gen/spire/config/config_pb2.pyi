from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CoreConfiguration(_message.Message):
    __slots__ = ("trust_domain",)
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    def __init__(self, trust_domain: _Optional[str] = ...) -> None: ...

class ConfigureRequest(_message.Message):
    __slots__ = ("core_configuration", "hcl_configuration")
    CORE_CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    HCL_CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    core_configuration: CoreConfiguration
    hcl_configuration: str
    def __init__(self, core_configuration: _Optional[_Union[CoreConfiguration, _Mapping]] = ..., hcl_configuration: _Optional[str] = ...) -> None: ...

class ConfigureResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ValidateRequest(_message.Message):
    __slots__ = ("core_configuration", "hcl_configuration")
    CORE_CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    HCL_CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    core_configuration: CoreConfiguration
    hcl_configuration: str
    def __init__(self, core_configuration: _Optional[_Union[CoreConfiguration, _Mapping]] = ..., hcl_configuration: _Optional[str] = ...) -> None: ...

class ValidateResponse(_message.Message):
    __slots__ = ("valid", "notes")
    VALID_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    notes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, valid: _Optional[bool] = ..., notes: _Optional[_Iterable[str]] = ...) -> None: ...

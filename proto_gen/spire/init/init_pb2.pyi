from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class InitRequest(_message.Message):
    __slots__ = ("host_service_names",)
    HOST_SERVICE_NAMES_FIELD_NUMBER: _ClassVar[int]
    host_service_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, host_service_names: _Optional[_Iterable[str]] = ...) -> None: ...

class InitResponse(_message.Message):
    __slots__ = ("plugin_service_names",)
    PLUGIN_SERVICE_NAMES_FIELD_NUMBER: _ClassVar[int]
    plugin_service_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, plugin_service_names: _Optional[_Iterable[str]] = ...) -> None: ...

class DeinitRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DeinitResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Label(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class SetGaugeRequest(_message.Message):
    __slots__ = ("key", "val", "labels")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    key: _containers.RepeatedScalarFieldContainer[str]
    val: float
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, key: _Optional[_Iterable[str]] = ..., val: _Optional[float] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class EmitKeyRequest(_message.Message):
    __slots__ = ("key", "val")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VAL_FIELD_NUMBER: _ClassVar[int]
    key: _containers.RepeatedScalarFieldContainer[str]
    val: float
    def __init__(self, key: _Optional[_Iterable[str]] = ..., val: _Optional[float] = ...) -> None: ...

class IncrCounterRequest(_message.Message):
    __slots__ = ("key", "val", "labels")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    key: _containers.RepeatedScalarFieldContainer[str]
    val: float
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, key: _Optional[_Iterable[str]] = ..., val: _Optional[float] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class AddSampleRequest(_message.Message):
    __slots__ = ("key", "val", "labels")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VAL_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    key: _containers.RepeatedScalarFieldContainer[str]
    val: float
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, key: _Optional[_Iterable[str]] = ..., val: _Optional[float] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class MeasureSinceRequest(_message.Message):
    __slots__ = ("key", "time", "labels")
    KEY_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    key: _containers.RepeatedScalarFieldContainer[str]
    time: int
    labels: _containers.RepeatedCompositeFieldContainer[Label]
    def __init__(self, key: _Optional[_Iterable[str]] = ..., time: _Optional[int] = ..., labels: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

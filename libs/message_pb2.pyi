import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Data(_message.Message):
    __slots__ = ("name", "content")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    content: bytes
    def __init__(self, name: _Optional[str] = ..., content: _Optional[bytes] = ...) -> None: ...

class StageLog(_message.Message):
    __slots__ = ("host_id", "stage", "start", "end", "status", "log", "version")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    stage: str
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    status: str
    log: str
    version: str
    def __init__(self, host_id: _Optional[str] = ..., stage: _Optional[str] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., status: _Optional[str] = ..., log: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ProcessingRequest(_message.Message):
    __slots__ = ("uuid", "page_uuid", "priority", "start_time", "processing_stages", "results", "logs")
    UUID_FIELD_NUMBER: _ClassVar[int]
    PAGE_UUID_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_STAGES_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    page_uuid: str
    priority: int
    start_time: _timestamp_pb2.Timestamp
    processing_stages: _containers.RepeatedScalarFieldContainer[str]
    results: _containers.RepeatedCompositeFieldContainer[Data]
    logs: _containers.RepeatedCompositeFieldContainer[StageLog]
    def __init__(self, uuid: _Optional[str] = ..., page_uuid: _Optional[str] = ..., priority: _Optional[int] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., processing_stages: _Optional[_Iterable[str]] = ..., results: _Optional[_Iterable[_Union[Data, _Mapping]]] = ..., logs: _Optional[_Iterable[_Union[StageLog, _Mapping]]] = ...) -> None: ...

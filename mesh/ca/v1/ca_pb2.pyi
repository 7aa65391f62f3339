from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class X509Svid(_message.Message):
    __slots__ = ("spiffe_id", "cert_chain_pem", "not_before", "not_after", "serial")
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    CERT_CHAIN_PEM_FIELD_NUMBER: _ClassVar[int]
    NOT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    NOT_AFTER_FIELD_NUMBER: _ClassVar[int]
    SERIAL_FIELD_NUMBER: _ClassVar[int]
    spiffe_id: str
    cert_chain_pem: bytes
    not_before: int
    not_after: int
    serial: str
    def __init__(self, spiffe_id: _Optional[str] = ..., cert_chain_pem: _Optional[bytes] = ..., not_before: _Optional[int] = ..., not_after: _Optional[int] = ..., serial: _Optional[str] = ...) -> None: ...

class TrustState(_message.Message):
    __slots__ = ("roots_pem", "bundle_json", "crl_pem", "sequence")
    ROOTS_PEM_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_JSON_FIELD_NUMBER: _ClassVar[int]
    CRL_PEM_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    roots_pem: bytes
    bundle_json: bytes
    crl_pem: bytes
    sequence: int
    def __init__(self, roots_pem: _Optional[bytes] = ..., bundle_json: _Optional[bytes] = ..., crl_pem: _Optional[bytes] = ..., sequence: _Optional[int] = ...) -> None: ...

class AttestNodeRequest(_message.Message):
    __slots__ = ("node", "join_token", "csr_pem")
    NODE_FIELD_NUMBER: _ClassVar[int]
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    node: str
    join_token: str
    csr_pem: bytes
    def __init__(self, node: _Optional[str] = ..., join_token: _Optional[str] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class AttestNodeResponse(_message.Message):
    __slots__ = ("agent_svid", "trust")
    AGENT_SVID_FIELD_NUMBER: _ClassVar[int]
    TRUST_FIELD_NUMBER: _ClassVar[int]
    agent_svid: X509Svid
    trust: TrustState
    def __init__(self, agent_svid: _Optional[_Union[X509Svid, _Mapping]] = ..., trust: _Optional[_Union[TrustState, _Mapping]] = ...) -> None: ...

class RenewAgentRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: bytes
    def __init__(self, csr_pem: _Optional[bytes] = ...) -> None: ...

class RenewAgentResponse(_message.Message):
    __slots__ = ("agent_svid",)
    AGENT_SVID_FIELD_NUMBER: _ClassVar[int]
    agent_svid: X509Svid
    def __init__(self, agent_svid: _Optional[_Union[X509Svid, _Mapping]] = ...) -> None: ...

class Registration(_message.Message):
    __slots__ = ("service", "spiffe_id", "uid", "ttl_seconds")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    service: str
    spiffe_id: str
    uid: int
    ttl_seconds: int
    def __init__(self, service: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., uid: _Optional[int] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class ListRegistrationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListRegistrationsResponse(_message.Message):
    __slots__ = ("registrations",)
    REGISTRATIONS_FIELD_NUMBER: _ClassVar[int]
    registrations: _containers.RepeatedCompositeFieldContainer[Registration]
    def __init__(self, registrations: _Optional[_Iterable[_Union[Registration, _Mapping]]] = ...) -> None: ...

class IssueWorkloadSvidRequest(_message.Message):
    __slots__ = ("service", "csr_pem")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    service: str
    csr_pem: bytes
    def __init__(self, service: _Optional[str] = ..., csr_pem: _Optional[bytes] = ...) -> None: ...

class IssueWorkloadSvidResponse(_message.Message):
    __slots__ = ("svid",)
    SVID_FIELD_NUMBER: _ClassVar[int]
    svid: X509Svid
    def __init__(self, svid: _Optional[_Union[X509Svid, _Mapping]] = ...) -> None: ...

class WatchTrustRequest(_message.Message):
    __slots__ = ("known_sequence",)
    KNOWN_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    known_sequence: int
    def __init__(self, known_sequence: _Optional[int] = ...) -> None: ...

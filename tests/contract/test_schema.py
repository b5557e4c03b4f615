"""The schema the server serves through reflection is the one the client was generated from."""

from __future__ import annotations

from collections.abc import Callable

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from modelroute.v1 import (
    access_token_pb2,
    audit_pb2,
    common_pb2,
    error_reason_pb2,
    model_config_pb2,
    provider_config_pb2,
    resolver_pb2,
    user_key_pb2,
)

CLIENT_FILES = [
    common_pb2.DESCRIPTOR,
    error_reason_pb2.DESCRIPTOR,
    provider_config_pb2.DESCRIPTOR,
    model_config_pb2.DESCRIPTOR,
    user_key_pb2.DESCRIPTOR,
    resolver_pb2.DESCRIPTOR,
    access_token_pb2.DESCRIPTOR,
    audit_pb2.DESCRIPTOR,
]


def as_proto(file: FileDescriptor) -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return proto


def test_every_file_the_server_serves_equals_the_clients(
    served_descriptors: Callable[[str], descriptor_pb2.FileDescriptorProto],
) -> None:
    for file in CLIENT_FILES:
        served = served_descriptors(file.name)
        assert served == as_proto(file), f"{file.name}: the server's schema differs from this client's"


def test_every_service_of_the_client_is_served_with_every_method(
    served_descriptors: Callable[[str], descriptor_pb2.FileDescriptorProto],
) -> None:
    services = {
        f"{file.package}.{service.name}": [m.name for m in service.methods]
        for file in CLIENT_FILES
        for service in file.services_by_name.values()
    }
    assert len(services) == 6  # providers, models, user keys, resolver, access tokens, audit
    served = {
        f"{proto.package}.{service.name}": [m.name for m in service.method]
        for proto in (served_descriptors(file.name) for file in CLIENT_FILES)
        for service in proto.service
    }
    assert served == services

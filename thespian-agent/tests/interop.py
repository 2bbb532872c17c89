"""An independent client for the agent: Python grpcio, health checking and reflection.

Usage: python interop.py HOST:PORT
Prints one JSON object describing what the agent answered; the Rust test asserts on it. The Thespian
methods are called without generated code (the messages are empty), the way a client that only knows the
method names would.
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc


def reflect(channel, method_path, request):
    """One request on a reflection stream (v1 and v1alpha share the wire format)."""
    call = channel.stream_stream(
        method_path,
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return next(iter(call(iter([request]), timeout=10)))


def main(address):
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=10)
    result = {"methods": {}}

    for method in "ABC":
        call = channel.unary_unary(
            f"/thespian.Thespian/{method}",
            request_serializer=lambda _: b"",
            response_deserializer=lambda data: data,
        )
        try:
            response, rpc = call.with_call(None, timeout=10)
            metadata = dict(rpc.initial_metadata())
            result["methods"][method] = {
                "code": "OK",
                "response_bytes": len(response),
                "service": metadata.get("x-thespian-service"),
                "instance": metadata.get("x-thespian-instance"),
            }
        except grpc.RpcError as error:
            result["methods"][method] = {"code": error.code().name, "details": error.details()}

    health = health_pb2_grpc.HealthStub(channel)
    result["health"] = {}
    for service in ["", "thespian.Thespian"]:
        answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        result["health"][service] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)

    result["reflection"] = {}
    for version, path in [
        ("v1alpha", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
        ("v1", "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
    ]:
        listed = reflect(channel, path, reflection_pb2.ServerReflectionRequest(list_services=""))
        services = sorted(s.name for s in listed.list_services_response.service)
        described = reflect(
            channel, path, reflection_pb2.ServerReflectionRequest(file_containing_symbol="thespian.Thespian")
        )
        methods = []
        for raw in described.file_descriptor_response.file_descriptor_proto:
            file = descriptor_pb2.FileDescriptorProto.FromString(raw)
            for service in file.service:
                if f"{file.package}.{service.name}" == "thespian.Thespian":
                    methods = [m.name for m in service.method]
        result["reflection"][version] = {"services": services, "thespian_methods": methods}

    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])

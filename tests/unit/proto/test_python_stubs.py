#!/usr/bin/python3
"""The .proto files as a stock gRPC client sees them: protoc generates the
Python modules (as the integration tests will, at test time), they import
under Debian's python3-protobuf, and the services, methods and streaming
flags are the ones the C server routes. Usage: test_python_stubs.py PROTO_DIR"""
import os
import subprocess
import sys
import tempfile

proto_dir = sys.argv[1]
files = ["ztm/v1/types.proto", "ztm/v1/mesh.proto", "ztm/v1/services.proto",
         "ztm/v1/watch.proto", "ztm/v1/hubs.proto", "ztm/v1/records.proto",
         "grpc/health/v1/health.proto"]
with tempfile.TemporaryDirectory() as out:
    subprocess.run(["protoc", "-I", proto_dir, "--python_out", out] + files, check=True)
    sys.path.insert(0, out)
    from ztm.v1 import mesh_pb2, services_pb2, watch_pb2, hubs_pb2, types_pb2
    # "grpc" is grpcio's package once grpcio is importable: load the health
    # module from its file instead of through the package path.
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "health_pb2", os.path.join(out, "grpc/health/v1/health_pb2.py"))
    health_pb2 = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(health_pb2)

    want = {
        (mesh_pb2, "Mesh"): {"Invite": False, "Join": False, "Renew": False, "Revoke": False,
                             "ListEndpoints": False, "GetEndpoint": False},
        (services_pb2, "Services"): {"Publish": False, "Unpublish": False, "List": False,
                                     "SetPolicy": False},
        (watch_pb2, "Watch"): {"Subscribe": True},
        (hubs_pb2, "Hubs"): {"Register": False, "Heartbeat": False, "List": False},
        (health_pb2, "Health"): {"Check": False, "Watch": True},
    }
    for (mod, name), methods in want.items():
        svc = mod.DESCRIPTOR.services_by_name[name]
        got = {m.name: m.server_streaming for m in svc.methods}
        assert got == methods, (svc.full_name, got)
        for m in svc.methods:
            assert not m.client_streaming
    assert mesh_pb2.DESCRIPTOR.services_by_name["Mesh"].full_name == "ztm.v1.Mesh"
    assert health_pb2.DESCRIPTOR.services_by_name["Health"].full_name == "grpc.health.v1.Health"

    # messages round-trip in Python, and match the C encoding of a known value
    ep = types_pb2.Endpoint(id="ab", name="laptop", role=types_pb2.ROLE_AGENT, online=True)
    ep.labels["site"] = "home"
    assert types_pb2.Endpoint.FromString(ep.SerializeToString()) == ep
    ev = watch_pb2.WatchEvent(version=7, type=watch_pb2.WatchEvent.TYPE_PUT,
                              topic=watch_pb2.TOPIC_REVOCATIONS,
                              revocation=types_pb2.Revocation(serial="0a0b"))
    assert ev.WhichOneof("object") == "revocation"
    r = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
    assert r.SerializeToString() == b"\x08\x01"
print("python stubs ok")

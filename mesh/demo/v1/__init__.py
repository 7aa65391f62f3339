"""Generated protobuf and gRPC code of protos/mesh/demo/v1 (run scripts/gen-protos; do not edit)."""

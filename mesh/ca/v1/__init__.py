"""Generated protobuf and gRPC code of protos/mesh/ca/v1 (run scripts/gen-protos; do not edit)."""

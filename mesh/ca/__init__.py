"""Generated gRPC code of the meshid CA service (protos/mesh/ca/v1)."""

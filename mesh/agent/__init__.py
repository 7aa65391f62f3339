"""meshid's node agent: attests the node to the CA service once (join token, pinned root),
keeps its own and its services' SVIDs renewed with keys made on the host, serves the SPIFFE
Workload API on a Unix socket (callers told apart by ``SO_PEERCRED``) and keeps spiffe-helper
folders current with all five files switched as one. Run it with ``mesh agent``; docs/agent.md.

This package never imports ``ca``: it speaks to the CA service over gRPC only.
"""

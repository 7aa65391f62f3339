"""The CA as a network service (``mesh-ca serve``): node attestation, agent and workload SVIDs.

Node agents join with a one-time join token (:mod:`ca.service.jointokens`), then renew their
own SVID and obtain their workloads' SVIDs over mutual TLS. Everything the service issues goes
through the CA's own registry transaction and publication (:meth:`ca.authority.
CertificateAuthority.change`); the service's state (nodes, join tokens, registrations, which
node each certificate was issued through) lives in tables of the same registry
(:mod:`ca.service.store`). The contract is ``protos/mesh/ca/v1/ca.proto``; the operator's view
is ``docs/agent.md``.
"""

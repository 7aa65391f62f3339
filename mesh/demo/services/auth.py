"""auth: Login at the edge port (password and a DPoP proof in, a bound user token out).

Login is tokenless (the password authenticates the user), but not keyless: the client proves a
key with a DPoP proof for this very method (spec 4.7), checked before the password, and the user
token is bound to that key. The proof is checked with the edge port's own verifier, so a login
proof is single-use like any other.
"""

from __future__ import annotations

import grpc

from mesh.demo.logic.auth import LoginService
from mesh.demo.services._rpc import Registry, handler
from mesh.demo.v1 import auth_pb2, auth_pb2_grpc
from mesh.identity.spiffeid import SpiffeId
from mesh.tokens.dpop import ProofVerifier

LOGIN = "/mesh.demo.v1.AuthService/Login"


def make_servicer(own_id: SpiffeId, logins: LoginService, proofs: ProofVerifier
                  ) -> auth_pb2_grpc.AuthServiceServicer:
    class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
        @handler(own_id, LOGIN)
        def Login(
            self, request: auth_pb2.LoginRequest, context: grpc.ServicerContext
        ) -> auth_pb2.LoginResponse:
            # A refused proof is a CallRefused: the mesh server answers with its reason.
            proof = proofs.check_login(context.invocation_metadata(), LOGIN)
            result = logins.login(request.username, request.password, jkt=proof.jkt)
            return auth_pb2.LoginResponse(
                token=result.token, expires_at=result.expires_at, scope=result.scope,
                subject=result.subject,
            )

    return AuthServicer()


def register(server: Registry, servicer: auth_pb2_grpc.AuthServiceServicer) -> None:
    auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

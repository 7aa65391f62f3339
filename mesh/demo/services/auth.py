"""auth: Login at the edge port (password in, user token out); nothing else."""

from __future__ import annotations

import grpc

from mesh.demo.logic.auth import LoginService
from mesh.demo.services._rpc import Registry, handler
from mesh.demo.v1 import auth_pb2, auth_pb2_grpc
from mesh.identity.spiffeid import SpiffeId

LOGIN = "/mesh.demo.v1.AuthService/Login"


def make_servicer(own_id: SpiffeId, logins: LoginService) -> auth_pb2_grpc.AuthServiceServicer:
    class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
        @handler(own_id, LOGIN)
        def Login(
            self, request: auth_pb2.LoginRequest, context: grpc.ServicerContext
        ) -> auth_pb2.LoginResponse:
            result = logins.login(request.username, request.password)
            return auth_pb2.LoginResponse(
                token=result.token, expires_at=result.expires_at, scope=result.scope,
                subject=result.subject,
            )

    return AuthServicer()


def register(server: Registry, servicer: auth_pb2_grpc.AuthServiceServicer) -> None:
    auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

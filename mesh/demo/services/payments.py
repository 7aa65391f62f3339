"""payments: charges the user of the verified chain (only orders may call, policy says)."""

from __future__ import annotations

import grpc

from mesh import require_user
from mesh.demo.logic.payments import Payments
from mesh.demo.services._rpc import Registry, handler
from mesh.demo.v1 import payments_pb2, payments_pb2_grpc
from mesh.identity.spiffeid import SpiffeId

CHARGE = "/mesh.demo.v1.PaymentsService/Charge"


def make_servicer(
    own_id: SpiffeId, payments: Payments
) -> payments_pb2_grpc.PaymentsServiceServicer:
    class PaymentsServicer(payments_pb2_grpc.PaymentsServiceServicer):
        @handler(own_id, CHARGE)
        def Charge(
            self, request: payments_pb2.ChargeRequest, context: grpc.ServicerContext
        ) -> payments_pb2.ChargeResponse:
            user = require_user().id
            charge = payments.charge(user=user, order_ref=request.order_ref,
                                     amount_cents=request.amount_cents,
                                     currency=request.currency)
            return payments_pb2.ChargeResponse(payment_id=charge.payment_id,
                                               amount_cents=charge.amount_cents,
                                               currency=charge.currency, user=charge.user)

    return PaymentsServicer()


def register(server: Registry, servicer: payments_pb2_grpc.PaymentsServiceServicer) -> None:
    payments_pb2_grpc.add_PaymentsServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]

"""The demo mesh: auth, gateway, orders, inventory, payments and reporting, each its own process.

The business logic of each service is plain Python (``users``, ``catalog``, ``orders_store``,
``inventory_logic``, ``payments_logic``, ``reporting_logic``), tested without gRPC; the servicers
in ``services`` put it on the mesh. Run one with ``python -m mesh.demo SERVICE ...`` and the
whole story with ``python -m mesh.demo.orchestration.launcher``.
"""

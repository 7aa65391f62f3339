"""gRPC interceptors: server side (verify, authorise, audit) and client side (mint tokens).

One module per flavour: :mod:`.server_sync`, :mod:`.server_aio`, :mod:`.client_sync`,
:mod:`.client_aio`; the checks they share live in :mod:`.guard` and :mod:`.minter`.
"""

"""Channels to a named mesh service that follow our own certificate's rotation.

gRPC clients cannot swap their certificate in place (grpc/grpc#41779), so :class:`MeshChannel`
holds one underlying secure channel per SVID snapshot. Each call asks the source for the
current snapshot (a cheap check); after a rotation new calls go to a fresh channel, and the old
one is closed once its in-flight calls have finished (or after ``close_grace`` seconds, if set).

Every underlying channel pins the callee's DNS name ``<NAME>.svc.<trust-domain>`` with
``grpc.ssl_target_name_override`` (Python clients cannot check URI SANs, spec 1.5) and carries
the client interceptor that mints the callee's token from the same snapshot, so the token's
``cnf`` always names the certificate presented on that connection.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc
import grpc.aio

from mesh.identity.spiffeid import SpiffeId, TrustDomain, spiffe_id
from mesh.identity.svid import Svid, SvidSource
from mesh.transport.address import dial_address
from mesh.transport.aio_client import aio_client_interceptors
from mesh.transport.credentials import channel_credentials
from mesh.transport.errors import ServerConfigError
from mesh.transport.minter import DEFAULT_TTL, TokenMinter
from mesh.transport.options import channel_options

_log = logging.getLogger(__name__)

Options = Sequence[tuple[str, Any]]


def callee_identity(service: str | SpiffeId, trust_domain: TrustDomain) -> tuple[SpiffeId, str]:
    """The callee's SPIFFE ID (any accepted form: a name, ``spiffe://...`` or a SpiffeId) and
    the DNS name to pin for it; only services (``spiffe://td/svc/NAME``) can be called."""
    sid = spiffe_id(service, trust_domain)
    name = sid.service_name
    if name is None:
        raise ServerConfigError(
            f"{sid} is not a mesh service ID (spiffe://<td>/svc/<NAME>): a client can only pin "
            "a service's DNS name <NAME>.svc.<td> (spec 1)"
        )
    return sid, f"{name}.svc.{sid.trust_domain}"


class _Settings:
    def __init__(self, target: str, service: str | SpiffeId, source: SvidSource, *,
                 trust_domain: TrustDomain | str | None, options: Options, require_user: bool,
                 token_ttl: int, token_cache: bool, proxy: bool) -> None:
        td = (TrustDomain(trust_domain) if isinstance(trust_domain, str)
              else trust_domain or source.current().spiffe_id.trust_domain)
        self.callee, self.dns_name = callee_identity(service, td)
        self.target = dial_address(target)
        self.source = source
        # The pinned name always wins; metadata limits and "no proxy" come from options.py.
        self.options: list[tuple[str, Any]] = [
            *channel_options([(k, v) for k, v in options
                              if k != "grpc.ssl_target_name_override"], proxy=proxy),
            ("grpc.ssl_target_name_override", self.dns_name),
        ]
        self.require_user = require_user
        self.token_ttl = token_ttl
        self.token_cache = token_cache

    def minter(self, svid: Svid) -> TokenMinter:
        return TokenMinter(svid, self.callee, ttl=self.token_ttl, cache=self.token_cache,
                           require_user=self.require_user)


# ---- sync ------------------------------------------------------------------------------------

class _Entry:
    """One underlying channel, built for one SVID snapshot."""

    def __init__(self, settings: _Settings, svid: Svid,
                 extra: Sequence[Any]) -> None:
        self.generation = svid.generation
        self.raw = grpc.secure_channel(settings.target, channel_credentials(svid),
                                       settings.options)
        # The token is added by MeshChannel itself, not by a grpc client interceptor: the sync
        # interceptor machinery alone costs ~10-20% of a loopback call at 8 threads.
        self.minter = settings.minter(svid)
        self.channel = grpc.intercept_channel(self.raw, *extra) if extra else self.raw
        # In-flight calls as list entries: append/pop are atomic under the GIL, so the per-call
        # path takes no lock (a contended lock cost ~5% at 8 client threads).
        self.inflight: list[None] = []
        self.retired = False
        self._closed = False
        self._close_lock = threading.Lock()
        self.callables: dict[tuple[Any, ...], Any] = {}

    def close_once(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _close_soon(self.raw)


class MeshChannel(grpc.Channel):
    """A ``grpc.Channel`` to one mesh service; use it like any channel (stubs, ``with``)."""

    def __init__(self, target: str, service: str | SpiffeId, source: SvidSource, *,
                 trust_domain: TrustDomain | str | None = None, options: Options = (),
                 require_user: bool = False, token_ttl: int = DEFAULT_TTL,
                 token_cache: bool = True, interceptors: Iterable[Any] = (),
                 close_grace: float | None = None, proxy: bool = False) -> None:
        self._settings = _Settings(target, service, source, trust_domain=trust_domain,
                                   options=options, require_user=require_user,
                                   token_ttl=token_ttl, token_cache=token_cache, proxy=proxy)
        self._extra = list(interceptors)
        self._grace = close_grace
        self._lock = threading.Lock()
        self._closed = False
        self._entry = _Entry(self._settings, source.current(), self._extra)

    @property
    def callee(self) -> SpiffeId:
        return self._settings.callee

    @property
    def generation(self) -> int:
        """The SVID generation of the channel new calls use."""
        return self._entry.generation

    def _acquire(self) -> _Entry:
        while True:
            if self._closed:
                raise ValueError("the channel is closed")
            entry = self._entry
            if self._settings.source.current().generation != entry.generation:
                with self._lock:
                    entry = self._rotate()
            entry.inflight.append(None)
            # A rotation may have retired this entry between the read and the append; its
            # closer saw no call of ours, so back off and take the new entry instead.
            if not entry.retired:
                return entry
            self._release(entry)

    def _rotate(self) -> _Entry:
        """Swap in a channel for the current SVID (caller holds ``self._lock``)."""
        old = self._entry
        svid = self._settings.source.current()
        if old.generation == svid.generation:
            return old  # another thread rotated already
        self._entry = _Entry(self._settings, svid, self._extra)
        old.retired = True
        _log.info("channel to %s: new certificate (generation %d), old channel drains",
                  self._settings.callee, svid.generation)
        if not old.inflight:
            old.close_once()
        elif self._grace is not None:
            timer = threading.Timer(self._grace, old.close_once)
            timer.daemon = True
            timer.start()
        return self._entry

    @staticmethod
    def _release(entry: _Entry) -> None:
        entry.inflight.pop()
        if entry.retired and not entry.inflight:
            entry.close_once()

    @staticmethod
    def _multicallable(entry: _Entry, spec: _Spec) -> Any:
        # One underlying multicallable per (kind, method, serializers) and channel, however
        # many times the caller asks for the same method.
        mc = entry.callables.get(spec.key)
        if mc is None:
            mc = getattr(entry.channel, spec.kind)(spec.method, **spec.kwargs)
            entry.callables[spec.key] = mc
        return mc

    def _invoke(self, spec: _Spec, attr: str, args: tuple[Any, ...],
                call_kwargs: dict[str, Any], *, blocking: bool) -> Any:
        entry = self._acquire()
        try:
            if len(args) > 1:  # request, then the optional arguments by position
                call_kwargs = {**dict(zip(_CALL_ARGS, args[1:], strict=False)), **call_kwargs}
                args = args[:1]
            call_kwargs["metadata"] = _with_auth(call_kwargs.get("metadata"),
                                                 entry.minter.metadatum())
            mc = self._multicallable(entry, spec)
            result = getattr(mc, attr)(*args, **call_kwargs)
        except BaseException:
            self._release(entry)
            raise
        if blocking:
            self._release(entry)
        else:
            result.add_done_callback(lambda _call: self._release(entry))
        return result

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None, _registered_method: bool | None = False
                    ) -> Any:
        return _UnaryResponse(self, "unary_unary", method,
                              _kwargs(request_serializer, response_deserializer,
                                      _registered_method))

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, _registered_method: bool | None = False
                     ) -> Any:
        return _UnaryResponse(self, "stream_unary", method,
                              _kwargs(request_serializer, response_deserializer,
                                      _registered_method))

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, _registered_method: bool | None = False
                     ) -> Any:
        return _StreamResponse(self, "unary_stream", method,
                               _kwargs(request_serializer, response_deserializer,
                                       _registered_method))

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None, _registered_method: bool | None = False
                      ) -> Any:
        return _StreamResponse(self, "stream_stream", method,
                               _kwargs(request_serializer, response_deserializer,
                                       _registered_method))

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None],
                  try_to_connect: bool = False) -> None:
        """Connectivity of the channel new calls currently use (not of drained ones)."""
        self._entry.raw.subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        self._entry.raw.unsubscribe(callback)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            entry = self._entry
        entry.raw.close()  # cancels its calls, like grpc.Channel.close()

    def __enter__(self) -> MeshChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_auth(metadata: Any, auth: tuple[str, str]) -> tuple[tuple[str, Any], ...]:
    """The caller's metadata without any authorization entry, plus the mesh token."""
    if not metadata:
        return (auth,)
    return (*[kv for kv in metadata if kv[0] != "authorization"], auth)


def _close_soon(channel: grpc.Channel) -> None:
    # Never inline: we may be in a done-callback on the channel's own event thread, and
    # close() waits for that thread to finish (a deadlock).
    threading.Thread(target=channel.close, name="mesh-channel-close", daemon=True).start()


_CALL_ARGS = ("timeout", "metadata", "credentials", "wait_for_ready", "compression")


class _Spec:
    """What a multicallable was asked for; ``key`` holds the serializers themselves."""

    __slots__ = ("key", "kind", "kwargs", "method")

    def __init__(self, kind: str, method: str, kwargs: dict[str, Any]) -> None:
        self.kind, self.method, self.kwargs = kind, method, kwargs
        self.key = (kind, method, kwargs.get("request_serializer"),
                    kwargs.get("response_deserializer"), kwargs.get("_registered_method"))


def _kwargs(ser: Any, deser: Any, registered: bool | None) -> dict[str, Any]:
    out: dict[str, Any] = {"request_serializer": ser, "response_deserializer": deser}
    if registered:
        out["_registered_method"] = registered
    return out


class _UnaryResponse:
    """Multicallable resolving the current underlying channel at each call."""

    def __init__(self, channel: MeshChannel, kind: str, method: str, kwargs: dict[str, Any]
                 ) -> None:
        self._c, self._spec = channel, _Spec(kind, method, kwargs)
        # (entry, its multicallable) of the last call: the blocking call below skips the
        # lookup while the channel has not rotated. Replaced whole, so reads need no lock.
        self._bound: tuple[_Entry, Any] | None = None

    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None,  # noqa: PLR0917 (grpc's own signature)
                 credentials: grpc.CallCredentials | None = None,
                 wait_for_ready: bool | None = None,
                 compression: grpc.Compression | None = None) -> Any:
        # The common call (a stub's blocking unary call), with no argument juggling: this
        # runs on every call and its cost adds to gRPC's own.
        c = self._c
        entry = c._acquire()
        try:
            bound = self._bound
            if bound is None or bound[0] is not entry:
                bound = (entry, c._multicallable(entry, self._spec))
                self._bound = bound
            return bound[1](request, timeout, _with_auth(metadata, entry.minter.metadatum()),
                            credentials, wait_for_ready, compression)
        finally:
            c._release(entry)

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._c._invoke(self._spec, "with_call", args, kwargs,
                               blocking=True)

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._c._invoke(self._spec, "future", args, kwargs,
                               blocking=False)


class _StreamResponse:
    def __init__(self, channel: MeshChannel, kind: str, method: str, kwargs: dict[str, Any]
                 ) -> None:
        self._c, self._spec = channel, _Spec(kind, method, kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._c._invoke(self._spec, "__call__", args, kwargs,
                               blocking=False)


# ---- aio -------------------------------------------------------------------------------------

class AioMeshChannel:
    """The ``grpc.aio`` flavour of :class:`MeshChannel` (use it like an aio channel).

    After a rotation the old channel is closed with ``close(grace)``, which lets in-flight
    calls finish for up to ``close_grace`` seconds (default 60).
    """

    def __init__(self, target: str, service: str | SpiffeId, source: SvidSource, *,
                 trust_domain: TrustDomain | str | None = None, options: Options = (),
                 require_user: bool = False, token_ttl: int = DEFAULT_TTL,
                 token_cache: bool = True, interceptors: Iterable[Any] = (),
                 close_grace: float = 60.0, proxy: bool = False) -> None:
        self._settings = _Settings(target, service, source, trust_domain=trust_domain,
                                   options=options, require_user=require_user,
                                   token_ttl=token_ttl, token_cache=token_cache, proxy=proxy)
        self._extra = list(interceptors)
        self._grace = close_grace
        self._draining: set[asyncio.Task[None]] = set()
        self._generation, self._channel = self._build(source.current())
        self._callables: dict[tuple[Any, ...], Any] = {}

    def _build(self, svid: Svid) -> tuple[int, grpc.aio.Channel]:
        channel = grpc.aio.secure_channel(
            self._settings.target, channel_credentials(svid), self._settings.options,
            interceptors=[*aio_client_interceptors(self._settings.minter(svid)), *self._extra],
        )
        return svid.generation, channel

    @property
    def callee(self) -> SpiffeId:
        return self._settings.callee

    def _current(self) -> grpc.aio.Channel:
        svid = self._settings.source.current()
        if svid.generation != self._generation:
            old = self._channel
            self._generation, self._channel = self._build(svid)
            self._callables = {}
            task = asyncio.get_running_loop().create_task(old.close(self._grace))
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        return self._channel

    def _call(self, spec: _Spec, args: tuple[Any, ...], call_kwargs: dict[str, Any]) -> Any:
        channel = self._current()
        mc = self._callables.get(spec.key)
        if mc is None:
            mc = getattr(channel, spec.kind)(spec.method, **spec.kwargs)
            self._callables[spec.key] = mc
        return mc(*args, **call_kwargs)

    def _factory(self, kind: str, method: str, ser: Any, deser: Any, registered: bool | None
                 ) -> Callable[..., Any]:
        spec = _Spec(kind, method, _kwargs(ser, deser, registered))

        def call(*args: Any, **call_kwargs: Any) -> Any:
            return self._call(spec, args, call_kwargs)

        return call

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None, _registered_method: bool | None = False
                    ) -> Callable[..., Any]:
        return self._factory("unary_unary", method, request_serializer, response_deserializer,
                             _registered_method)

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, _registered_method: bool | None = False
                     ) -> Callable[..., Any]:
        return self._factory("unary_stream", method, request_serializer,
                             response_deserializer, _registered_method)

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, _registered_method: bool | None = False
                     ) -> Callable[..., Any]:
        return self._factory("stream_unary", method, request_serializer,
                             response_deserializer, _registered_method)

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None, _registered_method: bool | None = False
                      ) -> Callable[..., Any]:
        return self._factory("stream_stream", method, request_serializer,
                             response_deserializer, _registered_method)

    async def channel_ready(self) -> None:
        await self._current().channel_ready()

    async def close(self, grace: float | None = None) -> None:
        await self._channel.close(grace)
        for task in list(self._draining):
            await task

    async def __aenter__(self) -> AioMeshChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def mesh_channel(target: str, service: str | SpiffeId, source: SvidSource, **kwargs: Any
                 ) -> MeshChannel:
    """A sync channel dialing ``target`` for mesh service ``service`` (see MeshChannel)."""
    return MeshChannel(target, service, source, **kwargs)


def aio_mesh_channel(target: str, service: str | SpiffeId, source: SvidSource, **kwargs: Any
                     ) -> AioMeshChannel:
    """An aio channel dialing ``target`` for mesh service ``service``."""
    return AioMeshChannel(target, service, source, **kwargs)

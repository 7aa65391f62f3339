"""Per-service call policy: default deny, one rule per method or per service.

A rule names the methods it covers (``/pkg.Service/Method``, ``/pkg.Service/*`` or ``*``) and
what a verified call must show to pass: which mTLS peers may call, which chains of services
are acceptable (ordered, edge first, peer last, e.g. ``["gateway", "orders"]``), whether an end
user is required (the default) or app tokens are accepted, and which scopes / roles the user
must hold. The most specific rule wins (method, then service, then ``*``); a method no rule
covers is denied. Every decision names the rule that made it, for the audit line.

Rules are written in Python (:class:`Rule`, :class:`Policy`) or in TOML (:func:`load_policy`,
see ``docs/grpc.md``); a bad file fails at start with its line and the reason.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from mesh.errors import ConfigError, MeshError, Reason
from mesh.identity.spiffeid import DEFAULT_TRUST_DOMAIN, SpiffeId, TrustDomain

ALLOWED = "ALLOWED"
NO_POLICY_RULE = "NO_POLICY_RULE"
PEER_NOT_ALLOWED = "PEER_NOT_ALLOWED"
CHAIN_NOT_ALLOWED = "CHAIN_NOT_ALLOWED"
USER_REQUIRED = "USER_REQUIRED"
SCOPE_MISSING = "SCOPE_MISSING"
ROLE_MISSING = "ROLE_MISSING"

_METHOD_RE = re.compile(r"/[A-Za-z_][A-Za-z0-9_.]*/(\*|[A-Za-z_][A-Za-z0-9_]*)")


class PolicyError(ConfigError, ValueError):
    """A policy is malformed (a rule contradicts itself, a name is invalid, ...)."""

    reason = Reason.POLICY_INVALID


class PolicyFileError(PolicyError):
    """A policy file could not be loaded; ``.line`` is the 1-based line when known."""

    def __init__(self, source: str, line: int | None, why: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {why}")
        self.source = source
        self.line = line
        self.why = why


class CallFacts(Protocol):
    """What the policy reads of a verified call (``mesh.tokens.verify.VerifiedChain``)."""

    @property
    def peer(self) -> SpiffeId | None: ...
    @property
    def kind(self) -> str: ...
    @property
    def user(self) -> str | None: ...
    @property
    def user_claims(self) -> Mapping[str, Any]: ...
    @property
    def chain(self) -> tuple[SpiffeId, ...]: ...


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one call; ``reason`` is ``ALLOWED`` or a stable deny code."""

    allowed: bool
    reason: str
    rule: str
    message: str


@dataclass(frozen=True, slots=True)
class Rule:
    """One policy rule. Names are service names (``orders``) or full SPIFFE IDs.

    ``peers=("*",)`` admits any peer of the trust domain; a rule must say ``peers`` or
    ``chains``. ``require_user=False`` accepts app tokens (calls with no end user), and then
    ``scopes``/``roles`` still deny any call without a user.
    """

    methods: tuple[str, ...]
    peers: tuple[str, ...] = ()
    chains: tuple[tuple[str, ...], ...] = ()
    require_user: bool = True
    scopes: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class _Compiled:
    name: str
    any_peer: bool
    peers: frozenset[SpiffeId]
    chains: frozenset[tuple[SpiffeId, ...]]
    require_user: bool
    scopes: frozenset[str]
    roles: frozenset[str]
    allow: Decision  # built once: the allow path runs on every call


def _resolve(td: TrustDomain, value: str) -> SpiffeId:
    if value.startswith("spiffe://"):
        return SpiffeId.parse(value)
    return td.service(value)


def _check_method(pattern: str) -> str:
    if pattern != "*" and not _METHOD_RE.fullmatch(pattern):
        raise PolicyError(
            f"method pattern {pattern!r} is invalid: use '/pkg.Service/Method', "
            "'/pkg.Service/*' or '*'"
        )
    return pattern


class Policy:
    """A compiled, immutable set of rules for one service."""

    def __init__(self, rules: Iterable[Rule], *,
                 trust_domain: TrustDomain | str = DEFAULT_TRUST_DOMAIN) -> None:
        td = trust_domain if isinstance(trust_domain, TrustDomain) else TrustDomain(trust_domain)
        self.trust_domain = td
        self._deny_all = False
        self._rules: dict[str, _Compiled] = {}
        for index, rule in enumerate(rules, start=1):
            compiled = self._compile(td, rule, index)
            if not rule.methods:
                raise PolicyError(f"{compiled.name}: it covers no method; set methods")
            for pattern in rule.methods:
                _check_method(pattern)
                if pattern in self._rules:
                    raise PolicyError(
                        f"{compiled.name}: method pattern {pattern!r} is already covered by "
                        f"{self._rules[pattern].name}"
                    )
                self._rules[pattern] = compiled

    @classmethod
    def deny_all(cls, *, trust_domain: TrustDomain | str = DEFAULT_TRUST_DOMAIN) -> Policy:
        """A policy that refuses every token call, said on purpose (no rule at all).

        For a port that serves only health checks and :class:`~mesh.transport.server.MeshServer`'s
        ``tokenless_methods``; its denials name ``deny_all`` as the rule.
        """
        policy = cls([], trust_domain=trust_domain)
        policy._deny_all = True
        return policy

    @property
    def denies_all(self) -> bool:
        """True for :meth:`deny_all` (and ``deny_all = true`` in TOML)."""
        return self._deny_all

    @staticmethod
    def _compile(td: TrustDomain, rule: Rule, index: int) -> _Compiled:
        name = rule.name or f"rule {index} ({', '.join(rule.methods) or 'no methods'})"
        if not rule.peers and not rule.chains:
            raise PolicyError(
                f"{name}: it must say who may call: set peers (['*'] for any peer of the "
                "trust domain) or chains"
            )
        any_peer = "*" in rule.peers
        if any_peer and len(rule.peers) > 1:
            raise PolicyError(f"{name}: peers mixes '*' with names; use one or the other")
        try:
            peers = frozenset(_resolve(td, p) for p in rule.peers if p != "*")
            chains = frozenset(tuple(_resolve(td, s) for s in c) for c in rule.chains)
        except MeshError as err:
            raise PolicyError(f"{name}: {err}") from err
        if any(not c for c in chains):
            raise PolicyError(f"{name}: a chain must name at least one service")
        for scope in rule.scopes:
            if not scope or " " in scope:
                raise PolicyError(f"{name}: scope {scope!r} is empty or contains a space")
        return _Compiled(name, any_peer, peers, chains, rule.require_user,
                         frozenset(rule.scopes), frozenset(rule.roles),
                         Decision(True, ALLOWED, name, f"allowed by {name}"))

    def rule_for(self, method: str) -> str | None:
        """The name of the rule that governs ``method``, or None (denied by default)."""
        rule = self._lookup(method)
        return rule.name if rule else None

    def _lookup(self, method: str) -> _Compiled | None:
        rule = self._rules.get(method)
        if rule is None:
            service, _, _ = method.rpartition("/")
            rule = self._rules.get(service + "/*") or self._rules.get("*")
        return rule

    def decide(self, method: str, call: CallFacts) -> Decision:
        rule = self._lookup(method)
        if rule is None:
            if self._deny_all:
                return Decision(False, NO_POLICY_RULE, "deny_all",
                                f"this service's policy denies every call (deny_all), {method} "
                                "included")
            return Decision(False, NO_POLICY_RULE, "default deny",
                            f"no policy rule covers {method}; calls are denied by default")
        if rule.peers and call.peer not in rule.peers:
            return Decision(False, PEER_NOT_ALLOWED, rule.name,
                            f"peer {call.peer} is not among the callers {rule.name} allows")
        if rule.chains and call.chain not in rule.chains:
            shown = " -> ".join(s.service_name or str(s) for s in call.chain) or "(empty)"
            return Decision(False, CHAIN_NOT_ALLOWED, rule.name,
                            f"the call came through {shown}, a chain {rule.name} does not allow")
        if call.user is None and (rule.require_user or rule.scopes or rule.roles):
            return Decision(False, USER_REQUIRED, rule.name,
                            f"{rule.name} requires an end user and the call carries none")
        if rule.scopes:
            raw = call.user_claims.get("scope")
            held = raw.split() if isinstance(raw, str) else ()
            missing = rule.scopes.difference(held)
            if missing:
                return Decision(False, SCOPE_MISSING, rule.name,
                                f"the user lacks scope {', '.join(sorted(missing))} "
                                f"required by {rule.name}")
        if rule.roles:
            raw_roles = call.user_claims.get("roles")
            roles = ({r for r in raw_roles if isinstance(r, str)}
                     if isinstance(raw_roles, (list, tuple)) else set())
            if not rule.roles & roles:
                return Decision(False, ROLE_MISSING, rule.name,
                                f"the user holds none of the roles {', '.join(sorted(rule.roles))} "
                                f"required by {rule.name}")
        return rule.allow


# ---- TOML -----------------------------------------------------------------------------------

_RULE_KEYS = {"name", "methods", "peers", "chains", "require_user", "allow_app_tokens",
              "scopes", "roles"}
_TOP_KEYS = {"trust_domain", "deny_all", "rule"}
_HEADER_RE = re.compile(r"^\s*\[\[\s*rule\s*\]\]")


class _Lines:
    """Maps rule index and key back to source lines (tomllib keeps no positions)."""

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()
        self._headers = [i for i, line in enumerate(self._lines) if _HEADER_RE.match(line)]

    def rule(self, index: int) -> int | None:
        return self._headers[index] + 1 if index < len(self._headers) else None

    def key(self, index: int | None, key: str) -> int | None:
        if index is None:
            start, end = 0, (self._headers[0] if self._headers else len(self._lines))
        elif index < len(self._headers):
            start = self._headers[index]
            end = self._headers[index + 1] if index + 1 < len(self._headers) else len(self._lines)
        else:
            return None
        pattern = re.compile(rf'^\s*"?{re.escape(key)}"?\s*=')
        for i in range(start, end):
            if pattern.match(self._lines[i]):
                return i + 1
        return self.rule(index) if index is not None else None


class _FieldError(PolicyError):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def _str_list(raw: Mapping[str, Any], key: str, label: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _FieldError(key, f"{key} in {label} must be a list of strings")
    return tuple(value)


def parse_policy(text: str, *, source: str = "<policy>",
                 trust_domain: TrustDomain | str | None = None) -> Policy:
    """Parse a TOML policy; raise :class:`PolicyFileError` with the line and the reason."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        match = re.search(r"line (\d+)", str(err))
        line = int(match.group(1)) if match else None
        if line is None and "end of document" in str(err):
            line = max(1, len(text.splitlines()))
        raise PolicyFileError(source, line, f"not valid TOML: {err}") from err
    lines = _Lines(text)
    for key in doc:
        if key not in _TOP_KEYS:
            raise PolicyFileError(source, lines.key(None, key),
                                  f"unknown key {key!r}; expected trust_domain, deny_all and "
                                  "[[rule]] tables")
    td_value = doc.get("trust_domain", trust_domain or DEFAULT_TRUST_DOMAIN)
    try:
        td = td_value if isinstance(td_value, TrustDomain) else TrustDomain(td_value)
    except MeshError as err:
        raise PolicyFileError(source, lines.key(None, "trust_domain"), str(err)) from err
    raw_rules = doc.get("rule", [])
    deny_all = doc.get("deny_all", False)
    if not isinstance(deny_all, bool):
        raise PolicyFileError(source, lines.key(None, "deny_all"), "deny_all must be true or false")
    if deny_all:
        if raw_rules:
            raise PolicyFileError(source, lines.key(None, "deny_all"),
                                  "deny_all = true refuses every call, yet the file has "
                                  "[[rule]] tables; remove one or the other")
        return Policy.deny_all(trust_domain=td)
    if not isinstance(raw_rules, list) or not raw_rules:
        raise PolicyFileError(source, None,
                              "the policy has no [[rule]] table; with default deny it would "
                              "refuse every call (write deny_all = true if that is the intent)")
    rules: list[Rule] = []
    for index, raw in enumerate(raw_rules):
        label = f"rule at line {lines.rule(index) or '?'}"
        if isinstance(raw, dict) and isinstance(raw.get("name"), str) and raw["name"]:
            label = f"rule {raw['name']!r} (line {lines.rule(index) or '?'})"
        if not isinstance(raw, dict):
            raise PolicyFileError(source, lines.rule(index), f"{label} is not a table")
        try:
            for key in raw:
                if key not in _RULE_KEYS:
                    raise _FieldError(key, f"unknown key {key!r} in {label}; expected one of "
                                           f"{', '.join(sorted(_RULE_KEYS))}")
            rules.append(_rule_from_toml(raw, label))
            Policy(rules, trust_domain=td)
        except _FieldError as err:
            raise PolicyFileError(source, lines.key(index, err.key), str(err)) from err
        except PolicyError as err:
            raise PolicyFileError(source, lines.rule(index), str(err)) from err
    return Policy(rules, trust_domain=td)


def _rule_from_toml(raw: Mapping[str, Any], label: str) -> Rule:
    for flag in ("require_user", "allow_app_tokens"):
        if flag in raw and not isinstance(raw[flag], bool):
            raise _FieldError(flag, f"{flag} in {label} must be true or false")
    require_user = raw.get("require_user", True)
    if "allow_app_tokens" in raw:
        if "require_user" in raw and raw["require_user"] == raw["allow_app_tokens"]:
            raise _FieldError("allow_app_tokens",
                              f"{label} sets require_user and allow_app_tokens to the same "
                              "value; app tokens carry no user, so they contradict each other")
        require_user = not raw["allow_app_tokens"]
    if "methods" not in raw:
        raise PolicyError(f"{label} has no methods; name the methods it covers")
    chains_raw = raw.get("chains", [])
    if not isinstance(chains_raw, list) or not all(
        isinstance(c, list) and all(isinstance(x, str) for x in c) for c in chains_raw
    ):
        raise _FieldError("chains", f"chains in {label} must be a list of lists of service names")
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise _FieldError("name", f"name in {label} must be a string")
    return Rule(
        name=name or label,
        methods=_str_list(raw, "methods", label),
        peers=_str_list(raw, "peers", label),
        chains=tuple(tuple(c) for c in chains_raw),
        require_user=require_user,
        scopes=_str_list(raw, "scopes", label),
        roles=_str_list(raw, "roles", label),
    )


def load_policy(path: Path | str, *, trust_domain: TrustDomain | str | None = None) -> Policy:
    """Load a TOML policy file; raise :class:`PolicyFileError` naming the line and the reason."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyFileError(str(p), None, f"cannot read the policy file: {err}") from err
    return parse_policy(text, source=str(p), trust_domain=trust_domain)

"""AuthorizationPolicy: compiled policies, workload selection and the ``check`` verb.

Semantics follow ISTIO-SEMANTICS 5.1-5.3: CUSTOM, then DENY, then ALLOW; with no ALLOW policy a
request is allowed, with one it must match one; AUDIT never decides; ``istio.io/dry-run``
policies are evaluated and reported, never enforced.

Policies are built from the Istio YAML shape (plain mappings with camelCase keys, as
``model_dump(by_alias=True, exclude_none=True)`` gives them), so the pure layer needs no
pydantic. A problem in a rule raises ``AuthzSpecError`` naming the field; ``build_policy`` can
instead keep the policy and make the broken rule fail closed (an ALLOW rule that never
matches, a DENY/AUDIT/CUSTOM rule that matches everything), which is what Istio does with a
rule it cannot translate.

Hot path: one ``check`` computes each request fact once (peer identity split and cached,
path normalized), asks a per-action index which policies can match at all (a dict of exact
values and a character trie of prefixes over the most selective fact every rule requires),
then walks those policies' precompiled steps in one flat loop, in policy order. Exact-only
value lists are frozensets, prefix and suffix lists use ``str.startswith``/``endswith`` with
tuples; regexes only for path templates. Decisions are built once per policy rule.

Paths compare case-sensitively, as in Istio (``/ADMIN`` is not covered by ``/admin*``);
``Authorizer(case_insensitive_paths=True)`` folds both sides for backends that ignore case.
Trust-domain aliases are not expanded: principals compare as written.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from dataclasses import field as dataclass_field
from types import MappingProxyType
from typing import Any, Literal

from meshlib._model.call import Call, HeaderView, Peer
from meshlib._policy.paths import DEFAULT_PATH_NORMALIZATION, PathNormalization, normalize_path

__all__ = [
    "DEFAULT_ROOT_NAMESPACE",
    "DENY_BODY",
    "DRY_RUN_ANNOTATION",
    "Action",
    "AuthorizationPolicy",
    "AuthorizationPolicySet",
    "Authorizer",
    "AuthzRequest",
    "AuthzRule",
    "AuthzSpecError",
    "Clause",
    "Decision",
    "Explanation",
    "FieldCheck",
    "PolicyMatch",
    "ValueMatcher",
    "build_policy",
    "build_rule",
    "compile_values",
    "is_dry_run",
]

DEFAULT_ROOT_NAMESPACE = "istio-system"
DRY_RUN_ANNOTATION = "istio.io/dry-run"
DENY_BODY = "RBAC: access denied"
"""Body of the local 403 (and message of gRPC ``PERMISSION_DENIED``)."""

_WORKLOAD_ENTRY = "workload"


class Action(enum.Enum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    AUDIT = "AUDIT"
    CUSTOM = "CUSTOM"


class AuthzSpecError(ValueError):
    """A policy field that cannot be compiled; ``field`` is the dotted path in the resource."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field


# ------------------------------------------------------------------------------ the request
@dataclass(slots=True)
class AuthzRequest:
    """What an inbound request offers to authorization (built once by the inbound driver)."""

    peer: Peer | None = None
    """The mTLS peer; ``None`` or a peer without SPIFFE ID for plaintext."""
    source_ip: str | None = None
    """The connection's peer address (``ipBlocks``, ``source.ip``)."""
    remote_ip: str | None = None
    """The original client (X-Forwarded-For when configured); ``None`` means ``source_ip``."""
    request_principal: str | None = None
    """``iss/sub`` of a verified JWT, if any."""
    claims: Mapping[str, Any] | None = None
    """Claims of that verified JWT."""
    host: str = ""
    """``:authority`` exactly as sent, port included."""
    port: int = 0
    """Destination (workload) port."""
    method: str = ""
    path: str = "/"
    """The raw request target; normalized inside ``check``, once."""
    headers: HeaderView | None = None
    sni: str | None = None
    destination_ip: str | None = None
    http: bool = True
    """``False`` for a TCP connection: HTTP-only fields then apply as Istio's TCP rules say."""

    @classmethod
    def from_call(
        cls,
        call: Call,
        *,
        source_ip: str | None = None,
        remote_ip: str | None = None,
        request_principal: str | None = None,
        claims: Mapping[str, Any] | None = None,
        sni: str | None = None,
        destination_ip: str | None = None,
    ) -> AuthzRequest:
        """The request an inbound ``Call`` describes; ``source_ip`` defaults to the peer's."""
        peer = call.peer
        if source_ip is None and peer is not None:
            source_ip = peer.address
        return cls(
            peer=peer,
            source_ip=source_ip,
            remote_ip=remote_ip,
            request_principal=request_principal,
            claims=claims,
            host=call.authority,
            port=call.port,
            method=call.method,
            path=call.path,
            headers=call.headers,
            sni=sni,
            destination_ip=destination_ip,
        )


# ------------------------------------------------------------------------------ matchers
class _Kind(enum.Enum):
    STRING = "string"
    IP = "ip"
    PORT = "port"


@dataclass(frozen=True, slots=True)
class ValueMatcher:
    """A compiled list of Istio string patterns (or CIDRs, or ports): OR of its entries.

    Strings: ``abc`` exact, ``abc*`` prefix, ``*abc`` suffix, ``*`` present and non-empty,
    ``{*}``/``{**}`` path templates when ``templates`` is allowed.
    """

    exact: frozenset[object] = frozenset()
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    presence: bool = False
    templates: tuple[re.Pattern[str], ...] = ()
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    only_exact: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        plain = not (self.prefixes or self.suffixes or self.presence)
        object.__setattr__(self, "only_exact", plain and not (self.templates or self.networks))

    def matches(self, value: object) -> bool:
        if value is None:
            return False
        if value in self.exact:
            return True
        if self.presence and value != "":
            return True
        if isinstance(value, str):
            if self.prefixes and value.startswith(self.prefixes):
                return True
            if self.suffixes and value.endswith(self.suffixes):
                return True
            for template in self.templates:
                if template.fullmatch(value) is not None:
                    return True
        elif self.networks:
            for network in self.networks:
                if value in network:
                    return True
        return False


def compile_values(
    values: Sequence[str],
    where: str = "",
    *,
    kind: _Kind = _Kind.STRING,
    fold: bool = False,
    templates: bool = False,
) -> ValueMatcher:
    """Compile one list field; ``AuthzSpecError`` names ``where`` on a bad entry."""
    exact: set[object] = set()
    prefixes: list[str] = []
    suffixes: list[str] = []
    compiled: list[re.Pattern[str]] = []
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    presence = False
    for index, raw in enumerate(values):
        here = f"{where}[{index}]"
        if not isinstance(raw, str) or raw == "":
            raise AuthzSpecError("empty value not allowed", here)
        if kind is _Kind.IP:
            try:
                networks.append(ipaddress.ip_network(raw.strip(), strict=False))
            except ValueError:
                raise AuthzSpecError(f"invalid IP address or CIDR {raw!r}", here) from None
            continue
        if kind is _Kind.PORT:
            text = raw.strip()
            if not text.isdigit() or not 0 < int(text) <= 65535:
                raise AuthzSpecError(f"invalid port {raw!r}", here)
            exact.add(int(text))
            continue
        value = raw.lower() if fold else raw
        if templates and ("{*}" in value or "{**}" in value):
            compiled.append(_compile_template(value, here, fold))
        elif value == "*":
            presence = True
        elif value.endswith("*"):
            prefixes.append(value[:-1])
        elif value.startswith("*"):
            suffixes.append(value[1:])
        else:
            exact.add(value)
    return ValueMatcher(
        exact=frozenset(exact),
        prefixes=tuple(prefixes),
        suffixes=tuple(suffixes),
        presence=presence,
        templates=tuple(compiled),
        networks=tuple(networks),
    )


def _compile_template(template: str, where: str, fold: bool) -> re.Pattern[str]:
    # Envoy URI templates as Istio uses them: {*} is one path segment, {**} one or more
    # characters including "/" and only as the last operator.
    parts = re.split(r"(\{\*\*\}|\{\*\})", template)
    pattern: list[str] = []
    for index, part in enumerate(parts):
        if part == "{*}":
            pattern.append("[^/]+")
        elif part == "{**}":
            if any(p in ("{*}", "{**}") for p in parts[index + 1 :]):
                raise AuthzSpecError("{**} must be the last operator of a path template", where)
            pattern.append(".+")
        elif "*" in part or "{" in part or "}" in part:
            raise AuthzSpecError(f"invalid path template {template!r}", where)
        else:
            pattern.append(re.escape(part))
    return re.compile("".join(pattern), re.IGNORECASE if fold else 0)


# ------------------------------------------------------------------------------ compiled policy
# Request facts, computed once per check and read by index.
_PRINCIPAL = 0
_NAMESPACE = 1
_SERVICE_ACCOUNT = 2
"""``ns/sa`` of the peer."""
_TRUST_DOMAIN = 3
_REQUEST_PRINCIPAL = 4
_SOURCE_IP = 5
_REMOTE_IP = 6
_DESTINATION_IP = 7
_HOST = 8
_PORT = 9
_METHOD = 10
_PATH = 11
_SNI = 12
_AUDIENCES = 13
_PRESENTER = 14
_HEADER = 15
_CLAIM = 16
_FACT_COUNT = 15

_IDENTITY_CACHE_SIZE = 4096
"""Parsed peer identities kept (a SPIFFE ID repeats for every request of a connection)."""

_HTTP_FACTS = frozenset(
    {_REQUEST_PRINCIPAL, _HOST, _METHOD, _PATH, _AUDIENCES, _PRESENTER, _HEADER, _CLAIM}
)
_IP_FACTS = frozenset({_SOURCE_IP, _REMOTE_IP, _DESTINATION_IP})


_OP_EXACT = 0
_OP_PREFIX = 1
_OP_SUFFIX = 2
_OP_MATCHER = 3
_OP_ANY = 4
_Step = tuple[int, int, Any, bool, tuple[str, ...]]
_Alternatives = tuple[tuple[_Step, ...], ...]
"""Clauses of which one must hold, each a tuple of steps that must all hold."""
_PolicySteps = tuple[tuple[_Alternatives, ...] | None, ...]


@dataclass(frozen=True, slots=True)
class FieldCheck:
    """One field of a source/operation, or one value list of a ``when`` condition."""

    fact: int
    matcher: ValueMatcher
    negated: bool = False
    key: tuple[str, ...] = ()
    """Header name (lower case) or claim path, for the dynamic facts."""
    field: str = ""
    """Dotted field in the resource, for explanations."""
    op: _Step = dataclass_field(init=False, repr=False, compare=False)
    """The same check as a flat tuple for the evaluation loop."""

    def __post_init__(self) -> None:
        m = self.matcher
        kind: int
        data: object
        if self.fact in (_AUDIENCES, _CLAIM):
            kind, data = _OP_ANY, m  # may be a list: any element matching counts
        elif m.only_exact:
            kind, data = _OP_EXACT, m.exact
        elif m.prefixes and not (m.exact or m.suffixes or m.presence or m.templates):
            kind, data = _OP_PREFIX, m.prefixes
        elif m.suffixes and not (m.exact or m.prefixes or m.presence or m.templates):
            kind, data = _OP_SUFFIX, m.suffixes
        else:
            kind, data = _OP_MATCHER, m
        object.__setattr__(self, "op", (self.fact, kind, data, self.negated, self.key))

    @property
    def http_only(self) -> bool:
        return self.fact in _HTTP_FACTS


@dataclass(frozen=True, slots=True)
class Clause:
    """A source, an operation or the ``when`` list: all its checks must hold."""

    checks: tuple[FieldCheck, ...] = ()
    tcp_checks: tuple[FieldCheck, ...] = field(init=False, repr=False, compare=False)
    http_only: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        tcp = tuple(c for c in self.checks if not c.http_only)
        object.__setattr__(self, "tcp_checks", tcp)
        object.__setattr__(self, "http_only", len(tcp) != len(self.checks))


@dataclass(frozen=True, slots=True)
class AuthzRule:
    """``(any source) and (any operation) and (every condition)``; empty lists match."""

    sources: tuple[Clause, ...] = ()
    operations: tuple[Clause, ...] = ()
    conditions: Clause = Clause()
    broken: str = ""
    """Why the rule could not be compiled; such a rule fails closed (see module doc)."""
    plans: tuple[tuple[_Alternatives, ...], ...] = field(init=False, repr=False, compare=False)
    """Groups (sources, operations, conditions) that must all hold: over HTTP, over TCP for
    an ALLOW policy, over TCP for the other actions."""

    def __post_init__(self) -> None:
        groups: list[tuple[Clause, ...]] = [g for g in (self.sources, self.operations) if g]
        if self.conditions.checks:
            groups.append((self.conditions,))
        http = tuple(tuple(tuple(c.op for c in cl.checks) for cl in g) for g in groups)
        # Over TCP an ALLOW entry with HTTP-only fields can never match, while DENY, AUDIT
        # and CUSTOM entries drop those fields instead (Istio's TCP translation).
        tcp_allow = tuple(
            tuple(tuple(c.op for c in cl.checks) for cl in g if not cl.http_only) for g in groups
        )
        tcp_other = tuple(tuple(tuple(c.op for c in cl.tcp_checks) for cl in g) for g in groups)
        object.__setattr__(self, "plans", (http, tcp_allow, tcp_other))


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    name: str
    namespace: str
    action: Action = Action.ALLOW
    rules: tuple[AuthzRule, ...] = ()
    """Empty: the policy matches nothing (an ALLOW ``spec: {}`` denies all)."""
    selector: Mapping[str, str] | None = None
    """``matchLabels``; ``None`` (or empty) selects every workload of the namespace."""
    provider: str | None = None
    """CUSTOM only: the extension provider name."""
    dry_run: bool = False
    target_refs: bool = False
    """The policy uses ``targetRef(s)``: it is for gateways/waypoints, never a sidecar."""
    order: int = 0
    """Load order, for stable reports."""
    evaluation: tuple[_PolicySteps, _PolicySteps] = field(init=False, repr=False, compare=False)
    """Per rule, the groups to evaluate over HTTP and over TCP; ``None`` for a rule that can
    never match (a broken ALLOW rule), ``()`` for one that always does (a broken DENY rule)."""

    def __post_init__(self) -> None:
        allow = self.action is Action.ALLOW

        def steps(plan: int) -> _PolicySteps:
            return tuple(
                (None if allow else ()) if rule.broken else rule.plans[plan] for rule in self.rules
            )

        object.__setattr__(self, "evaluation", (steps(0), steps(1 if allow else 2)))

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    def selects(self, namespace: str, labels: Mapping[str, str], root_namespace: str) -> bool:
        if self.target_refs:
            return False
        if self.namespace not in (namespace, root_namespace):
            return False
        if self.selector:
            for key, value in self.selector.items():
                if labels.get(key) != value:
                    return False
        return True


def is_dry_run(annotations: Mapping[str, str]) -> bool:
    """``istio.io/dry-run: "true"`` (case-insensitive, as istiod parses a bool)."""
    return annotations.get(DRY_RUN_ANNOTATION, "").strip().lower() in ("true", "1", "t")


# ------------------------------------------------------------------------------ building
_SOURCE_FIELDS: Mapping[str, tuple[int, _Kind]] = {
    "principals": (_PRINCIPAL, _Kind.STRING),
    "requestPrincipals": (_REQUEST_PRINCIPAL, _Kind.STRING),
    "namespaces": (_NAMESPACE, _Kind.STRING),
    "serviceAccounts": (_SERVICE_ACCOUNT, _Kind.STRING),
    "ipBlocks": (_SOURCE_IP, _Kind.IP),
    "remoteIpBlocks": (_REMOTE_IP, _Kind.IP),
    "trustDomains": (_TRUST_DOMAIN, _Kind.STRING),
}
_OPERATION_FIELDS: Mapping[str, tuple[int, _Kind]] = {
    "hosts": (_HOST, _Kind.STRING),
    "ports": (_PORT, _Kind.PORT),
    "methods": (_METHOD, _Kind.STRING),
    "paths": (_PATH, _Kind.STRING),
}
_CONDITION_KEYS: Mapping[str, tuple[int, _Kind]] = {
    "source.ip": (_SOURCE_IP, _Kind.IP),
    "remote.ip": (_REMOTE_IP, _Kind.IP),
    "source.namespace": (_NAMESPACE, _Kind.STRING),
    "source.principal": (_PRINCIPAL, _Kind.STRING),
    "source.serviceAccount": (_SERVICE_ACCOUNT, _Kind.STRING),
    "source.trustDomain": (_TRUST_DOMAIN, _Kind.STRING),
    "request.auth.principal": (_REQUEST_PRINCIPAL, _Kind.STRING),
    "request.auth.audiences": (_AUDIENCES, _Kind.STRING),
    "request.auth.presenter": (_PRESENTER, _Kind.STRING),
    "destination.ip": (_DESTINATION_IP, _Kind.IP),
    "destination.port": (_PORT, _Kind.PORT),
    "connection.sni": (_SNI, _Kind.STRING),
}
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")


def _not_name(name: str) -> str:
    return "not" + name[0].upper() + name[1:]


def _string_list(value: object, where: str) -> list[str]:
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise AuthzSpecError("expected a list of strings", where)
    return list(value)


def _field_checks(
    spec: Mapping[str, Any],
    fields: Mapping[str, tuple[int, _Kind]],
    where: str,
    policy_namespace: str,
) -> Clause:
    if not isinstance(spec, Mapping) or not spec:
        raise AuthzSpecError("must not be empty", where)
    known = {name for base in fields for name in (base, _not_name(base))}
    for name in spec:
        if name not in known:
            raise AuthzSpecError(f"unknown field {name!r}", f"{where}.{name}")
    checks: list[FieldCheck] = []
    for base, (fact, kind) in fields.items():
        for name, negated in ((base, False), (_not_name(base), True)):
            if name not in spec:
                continue
            here = f"{where}.{name}"
            values = _string_list(spec[name], here)
            if not values:
                raise AuthzSpecError("must not be empty", here)
            if fact == _SERVICE_ACCOUNT:
                values = _qualify_service_accounts(values, here, policy_namespace)
            matcher = compile_values(
                values, here, kind=kind, fold=fact == _HOST, templates=fact == _PATH
            )
            checks.append(FieldCheck(fact, matcher, negated, field=here))
    return Clause(tuple(checks))


def _qualify_service_accounts(values: list[str], where: str, namespace: str) -> list[str]:
    # ``sa`` alone names a service account of the policy's own namespace (istio/api#3417).
    qualified: list[str] = []
    for index, value in enumerate(values):
        parts = value.split("/")
        if "*" in value or len(parts) > 2 or "" in parts:
            raise AuthzSpecError(
                f"service account {value!r} must be 'namespace/name' or 'name'",
                f"{where}[{index}]",
            )
        qualified.append(value if len(parts) == 2 else f"{namespace}/{value}")
    return qualified


def _condition(spec: Mapping[str, Any], where: str, policy_namespace: str) -> list[FieldCheck]:
    if not isinstance(spec, Mapping):
        raise AuthzSpecError("must be a mapping", where)
    key = spec.get("key")
    if not isinstance(key, str) or not key:
        raise AuthzSpecError("key must not be empty", f"{where}.key")
    fact, kind, dynamic = _condition_key(key, f"{where}.key")
    checks: list[FieldCheck] = []
    for name, negated in (("values", False), ("notValues", True)):
        if name not in spec:
            continue
        here = f"{where}.{name}"
        values = _string_list(spec[name], here)
        if not values:
            continue
        if fact == _SERVICE_ACCOUNT:
            values = _qualify_service_accounts(values, here, policy_namespace)
        matcher = compile_values(values, here, kind=kind)
        checks.append(FieldCheck(fact, matcher, negated, dynamic, here))
    if not checks:
        raise AuthzSpecError("condition needs values or notValues", where)
    return checks


def _condition_key(key: str, where: str) -> tuple[int, _Kind, tuple[str, ...]]:
    known = _CONDITION_KEYS.get(key)
    if known is not None:
        return known[0], known[1], ()
    for prefix, fact in (("request.headers", _HEADER), ("request.auth.claims", _CLAIM)):
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            names = _BRACKETS.findall(rest)
            if not names or "".join(f"[{n}]" for n in names) != rest or "" in names:
                raise AuthzSpecError(f"bad key ({key}): should have format a[b]", where)
            if fact is _HEADER:
                if len(names) != 1:
                    raise AuthzSpecError(f"bad key ({key}): one header name expected", where)
                return fact, _Kind.STRING, (names[0].lower(),)
            return fact, _Kind.STRING, tuple(names)
    raise AuthzSpecError(f"unsupported attribute: {key}", where)


def build_rule(
    spec: Mapping[str, Any], where: str = "rule", policy_namespace: str = ""
) -> AuthzRule:
    """Compile one Istio ``Rule`` mapping (``from``/``to``/``when``), or raise."""
    if not isinstance(spec, Mapping):
        raise AuthzSpecError("must be a mapping", where)
    for name in spec:
        if name not in ("from", "to", "when"):
            raise AuthzSpecError(f"unknown field {name!r}", f"{where}.{name}")
    sources = _clauses(spec, "from", "source", _SOURCE_FIELDS, where, policy_namespace)
    operations = _clauses(spec, "to", "operation", _OPERATION_FIELDS, where, policy_namespace)
    conditions: list[FieldCheck] = []
    if "when" in spec:
        when = spec["when"]
        if not isinstance(when, list | tuple) or not when:
            raise AuthzSpecError("must not be empty", f"{where}.when")
        for index, item in enumerate(when):
            conditions += _condition(item, f"{where}.when[{index}]", policy_namespace)
    return AuthzRule(sources, operations, Clause(tuple(conditions)))


def _clauses(
    spec: Mapping[str, Any],
    name: str,
    inner: str,
    fields: Mapping[str, tuple[int, _Kind]],
    where: str,
    policy_namespace: str,
) -> tuple[Clause, ...]:
    if name not in spec:
        return ()
    items = spec[name]
    if not isinstance(items, list | tuple) or not items:
        raise AuthzSpecError("must not be empty", f"{where}.{name}")
    clauses: list[Clause] = []
    for index, item in enumerate(items):
        here = f"{where}.{name}[{index}]"
        if not isinstance(item, Mapping) or set(item) != {inner}:
            raise AuthzSpecError(f"must hold exactly {inner!r}", here)
        clauses.append(_field_checks(item[inner], fields, f"{here}.{inner}", policy_namespace))
    return tuple(clauses)


def build_policy(
    name: str,
    namespace: str,
    *,
    action: str | Action | None = None,
    rules: Sequence[Mapping[str, Any]] | None = None,
    selector: Mapping[str, str] | None = None,
    provider: str | None = None,
    dry_run: bool = False,
    target_refs: bool = False,
    order: int = 0,
    on_error: Callable[[AuthzSpecError], None] | None = None,
) -> AuthorizationPolicy:
    """Compile one policy from its Istio shape.

    Without ``on_error`` a bad rule raises ``AuthzSpecError``; with it, the error is reported
    and the rule fails closed (``broken``), so one typo never opens or closes more than Istio
    would.
    """
    verb = Action(action) if isinstance(action, str) else (action or Action.ALLOW)
    compiled: list[AuthzRule] = []
    for index, rule in enumerate(rules or ()):
        where = f"spec.rules[{index}]"
        try:
            compiled.append(build_rule(rule, where, namespace))
        except AuthzSpecError as error:
            if on_error is None:
                raise
            on_error(error)
            compiled.append(AuthzRule(broken=str(error)))
    return AuthorizationPolicy(
        name=name,
        namespace=namespace,
        action=verb,
        rules=tuple(compiled),
        selector=MappingProxyType(dict(selector)) if selector else None,
        provider=provider,
        dry_run=dry_run,
        target_refs=target_refs,
        order=order,
    )


@dataclass(frozen=True, slots=True)
class AuthorizationPolicySet:
    """Every compiled AuthorizationPolicy of the configuration, in load order."""

    policies: tuple[AuthorizationPolicy, ...] = ()
    root_namespace: str = DEFAULT_ROOT_NAMESPACE

    def policies_for(
        self, namespace: str, labels: Mapping[str, str]
    ) -> tuple[AuthorizationPolicy, ...]:
        """The policies that apply to a workload: root-namespace ones mesh-wide, the
        workload namespace's ones, each only if its selector labels are a subset of
        ``labels``. Policies with ``targetRef(s)`` are for gateways and never apply."""
        root = self.root_namespace
        return tuple(p for p in self.policies if p.selects(namespace, labels, root))


# ------------------------------------------------------------------------------ decisions
@dataclass(frozen=True, slots=True)
class PolicyMatch:
    policy: str
    """``namespace/name``."""
    action: Action
    rule: int


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    action: Action | None = None
    """The action that decided; ``None`` when no policy applies (allowed by default)."""
    policy: str = ""
    """``namespace/name`` of the deciding policy, empty when none decided."""
    rule: int | None = None
    reason: str = ""
    audit: tuple[PolicyMatch, ...] = ()
    """AUDIT policies that matched (for the access log)."""
    dry_run: tuple[PolicyMatch, ...] = ()
    """Dry-run policies that matched."""
    dry_run_allowed: bool | None = None
    """The decision had the dry-run policies been enforced; ``None`` with no dry-run policy."""
    bad_path: bool = False
    """The path was rejected by normalization (``%00``): answer 400, not 403."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """How one selected policy fared against a request."""

    policy: str
    action: Action
    rule: int
    """Index of the first matching rule; -1 when no rule matches."""
    dry_run: bool = False


_ALLOW_BY_DEFAULT = Decision(True, None, reason="no ALLOW policy applies")
_NO_ALLOW_MATCHED = Decision(False, Action.ALLOW, reason="no ALLOW policy matched")
_BAD_PATH = Decision(False, None, reason="path rejected by normalization", bad_path=True)
_REASONS = {
    Action.CUSTOM: "denied by the CUSTOM provider",
    Action.DENY: "matched DENY",
    Action.ALLOW: "matched ALLOW",
    Action.AUDIT: "matched AUDIT",
}


def _decision(policy: AuthorizationPolicy, rule: int) -> Decision:
    action = policy.action
    reason = _REASONS[action]
    if action is Action.CUSTOM:
        reason = f"denied by CUSTOM provider {policy.provider!r}"
    return Decision(action is Action.ALLOW, action, policy.ref, rule, reason)


class Authorizer:
    """Decides inbound requests for one workload against its selected policies.

    ``custom_providers`` maps a CUSTOM provider name to a callable answering ``True`` (allow)
    or ``False`` (deny). A CUSTOM policy without one raises ``ValueError`` here, unless
    ``on_missing_provider="deny"``: then a request it matches is denied, as Envoy's ext-authz
    denies when its service is unreachable. Paths are case-sensitive as in Istio unless
    ``case_insensitive_paths`` (for backends that fold case: both sides lower-cased).
    """

    __slots__ = (
        "_allow",
        "_audit",
        "_case_insensitive",
        "_custom",
        "_deny",
        "_dry_allow",
        "_dry_audit",
        "_dry_custom",
        "_dry_deny",
        "_has_allow",
        "_identities",
        "_ips",
        "_normalization",
        "_providers",
        "_reports",
        "policies",
    )

    def __init__(
        self,
        policies: Iterable[AuthorizationPolicy],
        path_normalization: PathNormalization = DEFAULT_PATH_NORMALIZATION,
        *,
        custom_providers: Mapping[str, Callable[[AuthzRequest], bool]] | None = None,
        case_insensitive_paths: bool = False,
        on_missing_provider: Literal["raise", "deny"] = "raise",
    ) -> None:
        selected = tuple(policies)
        if case_insensitive_paths:
            selected = tuple(_fold_paths(p) for p in selected)
        self.policies = selected
        self._normalization = path_normalization
        self._identities: dict[str, tuple[str, str | None, str | None, str]] = {}
        self._case_insensitive = case_insensitive_paths
        providers = dict(custom_providers or {})
        for policy in selected:
            missing = policy.action is Action.CUSTOM and policy.provider not in providers
            if missing and on_missing_provider == "raise":
                raise ValueError(
                    f"AuthorizationPolicy {policy.ref} uses CUSTOM provider "
                    f"{policy.provider!r}, but no callable was given for it in "
                    "custom_providers"
                )
        self._providers = providers

        def pick(action: Action, dry: bool) -> tuple[AuthorizationPolicy, ...]:
            return tuple(p for p in selected if p.action is action and p.dry_run is dry)

        self._custom = _Plan(pick(Action.CUSTOM, False))
        self._deny = _Plan(pick(Action.DENY, False))
        self._allow = _Plan(pick(Action.ALLOW, False))
        self._audit = pick(Action.AUDIT, False)
        self._dry_custom = pick(Action.CUSTOM, True)
        self._dry_deny = pick(Action.DENY, True)
        self._dry_allow = pick(Action.ALLOW, True)
        self._dry_audit = pick(Action.AUDIT, True)
        self._has_allow = bool(self._allow.policies)
        self._reports = bool(
            self._audit or self._dry_custom or self._dry_deny or self._dry_allow or self._dry_audit
        )
        self._ips = any(
            check.fact in _IP_FACTS
            for policy in selected
            for rule in policy.rules
            for clause in (*rule.sources, *rule.operations, rule.conditions)
            for check in clause.checks
        )

    @property
    def path_normalization(self) -> PathNormalization:
        """The normalization ``check`` applies (inbound drivers forward the same path)."""
        return self._normalization

    def check(self, request: AuthzRequest) -> Decision:
        """The decision for one request (ISTIO-SEMANTICS 5.3)."""
        facts = self._facts(request)
        if facts is None:
            return _BAD_PATH
        http = request.http
        decision: Decision | None = None
        plan = self._custom
        if plan.policies:
            for index in plan.candidates(facts, http):
                policy = plan.policies[index]
                rule = _first_match(policy, facts, request, http)
                if rule < 0:
                    continue
                provider = self._providers.get(policy.provider or "")
                if provider is None or not provider(request):
                    decision = plan.decisions[index][rule]
                    break
        mode = 0 if http else 1
        plan = self._deny
        if decision is None and plan.policies:
            index, rule = _scan(plan.candidates(facts, http), plan.evaluation[mode], facts, request)
            if index >= 0:
                decision = plan.decisions[index][rule]
        if decision is None:
            plan = self._allow
            if not plan.policies:
                decision = _ALLOW_BY_DEFAULT
            else:
                index, rule = _scan(
                    plan.candidates(facts, http), plan.evaluation[mode], facts, request
                )
                decision = plan.decisions[index][rule] if index >= 0 else _NO_ALLOW_MATCHED
        if self._reports:
            decision = self._report(decision, facts, request, http)
        return decision

    def explain(self, request: AuthzRequest) -> tuple[Decision, tuple[Explanation, ...]]:
        """The decision and, for every selected policy, whether and by which rule it
        matches (for ``meshlib explain authz``; not for the hot path)."""
        decision = self.check(request)
        facts = self._facts(request)
        if facts is None:
            return decision, ()
        return decision, tuple(
            Explanation(p.ref, p.action, _first_match(p, facts, request, request.http), p.dry_run)
            for p in self.policies
        )

    def _report(
        self, decision: Decision, facts: list[Any], request: AuthzRequest, http: bool
    ) -> Decision:
        audit = tuple(_matches(self._audit, facts, request, http))
        if not (self._dry_custom or self._dry_deny or self._dry_allow or self._dry_audit):
            return replace(decision, audit=audit)
        dry_custom = _matches(self._dry_custom, facts, request, http)
        dry_deny = _matches(self._dry_deny, facts, request, http)
        dry_allow = _matches(self._dry_allow, facts, request, http)
        dry_audit = _matches(self._dry_audit, facts, request, http)
        # What enforcing the dry-run ALLOW and DENY policies as well would have decided.
        # Dry-run CUSTOM policies are only listed: their provider is never called.
        enforced_denial = decision.action in (Action.CUSTOM, Action.DENY)
        if dry_deny or (enforced_denial and not decision.allowed):
            shadow = False
        elif not self._has_allow and not self._dry_allow:
            shadow = True
        else:
            shadow = (decision.allowed and decision.action is Action.ALLOW) or bool(dry_allow)
        return replace(
            decision,
            audit=audit,
            dry_run=(*dry_custom, *dry_deny, *dry_allow, *dry_audit),
            dry_run_allowed=shadow,
        )

    def _facts(self, request: AuthzRequest) -> list[Any] | None:
        # One list per check, in the order of the _PRINCIPAL.._PRESENTER indices.
        peer = request.peer
        spiffe_id = peer.spiffe_id if peer is not None else None
        principal: str | None = None
        namespace: str | None = None
        service_account: str | None = None
        trust_domain: str | None = None
        if spiffe_id:
            identity = self._identities.get(spiffe_id)
            if identity is None:
                identity = _identity(spiffe_id)
                if len(self._identities) >= _IDENTITY_CACHE_SIZE:
                    self._identities.clear()
                self._identities[spiffe_id] = identity
            principal, namespace, service_account, trust_domain = identity
        path: str | None = None
        host = method = request_principal = None
        audiences: object = None
        presenter: object = None
        if request.http:
            path = normalize_path(request.path, self._normalization)
            if path is None:
                return None
            if self._case_insensitive:
                path = path.lower()
            host = request.host.lower()
            method = request.method
            request_principal = request.request_principal
            claims = request.claims
            if claims:
                audiences = _claim(claims, ("aud",))
                presenter = _claim(claims, ("azp",))
        source = remote = destination = None
        if self._ips:
            source = _ip(request.source_ip)
            remote = source if request.remote_ip is None else _ip(request.remote_ip)
            destination = _ip(request.destination_ip)
        return [
            principal,
            namespace,
            service_account,
            trust_domain,
            request_principal,
            source,
            remote,
            destination,
            host,
            request.port,
            method,
            path,
            request.sni,
            audiences,
            presenter,
        ]


def _identity(spiffe_id: str) -> tuple[str, str | None, str | None, str]:
    """``(principal, namespace, "ns/sa", trust domain)`` of a SPIFFE ID."""
    principal = spiffe_id.removeprefix("spiffe://")
    parts = principal.split("/")
    namespace = service_account = None
    for index in range(1, len(parts) - 1):
        if parts[index] == "ns" and namespace is None:
            namespace = parts[index + 1]
        elif parts[index] == "sa" and service_account is None:
            service_account = parts[index + 1]
    pair = f"{namespace}/{service_account}" if namespace and service_account else None
    return principal, namespace, pair, parts[0]


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text:
        return None
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _fold_paths(policy: AuthorizationPolicy) -> AuthorizationPolicy:
    def fold(clause: Clause) -> Clause:
        checks = []
        for original in clause.checks:
            check = original
            if check.fact == _PATH:
                m = check.matcher
                check = replace(
                    check,
                    matcher=ValueMatcher(
                        exact=frozenset(str(v).lower() for v in m.exact),
                        prefixes=tuple(v.lower() for v in m.prefixes),
                        suffixes=tuple(v.lower() for v in m.suffixes),
                        presence=m.presence,
                        templates=tuple(
                            re.compile(t.pattern, t.flags | re.IGNORECASE) for t in m.templates
                        ),
                    ),
                )
            checks.append(check)
        return Clause(tuple(checks))

    rules = tuple(
        replace(rule, operations=tuple(fold(c) for c in rule.operations)) for rule in policy.rules
    )
    return replace(policy, rules=rules)


def _matches(
    policies: Iterable[AuthorizationPolicy], facts: list[Any], request: AuthzRequest, http: bool
) -> list[PolicyMatch]:
    found: list[PolicyMatch] = []
    for policy in policies:
        rule = _first_match(policy, facts, request, http)
        if rule >= 0:
            found.append(PolicyMatch(policy.ref, policy.action, rule))
    return found


def _first_match(
    policy: AuthorizationPolicy, facts: list[Any], request: AuthzRequest, http: bool
) -> int:
    """Index of the first rule of ``policy`` that matches, or -1."""
    return _scan((0,), (policy.evaluation[0 if http else 1],), facts, request)[1]


def _scan(
    positions: Iterable[int],
    evaluations: Sequence[_PolicySteps],
    facts: list[Any],
    request: AuthzRequest,
) -> tuple[int, int]:
    """``(position, rule)`` of the first policy among ``positions`` with a matching rule.

    One flat loop on purpose: it runs over every candidate policy of every request, and a
    Python call per policy or per clause would cost more than the matching itself.
    """
    for position in positions:
        index = -1
        for groups in evaluations[position]:
            index += 1
            if groups is None:
                continue
            matched = True
            for alternatives in groups:
                for steps in alternatives:
                    for fact, kind, data, negated, key in steps:
                        if fact < _FACT_COUNT:
                            value = facts[fact]
                        elif fact == _HEADER:
                            headers = request.headers
                            value = headers.get(key[0]) if headers is not None else None
                        else:
                            value = _claim(request.claims, key)
                        if kind == _OP_EXACT:
                            hit = value in data
                        elif kind == _OP_PREFIX:
                            hit = value is not None and value.startswith(data)
                        elif kind == _OP_SUFFIX:
                            hit = value is not None and value.endswith(data)
                        elif kind == _OP_MATCHER or not isinstance(value, list):
                            hit = data.matches(value)
                        else:
                            hit = any(data.matches(item) for item in value)
                        if hit is negated:
                            break
                    else:
                        break  # every step of this clause holds
                else:
                    matched = False  # no clause of this group holds
                    break
            if matched:
                return position, index
    return -1, -1


def _claim(claims: Mapping[str, Any] | None, path: tuple[str, ...]) -> object:
    value: object = claims
    for name in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(name)
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return [item for item in value if isinstance(item, str)]
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return None


# Guard facts, most selective first; lists (audiences) and CIDRs never guard.
_GUARD_FACTS = (
    _PRINCIPAL,
    _SERVICE_ACCOUNT,
    _REQUEST_PRINCIPAL,
    _PATH,
    _NAMESPACE,
    _HOST,
    _SNI,
    _PORT,
    _TRUST_DOMAIN,
    _PRESENTER,
    _METHOD,
)


_Guard = tuple[frozenset[object], frozenset[str]]
"""Exact values and prefixes, one of which the fact must match."""
_HERE = ""
"""Trie key of the policies whose prefix ends at a node (characters are never empty)."""


def _required(clause: Clause) -> dict[int, _Guard]:
    found: dict[int, _Guard] = {}
    for c in clause.checks:
        m = c.matcher
        if c.negated or c.fact not in _GUARD_FACTS or c.fact in found:
            continue
        if m.suffixes or m.presence or m.templates or m.networks:
            continue
        found[c.fact] = (m.exact, frozenset(m.prefixes))
    return found


def _rule_guards(rule: AuthzRule) -> dict[int, _Guard]:
    """Facts that must match an exact value or a prefix for ``rule`` to match (over HTTP)."""
    if rule.broken:
        return {}
    guards = _required(rule.conditions)
    for clauses in (rule.sources, rule.operations):
        if not clauses:
            continue
        common = _required(clauses[0])
        for clause in clauses[1:]:
            other = _required(clause)
            common = {
                f: (v[0] | other[f][0], v[1] | other[f][1]) for f, v in common.items() if f in other
            }
        for fact, guard in common.items():
            guards.setdefault(fact, guard)
    return guards


def _policy_guard(policy: AuthorizationPolicy) -> tuple[int, _Guard] | None:
    if not policy.rules:
        return None
    per_rule = [_rule_guards(rule) for rule in policy.rules]
    usable: list[tuple[int, _Guard]] = []
    for fact in _GUARD_FACTS:
        if all(fact in guards for guards in per_rule):
            exact = frozenset[object]().union(*(g[fact][0] for g in per_rule))
            prefixes = frozenset[str]().union(*(g[fact][1] for g in per_rule))
            usable.append((fact, (exact, prefixes)))
    # An exact-only guard is a single dict lookup: prefer it to a prefix walk.
    for fact, guard in usable:
        if not guard[1]:
            return fact, guard
    return usable[0] if usable else None


_Table = tuple[int, dict[object, tuple[int, ...]], dict[str, Any] | None]
"""A fact, its exact values -> policy indices, and a trie of its prefixes (or ``None``)."""


class _Plan:
    """The policies of one action, indexed so a check visits only those that can match.

    A policy whose every rule requires one request fact (a principal, a path, a method...) to
    equal one of some values or start with one of some prefixes is filed under them (a dict
    for values, a character trie for prefixes); the others are always visited. The visit
    keeps the policies' order, so the reported policy is the same as with a plain scan.
    """

    __slots__ = ("_all", "_http", "_tcp", "decisions", "evaluation", "policies")

    def __init__(self, policies: tuple[AuthorizationPolicy, ...]) -> None:
        self.policies = policies
        # Decisions are values: built once here, never per request.
        self.decisions = tuple(
            tuple(_decision(policy, rule) for rule in range(len(policy.rules)))
            for policy in policies
        )
        self.evaluation = (
            tuple(p.evaluation[0] for p in policies),
            tuple(p.evaluation[1] for p in policies),
        )
        self._all = range(len(policies))
        guards = [_policy_guard(policy) for policy in policies]
        self._http = self._index(guards)
        # Over TCP a DENY/AUDIT/CUSTOM policy ignores its HTTP fields: no HTTP guard then.
        self._tcp = self._index(
            [
                None
                if guard is None or (guard[0] in _HTTP_FACTS and policy.action is not Action.ALLOW)
                else guard
                for policy, guard in zip(policies, guards, strict=True)
            ]
        )

    @staticmethod
    def _index(
        guards: Sequence[tuple[int, _Guard] | None],
    ) -> tuple[tuple[int, ...], tuple[_Table, ...]] | None:
        if all(guard is None for guard in guards):
            return None
        always = tuple(i for i, guard in enumerate(guards) if guard is None)
        exact: dict[int, dict[object, list[int]]] = {}
        tries: dict[int, dict[str, Any]] = {}
        for index, guard in enumerate(guards):
            if guard is None:
                continue
            fact, (values, prefixes) = guard
            table = exact.setdefault(fact, {})
            for value in values:
                table.setdefault(value, []).append(index)
            for prefix in prefixes:
                node = tries.setdefault(fact, {})
                for char in prefix:
                    node = node.setdefault(char, {})
                node.setdefault(_HERE, []).append(index)
        tables = tuple(
            (fact, {v: tuple(i) for v, i in table.items()}, tries.get(fact))
            for fact, table in exact.items()
        )
        return always, tables

    def candidates(self, facts: list[Any], http: bool) -> Sequence[int]:
        """Indices of the policies worth evaluating, in order."""
        plan = self._http if http else self._tcp
        if plan is None:
            return self._all
        always, tables = plan
        picked: list[int] = []
        for fact, table, trie in tables:
            value = facts[fact]
            hit = table.get(value)
            if hit is not None:
                picked += hit
            if trie is not None and isinstance(value, str):
                node: Any = trie
                for char in value:
                    node = node.get(char)
                    if node is None:
                        break
                    here = node.get(_HERE)
                    if here is not None:
                        picked += here
        if not picked:
            return always
        if always:
            picked += always
        # A policy can be reached through several prefixes or values: visit it once.
        return sorted(set(picked)) if len(picked) > 1 else picked

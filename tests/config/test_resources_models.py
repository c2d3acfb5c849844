"""Structural guarantees of the edge models (validated by pydantic-core)."""

from __future__ import annotations

import typing

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic_core import ValidationError

from meshlib._config import resources as r
from meshlib._config import resources_security
from meshlib._config.edge import EdgeModel

MODELS = sorted(
    (
        obj
        for module in (r, resources_security)  # the security kinds' models live apart
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, EdgeModel)
        and obj.__module__ == module.__name__
    ),
    key=lambda m: m.__name__,
)
SPECS = [m for m in MODELS if not issubclass(m, (r.Resource, r.ObjectMeta)) and m is not r._Model]


def test_every_model_is_exported() -> None:
    public = {m.__name__ for m in MODELS if not m.__name__.startswith("_")}
    assert public <= set(r.__all__)
    # ``resources`` names the security models without importing them: the lists must agree.
    assert set(resources_security.__all__) == r._SECURITY_NAMES


@pytest.mark.parametrize("model", SPECS, ids=lambda m: m.__name__)
def test_every_field_optional_none_and_extra_forbidden(model: type[EdgeModel]) -> None:
    for name, info in model.model_fields.items():
        assert info.default is None, name
        assert info.alias == r.camel(name), name
    assert model.model_validate({}) == model()


@pytest.mark.parametrize("model", SPECS, ids=lambda m: m.__name__)
def test_unknown_field_rejected(model: type[EdgeModel]) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate({"noSuchField": 1})
    assert caught.value.errors()[0]["type"] == "unexpected_keyword_argument"


@pytest.mark.parametrize(
    ("snake", "camel"),
    [
        ("consecutive_5xx_errors", "consecutive5xxErrors"),
        ("http1_max_pending_requests", "http1MaxPendingRequests"),
        ("h2_upgrade_policy", "h2UpgradePolicy"),
        ("from_", "from"),
        ("export_to", "exportTo"),
        ("host", "host"),
    ],
)
def test_camel(snake: str, camel: str) -> None:
    assert r.camel(snake) == camel


def test_snake_case_names_accepted_too() -> None:
    od = r.OutlierDetection.model_validate({"consecutive_5xx_errors": 3, "baseEjectionTime": "1s"})
    assert od.consecutive_5xx_errors == 3
    assert od.base_ejection_time == "1s"


def test_absent_stays_distinct_from_zero() -> None:
    assert r.HTTPSettings.model_validate({}).max_retries is None
    assert r.HTTPSettings.model_validate({"maxRetries": 0}).max_retries == 0
    assert (
        r.OutlierDetection.model_validate({"consecutive5xxErrors": 0}).consecutive_5xx_errors == 0
    )


@pytest.mark.parametrize(
    ("value", "expected"), [(5, 5), ("5", 5), (" 7 ", 7), ("-3", -3), ("+4", 4), (0, 0)]
)
def test_int32_accepts_ints_and_numeric_strings(value: object, expected: int) -> None:
    assert r.HTTPRouteDestination.model_validate({"weight": value}).weight == expected


@pytest.mark.parametrize(
    ("model", "field", "value", "message"),
    [
        (r.HTTPRouteDestination, "weight", True, "expected an integer"),
        (r.HTTPRouteDestination, "weight", 1.5, "expected an integer"),
        (r.HTTPRouteDestination, "weight", "ten", "expected an integer"),
        (
            r.HTTPRouteDestination,
            "weight",
            2**31,
            "expected an integer between -2147483648 and 2147483647",
        ),
        (
            r.OutlierDetection,
            "consecutive5xxErrors",
            -1,
            "expected an integer between 0 and 4294967295",
        ),
        (
            r.RingHash,
            "minimumRingSize",
            2**64,
            "expected an integer between 0 and 18446744073709551615",
        ),
        (r.Percent, "value", "abc", "expected a number"),
        (r.Percent, "value", True, "expected a number"),
        (r.Percent, "value", [], "expected a number"),
        (r.Percent, "value", "inf", "expected a finite number"),
    ],
)
def test_numbers_are_strict(
    model: type[EdgeModel], field: str, value: object, message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate({field: value})
    error = caught.value.errors()[0]
    assert str(error["ctx"]["error"]) == message


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_percent_value_accepts_any_finite_double(value: float) -> None:
    assert r.Percent.model_validate({"value": value}).value == value
    assert r.Percent.model_validate({"value": repr(value)}).value == value


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_uint32_round_trip(value: int) -> None:
    assert r.PortSelector.model_validate({"number": value}).number == value
    assert r.PortSelector.model_validate({"number": str(value)}).number == value


def test_booleans_are_strict() -> None:
    assert r.HTTPMatchRequest.model_validate({"ignoreUriCase": True}).ignore_uri_case is True
    with pytest.raises(ValidationError):
        r.HTTPMatchRequest.model_validate({"ignoreUriCase": "yes"})


def test_enums_are_proto_names_only() -> None:
    assert r.LoadBalancerSettings.model_validate({"simple": "ROUND_ROBIN"}).simple == "ROUND_ROBIN"
    for bad in ("round_robin", 4):
        with pytest.raises(ValidationError):
            r.LoadBalancerSettings.model_validate({"simple": bad})


def test_literal_values_follow_the_proto() -> None:
    def literal(model: type[EdgeModel], field: str) -> set[str]:
        annotation = model.model_fields[field].annotation
        (inner, _none) = typing.get_args(annotation)
        return set(typing.get_args(inner))

    assert literal(r.ClientTLSSettings, "mode") == {"DISABLE", "SIMPLE", "MUTUAL", "ISTIO_MUTUAL"}
    assert literal(r.MutualTLS, "mode") == {"UNSET", "DISABLE", "PERMISSIVE", "STRICT"}
    assert literal(r.AuthorizationPolicySpec, "action") == {"ALLOW", "DENY", "AUDIT", "CUSTOM"}
    assert literal(r.ServiceEntrySpec, "resolution") == {
        "NONE",
        "STATIC",
        "DNS",
        "DNS_ROUND_ROBIN",
        "DYNAMIC_DNS",
    }
    assert literal(r.HTTPSettings, "h2_upgrade_policy") == {
        "DEFAULT",
        "DO_NOT_UPGRADE",
        "UPGRADE",
    }


def test_port_level_mtls_keys_accept_ints_and_strings() -> None:
    spec = r.PeerAuthenticationSpec.model_validate(
        {"portLevelMtls": {8080: {"mode": "DISABLE"}, "9090": {}}}
    )
    assert spec.port_level_mtls == {8080: r.MutualTLS(mode="DISABLE"), 9090: r.MutualTLS()}


def test_rule_from_keyword_alias() -> None:
    rule = r.Rule.model_validate({"from": [{"source": {"principals": ["a"]}}]})
    assert rule.from_ is not None
    assert rule.from_[0].source == r.Source(principals=["a"])
    assert r.LocalityFailover.model_validate({"from": "us", "to": "eu"}).from_ == "us"


def test_selectors_differ_between_networking_and_security() -> None:
    assert r.WorkloadSelector.model_validate({"matchLabels": {"a": "b"}}).match_labels == {"a": "b"}
    assert r.NetworkingWorkloadSelector.model_validate({"labels": {"a": "b"}}).labels == {"a": "b"}
    with pytest.raises(ValidationError):
        r.NetworkingWorkloadSelector.model_validate({"matchLabels": {"a": "b"}})


# Field lists checked against istio/api (networking/v1alpha3, security/v1beta1, type/v1beta1).
PROTO_FIELDS: dict[type[EdgeModel], set[str]] = {
    r.VirtualServiceSpec: {"hosts", "gateways", "http", "tls", "tcp", "exportTo"},
    r.HTTPRoute: {
        "name", "match", "route", "redirect", "directResponse", "delegate", "rewrite", "timeout",
        "retries", "fault", "mirror", "mirrors", "mirrorPercent", "mirrorPercentage",
        "corsPolicy", "headers",
    },
    r.HTTPMatchRequest: {
        "name", "uri", "scheme", "method", "authority", "headers", "port", "sourceLabels",
        "gateways", "queryParams", "ignoreUriCase", "withoutHeaders", "sourceNamespace",
        "statPrefix",
    },
    r.HTTPRetry: {
        "attempts", "perTryTimeout", "retryOn", "retryRemoteLocalities",
        "retryIgnorePreviousHosts", "backoff",
    },
    r.Delay: {"percent", "fixedDelay", "exponentialDelay", "percentage"},
    r.Abort: {"httpStatus", "grpcStatus", "http2Error", "percentage"},
    r.HTTPRedirect: {
        "uri", "authority", "port", "derivePort", "scheme", "redirectCode", "prefixRewrite",
    },
    r.CorsPolicy: {
        "allowOrigin", "allowOrigins", "allowMethods", "allowHeaders", "exposeHeaders", "maxAge",
        "allowCredentials", "unmatchedPreflights",
    },
    r.DestinationRuleSpec: {"host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"},
    r.TrafficPolicy: {
        "loadBalancer", "connectionPool", "outlierDetection", "tls", "portLevelSettings",
        "tunnel", "proxyProtocol", "retryBudget",
    },
    r.LoadBalancerSettings: {
        "simple", "consistentHash", "localityLbSetting", "zoneAwareLbSetting",
        "warmupDurationSecs", "warmup",
    },
    r.ConsistentHashLB: {
        "httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName", "ringHash",
        "maglev", "minimumRingSize",
    },
    r.TCPSettings: {
        "maxConnections", "connectTimeout", "tcpKeepalive", "maxConnectionDuration", "idleTimeout",
    },
    r.HTTPSettings: {
        "http1MaxPendingRequests", "http2MaxRequests", "maxRequestsPerConnection", "maxRetries",
        "idleTimeout", "h2UpgradePolicy", "useClientProtocol", "maxConcurrentStreams",
        "http2KeepAlive",
    },
    r.OutlierDetection: {
        "consecutiveErrors", "splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures",
        "consecutiveGatewayErrors", "consecutive5xxErrors", "interval", "baseEjectionTime",
        "maxEjectionPercent", "minHealthPercent", "outlierDetectionHttpErrorCodes",
    },
    r.ClientTLSSettings: {
        "mode", "clientCertificate", "privateKey", "caCertificates", "credentialName",
        "subjectAltNames", "sni", "insecureSkipVerify", "caCrl",
    },
    r.ServiceEntrySpec: {
        "hosts", "addresses", "ports", "location", "resolution", "endpoints",
        "workloadSelector", "exportTo", "subjectAltNames",
    },
    r.WorkloadEntrySpec: {
        "address", "ports", "labels", "network", "locality", "weight", "serviceAccount",
    },
    r.PeerAuthenticationSpec: {"selector", "mtls", "portLevelMtls"},
    r.AuthorizationPolicySpec: {
        "selector", "targetRef", "targetRefs", "rules", "action", "provider",
    },
    r.Source: {
        "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
        "notNamespaces", "serviceAccounts", "notServiceAccounts", "ipBlocks", "notIpBlocks",
        "remoteIpBlocks", "notRemoteIpBlocks", "trustDomains", "notTrustDomains",
    },
    r.Operation: {
        "hosts", "notHosts", "ports", "notPorts", "methods", "notMethods", "paths", "notPaths",
    },
    r.Condition: {"key", "values", "notValues"},
}  # fmt: skip


@pytest.mark.parametrize("model", list(PROTO_FIELDS), ids=lambda m: m.__name__)
def test_field_lists_match_the_protos(model: type[EdgeModel]) -> None:
    assert {info.alias for info in model.model_fields.values()} == PROTO_FIELDS[model]


def test_resource_envelope_tolerates_kubernetes_metadata() -> None:
    doc = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {
            "name": "a",
            "namespace": "b",
            "uid": "u",
            "resourceVersion": "1",
            "generation": 2,
            "creationTimestamp": "2024-01-01T00:00:00Z",
            "managedFields": [{"manager": "kubectl"}],
            "finalizers": ["x"],
            "ownerReferences": [{"kind": "Thing"}],
        },
        "spec": {"hosts": ["a"]},
        "status": {"anything": ["goes"]},
    }
    model = r.RESOURCE_MODELS["VirtualService"].model_validate(doc)
    assert isinstance(model.spec, r.VirtualServiceSpec)
    assert model.metadata.resource_version == "1"
    assert "status" not in model.model_dump()


@pytest.mark.parametrize("spec", [None, {}])
def test_null_or_empty_spec_is_an_empty_spec(spec: object) -> None:
    doc = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": None,
        "spec": spec,
    }
    model = r.RESOURCE_MODELS["AuthorizationPolicy"].model_validate(doc)
    assert model.spec == r.AuthorizationPolicySpec()
    assert model.metadata == r.ObjectMeta()


def test_metadata_typos_are_caught() -> None:
    with pytest.raises(ValidationError):
        r.ObjectMeta.model_validate({"namspace": "x"})


def test_api_versions_cover_one_schema_per_group() -> None:
    assert r.API_VERSIONS["VirtualService"] == {
        "networking.istio.io/v1",
        "networking.istio.io/v1beta1",
        "networking.istio.io/v1alpha3",
    }
    assert r.API_VERSIONS["AuthorizationPolicy"] == {
        "security.istio.io/v1",
        "security.istio.io/v1beta1",
    }
    assert set(r.API_VERSIONS) == set(r.RESOURCE_MODELS)


def test_envelope_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError) as caught:
        r.RESOURCE_MODELS["VirtualService"].model_validate(["not", "a", "mapping"])
    assert caught.value.errors()[0]["type"] == "dataclass_type"


def test_resource_models_map_every_kind_and_load_the_security_ones_on_lookup() -> None:
    assert list(r.RESOURCE_MODELS) == list(r.API_VERSIONS)
    assert len(r.RESOURCE_MODELS) == len(r.API_VERSIONS)
    assert r.RESOURCE_MODELS["AuthorizationPolicy"] is resources_security.AuthorizationPolicy
    assert r.RESOURCE_MODELS["ServiceEntry"] is r.ServiceEntry
    assert "Gateway" not in r.RESOURCE_MODELS
    with pytest.raises(KeyError):
        r.RESOURCE_MODELS["Gateway"]


def test_security_names_resolve_on_the_resources_module() -> None:
    assert r.Source is resources_security.Source
    assert r.PolicyTargetReference is resources_security.PolicyTargetReference
    assert typing.get_args(r.SpecModel)[-2:] == (
        resources_security.PeerAuthenticationSpec,
        resources_security.AuthorizationPolicySpec,
    )
    with pytest.raises(AttributeError, match="NoSuchModel"):
        _ = r.NoSuchModel  # type: ignore[attr-defined]

"""VirtualService rules (ISTIO-SEMANTICS 1.1-1.10): exact messages and field paths."""

# Tables of exact istiod-style messages read best one case per line.
# ruff: noqa: E501

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Issues

DEST = {"destination": {"host": "reviews"}}


def vs(**route: Any) -> dict[str, Any]:
    """A one-route VirtualService for ``reviews``; keyword arguments extend the route."""
    http: dict[str, Any] = {"route": [DEST]}
    http.update(route)
    return {"hosts": ["reviews"], "http": [http]}


def test_valid_service_has_no_issue(errors: Issues, warnings: Issues) -> None:
    assert errors("VirtualService", vs()) == []
    assert warnings("VirtualService", vs()) == []


TOP_LEVEL = [
    (
        {"gateways": ["mesh"], "http": [{"route": [DEST]}]},
        [("spec.gateways", "delegate virtual service must have no gateways specified")],
    ),
    (
        {"tcp": [{"route": [DEST]}]},
        [("spec.tcp", "delegate virtual service must have no tcp route specified")],
    ),
    (
        {"tls": [{"match": [{"sniHosts": ["a.com"]}], "route": [DEST]}]},
        [
            ("spec.tls", "delegate virtual service must have no tls route specified"),
            (
                "spec.tls[0].match[0].sniHosts[0]",
                'SNI host "a.com" is not a compatible subset of any of the virtual service '
                "hosts: []",
            ),
        ],
    ),
    ({"hosts": ["reviews"]}, [("spec", "http, tcp or tls must be provided in virtual service")]),
    (
        {"hosts": ["*"], "http": [{"route": [DEST]}]},
        [
            (
                "spec.hosts[0]",
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            )
        ],
    ),
    (
        {"hosts": ["bad_host", "10.0.0.1"], "http": [{"route": [DEST]}]},
        [("spec.hosts[0]", 'domain name "bad_host" invalid (label "bad_host" invalid)')],
    ),
    (
        {"hosts": ["a.b.com", "*.b.com", "c.com"], "http": [{"route": [DEST]}]},
        [("spec.hosts[1]", "duplicate hosts in virtual service: a.b.com & *.b.com")],
    ),
    (
        {"hosts": ["*.b.com", "*.com"], "http": [{"route": [DEST]}]},
        [("spec.hosts[1]", "duplicate hosts in virtual service: *.b.com & *.com")],
    ),
    (
        {"hosts": ["a.com", "a.com."], "http": [{"route": [DEST]}]},
        [],
    ),
    (
        {"hosts": ["x." + "a" * 260], "http": [{"route": [DEST]}]},
        [("spec.hosts[0]", f'domain name "x.{"a" * 260}" too long (max 255)')],
    ),
    (
        {"hosts": ["a.123"], "http": [{"route": [DEST]}]},
        [
            (
                "spec.hosts[0]",
                # istiod names the part after the first label
                'domain name "123" invalid (top level domain "123" cannot be all-numeric)',
            )
        ],
    ),
    (
        {"hosts": ["a.b_c.com"], "http": [{"route": [DEST]}]},
        [("spec.hosts[0]", 'domain name "b_c.com" invalid (label "b_c" invalid)')],
    ),
    (
        {"hosts": ["reviews"], "gateways": ["bad/Gw_1", "/x", "ns.gw"], "http": [{"route": [DEST]}]},
        [
            ("spec.gateways[0]", 'invalid value for gateway name: "Gw_1"'),
            ("spec.gateways[1]", "config namespace and gateway name cannot be empty"),
            ("spec.gateways[1]", 'invalid value for namespace: ""'),
        ],
    ),
    (
        {"hosts": ["reviews"], "gateways": ["bad_ns/gw", "mesh"], "http": [{"route": [DEST]}]},
        [("spec.gateways[0]", 'invalid value for namespace: "bad_ns"')],
    ),
    (
        {"hosts": ["reviews"], "http": [{"route": [DEST]}], "exportTo": ["default", "."]},
        [("spec.exportTo[1]", "duplicate entries in exportTo: . and current namespace default")],
    ),
    (
        {"hosts": ["reviews"], "http": [{"route": [DEST]}], "exportTo": [".", "default"]},
        [("spec.exportTo[1]", "duplicate entries in exportTo for entry default")],
    ),
    (
        {"hosts": ["reviews"], "http": [{"route": [DEST]}], "exportTo": ["a", "a", "*"]},
        [
            ("spec.exportTo[1]", "duplicate entries in exportTo for entry a"),
            ("spec.exportTo", "cannot have both public (*) and non-public exportTo values for a resource"),
        ],
    ),
    (
        {"hosts": ["reviews"], "http": [{"route": [DEST]}], "exportTo": ["~", "Bad_Ns"]},
        [
            ("spec.exportTo[0]", "exportTo ~ (none) is not allowed for Istio configuration objects"),
            ("spec.exportTo[1]", "only .,*, or a valid DNS 1123 label is allowed as exportTo entry"),
        ],
    ),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "expected"), TOP_LEVEL)
def test_top_level(errors: Issues, spec: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errors("VirtualService", spec) == expected


def test_legacy_gateway_name_warns(warnings: Issues, errors: Issues) -> None:
    spec = {
        "hosts": ["reviews"],
        "gateways": ["gw.istio-system", "mesh"],
        "http": [{"route": [DEST]}],
    }
    assert errors("VirtualService", spec) == []
    assert warnings("VirtualService", spec) == [
        (
            "spec.gateways[0]",
            'using legacy gatewayName format "gw.istio-system"; prefer the <namespace>/<name> '
            'format: "istio-system/gw"',
        )
    ]


def test_gateway_only_virtual_service_is_ignored(not_enforced: Issues, errors: Issues) -> None:
    spec = {"hosts": ["*"], "gateways": ["istio-system/ingress"], "http": [{"route": [DEST]}]}
    assert errors("VirtualService", spec) == []
    assert not_enforced("VirtualService", spec) == [
        ("spec.gateways", "bound to gateways only (no 'mesh'): ignored by meshlib")
    ]


def test_jwt_claim_routing_is_gateway_only(errors: Issues) -> None:
    match = {"headers": {"@request.auth.claims.group": {"exact": "a"}}}
    mesh = vs(match=[match])
    assert errors("VirtualService", mesh) == [
        (
            "spec.http[0].match[0].headers.@request.auth.claims.group",
            "JWT claim based routing (key: @request.auth.claims.group) is only supported for "
            "gateway, found no gateways: []",
        )
    ]
    gateway = dict(mesh, gateways=["istio-system/gw"])
    assert errors("VirtualService", gateway) == []


def test_unreachable_rule_warns(warnings: Issues) -> None:
    spec = {"hosts": ["reviews"], "http": [{"route": [DEST]}, {"route": [DEST]}, {"route": [DEST]}]}
    assert warnings("VirtualService", spec) == [
        (
            "spec.http[1]",
            "virtualService rule #1 not used (only the last rule can have no matches)",
        ),
        (
            "spec.http[2]",
            "virtualService rule #2 not used (only the last rule can have no matches)",
        ),
    ]


ACTIONS = [
    ({"redirect": {"uri": "/x"}}, [("spec.http[0]", "HTTP route cannot contain both route and redirect")]),
    (
        {"route": None, "redirect": {"uri": "/x"}, "fault": {"abort": {"httpStatus": 500}},
         "rewrite": {"uri": "/y"}, "directResponse": {"status": 200}},
        [
            ("spec.http[0]", "HTTP route cannot contain both fault and redirect"),
            ("spec.http[0]", "HTTP route rule cannot contain both rewrite and redirect"),
            ("spec.http[0]", "HTTP route rule cannot contain both directResponse and redirect"),
        ],
    ),
    (
        {"directResponse": {"status": 503}, "fault": {"abort": {"httpStatus": 500}},
         "rewrite": {"uri": "/y"}},
        [
            ("spec.http[0]", "HTTP route cannot contain both route and directResponse"),
            ("spec.http[0]", "HTTP route cannot contain both fault and directResponse"),
            ("spec.http[0]", "HTTP route rule cannot contain both rewrite and directResponse"),
        ],
    ),
    ({"route": []}, [("spec.http[0]", "HTTP route, redirect or directResponse is required")]),
    ({"route": None}, [("spec.http[0]", "HTTP route, redirect or directResponse is required")]),
    (
        {"mirror": {"host": "a"}, "mirrors": [{"destination": {"host": "b"}}]},
        [("spec.http[0]", "HTTP route cannot contain both mirror and mirrors")],
    ),
    (
        {"name": "root", "delegate": {"name": "d", "namespace": "n"}, "redirect": {"uri": "/x"}},
        [
            ("spec.http[0].redirect", "root HTTP route root must not specify redirect"),
            ("spec.http[0].route", "root HTTP route root must not specify route"),
        ],
    ),
    ({"route": None, "delegate": {"name": "d"}}, []),
]  # fmt: skip


@pytest.mark.parametrize(("route", "expected"), ACTIONS)
def test_exactly_one_action(
    errors: Issues, route: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("VirtualService", vs(**route)) == expected


def test_delegate_inside_delegate(errors: Issues) -> None:
    spec = {"http": [{"delegate": {"name": "d"}, "route": [DEST]}]}
    assert errors("VirtualService", spec) == [
        ("spec.http[0].delegate", "delegate HTTP route cannot contain delegate")
    ]


MATCHES = [
    ({"uri": {"prefix": ""}}, []),
    ({"uri": {"exact": "/a", "prefix": "/b"}}, [("spec.http[0].match[0].uri", "only one of exact, prefix or regex may be set")]),
    ({"scheme": {"prefix": ""}}, [("spec.http[0].match[0].scheme.prefix", "prefix string match should not be empty")]),
    ({"method": {"regex": ""}}, [("spec.http[0].match[0].method.regex", "regex string match should not be empty")]),
    ({"authority": {"regex": "a(?=b)"}}, [("spec.http[0].match[0].authority.regex", "invalid regex: '(?=' (lookahead) is not supported by RE2")]),
    ({"uri": {"regex": "/a" * 513}}, [("spec.http[0].match[0].uri.regex", "regex is too large, max length allowed is 1024")]),
    ({"headers": {"bad header": {"exact": "a"}}}, [("spec.http[0].match[0].headers.bad header", "header name bad header is not a valid header name")]),
    ({"headers": {":authority": {"exact": "a"}, "x-a": {}}}, []),
    ({"headers": {"x-a": {"regex": "*"}}}, [("spec.http[0].match[0].headers.x-a.regex", "invalid regex: nothing to repeat")]),
    ({"headers": {"": {"exact": "a"}}}, [("spec.http[0].match[0].headers.", "header name cannot be empty")]),
    ({"withoutHeaders": {"x-a": {"regex": "*"}}}, []),
    ({"withoutHeaders": {"x-a": {"prefix": ""}}}, [("spec.http[0].match[0].withoutHeaders.x-a.prefix", "prefix string match should not be empty")]),
    ({"withoutHeaders": {"x(a": {"exact": "b"}}}, [("spec.http[0].match[0].withoutHeaders.x(a", "header name x(a is not a valid header name")]),
    ({"queryParams": {"q": {"regex": "(a"}}}, [("spec.http[0].match[0].queryParams.q.regex", "invalid regex: missing ), unterminated subpattern")]),
    ({"port": 70000}, [("spec.http[0].match[0].port", "port number 70000 must be in the range 1..65535")]),
    ({"port": 0}, []),
    ({"sourceLabels": {"app": "a b", "bad key!": "x"}}, [
        ("spec.http[0].match[0].sourceLabels.app", 'invalid tag value: "a b"'),
        ("spec.http[0].match[0].sourceLabels.bad key!", 'invalid tag key: "bad key!"'),
    ]),
    ({"sourceLabels": {"example.com/" + "a" * 64: "x"}}, [
        (f"spec.http[0].match[0].sourceLabels.example.com/{'a' * 64}", f'invalid tag key: "example.com/{"a" * 64}" (name is too long)'),
    ]),
    ({"sourceLabels": {"a" * 254 + "/b": "x"}}, [
        (f"spec.http[0].match[0].sourceLabels.{'a' * 254}/b", f'invalid tag key: "{"a" * 254}/b" (DNS prefix is too long)'),
    ]),
    ({"gateways": ["ns/Bad_Gw"]}, [("spec.http[0].match[0].gateways[0]", 'invalid value for gateway name: "Bad_Gw"')]),
    ({"sourceNamespace": "Not_Valid"}, [("spec.http[0].match[0].sourceNamespace", "sourceNamespace match Not_Valid is invalid")]),
]  # fmt: skip


@pytest.mark.parametrize(("match", "expected"), MATCHES)
def test_match(errors: Issues, match: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errors("VirtualService", vs(match=[match])) == expected


DESTINATIONS = [
    ([{"destination": {"host": "*"}}], [("spec.http[0].route[0].destination.host", "invalid destination host *")]),
    ([{"destination": {"host": ""}}], [("spec.http[0].route[0].destination.host", "empty domain name not allowed")]),
    ([{"weight": 10}], [("spec.http[0].route[0].destination", "destination is required")]),
    ([{"destination": {"host": "a", "subset": "v_1", "port": {"number": 0}}}], [
        ("spec.http[0].route[0].destination.subset", "subset name is invalid: v_1"),
        ("spec.http[0].route[0].destination.port.number", "port number 0 must be in the range 1..65535"),
    ]),
    ([{"destination": {"host": "a", "subset": ""}}], []),
    ([{"destination": {"host": "a"}, "weight": -1}], [("spec.http[0].route[0].weight", "weight -1 < 0")]),
    ([{"destination": {"host": "a"}, "weight": 0}, {"destination": {"host": "b"}}], [("spec.http[0].route", "total destination weight = 0")]),
    ([{"destination": {"host": "a"}, "weight": 0}], []),
    ([{"destination": {"host": "a"}, "weight": 9}, {"destination": {"host": "b"}, "weight": 1}], []),
    ([{"destination": {"host": "a"}, "weight": 30}, {"destination": {"host": "b"}, "weight": 0}], []),
]  # fmt: skip


@pytest.mark.parametrize(("route", "expected"), DESTINATIONS)
def test_route_destinations(
    errors: Issues, route: list[Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("VirtualService", vs(route=route)) == expected


HEADERS = [
    ({"request": {"set": {":path": "/x"}}}, [("spec.http[0].headers.request.set.:path", 'invalid header ":path": header cannot have ":" prefix')]),
    ({"request": {"add": {"": "x"}}}, [("spec.http[0].headers.request.add.", "header name cannot be empty")]),
    ({"request": {"set": {"host": "a"}, "remove": ["Host", ":x", ""]}}, [
        ("spec.http[0].headers.request.remove[0]", 'invalid header "Host": cannot set Host header'),
        ("spec.http[0].headers.request.remove[1]", 'invalid header ":x": header cannot have ":" prefix'),
        ("spec.http[0].headers.request.remove[2]", "header name cannot be empty"),
    ]),
    ({"response": {"set": {"host": "a"}, "add": {"x": "a\nb"}}}, [
        ("spec.http[0].headers.response.set.host", 'invalid header "host": cannot set Host header'),
        ("spec.http[0].headers.response.add.x", "header value configuration a\nb is invalid"),
    ]),
    ({"request": {"set": {":authority": "a"}, "add": {"Host": "b"}}}, [
        ("spec.http[0].headers.request.add.Host", 'authority header cannot be set multiple times: have "a", attempting to set "b"'),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("headers", "expected"), HEADERS)
def test_header_operations(
    errors: Issues, headers: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("VirtualService", vs(headers=headers)) == expected


def test_destination_header_operations_and_authority_rewrite(errors: Issues) -> None:
    route = [{"destination": {"host": "a"}, "headers": {"response": {"remove": [":status"]}}}]
    spec = vs(
        route=route,
        rewrite={"authority": "x"},
        headers={"request": {"set": {"host": "y"}}},
    )
    assert errors("VirtualService", spec) == [
        ("spec.http[0].headers.request.set.host", 'authority header cannot be set multiple times: have "x", attempting to set "y"'),
        ("spec.http[0].route[0].headers.response.remove[0]", 'invalid header ":status": header cannot have ":" prefix'),
    ]  # fmt: skip


TIMEOUTS_AND_RETRIES = [
    ({"timeout": "0s"}, [("spec.http[0].timeout", "duration must be greater than 1ms")]),
    ({"timeout": "1.5ms"}, [("spec.http[0].timeout", "only durations to ms precision are supported")]),
    ({"timeout": "soon"}, [("spec.http[0].timeout", 'invalid duration "soon"')]),
    ({"timeout": "0.5s"}, []),
    ({"retries": {"attempts": -1}}, [("spec.http[0].retries.attempts", "attempts cannot be negative")]),
    ({"retries": {"retryOn": "5xx"}}, [("spec.http[0].retries", "http retry policy configured when attempts are set to 0 (disabled)")]),
    ({"retries": {"attempts": 0, "perTryTimeout": "1s"}}, [("spec.http[0].retries", "http retry policy configured when attempts are set to 0 (disabled)")]),
    ({"retries": {"attempts": 0, "retryRemoteLocalities": False}}, [("spec.http[0].retries", "http retry policy configured when attempts are set to 0 (disabled)")]),
    ({"retries": {"attempts": 0}}, []),
    ({"retries": {"attempts": 3, "retryOn": "5xx, reset"}}, [("spec.http[0].retries.retryOn", '" reset" is not a valid retryOn policy')]),
    ({"retries": {"attempts": 3, "retryOn": "5xx,"}}, [("spec.http[0].retries.retryOn", '"" is not a valid retryOn policy')]),
    ({"retries": {"attempts": 3, "retryOn": "503,599,retriable-4xx,unavailable"}}, [("spec.http[0].retries.retryOn", '"599" is not a valid retryOn policy')]),
    ({"retries": {"attempts": 3, "retryOn": "gateway-error,connect-failure,refused-stream,reset-before-request,cancelled,deadline-exceeded,internal,resource-exhausted,retriable-status-codes,retriable-headers,envoy-ratelimited,http3-post-connect-failure,reset,5xx,425"}}, []),
    ({"retries": {"attempts": 3, "perTryTimeout": "0.1ms", "backoff": "2.5ms"}}, [
        ("spec.http[0].retries.perTryTimeout", "duration must be greater than 1ms"),
        ("spec.http[0].retries.backoff", "only durations to ms precision are supported"),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("route", "expected"), TIMEOUTS_AND_RETRIES)
def test_timeout_and_retries(
    errors: Issues, route: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("VirtualService", vs(**route)) == expected


FAULTS = [
    ({}, [("spec.http[0].fault", "HTTP fault injection must have an abort and/or a delay")]),
    ({"delay": {"fixedDelay": "7s", "percentage": {"value": 100}}}, []),
    ({"delay": {"fixedDelay": "0s"}}, [("spec.http[0].fault.delay.fixedDelay", "duration must be greater than 1ms")]),
    ({"delay": {"fixedDelay": "1s", "percentage": {"value": 101}}}, [("spec.http[0].fault.delay.percentage.value", "percentage 101 is neither 0.0, nor in range [0.0001, 100.0]")]),
    ({"delay": {"exponentialDelay": "1s"}}, [("spec.http[0].fault.delay.exponentialDelay", "exponentialDelay not supported yet")]),
    ({"delay": {"fixedDelay": "1s", "exponentialDelay": "1s"}}, [("spec.http[0].fault.delay", "only one of fixedDelay or exponentialDelay may be set")]),
    ({"delay": {"fixedDelay": "1s", "percent": 120}}, [("spec.http[0].fault.delay.percent", "percentage 120 is not in range 0..100")]),
    ({"delay": {"fixedDelay": "1s", "percent": 120, "percentage": {"value": 1}}}, []),
    ({"delay": {"percentage": {}}}, []),
    ({"abort": {"httpStatus": 500, "percentage": {"value": 0.00001}}}, [("spec.http[0].fault.abort.percentage.value", "percentage 1e-05 is neither 0.0, nor in range [0.0001, 100.0]")]),
    ({"abort": {"httpStatus": 199}}, [("spec.http[0].fault.abort.httpStatus", "HTTP status 199 is not in range 200-599")]),
    ({"abort": {"httpStatus": 600}}, []),
    ({"abort": {"grpcStatus": "UNAVAILABLE"}}, []),
    ({"abort": {"grpcStatus": "14"}}, [("spec.http[0].fault.abort.grpcStatus", 'gRPC status "14" is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example \'NOT_FOUND\'')]),
    ({"abort": {"http2Error": "x"}}, [("spec.http[0].fault.abort.http2Error", "HTTP/2 abort fault injection not supported yet")]),
    ({"abort": {"httpStatus": 500, "grpcStatus": "OK"}}, [("spec.http[0].fault.abort", "only one of httpStatus, grpcStatus or http2Error may be set")]),
]  # fmt: skip


@pytest.mark.parametrize(("fault", "expected"), FAULTS)
def test_fault(errors: Issues, fault: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errors("VirtualService", vs(fault=fault)) == expected


def test_fault_warnings(warnings: Issues) -> None:
    assert warnings("VirtualService", vs(fault={"abort": {"percentage": {"value": 1}}})) == [
        ("spec.http[0].fault.abort", "abort configured, but error type not set")
    ]
    assert warnings("VirtualService", vs(fault={"delay": {"fixedDelay": "1s", "percent": 5}})) == [
        ("spec.http[0].fault.delay.percent", 'using deprecated setting "percent", use "percentage" instead')
    ]  # fmt: skip


MIRRORS = [
    ({"mirror": {"host": "*"}}, [("spec.http[0].mirror.host", "invalid destination host *")]),
    ({"mirrorPercentage": {"value": 101}}, [("spec.http[0].mirrorPercentage.value", "mirror_percentage must have a max value of 100 (it has 101.000000)")]),
    ({"mirrorPercentage": {"value": -1}}, [("spec.http[0].mirrorPercentage.value", "mirror_percentage must have a min value of 0 (it has -1.000000)")]),
    ({"mirrorPercent": 101}, [("spec.http[0].mirrorPercent", "mirror_percent must have a max value of 100 (it has 101)")]),
    ({"mirrors": [{"percentage": {"value": 5}}]}, [("spec.http[0].mirrors[0].destination", "destination is required for mirrors")]),
    ({"mirrors": [{"destination": {"host": "a", "subset": "b_"}, "percentage": {"value": 150}}, {"destination": {"host": "b"}, "percentage": {"value": -2}}]}, [
        ("spec.http[0].mirrors[0].destination.subset", "subset name is invalid: b_"),
        ("spec.http[0].mirrors[0].percentage.value", "mirror percentage must have a max value of 100 (it has 150.000000)"),
        ("spec.http[0].mirrors[1].percentage.value", "mirror percentage must have a min value of 0 (it has -2.000000)"),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("route", "expected"), MIRRORS)
def test_mirrors(errors: Issues, route: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errors("VirtualService", vs(**route)) == expected


def test_mirror_percent_is_deprecated(warnings: Issues) -> None:
    assert warnings("VirtualService", vs(mirror={"host": "a"}, mirrorPercent=5)) == [
        ("spec.http[0].mirrorPercent", 'using deprecated setting "mirrorPercent", use "mirrorPercentage" instead')
    ]  # fmt: skip


def redirect_route(redirect: dict[str, Any], match: list[Any] | None = None) -> dict[str, Any]:
    spec = vs(route=None, redirect=redirect)
    if match is not None:
        spec["http"][0]["match"] = match
    return spec


REDIRECTS = [
    ({"uri": "/a"}, None, []),
    ({"uri": "/a", "prefixRewrite": "/b"}, None, [("spec.http[0].redirect", "redirect may only specify one of uri or prefixRewrite")]),
    ({"prefixRewrite": "/b"}, [{"uri": {"prefix": "/a"}}, {"uri": {"exact": "/c"}}], [("spec.http[0].redirect.prefixRewrite", "redirect prefixRewrite requires all URI matches to use prefix match type")]),
    ({"prefixRewrite": "/b"}, [{"uri": {"prefix": "/a"}}, {"method": {"exact": "GET"}}], []),
    ({}, None, [("spec.http[0].redirect", "redirect must specify URI, authority, scheme, or port")]),
    ({"derivePort": "FROM_REQUEST_PORT"}, None, []),
    ({"port": 80, "derivePort": "FROM_REQUEST_PORT"}, None, [("spec.http[0].redirect", "only one of port or derivePort may be set")]),
    ({"uri": "/a", "redirectCode": 200}, None, [("spec.http[0].redirect.redirectCode", "200 is not a valid redirect code, must be 3xx")]),
    ({"scheme": "ftp"}, None, [("spec.http[0].redirect.scheme", 'invalid redirect scheme, must be "http" or "https"')]),
    ({"port": 70000}, None, [("spec.http[0].redirect.port", "port number 70000 must be in the range 1..65535")]),
]  # fmt: skip


@pytest.mark.parametrize(("redirect", "match", "expected"), REDIRECTS)
def test_redirect(
    errors: Issues,
    redirect: dict[str, Any],
    match: list[Any] | None,
    expected: list[tuple[str, str]],
) -> None:
    assert errors("VirtualService", redirect_route(redirect, match)) == expected


DIRECT = [
    ({"status": 200, "body": {"string": "ok"}}, []),
    ({"status": 204, "body": {}}, []),
    ({"status": 601}, [("spec.http[0].directResponse.status", "HTTP status 601 is not in range 200-599")]),
    ({}, [("spec.http[0].directResponse.status", "HTTP status 0 is not in range 200-599")]),
    ({"status": 200, "body": {"string": "a", "bytes": "YQ=="}}, [("spec.http[0].directResponse.body", "only one of string or bytes may be set")]),
    ({"status": 200, "body": {"bytes": "not base64!"}}, [("spec.http[0].directResponse.body.bytes", "expected base64")]),
    ({"status": 200, "body": {"string": "x" * (1024 * 1024 + 1)}}, [("spec.http[0].directResponse.body", "large direct_responses may impact control plane performance, must be less than 1MB")]),
]  # fmt: skip


@pytest.mark.parametrize(("response", "expected"), DIRECT)
def test_direct_response(
    errors: Issues, response: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("VirtualService", vs(route=None, directResponse=response)) == expected


def test_large_direct_response_warns(warnings: Issues, errors: Issues) -> None:
    small = {"bytes": "eHh4" * 34000}  # 102,000 bytes once decoded: just under 100 KiB
    spec = vs(route=None, directResponse={"status": 200, "body": small})
    assert warnings("VirtualService", spec) == []
    big = vs(route=None, directResponse={"status": 200, "body": {"string": "x" * (100 * 1024 + 1)}})
    assert warnings("VirtualService", big) == [
        (
            "spec.http[0].directResponse.body",
            "large direct_responses may impact control plane performance",
        )
    ]
    assert errors("VirtualService", big) == []


REWRITES = [
    ({"uri": "/a"}, []),
    ({"uri": "/a", "uriRegexRewrite": {"match": "a", "rewrite": "b"}}, [("spec.http[0].rewrite", "rewrite may only contain one of uri or uriRegexRewrite")]),
    ({}, [("spec.http[0].rewrite", "rewrite must specify at least one of uri, uriRegexRewrite, or authority")]),
    ({"uriRegexRewrite": {"match": "a"}}, [("spec.http[0].rewrite.uriRegexRewrite", "uriRegexRewrite requires both rewrite and match fields to be specified")]),
    ({"uriRegexRewrite": {"match": "(a)\\1", "rewrite": "b"}}, [("spec.http[0].rewrite.uriRegexRewrite.match", "invalid regex: '\\1' (backreference) is not supported by RE2")]),
    ({"uriRegexRewrite": {"match": "^/v1/(.*)", "rewrite": "/v2/\\1"}}, []),
]  # fmt: skip


@pytest.mark.parametrize(("rewrite", "expected"), REWRITES)
def test_rewrite(errors: Issues, rewrite: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errors("VirtualService", vs(rewrite=rewrite)) == expected


CORS = [
    ({"allowOrigins": [{"exact": "https://a.com"}, {"regex": ".*\\.a\\.com"}], "allowMethods": ["GET", "*"], "maxAge": "24h"}, []),
    ({"allowOrigins": [{"exact": ""}]}, [("spec.http[0].corsPolicy.allowOrigins[0]", "'' is not a valid match type for CORS allow origins")]),
    ({"allowOrigins": [{"regex": "a(?!b)"}]}, [("spec.http[0].corsPolicy.allowOrigins[0].regex", "invalid regex: '(?!' (lookahead) is not supported by RE2")]),
    ({"allowMethods": ["get"]}, [("spec.http[0].corsPolicy.allowMethods[0]", '"get" is not a supported HTTP method')]),
    ({"allowHeaders": ["", "*", "x y"], "exposeHeaders": ["a:b"]}, [
        ("spec.http[0].corsPolicy.allowHeaders[0]", "header name cannot be empty"),
        ("spec.http[0].corsPolicy.allowHeaders[2]", "header name x y is not a valid header name"),
        ("spec.http[0].corsPolicy.exposeHeaders[0]", "header name a:b is not a valid header name"),
    ]),
    ({"maxAge": "1.5s"}, [("spec.http[0].corsPolicy.maxAge", "max_age duration is accurate only to seconds precision")]),
    ({"maxAge": "0s"}, [("spec.http[0].corsPolicy.maxAge", "duration must be greater than 1ms")]),
]  # fmt: skip


@pytest.mark.parametrize(("cors", "expected"), CORS)
def test_cors(errors: Issues, cors: dict[str, Any], expected: list[tuple[str, str]]) -> None:
    assert errors("VirtualService", vs(corsPolicy=cors)) == expected


def test_cors_allow_origin_is_deprecated(warnings: Issues) -> None:
    assert warnings("VirtualService", vs(corsPolicy={"allowOrigin": ["*"]})) == [
        ("spec.http[0].corsPolicy.allowOrigin", 'using deprecated setting "allowOrigin", use "allowOrigins" instead')
    ]  # fmt: skip


L4 = [
    ({"hosts": ["a.com"], "tcp": [{"route": [DEST]}]}, []),
    ({"hosts": ["a.com"], "tcp": [{}]}, [("spec.tcp[0].route", "TCP route is required")]),
    ({"hosts": ["a.com"], "tcp": [{"route": [{"weight": 1}]}]}, [("spec.tcp[0].route[0].destination", "destination is required")]),
    ({"hosts": ["a.com"], "tcp": [{"match": [{"destinationSubnets": ["10.0.0.0/33", "1.2.3"], "port": 0, "sourceLabels": {"a": "-"}, "gateways": ["a/B_"]}], "route": [{"destination": {"host": "a"}, "weight": 0}, {"destination": {"host": "b"}, "weight": 0}]}]}, [
        ("spec.tcp[0].match[0].destinationSubnets[0]", "10.0.0.0/33 is not a valid CIDR block"),
        ("spec.tcp[0].match[0].destinationSubnets[1]", "1.2.3 is not a valid IP"),
        ("spec.tcp[0].match[0].sourceLabels.a", 'invalid tag value: "-"'),
        ("spec.tcp[0].match[0].gateways[0]", 'invalid value for gateway name: "B_"'),
        ("spec.tcp[0].route", "total destination weight = 0"),
    ]),
    ({"hosts": ["*.a.com"], "tls": [{"match": [{"sniHosts": ["b.a.com", "*.x.a.com"], "port": 443}], "route": [DEST]}]}, []),
    ({"hosts": ["a.com"], "tls": [{"route": [{"destination": {"host": "a"}, "weight": -5}]}]}, [
        ("spec.tls[0].match", "TLS route must have at least one match condition"),
        ("spec.tls[0].route[0].weight", "weight -5 < 0"),
    ]),
    ({"hosts": ["a.com"], "tls": [{"match": [{"port": 99999, "destinationSubnets": ["::1"]}, {"sniHosts": ["b.com", "Bad_Host", "10.1.1.1"]}]}]}, [
        ("spec.tls[0].match[0].sniHosts", "TLS match must have at least one SNI host"),
        ("spec.tls[0].match[0].port", "port number 99999 must be in the range 1..65535"),
        ("spec.tls[0].match[1].sniHosts[0]", 'SNI host "b.com" is not a compatible subset of any of the virtual service hosts: [a.com]'),
        ("spec.tls[0].match[1].sniHosts[1]", 'domain name "Bad_Host" invalid (label "Bad_Host" invalid)'),
        ("spec.tls[0].route", "TLS route is required"),
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "expected"), L4)
def test_tcp_and_tls_routes(
    errors: Issues, spec: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors("VirtualService", spec) == expected


def test_tls_sni_ip_warns(warnings: Issues) -> None:
    spec = {"hosts": ["a.com"], "tls": [{"match": [{"sniHosts": ["10.1.1.1"]}], "route": [DEST]}]}
    assert warnings("VirtualService", spec) == [
        ("spec.tls[0].match[0].sniHosts[0]", 'using an IP address ("10.1.1.1") goes against SNI spec and most clients do not support this')
    ]  # fmt: skip

"""Loading files, folders and text: every problem located, unknown kinds skipped."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._config import resources as r
from meshlib._config.issues import ConfigIssue, Severity
from meshlib._config.loader import (
    CODE_API_VERSION,
    CODE_DUPLICATE,
    CODE_SCHEMA,
    CODE_SYNTAX,
    CODE_UNREADABLE,
    NOT_AN_OBJECT,
    LoadResult,
    describe_error,
    format_path,
    load_paths,
    load_text,
)
from meshlib.errors import ConfigError

VS = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: {name}
{namespace}spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {{host: reviews}}
"""


def vs(name: str = "reviews", namespace: str | None = None) -> str:
    return VS.format(name=name, namespace=f"  namespace: {namespace}\n" if namespace else "")


def brief(result: LoadResult) -> list[tuple[str, int | None, str, str, str]]:
    return [(i.code, i.document, i.resource, i.field, i.message) for i in result.issues]


def test_folder_is_read_recursively_sorted_and_filtered(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.yml").write_text(vs("two"))
    (tmp_path / "a.yaml").write_text(vs("one"))
    (tmp_path / "c.JSON").write_text(
        '{"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",'
        ' "metadata": {"name": "three"}, "spec": {"host": "reviews"}}'
    )
    (tmp_path / "notes.txt").write_text("not: config")
    (tmp_path / ".hidden.yaml").write_text(vs("hidden"))
    # A ConfigMap volume: visible symlinks into a hidden timestamped folder.
    (tmp_path / "..2024_01_01").mkdir()
    (tmp_path / "..2024_01_01" / "cm.yaml").write_text(vs("cm"))
    result = load_paths([tmp_path], "default")
    assert result.issues == ()
    assert [x.name for x in result.resources] == ["one", "two", "three"]
    assert result.resources[0].file == str(tmp_path / "a.yaml")


def test_several_paths_and_files(tmp_path: Path) -> None:
    first, second = tmp_path / "x.yaml", tmp_path / "y.txt"
    first.write_text(vs("x"))
    second.write_text(vs("y"))  # an explicit file is read whatever its suffix
    result = load_paths([str(second), first], "default")
    assert [x.name for x in result.resources] == ["y", "x"]


def test_missing_path_is_an_unreadable_issue(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = load_paths([missing], "default")
    assert result.resources == ()
    assert result.issues == (
        ConfigIssue(
            Severity.ERROR,
            "cannot read: no such file or directory",
            file=str(missing),
            code=CODE_UNREADABLE,
        ),
    )
    assert not result.ok


def test_broken_symlink_in_folder_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "dangling.yaml").symlink_to(tmp_path / "gone.yaml")
    (tmp_path / "fine.yaml").write_text(vs())
    result = load_paths([tmp_path], "default")
    assert [x.name for x in result.resources] == ["reviews"]
    assert [(i.code, i.file, i.message) for i in result.issues] == [
        (CODE_UNREADABLE, str(tmp_path / "dangling.yaml"), "cannot read: no such file or directory")
    ]


def test_multi_document_with_empty_documents_and_namespaces() -> None:
    text = "---\n" + vs("a") + "---\n---\n" + vs("b", "prod") + "---\n"
    result = load_text(text, "mesh.yaml", "default")
    assert result.issues == ()
    assert [(x.ref, x.document) for x in result.resources] == [
        ("VirtualService/default/a", 0),
        ("VirtualService/prod/b", 2),
    ]
    assert result.resources[0].file == "mesh.yaml"


def test_list_kind() -> None:
    text = """\
apiVersion: v1
kind: List
items:
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: reviews, labels: {team: a}, annotations: {note: x}}
  spec: {host: reviews}
- apiVersion: v1
  kind: Service
  metadata: {name: reviews}
- 42
- apiVersion: networking.istio.io/v1
  kind: DestinationRule
  metadata: {name: bad}
  spec: {host: reviews, subsets: [{name: v_1}], hots: x}
"""
    result = load_text(text, "list.yaml", "ns")
    (res,) = result.resources
    assert (res.ref, res.item, res.labels, res.annotations) == (
        "DestinationRule/ns/reviews",
        0,
        {"team": "a"},
        {"note": "x"},
    )
    assert result.skipped == {"Service": 1}
    assert brief(result) == [
        (CODE_SCHEMA, 0, "", "items[2]", "expected a mapping (a Kubernetes object)"),
        (CODE_SCHEMA, 0, "DestinationRule/ns/bad", "items[3].spec.hots", "unknown field 'hots'"),
        (
            "meshlib.invalid",
            0,
            "DestinationRule/ns/bad",
            "items[3].spec.subsets[0].name",
            "subset name is invalid: v_1",
        ),
    ]


def test_list_items_must_be_a_list() -> None:
    result = load_text("apiVersion: v1\nkind: List\nitems: {}\n", "l.yaml", "d")
    assert brief(result) == [(CODE_SCHEMA, 0, "", "items", "expected a list")]


def test_other_kinds_are_skipped_and_counted() -> None:
    text = "\n---\n".join(
        [
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: b}",
            "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: c}",
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {name: d}",
            "apiVersion: appmesh.k8s.aws/v1beta2\nkind: VirtualService\nmetadata: {name: e}",
        ]
    )
    result = load_text(text, "k8s.yaml", "default")
    assert result.issues == ()
    assert result.resources == ()
    assert result.skipped == {
        "Deployment": 2,
        "Sidecar": 1,
        "Telemetry": 1,
        "VirtualService (appmesh.k8s.aws/v1beta2)": 1,
    }


def test_envelope_problems() -> None:
    text = "\n---\n".join(
        [
            "kind: VirtualService\nmetadata: {name: a}",
            "apiVersion: networking.istio.io/v1\nkind: 7",
            "- just a list",
            "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: b}",
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {namespace: x}",
        ]
    )
    result = load_text(text, "e.yaml", "default")
    assert result.resources == ()
    assert brief(result) == [
        (CODE_SCHEMA, 0, "", "apiVersion", "missing required field"),
        (CODE_SCHEMA, 1, "", "kind", "expected a string"),
        (CODE_SCHEMA, 2, "", "", "expected a mapping (a Kubernetes object)"),
        (
            CODE_API_VERSION,
            3,
            "VirtualService/default/b",
            "apiVersion",
            "unsupported apiVersion 'networking.istio.io/v2' for VirtualService (expected one of "
            "networking.istio.io/v1, networking.istio.io/v1alpha3, networking.istio.io/v1beta1)",
        ),
        (CODE_SCHEMA, 4, "VirtualService/x/<unnamed>", "metadata.name", "missing required field"),
    ]


def test_documents_of_other_tools_are_skipped_not_errors() -> None:
    # A values file or a test-case file next to the manifests has none of the object keys;
    # one that has any of them is a broken object and is reported.
    text = "target: {namespace: default}\ncases: []\n---\nreplicas: 3\n---\nspec: {}\n"
    result = load_text(text, "cases.yaml", "default")
    assert result.skipped == {NOT_AN_OBJECT: 2}
    assert brief(result) == [
        (CODE_SCHEMA, 2, "", "apiVersion", "missing required field"),
        (CODE_SCHEMA, 2, "", "kind", "missing required field"),
    ]


def test_schema_errors_are_all_reported_with_human_messages() -> None:
    text = """\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: 5
spec:
  host: [reviews]
  subsets: {name: v1}
  trafficPolicy:
    loadBalancer: {simple: round_robin}
    connectionPool:
      http: {http1MaxPendingRequests: lots, useClientProtocol: "yes"}
    outlierDetection: none
"""
    result = load_text(text, "dr.yaml", "default")
    assert result.resources == ()
    assert brief(result) == [
        (CODE_SCHEMA, 0, "DestinationRule/5/reviews", "metadata.namespace", "expected a string"),
        (CODE_SCHEMA, 0, "DestinationRule/5/reviews", "spec.host", "expected a string"),
        (CODE_SCHEMA, 0, "DestinationRule/5/reviews", "spec.trafficPolicy.loadBalancer.simple",
         "unknown value 'round_robin': expected 'UNSPECIFIED', 'LEAST_CONN', 'RANDOM', "
         "'PASSTHROUGH', 'ROUND_ROBIN' or 'LEAST_REQUEST'"),
        (CODE_SCHEMA, 0, "DestinationRule/5/reviews",
         "spec.trafficPolicy.connectionPool.http.http1MaxPendingRequests", "expected an integer"),
        (CODE_SCHEMA, 0, "DestinationRule/5/reviews",
         "spec.trafficPolicy.connectionPool.http.useClientProtocol", "expected a boolean"),
        (CODE_SCHEMA, 0, "DestinationRule/5/reviews", "spec.trafficPolicy.outlierDetection",
         "expected a mapping"),
        (CODE_SCHEMA, 0, "DestinationRule/5/reviews", "spec.subsets", "expected a list"),
    ]  # fmt: skip


def test_istio_rules_still_run_on_a_document_with_schema_errors() -> None:
    text = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weigth: 90
    - destination: {host: reviews, subset: V_2}
      weight: ten
    timeout: 0s
    retries: {attempts: 2, retryOn: "5xx, reset"}
"""
    result = load_text(text, "vs.yaml", "default")
    assert result.resources == ()
    # "total destination weight = 0" would only echo the dropped weight: not reported.
    assert [(i.field, i.message) for i in result.issues] == [
        ("spec.http[0].route[0].weigth", "unknown field 'weigth'"),
        ("spec.http[0].route[1].weight", "expected an integer"),
        ("spec.http[0].retries.retryOn", '" reset" is not a valid retryOn policy'),
        ("spec.http[0].route[1].destination.subset", "subset name is invalid: V_2"),
        ("spec.http[0].timeout", "duration must be greater than 1ms"),
    ]


def test_invalid_map_key() -> None:
    text = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p}
spec:
  selector: {matchLabels: {app: a}}
  portLevelMtls: {http: {mode: DISABLE}}
"""
    result = load_text(text, "pa.yaml", "default")
    assert brief(result) == [
        (
            CODE_SCHEMA,
            0,
            "PeerAuthentication/default/p",
            "spec.portLevelMtls.http",
            "invalid key 'http': expected an integer",
        )
    ]


def test_duplicates_are_errors_and_the_first_wins() -> None:
    result = load_text(vs("a") + "---\n" + vs("a", "default"), "d.yaml", "default")
    assert [x.document for x in result.resources] == [0]
    assert brief(result) == [
        (
            CODE_DUPLICATE,
            1,
            "VirtualService/default/a",
            "",
            "duplicate resource: already defined in d.yaml (document 0)",
        )
    ]


def test_yaml_syntax_error_names_the_line() -> None:
    text = vs("a") + "---\nkind: [unclosed\nfoo: bar\n"
    result = load_text(text, "s.yaml", "default")
    assert [x.name for x in result.resources] == ["a"]
    assert brief(result) == [
        (CODE_SYNTAX, 1, "", "", "YAML syntax error at line 12, column 4: did not find expected "
         "',' or ']'"),
    ]  # fmt: skip


def test_yaml_tab_indentation_error() -> None:
    result = load_text("a:\n\tb: c\n", "t.yaml", "default")
    (issue,) = result.issues
    assert issue.message.startswith("YAML syntax error at line 2, column 1: ")


def test_json_text_and_json_errors() -> None:
    good = load_text(
        '{"apiVersion": "v1", "kind": "List", "items": [{"apiVersion": "security.istio.io/v1",'
        ' "kind": "AuthorizationPolicy", "metadata": {"name": "deny-all"}, "spec": {}}]}',
        "c.json",
        "default",
    )
    assert good.issues == ()
    assert good.resources[0].spec == r.AuthorizationPolicySpec()
    bad = load_text('{"kind": ', "c.json", "default")
    assert brief(bad) == [
        (CODE_SYNTAX, None, "", "", "JSON syntax error at line 1, column 10: Expecting value")
    ]


def test_bytes_with_bom_and_invalid_utf8() -> None:
    assert load_text(b"\xef\xbb\xbf" + vs().encode(), "b.yaml", "d").resources[0].name == "reviews"
    result = load_text(b"kind: \xff\xfe", "b.yaml", "d")
    assert brief(result) == [(CODE_SYNTAX, None, "", "", "not UTF-8 text (byte 6)")]


def test_unquoted_creation_timestamp() -> None:
    text = vs().replace(
        "  name: reviews\n", "  name: reviews\n  creationTimestamp: 2024-05-02T10:11:12Z\n"
    )
    (res,) = load_text(text, "t.yaml", "default").resources
    assert res.creation_timestamp == "2024-05-02T10:11:12Z"
    (plain,) = load_text(vs(), "t.yaml", "default").resources
    assert plain.creation_timestamp is None


def test_validation_can_be_turned_off() -> None:
    text = vs().replace("host: reviews}", "host: reviews, subset: Bad_Subset}")
    checked = load_text(text, "v.yaml", "default")
    assert checked.resources == ()
    assert [i.message for i in checked.errors] == ["subset name is invalid: Bad_Subset"]
    unchecked = load_text(text, "v.yaml", "default", validate=False)
    assert unchecked.issues == ()
    assert unchecked.resources[0].name == "reviews"


def test_warnings_do_not_exclude_a_resource() -> None:
    text = vs() + "    corsPolicy: {allowMethods: [GET]}\n"
    result = load_text(text, "w.yaml", "default")
    assert [x.name for x in result.resources] == ["reviews"]
    assert [(i.severity, i.field, i.message) for i in result.issues] == [
        (Severity.WARNING, "spec.http[0].corsPolicy", "accepted, not enforced by meshlib")
    ]
    assert result.ok
    result.raise_for_errors()


def test_raise_for_errors_lists_everything() -> None:
    result = load_text("kind: VirtualService\n---\nkind: Thing\napiVersion: x/v1\n", "r.yaml", "d")
    with pytest.raises(ConfigError) as caught:
        result.raise_for_errors()
    assert caught.value.issues == result.issues
    assert str(caught.value) == "r.yaml (document 0): error: apiVersion: missing required field"


def test_spec_null_is_empty() -> None:
    text = (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: a}\nspec:\n"
    )
    (res,) = load_text(text, "n.yaml", "default").resources
    assert res.spec == r.AuthorizationPolicySpec()


def test_describe_error_fallback_and_paths() -> None:
    assert describe_error(
        {
            "type": "too_long",
            "loc": ("spec", "x"),
            "msg": "List should have at most 1 item",
            "input": [],
        }
    ) == ("spec.x", "List should have at most 1 item")
    assert (
        format_path(["spec", "http", 0, "route", 12, "weight"]) == "spec.http[0].route[12].weight"
    )
    assert format_path([]) == ""


def test_bad_list_items_are_dropped_and_rules_inside_the_list_not_echoed() -> None:
    text = """\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: v}
spec:
  hosts: [7, reviews, Bad_Host]
  http:
  - route: [oops, {destination: {host: "*"}}]
"""
    result = load_text(text, "v.yaml", "default")
    assert [(i.code, i.field, i.message) for i in result.issues] == [
        (CODE_SCHEMA, "spec.hosts[0]", "expected a string"),
        (CODE_SCHEMA, "spec.http[0].route[0]", "expected a mapping"),
    ]


def test_key_and_value_errors_on_the_same_map_entry() -> None:
    text = """\
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: p}
spec:
  portLevelMtls: {http: {mode: SOMETIMES}}
"""
    result = load_text(text, "p.yaml", "default")
    assert [(i.field, i.message) for i in result.issues] == [
        ("spec.portLevelMtls.http", "invalid key 'http': expected an integer"),
        (
            "spec.portLevelMtls.http.mode",
            "unknown value 'SOMETIMES': expected 'UNSET', 'DISABLE', 'PERMISSIVE' or 'STRICT'",
        ),
    ]


def test_schema_errors_without_validation_or_name() -> None:
    bad = vs().replace("hosts: [reviews]", "hosts: reviews")
    assert [i.message for i in load_text(bad, "x.yaml", "d", validate=False).issues] == [
        "expected a list"
    ]
    nameless = bad.replace("  name: reviews\n", "")
    assert [(i.field, i.message) for i in load_text(nameless, "x.yaml", "d").issues] == [
        ("metadata.name", "missing required field"),
        ("spec.hosts", "expected a list"),
    ]


def test_yaml_error_without_position() -> None:
    import yaml

    from meshlib._config.loader import _yaml_message

    assert _yaml_message(yaml.YAMLError("boom")) == "YAML syntax error: boom"


def test_duplicate_yaml_keys_are_syntax_errors() -> None:
    text = (
        vs("a")
        + "---\n"
        + vs("b").replace(
            "    - destination: {host: reviews}\n",
            "    - destination: {host: reviews}\n    route: []\n",
        )
    )
    result = load_text(text, "dup.yaml", "default")
    assert [x.name for x in result.resources] == ["a"]
    assert brief(result) == [
        (CODE_SYNTAX, 1, "", "", "YAML syntax error at line 20, column 5: duplicate key 'route'")
    ]


def test_unhashable_yaml_key_is_a_syntax_error() -> None:
    result = load_text("? [a, b]\n: c\n", "k.yaml", "default")
    assert brief(result) == [
        (CODE_SYNTAX, 0, "", "", "YAML syntax error at line 1, column 3: found unhashable key")
    ]


def _documents(text: str) -> list[Any]:

    from meshlib._config.loader import _SafeLoader

    loader = _SafeLoader(text)
    try:
        return [loader.document(loader.get_node()) for _ in iter(loader.check_node, False)]
    finally:
        loader.dispose()


_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
_trees = st.recursive(
    _scalars | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(st.lists(_trees, min_size=1, max_size=3))
def test_fast_documents_equal_pyyaml(trees: list[Any]) -> None:
    import yaml

    text = yaml.safe_dump_all(trees)
    assert _documents(text) == list(yaml.safe_load_all(text))


def test_fast_documents_keep_pyyaml_features() -> None:
    text = """\
base: &base {a: 1, b: [x, y]}
merged: {<<: *base, c: 2, a: 3}
alias: *base
when: 2024-01-02
tagged: !!set {k}
number: 0x10
empty:
quoted: '1'
"""
    (doc,) = _documents(text)
    assert doc == {
        "base": {"a": 1, "b": ["x", "y"]},
        "merged": {"a": 3, "b": ["x", "y"], "c": 2},
        "alias": {"a": 1, "b": ["x", "y"]},
        "when": datetime.date(2024, 1, 2),
        "tagged": {"k"},
        "number": 16,
        "empty": None,
        "quoted": "1",
    }
    assert doc["alias"] is doc["base"]  # one object, no exponential expansion


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &x [*x]\n", "YAML syntax error at line 1, column 4: recursive alias"),
        ("1: a\n1: b\n", "YAML syntax error at line 2, column 1: duplicate key 1"),
        (
            "b: &b {a: 1}\nm: {<<: *b, 1: x, 1: y}\n",
            "YAML syntax error at line 2, column 19: duplicate key 1",
        ),
        (
            "m: {<<: {a: 1}, ? [x] : y}\n",
            "YAML syntax error at line 1, column 19: found unhashable key",
        ),
        (
            "a: !Custom x\n",
            "YAML syntax error at line 1, column 4: "
            "could not determine a constructor for the tag '!Custom'",
        ),
    ],
)
def test_fast_documents_refuse_what_kubernetes_refuses(text: str, message: str) -> None:
    assert brief(load_text(text, "y.yaml", "default")) == [(CODE_SYNTAX, 0, "", "", message)]

"""RE2 compatibility of regexes (Envoy matches with RE2, not Python's re)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlib._config.validate import regex_error


@pytest.mark.parametrize(
    "pattern",
    [
        "/api/v[0-9]+/.*",
        "(?i)/admin",
        "^/users/(?P<id>[0-9]+)$",
        "a{2,3}?",
        "[\\]a]+",
        "[]a]",
        "[^]a]",
        "\\d+\\.\\d+",
        "end\\z",
        "\\\\z",
        "a*?b+?c??",
        "(a)(b)(c)(d)(e)(f)(g)(h)(i)(j)(k)(l)",
        "[(?=]",
        "[[a]",
    ],
)
def test_re2_compatible_patterns_pass(pattern: str) -> None:
    assert regex_error(pattern) is None


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("(a)\\1", "invalid regex: '\\1' (backreference) is not supported by RE2"),
        ("(?P<x>a)(?P=x)", "invalid regex: '(?P=' (backreference) is not supported by RE2"),
        ("(?<n>a)\\k<n>", "invalid regex: '\\k' (backreference) is not supported by RE2"),
        ("a(?=b)", "invalid regex: '(?=' (lookahead) is not supported by RE2"),
        ("a(?!b)", "invalid regex: '(?!' (lookahead) is not supported by RE2"),
        ("(?<=a)b", "invalid regex: '(?<=' (lookbehind) is not supported by RE2"),
        ("(?<!a)b", "invalid regex: '(?<!' (lookbehind) is not supported by RE2"),
        ("(?>ab)", "invalid regex: '(?>' (atomic group) is not supported by RE2"),
        ("a*+", "invalid regex: '*+' (possessive quantifier) is not supported by RE2"),
        ("a++", "invalid regex: '++' (possessive quantifier) is not supported by RE2"),
        ("a?+", "invalid regex: '?+' (possessive quantifier) is not supported by RE2"),
        ("a{2}+", "invalid regex: '}+' (possessive quantifier) is not supported by RE2"),
        ("(a)?(?(1)b|c)", "invalid regex: '(?(' (conditional) is not supported by RE2"),
        ("a(?#comment)", "invalid regex: '(?#' (comment group) is not supported by RE2"),
        ("a\\Z", "invalid regex: '\\Z' (escape) is not supported by RE2"),
        ("\\Gab", "invalid regex: '\\G' (escape) is not supported by RE2"),
        ("(a", "invalid regex: missing ), unterminated subpattern"),
        ("*", "invalid regex: nothing to repeat"),
        ("a" * 1025, "regex is too large, max length allowed is 1024"),
    ],
)
def test_unsupported_constructs_are_named(pattern: str, message: str) -> None:
    assert regex_error(pattern) == message


def test_lazy_quantifier_followed_by_plus_is_not_possessive() -> None:
    # ``a*?+`` is a repeated lazy star: RE2 and Python both refuse it, for their own reason.
    assert regex_error("a*?+") is not None
    assert regex_error("a+?b+") is None


@given(st.text(alphabet="abc.*+?()[]{}|^$\\0123456789", max_size=12))
def test_never_crashes_and_accepts_only_compilable_patterns(pattern: str) -> None:
    problem = regex_error(pattern)
    if problem is None:
        re.compile(pattern.replace("\\z", "\\Z"))
    else:
        assert problem.startswith(("invalid regex: ", "regex is too large"))


@given(st.from_regex(r"[a-z/]{0,20}", fullmatch=True))
def test_literal_paths_are_valid(path: str) -> None:
    assert regex_error(path) is None


def test_real_re2_has_the_last_word_when_installed() -> None:
    pytest.importorskip("re2")
    # Python reads ``\1`` in a class as an octal escape; RE2 refuses it.
    assert regex_error("[\\1]") == "invalid regex: invalid escape sequence: \\1"

"""Target forms and request keys (fastlb/http1.py)."""

import pytest

from fastlb import http1


@pytest.mark.parametrize("target, path", [
    (b"/a/b?x=1", b"/a/b?x=1"),
    (b"http://api.example.com:8080/v1/x?y=2", b"/v1/x?y=2"),
    (b"http://api.example.com", b"/"),
    (b"http://h?q=1", b"/"),
    (b"*", b"/"),
])
def test_target_forms(target, path):
    # the authority is the scanner's (RequestScanner.host), validated as Host
    assert http1.path_of(target) == path


@pytest.mark.parametrize("host, name", [
    (b"API.Example.com:8080", b"api.example.com"), (b"h", b"h"), (b"[::1]:80", b"[::1]"), (b"10.0.0.1", b"10.0.0.1"),
])
def test_split_host(host, name):
    assert http1.split_host(host) == name


def test_query_param():
    assert http1.query_param(b"/p?a=1&user=42&user=7", b"user") == b"42"
    assert http1.query_param(b"/p?a=1#user=3", b"user") is None
    assert http1.query_param(b"/p?user=", b"user") == b""
    assert http1.query_param(b"/p", b"user") is None


def test_cookie_value():
    assert http1.cookie_value(b"a=1; session=abc; b=2", b"session") == b"abc"
    assert http1.cookie_value(b'session="q v"', b"session") == b"q v"
    assert http1.cookie_value(b"sessionx=1", b"session") is None
    assert http1.cookie_value(b"", b"session") is None

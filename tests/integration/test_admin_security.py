"""The admin API's write protection (docs/operations.md#securing-the-admin-api), on real
fastlb processes: a bearer token from ``admin.token_file`` or ``FASTLB_ADMIN_TOKEN``; without
one, writes only on a loopback bind and only with ``Content-Type: application/json``; a
non-loopback bind without a token refuses to start. Reads stay open in every mode."""

import os
import secrets
import subprocess
import sys

import httpx
import pytest
import yaml

from tests.integration.conftest import pool_doc

NO_TOKEN = {"FASTLB_ADMIN_TOKEN": ""}  # blank counts as unset: the test runner's own value cannot leak in
JSON = {"Content-Type": "application/json"}


def admin_url(proc, path):
    return "http://127.0.0.1:%d%s" % (proc.admin_port, path)


def backend_url(proc, backend, action):
    return admin_url(proc, "/api/v1/pools/p/backends/%s/%s" % (backend.address, action))


def backend_info(proc, backend):
    pool = httpx.get(admin_url(proc, "/api/v1/pools/p"), timeout=5).json()
    return next(b for b in pool["backends"] if b["address"] == backend.address)


def served_by(proc, n=12):
    with httpx.Client(timeout=5) as client:
        return {client.get(proc.url("/")).headers["x-backend"] for _ in range(n)}


def assert_reads_open(proc):
    """Every read endpoint answers without a token (Prometheus scrapes without one)."""
    with httpx.Client(timeout=5) as client:
        assert client.get(admin_url(proc, "/healthz")).json() == {"status": "ok"}
        r = client.get(admin_url(proc, "/metrics"))
        assert r.status_code == 200 and "fastlb_" in r.text
        assert client.head(admin_url(proc, "/metrics")).status_code == 200
        r = client.get(admin_url(proc, "/dashboard"))
        assert r.status_code == 200 and "<html" in r.text.lower()
        for path in ("/api/v1/info", "/api/v1/pools", "/api/v1/pools/p", "/api/v1/stats",
                     "/api/v1/pools/p/explain?key=a"):
            r = client.get(admin_url(proc, path))
            assert r.status_code == 200, (path, r.status_code, r.text[:300])
            r.json()


def assert_unauthorized(r, invalid_token=False):
    assert r.status_code == 401, (r.status_code, r.text)
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="fastlb-admin"'), challenge
    assert ('error="invalid_token"' in challenge) == invalid_token, challenge
    assert r.headers["content-type"] == "application/json"
    assert "token" in r.json()["error"]


def check_token_mode(proc, backends, token):
    """Writes without the right token are 401 and change nothing; with it they apply."""
    victim = backends[0]
    assert backend_info(proc, victim)["state"] == "up"
    assert_reads_open(proc)
    with httpx.Client(timeout=5) as client:
        # no Authorization (with or without the JSON content type): 401, no change
        assert_unauthorized(client.post(backend_url(proc, victim, "disable")))
        assert_unauthorized(client.post(backend_url(proc, victim, "disable"), headers=JSON))
        # another scheme, or Bearer with nothing after it: 401
        assert_unauthorized(client.post(backend_url(proc, victim, "disable"),
                                        headers={"Authorization": "Basic " + token}))
        assert_unauthorized(client.post(backend_url(proc, victim, "disable"), headers={"Authorization": "Bearer"}))
        # a wrong token, including one that differs only in its last character or is a prefix
        for wrong in ("nope", token[:-1] + ("0" if token[-1] != "0" else "1"), token[:-1], token + "x"):
            assert_unauthorized(client.post(backend_url(proc, victim, "disable"),
                                            headers={"Authorization": "Bearer " + wrong}), invalid_token=True)
        assert_unauthorized(client.post(backend_url(proc, victim, "weight"), json={"weight": 7}))
        # an unknown path is not revealed to an unauthenticated write
        assert_unauthorized(client.post(admin_url(proc, "/api/v1/nosuch")))
        info = backend_info(proc, victim)
        assert info["state"] == "up" and info["weight"] == 1
        assert victim.name in served_by(proc)

        auth = {"Authorization": "Bearer " + token}
        # the right token: the write applies (no content type needed with a token)
        r = client.post(backend_url(proc, victim, "disable"), headers=auth)
        assert r.status_code == 200 and r.json()["state"] == "disabled", r.text
        assert backend_info(proc, victim)["state"] == "disabled"
        assert victim.name not in served_by(proc)
        # the auth scheme is case-insensitive (RFC 9110 §11.1)
        r = client.post(backend_url(proc, victim, "enable"), headers={"Authorization": "bearer " + token})
        assert r.status_code == 200, r.text
        assert backend_info(proc, victim)["state"] == "up"
        assert victim.name in served_by(proc)
        r = client.post(backend_url(proc, victim, "weight"), json={"weight": 3}, headers=auth)
        assert r.status_code == 200 and r.json()["weight"] == 3
        # the endpoints behave as before once authorized: 404s and 400s
        r = client.post(admin_url(proc, "/api/v1/pools/nosuch/backends/x:1/disable"), headers=auth)
        assert r.status_code == 404 and "error" in r.json()
        r = client.post(backend_url(proc, victim, "weight"), json={"weight": 0}, headers=auth)
        assert r.status_code == 400
    out = proc.read_output(0.3)
    assert "wrong bearer token" in out
    assert token not in out  # the token is never logged


def test_token_from_file(fastlb, backends, tmp_path):
    token = secrets.token_hex(32)
    path = tmp_path / "admin.token"
    path.write_text(token + "\n")  # as `openssl rand -hex 32 > FILE` writes it
    doc = pool_doc(backends, admin=True)
    doc["admin"]["token_file"] = str(path)
    # the file wins over the environment variable: the env's token is a wrong one
    proc = fastlb(doc, env={"FASTLB_ADMIN_TOKEN": "from-the-env"})
    check_token_mode(proc, backends, token)
    r = httpx.post(backend_url(proc, backends[1], "disable"), headers={"Authorization": "Bearer from-the-env"})
    assert_unauthorized(r, invalid_token=True)


def test_token_from_env(fastlb, backends):
    token = secrets.token_urlsafe(32)
    proc = fastlb(pool_doc(backends, admin=True), env={"FASTLB_ADMIN_TOKEN": "  %s\n" % token})
    check_token_mode(proc, backends, token)


FORMS = [
    ("application/x-www-form-urlencoded", b"weight=5"),  # what a cross-site <form method=post> sends
    ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data; name=weight\r\n\r\n5\r\n--x--\r\n"),
    ("text/plain", b'{"weight": 5}'),  # a form with enctype=text/plain can carry a JSON-looking body
    ("application/jsonx", b'{"weight": 5}'),
    (None, b""),
]


def test_loopback_without_token_needs_json(fastlb, backends):
    victim = backends[0]
    proc = fastlb(pool_doc(backends, admin=True), env=NO_TOKEN)
    assert_reads_open(proc)
    with httpx.Client(timeout=5) as client:
        for ctype, body in FORMS:
            headers = {"Content-Type": ctype} if ctype else {}
            for action in ("disable", "weight"):
                r = client.post(backend_url(proc, victim, action), content=body, headers=headers)
                assert r.status_code == 415, (ctype, action, r.status_code, r.text)
                assert r.headers["content-type"] == "application/json"
                error = r.json()["error"]
                assert "Content-Type: application/json" in error and "cross-site" in error, error
        info = backend_info(proc, victim)
        assert info["state"] == "up" and info["weight"] == 1  # nothing changed
        assert victim.name in served_by(proc)
        # a JSON write passes; the media type is case-insensitive and may carry parameters
        r = client.post(backend_url(proc, victim, "disable"), headers=JSON)
        assert r.status_code == 200 and r.json()["state"] == "disabled", r.text
        assert victim.name not in served_by(proc)
        r = client.post(backend_url(proc, victim, "enable"),
                        headers={"Content-Type": "Application/JSON; charset=utf-8"})
        assert r.status_code == 200, r.text
        assert victim.name in served_by(proc)
        r = client.post(backend_url(proc, victim, "weight"), json={"weight": 4})  # httpx sets application/json
        assert r.status_code == 200 and r.json()["weight"] == 4
        assert backend_info(proc, victim)["weight"] == 4
        # reads never need the content type; a GET on a write endpoint is still a 405
        assert client.get(backend_url(proc, victim, "weight")).status_code == 405
        # DNS rebinding: a page at a name that resolves to 127.0.0.1 can send JSON, but its
        # Host names that page; only loopback hosts may write without a token
        for host in ("evil.example:%d" % proc.admin_port, "evil.example", "10.0.0.1"):
            r = client.post(backend_url(proc, victim, "weight"), json={"weight": 9}, headers={"Host": host})
            assert r.status_code == 403 and "loopback" in r.json()["error"], (host, r.text)
        for host in ("localhost:%d" % proc.admin_port, "127.0.0.1", "[::1]:%d" % proc.admin_port):
            r = client.post(backend_url(proc, victim, "weight"), json={"weight": 5}, headers={"Host": host})
            assert r.status_code == 200, (host, r.text)
        assert backend_info(proc, victim)["weight"] == 5


def run_to_exit(tmp_path, doc, env, timeout=20):
    """Run ``fastlb run -c`` expecting it to exit by itself; (code, stdout, stderr).
    The process is killed if it is still running, whatever happens."""
    path = tmp_path / "refuse.yaml"
    path.write_text(yaml.safe_dump(doc))
    proc = subprocess.Popen([sys.executable, "-m", "fastlb", "run", "-c", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, **env))
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("fastlb kept running:\n" + out + err) from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode, out, err


def open_doc(backends):
    doc = pool_doc(backends, admin=True)
    doc["admin"]["bind"] = "0.0.0.0:0"
    return doc


def test_non_loopback_without_token_refuses_to_start(tmp_path, backends):
    code, out, err = run_to_exit(tmp_path, open_doc(backends), NO_TOKEN)
    assert code != 0, (code, out, err)
    assert "admin.bind" in err and "FASTLB_ADMIN_TOKEN" in err and "admin.token_file" in err, err
    assert "127.0.0.1" in err, err
    assert "listening on" not in out  # it never reported serving


def test_non_loopback_refusal_is_a_clean_config_error(tmp_path, backends):
    code, out, err = run_to_exit(tmp_path, open_doc(backends), NO_TOKEN)
    assert code == 2, (code, err)
    assert "Traceback" not in err, err
    assert err.startswith("fastlb: invalid configuration"), err


def test_empty_token_file_refuses_to_start(tmp_path, backends):
    path = tmp_path / "admin.token"
    path.write_text("\n")
    doc = pool_doc(backends, admin=True)
    doc["admin"]["token_file"] = str(path)
    code, out, err = run_to_exit(tmp_path, doc, NO_TOKEN)
    assert code != 0 and "admin.token_file" in err and "empty" in err, (code, err)
    assert "listening on" not in out


def test_non_loopback_with_token_starts(fastlb, backends):
    token = secrets.token_hex(32)
    proc = fastlb(open_doc(backends), env={"FASTLB_ADMIN_TOKEN": token})
    assert "admin API listening on 0.0.0.0:" in proc.read_output(0.1)
    assert_reads_open(proc)
    victim = backends[1]
    assert_unauthorized(httpx.post(backend_url(proc, victim, "drain"), headers=JSON, timeout=5))
    r = httpx.post(backend_url(proc, victim, "drain"), headers={"Authorization": "Bearer " + token}, timeout=5)
    assert r.status_code == 200 and r.json()["state"] == "draining", r.text
    assert victim.name not in served_by(proc)

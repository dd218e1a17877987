"""The fastlb command as a user runs it: check, run (file and quick mode), demo, version."""

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

import fastlb
from tests.integration.conftest import free_port
from tests.support.backend import BackendServer
from tests.support.fastlb_proc import FastlbProcess


def consecutive_free_ports(n):
    """n consecutive ports that can be bound now (the demo backends use base, base+1, ...)."""
    import random
    import socket

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 60000)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return list(range(base, base + n))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no %d consecutive free ports" % n)


def fastlb_cmd(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "fastlb", *args], capture_output=True, text=True, timeout=timeout)


def test_version_matches_package_metadata():
    from importlib.metadata import version

    out = fastlb_cmd("--version")
    assert out.returncode == 0
    first = out.stdout.splitlines()[0]
    assert first.startswith("fastlb %s (core: " % fastlb.__version__)
    assert version("fastlb") == fastlb.__version__
    assert fastlb_cmd("version").stdout == out.stdout


def test_check_valid_file(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("listeners: [{bind: '127.0.0.1:8080', pool: api}]\npools: {api: {backends: ['127.0.0.1:9001']}}\n")
    out = fastlb_cmd("check", "-c", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "OK (1 listener(s), 1 pool(s), 1 backend(s))" in out.stdout


def test_check_reports_every_key_path(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(
        "listeners: [{bind: '127.0.0.1:8080', pool: api}]\n"
        "pools:\n  api:\n    backends:\n      - address: 127.0.0.1:9001\n      - address: '127.0.0.1'\n"
        "timeouts: {connect: soon}\n")
    out = fastlb_cmd("check", "-c", str(cfg))
    assert out.returncode == 2
    assert "pools.api.backends[1].address: expected HOST:PORT, got '127.0.0.1'" in out.stderr
    assert "timeouts.connect: expected a duration like 250ms or 2s, got 'soon'" in out.stderr
    assert "Traceback" not in out.stderr


def test_check_missing_file_and_bad_yaml(tmp_path):
    out = fastlb_cmd("check", "-c", str(tmp_path / "nope.yaml"))
    assert out.returncode == 2 and "cannot read" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("listeners: [\n")
    out = fastlb_cmd("check", "-c", str(bad))
    assert out.returncode == 2 and "not valid YAML" in out.stderr


def test_run_refuses_invalid_config(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("listeners: [{bind: '127.0.0.1:8080', pool: nope}]\npools: {api: {backends: ['127.0.0.1:1']}}\n")
    out = fastlb_cmd("run", "-c", str(cfg))
    assert out.returncode == 2
    assert "listeners[0].pool: no pool named 'nope'" in out.stderr


def test_quick_mode_errors_name_the_flag():
    out = fastlb_cmd("run", "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:9001", "--backend", "127.0.0.1")
    assert out.returncode == 2
    assert "--backend[1].address: expected HOST:PORT, got '127.0.0.1'" in out.stderr
    out = fastlb_cmd("run", "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:9001,weight=x")
    assert out.returncode == 2 and "HOST:PORT[,weight=N]" in out.stderr
    out = fastlb_cmd("run", "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:9001", "--algorithm", "nope")
    assert out.returncode == 2 and "--algorithm: unknown algorithm 'nope'" in out.stderr
    out = fastlb_cmd("run")
    assert out.returncode == 2 and "needs -c FILE" in out.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    port = s.getsockname()[1]
    try:
        out = fastlb_cmd("run", "--listen", "127.0.0.1:%d" % port, "--backend", "127.0.0.1:9001")
        assert out.returncode == 1
        assert "cannot start" in out.stderr and "Traceback" not in out.stderr
    finally:
        s.close()


def test_quick_mode_serves_with_weights_and_admin(tmp_path):
    with BackendServer(name="q1") as b1, BackendServer(name="q2") as b2:
        proc = FastlbProcess(tmp_path, args=[
            "run", "--listen", "127.0.0.1:0", "--backend", b1.address + ",weight=3",
            "--backend", b2.address, "--admin", "127.0.0.1:0"]).start()
        try:
            with httpx.Client() as c:
                names = [c.get(proc.url("/")).headers["x-backend"] for _ in range(8)]
            assert names.count("q1") == 6 and names.count("q2") == 2
            pools = httpx.get("http://127.0.0.1:%d/api/v1/pools" % proc.admin_port).json()["pools"]
            (pool,) = pools
            assert pool["name"] == "default"
            assert [b["requests_total"] for b in pool["backends"]] == [6, 2]
            info = httpx.get("http://127.0.0.1:%d/api/v1/info" % proc.admin_port).json()
            assert info["version"] == fastlb.__version__
            assert httpx.get("http://127.0.0.1:%d/healthz" % proc.admin_port).json() == {"status": "ok"}
            assert proc.terminate() == 0
        finally:
            proc.kill()


def test_pure_core_warns_at_start(tmp_path):
    with BackendServer(name="w1") as b1:
        proc = FastlbProcess(tmp_path, args=["run", "--listen", "127.0.0.1:0", "--backend", b1.address],
                             env={"FASTLB_NO_EXTENSIONS": "1", "FASTLB_REQUIRE_EXTENSIONS": ""}).start()
        try:
            assert httpx.get(proc.url("/")).status_code == 200
            assert proc.terminate() == 0
            assert "running on the pure-Python core (FASTLB_NO_EXTENSIONS is set)" in "".join(proc.output)
        finally:
            proc.kill()


def test_demo_serves_and_stops_on_ctrl_c():
    port, admin = free_port(), free_port()
    bports = consecutive_free_ports(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastlb", "demo", "--port", str(port), "--admin-port", str(admin),
         "--backend-port", str(bports[0]), "--no-traffic"],  # its own traffic would interleave
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        # the demo pool has health checks: every backend up first, or the first requests
        # are spread over the ones that passed their first check
        while time.monotonic() < deadline:
            try:
                pools = httpx.get("http://127.0.0.1:%d/api/v1/pools" % admin, timeout=2).json()["pools"]
                if all(b["state"] == "up" for b in pools[0]["backends"]):
                    break
            except (httpx.HTTPError, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.1)
        seen = []
        while time.monotonic() < deadline:
            try:
                r = httpx.get("http://127.0.0.1:%d/hello" % port, timeout=2)
                if r.status_code == 200:
                    seen.append(r.json()["backend"])
                    if len(seen) == 4:
                        break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert sorted(seen) == ["demo-1", "demo-1", "demo-2", "demo-3"]  # weights 2, 1, 1
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "curl -s http://127.0.0.1:%d/hello" % port in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_tls_serves_https_with_a_development_certificate(tmp_path):
    """README: "`fastlb demo --tls` runs the demo over HTTPS": a certificate from the local
    development CA (created in FASTLB_CERT_DIR), HSTS, and the redirect listener."""
    import ssl

    port, admin, redirect = free_port(), free_port(), free_port()
    bports = consecutive_free_ports(3)
    env = dict(os.environ, FASTLB_CERT_DIR=str(tmp_path / "certs"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastlb", "demo", "--tls", "--port", str(port), "--admin-port", str(admin),
         "--backend-port", str(bports[0]), "--redirect-port", str(redirect)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        ca = tmp_path / "certs" / "fastlb-ca.pem"
        deadline = time.monotonic() + 20
        r = None
        while time.monotonic() < deadline:
            try:
                if ca.exists():
                    r = httpx.get("https://localhost:%d/hello" % port, timeout=2,
                                  verify=ssl.create_default_context(cafile=str(ca)))
                    if r.status_code == 200:
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        assert r is not None and r.status_code == 200
        assert r.json()["backend"].startswith("demo-")
        assert r.headers["strict-transport-security"] == "max-age=300"
        moved = httpx.get("http://127.0.0.1:%d/hello?x=1" % redirect, headers={"Host": "localhost"}, timeout=2)
        assert moved.status_code == 308 and moved.headers["location"] == "https://localhost:%d/hello?x=1" % port

        def handshakes():
            text = httpx.get("http://127.0.0.1:%d/metrics" % admin, timeout=2).text
            return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                       if line.startswith("fastlb_tls_handshakes_total{"))
        while time.monotonic() < deadline and handshakes() < 2:
            time.sleep(0.2)
        assert handshakes() >= 2  # ours, and the demo's own traffic, which goes over TLS too
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0
        assert "created a local development CA: %s" % ca in out
        assert "curl -s --cacert %s https://localhost:%d/hello" % (ca, port) in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_tls_with_an_unwritable_certificate_directory_is_a_clear_error():
    env = dict(os.environ, FASTLB_CERT_DIR="/proc/fastlb-no-such-dir")
    out = subprocess.run([sys.executable, "-m", "fastlb", "demo", "--tls", "--no-traffic"], capture_output=True,
                         text=True, env=env, timeout=30)
    assert out.returncode == 1
    assert "cannot write the development certificate in /proc/fastlb-no-such-dir" in out.stdout
    assert "Traceback" not in out.stdout + out.stderr


def test_demo_prints_the_dashboard_and_its_own_traffic_shows_there():
    port, admin = free_port(), free_port()
    bports = consecutive_free_ports(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastlb", "demo", "--port", str(port), "--admin-port", str(admin),
         "--backend-port", str(bports[0])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        stats = None
        while time.monotonic() < deadline:
            try:
                stats = httpx.get("http://127.0.0.1:%d/api/v1/stats" % admin, timeout=2).json()
                backends = stats["pools"][0]["backends"]
                if all(b["rps"] > 0 and b["state"] == "up" for b in backends):
                    break
            except (httpx.HTTPError, ValueError, KeyError, IndexError):
                pass
            time.sleep(0.3)
        else:
            raise AssertionError("the demo's own traffic never showed in /api/v1/stats: %r" % (stats,))
        page = httpx.get("http://127.0.0.1:%d/dashboard" % admin, timeout=5)
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        # demo-3 is the slowest demo backend (about 15 ms), demo-1 the fastest
        p50 = {b["address"]: b["p50"] for b in stats["pools"][0]["backends"]}
        assert p50["127.0.0.1:%d" % bports[2]] > p50["127.0.0.1:%d" % bports[0]]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0
        assert "dashboard: http://127.0.0.1:%d/dashboard" % admin in out
        assert "requests a second of its own" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


EXPLAIN_YAML = """
listeners: [{bind: '127.0.0.1:8080', pool: api}]
pools:
  api:
    algorithm: consistent_hash
    hash_key: header:X-User-ID
    backends: ['10.0.0.11:9000', '10.0.0.12:9000', {address: '10.0.0.13:9000', weight: 2}]
  sticky:
    algorithm: ip_hash
    backends: ['10.0.0.11:9000', '10.0.0.12:9000']
"""


def test_explain_matches_the_kernel_and_names_the_key(tmp_path):
    from fastlb._core import KetamaRing, key_hash

    cfg = tmp_path / "lb.yaml"
    cfg.write_text(EXPLAIN_YAML)
    names = [b"10.0.0.11:9000", b"10.0.0.12:9000", b"10.0.0.13:9000"]
    ring = KetamaRing(names, [1, 1, 2])
    for user in ("alice", "bob", "carol"):
        expected = names[ring.pick(None, None, key_hash(user.encode()))].decode()
        by_header = fastlb_cmd("explain", "-c", str(cfg), "--pool", "api", "--header", "X-User-ID: " + user)
        by_key = fastlb_cmd("explain", "-c", str(cfg), "--pool", "api", "--key", user, "--json")
        assert by_header.returncode == 0 and by_key.returncode == 0, by_header.stderr + by_key.stderr
        assert "-> %s" % expected in by_header.stdout
        decision = json.loads(by_key.stdout)
        assert decision["backend"] == expected and decision["key"] == user
        assert decision["key_hash"] == key_hash(user.encode())
    out = fastlb_cmd("explain", "-c", str(cfg), "--pool", "api")
    assert "round robin fallback" in out.stdout
    out = fastlb_cmd("explain", "-c", str(cfg), "--pool", "sticky", "--ip", "203.0.113.7", "--json")
    assert json.loads(out.stdout)["key"] == "203.0.113.7"
    out = fastlb_cmd("explain", "-c", str(cfg), "--pool", "nope")
    assert out.returncode == 2 and "no pool named 'nope'" in out.stderr


def test_quick_mode_hash_key(tmp_path):
    with BackendServer(name="h1") as b1, BackendServer(name="h2") as b2:
        proc = FastlbProcess(tmp_path, args=[
            "run", "--listen", "127.0.0.1:0", "--backend", b1.address, "--backend", b2.address,
            "--algorithm", "maglev", "--hash-key", "query:u"]).start()
        try:
            with httpx.Client() as c:
                got = {u: {c.get(proc.url("/?u=%s" % u)).headers["x-backend"] for _ in range(3)} for u in "abcdefgh"}
            assert all(len(v) == 1 for v in got.values())
            assert proc.terminate() == 0
        finally:
            proc.kill()
    out = fastlb_cmd("run", "--listen", "127.0.0.1:0", "--backend", "127.0.0.1:9001", "--algorithm", "maglev")
    assert out.returncode == 2 and "--hash-key: maglev needs a hash_key" in out.stderr


def test_demo_backend_port_in_use_is_a_clear_error():
    import socket

    port, admin = free_port(), free_port()
    bports = consecutive_free_ports(3)
    s = socket.socket()
    s.bind(("127.0.0.1", bports[1]))
    s.listen()
    try:
        out = subprocess.run(
            [sys.executable, "-m", "fastlb", "demo", "--port", str(port), "--admin-port", str(admin),
             "--backend-port", str(bports[0])], capture_output=True, text=True, timeout=60)
    finally:
        s.close()
    assert out.returncode == 1
    assert "cannot start demo backend on 127.0.0.1:%d" % bports[1] in out.stdout
    assert "Traceback" not in out.stdout + out.stderr

"""TLS termination: fastlb vs HAProxy, the same certificate, side by side.

    python benchmarks/tls_load.py [--duration 10] [--connections 50] [--repeat 1]
                                  [--only fastlb,haproxy] [--keys ecdsa,rsa]
                                  [--tests keepalive,handshake] [--json FILE]

    # the bulk-encryption side too: a 1 KiB JSON POST answered with 4 KiB
    python benchmarks/tls_load.py --tests keepalive --scenarios minimal,json_post
    # TLS 1.2 handshakes as well as 1.3
    python benchmarks/tls_load.py --tests handshake --handshake-versions 1.3,1.2

Setup (all on 127.0.0.1; every process started here is killed at the end, the temp
dir removed): the backends, pinning, CPU accounting and forwarding work are those of
e2e_load.py (whose helpers this imports): one nginx with --backends server blocks
answering ``200 {"ok":true}``, the proxy under test pinned to core 0, the load
generators and the backend nginx on core 1, fastlb with FASTLB_REQUIRE_EXTENSIONS=1.

Certificates: for each key type a private CA of that type and one server certificate
for ``localhost`` and ``127.0.0.1`` are made with fastlb.devcert: ``ecdsa`` (P-256)
and ``rsa`` (2048 bits). fastlb and HAProxy serve THE SAME certificate and key files
(HAProxy wants them in one PEM: their concatenation), with the same settings: TLS 1.2
minimum, Mozilla "intermediate" TLS 1.2 ciphers (fastlb's default,
fastlb.model.INTERMEDIATE_CIPHERS, given to HAProxy as ssl-default-bind-ciphers),
OpenSSL's default TLS 1.3 suites and groups, ALPN http/1.1, session tickets on (both
defaults). One proxy process per (proxy, key type), all started first; the
measurements interleave (repetition -> key type -> test -> proxy).

Two tests:

  * ``keepalive``: HTTPS keep-alive throughput. wrk (which speaks TLS itself),
    1 thread, N connections, fixed duration, --latency, after a short warm-up, over
    https; each connection makes one handshake at the start and then only requests,
    so this is the cost of the record layer (decrypt request, encrypt response) on top
    of proxying (compare e2e_load.py's plain-HTTP numbers). Scenarios as in e2e_load:
    ``minimal`` (GET /) and, with --scenarios, ``json_post``. Reported: req/s, p50, p99
    and the proxy's CPU-µs per request (CPU time delta of the proxy's process tree /
    requests wrk completed). The N handshakes at the start of the measured run are
    in it: about N x the CPU-µs per handshake below, spread over all the requests
    (1-3 µs/req for 50 connections and a 3 s run, a third of that at 10 s).
  * ``handshake``: the full-handshake rate. --clients ``openssl s_time -new``
    processes in parallel on core 1, each connecting, doing a full handshake and
    closing, in a loop, for --duration seconds. ``-new`` never offers a session (no
    ticket, no session id: s_time passes no session to the connection), so every
    handshake is a full one with the certificate's signature and a fresh key exchange,
    whatever resumption the server supports. No HTTP request is sent (no -www), so
    no backend is involved. Reported: handshakes per second (the clients' completed
    connections / wall time of the run) and the proxy's CPU-µs per handshake (proxy
    CPU delta / handshakes completed). s_time runs until its clock's second passes
    the end, so a run lasts --duration to --duration + 1 s: the wall time is measured
    here, not taken from s_time's whole-second "real seconds". TLS 1.3 by default;
    --handshake-versions 1.3,1.2 adds TLS 1.2. One ``openssl s_client`` per proxy and key type prints what was
    negotiated (version, cipher, key-exchange group, signature, ALPN, session tickets
    sent), shown under the table: that it is the same for both proxies is part of
    the comparison. For fastlb the server's own counters (admin /metrics:
    fastlb_tls_handshakes_total and _failures_total) are read around every run
    and shown as "server ok/failed": the client's count should match.

Every load generator runs on core 1 with the backend; OpenSSL 3.0's client handshake
costs about as much CPU as the server's, so the clients rarely saturate the proxy: a
table whose proxies all stay below 90% CPU says so, and its handshake/s then measure
the clients more than the proxies; CPU-µs per handshake is the comparable number.

A run with any wrk socket error or non-2xx answer, or an s_time that fails (it stops at
the first failed handshake), is reported as FAILED (exit 1), never averaged in. The
CPU% column is the proxy's core utilisation: near 100 the proxy is the bottleneck;
well below it, core 1 (the clients) is.

Numbers are only comparable within one run on a quiet machine. Total time is about
keys x proxies x (keepalive scenarios x (warm-up + duration x repeat) + handshake
versions x (2 + (duration + 1) x repeat)) plus a few seconds per proxy.
"""

import argparse
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from e2e_load import (  # noqa: E402
    API_KEY, BACKEND_BODY, CLK_TCK, HOST, LOAD_CORE, POST_ANSWER, POST_BODY, POST_PATH, PROXY_CORE, REPO,
    START_TIMEOUT, Proc, cpu_seconds,
    dechunk, fastlb_command, fmt, free_port, log, parse_wrk, run_wrk, start_backend, start_fastlb, start_haproxy,
    tail_logs, taskset, wait_port, write_lua,
)

try:
    from fastlb import devcert
    from fastlb.model import INTERMEDIATE_CIPHERS
except ImportError:  # run from a checkout without the package installed
    sys.path.append(REPO)
    from fastlb import devcert
    from fastlb.model import INTERMEDIATE_CIPHERS

PROXIES = ("fastlb", "haproxy")
KEYS = {"ecdsa": ("ECDSA P-256", False), "rsa": ("RSA 2048", True)}  # name -> (label, rsa=)
TESTS = ("keepalive", "handshake")
SCENARIOS = ("minimal", "json_post")
VERSIONS = {"1.3": "-tls1_3", "1.2": "-tls1_2"}
CERT_NAMES = ["localhost", HOST]
SANITY_REQUESTS = (("GET", "/", b""), ("POST", POST_PATH, POST_BODY.encode()))


# -- certificates and proxies -------------------------------------------------------------


def make_certs(workdir, keys):
    """{key: {"cert", "key", "combined", "ca"}}: a CA of each key type and a server certificate."""
    out = {}
    for key in keys:
        d = os.path.join(workdir, "certs-" + key)
        ca, _, _ = devcert.ensure_ca(d, rsa=KEYS[key][1])
        cert, keyfile = devcert.issue(d, CERT_NAMES, rsa=KEYS[key][1])
        combined = os.path.join(d, "combined.pem")  # HAProxy: certificate then key in one file
        with open(cert, "rb") as c, open(keyfile, "rb") as k:
            data = c.read() + k.read()
        fd = os.open(combined, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        out[key] = {"cert": cert, "key": keyfile, "combined": combined, "ca": ca}
    return out


def haproxy_tls(workdir, port, backends, connections, key, certs):
    global_extra = """\
        ssl-default-bind-ciphers %s
        ssl-default-bind-options ssl-min-ver TLSv1.2
        tune.ssl.default-dh-param 2048
    """ % INTERMEDIATE_CIPHERS
    return start_haproxy(workdir, port, backends, connections, name="haproxy-" + key,
                         bind_options=" ssl crt %s alpn http/1.1" % certs["combined"], proto="https",
                         global_extra=global_extra)


def fastlb_tls(workdir, port, backends, connections, key, certs, cmd, admin_port):
    listener = {"tls": {"certificates": [{"cert": certs["cert"], "key": certs["key"]}]}}
    top = {"admin": {"bind": "%s:%d" % (HOST, admin_port)}}
    return start_fastlb(workdir, port, backends, connections, cmd, listener=listener, top=top, name="fastlb-" + key)


def client_context(certs):
    ctx = ssl.create_default_context(cafile=certs["ca"])  # verifies the chain and the IP SAN
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def request(port, certs=None, method="GET", path="/", body=b"", timeout=5.0):
    """One request with Connection: close: (status, body). Over a verified TLS connection
    when certs are given (the chain and the 127.0.0.1 SAN are checked), else plain."""
    with socket.create_connection((HOST, port), timeout=timeout) as raw:
        with client_context(certs).wrap_socket(raw, server_hostname=HOST) if certs else raw as s:
            head = "%s %s HTTP/1.1\r\nHost: %s:%d\r\nX-API-Key: %s\r\nConnection: close\r\n" % (
                method, path, HOST, port, API_KEY)
            if body:
                head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
            s.sendall(head.encode() + b"\r\n" + body)
            data = bytearray()
            while True:
                try:
                    chunk = s.recv(65536)
                except ssl.SSLZeroReturnError:
                    break
                if not chunk:
                    break
                data += chunk
    head, _, payload = bytes(data).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    if b"transfer-encoding: chunked" in head.lower():
        payload = dechunk(payload)
    return status, payload


def sanity(port, certs, expected):
    """A GET / and the json_post POST over https answer what the backend answers directly."""
    for (method, path, body), want in zip(SANITY_REQUESTS, expected):
        status, got = request(port, certs, method, path, body)
        if status != 200 or got != want:
            raise RuntimeError("sanity %s %s over https answered %s %r (the backend: 200 %r)"
                               % (method, path, status, got[:200], want[:200]))


def negotiated(port, version=None):
    """What one ``openssl s_client`` negotiates (it reads the answer to a GET, so the
    server's post-handshake session tickets arrive and are counted)."""
    argv = ["openssl", "s_client", "-connect", "%s:%d" % (HOST, port), "-servername", "localhost",
            "-alpn", "http/1.1", "-ign_eof"]
    if version:
        argv.append(VERSIONS[version])
    req = "GET / HTTP/1.1\r\nHost: localhost\r\nX-API-Key: %s\r\nConnection: close\r\n\r\n" % API_KEY
    try:
        r = subprocess.run(argv, input=req, capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return {"error": "s_client timed out"}
    out = r.stdout + r.stderr
    info = {}
    for key, pattern in (("protocol", r"^New, (\S+), Cipher is (\S+)"), ("group", r"Server Temp Key: ([^\n]+)"),
                         ("signature", r"Peer signature type: (\S+)"), ("alpn", r"ALPN protocol: (\S+)")):
        m = re.search(pattern, out, re.M)
        if m:
            if key == "protocol":
                info["protocol"], info["cipher"] = m.group(1).rstrip(","), m.group(2)
            else:
                info[key] = m.group(1).strip()
    info["tickets"] = out.count("Post-Handshake New Session Ticket arrived") or len(
        re.findall(r"TLS session ticket lifetime hint", out))
    m = re.search(r"^HTTP/1\.1 (\d+)", out, re.M)
    info["http_status"] = int(m.group(1)) if m else None
    return info


def describe(info):
    if "error" in info or "protocol" not in info:
        return info.get("error", "s_client printed no session")
    return "%s %s, key exchange %s, %s signature, ALPN %s, %d session ticket(s), HTTP %s" % (
        info["protocol"], info["cipher"], info.get("group", "?"), info.get("signature", "?"),
        info.get("alpn", "none"), info["tickets"], info["http_status"])


def fastlb_tls_counters(admin_port):
    """(handshakes completed, {reason: failures}) from fastlb's /metrics, or None."""
    try:
        with urllib.request.urlopen("http://%s:%d/metrics" % (HOST, admin_port), timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    ok = sum(float(v) for v in re.findall(r"^fastlb_tls_handshakes_total\{[^}]*\} (\S+)", text, re.M))
    failed = {}
    for reason, v in re.findall(r'^fastlb_tls_handshake_failures_total\{[^}]*reason="([^"]+)"[^}]*\} (\S+)',
                                text, re.M):
        failed[reason] = failed.get(reason, 0) + float(v)
    return int(ok), {k: int(v) for k, v in failed.items()}


# -- measuring ------------------------------------------------------------------------------


def check_alive(proc):
    if proc.p.poll() is not None:
        raise RuntimeError("proxy exited with %s\n%s" % (proc.p.returncode, tail_logs(proc.logs)))


def measure_keepalive(proc, port, args, script):
    check_alive(proc)
    before = cpu_seconds(proc.pid)
    out = run_wrk(port, args.duration, args.connections, script, scheme="https")
    after = cpu_seconds(proc.pid)
    res = parse_wrk(out)
    res["cpu_s"] = after - before
    res["cpu_util"] = (after - before) / args.duration
    res["cpu_us_per_req"] = (after - before) * 1e6 / res["requests"] if res["requests"] else None
    res["wrk_output"] = out
    res["ok"] = bool(res["requests"]) and not res["errors"] and not res["non2xx"]
    return res


_STIME = re.compile(r"^(\d+) connections in ([\d.]+)s;", re.M)


def run_s_time(port, seconds, clients, version, workdir, tag, procs):
    """`clients` parallel `openssl s_time -new` on LOAD_CORE: (handshakes, wall seconds, outputs, failures)."""
    argv = ["openssl", "s_time", "-connect", "%s:%d" % (HOST, port), "-new", "-time", str(seconds), VERSIONS[version]]
    started = []
    t0 = time.monotonic()
    try:
        for i in range(clients):
            p = Proc("s_time-%s-%d" % (tag, i), taskset(LOAD_CORE, argv), workdir)
            procs.append(p)
            started.append(p)
        for p in started:
            try:
                p.p.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                p.stop()
        wall = time.monotonic() - t0
    finally:
        for p in started:
            p.stop()
            procs.remove(p)
    total, outputs, failures = 0, [], []
    for p in started:
        with open(p.out, errors="replace") as f:
            out = f.read()
        with open(p.err, errors="replace") as f:
            err = f.read()
        outputs.append(out + err)
        m = _STIME.search(out)
        if p.p.returncode != 0 or not m:
            failures.append("%s exited %s: %s" % (p.name, p.p.returncode, (err or out).strip()[-500:]))
        elif m:
            total += int(m.group(1))
    return total, wall, outputs, failures


def measure_handshake(proc, port, args, version, workdir, tag, procs, admin_port=None):
    check_alive(proc)
    server_before = fastlb_tls_counters(admin_port) if admin_port else None
    before = cpu_seconds(proc.pid)
    total, wall, outputs, failures = run_s_time(port, args.duration, args.clients, version, workdir, tag, procs)
    after = cpu_seconds(proc.pid)
    res = {"handshakes": total, "wall_s": wall, "hs_per_s": total / wall if wall else 0.0,
           "cpu_s": after - before, "cpu_util": (after - before) / wall if wall else 0.0,
           "cpu_us_per_handshake": (after - before) * 1e6 / total if total else None,
           "failures": failures, "ok": bool(total) and not failures, "s_time_output": outputs}
    if server_before is not None:
        time.sleep(0.2)  # the last closes are processed
        server_after = fastlb_tls_counters(admin_port)
        if server_after is not None:
            res["server_handshakes"] = server_after[0] - server_before[0]
            res["server_failures"] = {k: v - server_before[1].get(k, 0) for k, v in server_after[1].items()
                                      if v - server_before[1].get(k, 0)}
    return res


def median_by(runs, key):
    """The run with the median `key` (the others' values kept as lists)."""
    ordered = sorted(runs, key=lambda r: float("inf") if r[key] is None else r[key])
    res = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        res["runs_" + key] = [r[key] for r in runs]
    return res


# -- output ---------------------------------------------------------------------------------


def ratio(a, b):
    return "%.2fx" % (a / b) if a is not None and b else "-"


def print_keepalive(key, scenario, rows, args):
    print()
    print("keepalive / %s / %s  (HTTPS, wrk -t1 -c%d -d%ds%s; proxy on core %s, wrk+backend on core %s)" % (
        KEYS[key][0], scenario, args.connections, args.duration,
        ", median of %d" % args.repeat if args.repeat > 1 else "", PROXY_CORE, LOAD_CORE))
    base = rows.get("haproxy")
    hdr = "%-10s %11s %9s %9s %6s %12s %15s %15s %8s" % (
        "proxy", "req/s", "p50 ms", "p99 ms", "CPU%", "CPU-us/req", "req/s vs hap", "CPU/req vs hap", "errors")
    print(hdr)
    print("-" * len(hdr))
    for name in PROXIES:
        if name not in rows:
            continue
        r = rows[name]
        print("%-10s %11s %9s %9s %6.0f %12s %15s %15s %8d" % (
            name, fmt(r["rps"], ",.0f"), fmt(r["p50_ms"], ".3f"), fmt(r["p99_ms"], ".3f"), r["cpu_util"] * 100,
            fmt(r["cpu_us_per_req"], ".1f"), ratio(r["rps"], base and base["rps"]),
            ratio(r["cpu_us_per_req"], base and base["cpu_us_per_req"]), r["errors"] + r["non2xx"]))
    sys.stdout.flush()


def print_handshake(key, version, rows, args, info):
    print()
    print("handshake / %s / TLS %s  (%d x openssl s_time -new -time %d on core %s; proxy on core %s%s)" % (
        KEYS[key][0], version, args.clients, args.duration, LOAD_CORE, PROXY_CORE,
        ", median of %d" % args.repeat if args.repeat > 1 else ""))
    base = rows.get("haproxy")
    hdr = "%-10s %11s %6s %12s %14s %14s %20s" % (
        "proxy", "handshake/s", "CPU%", "CPU-us/hs", "hs/s vs hap", "CPU/hs vs hap", "server ok/failed")
    print(hdr)
    print("-" * len(hdr))
    for name in PROXIES:
        if name not in rows:
            continue
        r = rows[name]
        server = "-"
        if "server_handshakes" in r:
            server = "%d/%d" % (r["server_handshakes"], sum(r["server_failures"].values()))
        print("%-10s %11s %6.0f %12s %14s %14s %20s" % (
            name, fmt(r["hs_per_s"], ",.0f"), r["cpu_util"] * 100, fmt(r["cpu_us_per_handshake"], ".1f"),
            ratio(r["hs_per_s"], base and base["hs_per_s"]),
            ratio(r["cpu_us_per_handshake"], base and base["cpu_us_per_handshake"]), server))
        if r.get("server_failures"):
            print("%-10s   server-side handshake failures: %s" % (
                "", ", ".join("%s %d" % kv for kv in sorted(r["server_failures"].items()))))
    if all(r["cpu_util"] < 0.9 for r in rows.values()):
        print("  (every proxy below 90%% CPU: the clients on core %s are the bound, handshake/s says little; "
              "compare CPU-us/hs)" % LOAD_CORE)
    for name in PROXIES:
        if (name, key, version) in info:
            print("  %-8s negotiated: %s" % (name, describe(info[(name, key, version)])))
    sys.stdout.flush()


# -- the run ----------------------------------------------------------------------------------


def comma_list(text, allowed, what, ap):
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        ap.error("unknown or no %s: %s (choose from %s)" % (what, ", ".join(bad) or "-", ", ".join(allowed)))
    return items


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="measured seconds per run (1-120)")
    ap.add_argument("--warmup", type=int, default=2, help="keepalive warm-up seconds before the first run (0-10); "
                    "the handshake test warms up 1 s when this is not 0")
    ap.add_argument("--repeat", type=int, default=1, help="measured runs per test, median reported (1-5)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections for keepalive (1-2000)")
    ap.add_argument("--clients", type=int, default=4, help="parallel s_time processes for handshake (1-8)")
    ap.add_argument("--only", default=",".join(PROXIES), help="comma list of: " + ",".join(PROXIES))
    ap.add_argument("--keys", default=",".join(KEYS), help="comma list of: " + ",".join(KEYS))
    ap.add_argument("--tests", default=",".join(TESTS), help="comma list of: " + ",".join(TESTS))
    ap.add_argument("--scenarios", default="minimal", help="keepalive scenarios, comma list of: " + ",".join(SCENARIOS))
    ap.add_argument("--handshake-versions", default="1.3", help="comma list of: " + ",".join(VERSIONS))
    ap.add_argument("--backends", type=int, default=3, help="backend server blocks (1-8)")
    ap.add_argument("--fastlb-cmd", default=None, help='override, e.g. "fastlb" or "python -m fastlb"')
    ap.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, certificates, logs)")
    args = ap.parse_args(argv)

    if not 1 <= args.duration <= 120 or not 0 <= args.warmup <= 10:
        ap.error("--duration must be 1..120 and --warmup 0..10 seconds")
    if not 1 <= args.connections <= 2000 or not 1 <= args.backends <= 8 or not 1 <= args.repeat <= 5 \
            or not 1 <= args.clients <= 8:
        ap.error("--connections must be 1..2000, --backends 1..8, --repeat 1..5 and --clients 1..8")
    only = comma_list(args.only, PROXIES, "proxy", ap)
    keys = comma_list(args.keys, tuple(KEYS), "key type", ap)
    tests = comma_list(args.tests, TESTS, "test", ap)
    scenarios = comma_list(args.scenarios, SCENARIOS, "scenario", ap)
    versions = comma_list(args.handshake_versions, tuple(VERSIONS), "TLS version", ap)
    for tool in ("wrk", "nginx", "openssl"):
        if not shutil.which(tool):
            log("tls_load: %s is required (wrk: keep-alive load, openssl: handshakes, nginx: backend); not found"
                % tool)
            return 2
    if not shutil.which("taskset"):
        log("tls_load: taskset not found: processes will not be pinned to cores")
    if (os.cpu_count() or 1) < 2:
        log("tls_load: fewer than 2 CPUs: proxy and load generator will share a core")

    workdir = tempfile.mkdtemp(prefix="fastlb-tls-")
    procs = []
    results = {"meta": {}, "keepalive": {}, "handshake": {}, "negotiated": {}, "failed": []}
    try:
        certs = make_certs(workdir, keys)
        backend_ports = [free_port() for _ in range(args.backends)]
        procs.append(start_backend(workdir, backend_ports))
        expected = []
        for method, path, body in SANITY_REQUESTS:
            status, got = request(backend_ports[0], None, method, path, body)
            if status != 200 or (path == "/" and got != BACKEND_BODY.encode()):
                raise RuntimeError("backend nginx answered %s %s with %s %r" % (method, path, status, got[:200]))
            expected.append(got)
        if expected[1] != POST_ANSWER.encode():
            raise RuntimeError("the backend answers the json_post POST with %d bytes, not the %d-byte answer"
                               % (len(expected[1]), len(POST_ANSWER)))
        script = write_lua(workdir)
        results["meta"] = {
            "duration_s": args.duration, "warmup_s": args.warmup, "repeat": args.repeat,
            "connections": args.connections, "clients": args.clients, "backends": args.backends,
            "cpus": os.cpu_count(), "clk_tck": CLK_TCK, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "openssl": subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip(),
            "python_ssl": ssl.OPENSSL_VERSION, "ciphers_tls12": INTERMEDIATE_CIPHERS, "proxies": {},
            "keys": {k: KEYS[k][0] for k in keys},
        }
        log("backends: nginx on %s; %s" % (", ".join("%s:%d" % (HOST, p) for p in backend_ports),
                                            results["meta"]["openssl"]))

        running = {}  # (name, key) -> (proc, port, logs, admin port)
        for name in only:
            try:
                if name == "fastlb":
                    cmd = fastlb_command(args.fastlb_cmd, workdir)
                    results["meta"]["proxies"][name] = cmd[3] + "; ssl: " + ssl.OPENSSL_VERSION
                else:
                    if not shutil.which("haproxy"):
                        raise RuntimeError("haproxy is not installed")
                    vv = subprocess.run(["haproxy", "-vv"], capture_output=True, text=True).stdout
                    m = re.search(r"Running on OpenSSL version : (.+)", vv)
                    results["meta"]["proxies"][name] = vv.splitlines()[0] + ("; ssl: " + m.group(1) if m else "")
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                log("skipping %s: %s" % (name, exc))
                continue
            log("%s: %s" % (name, results["meta"]["proxies"][name]))
            for key in keys:
                port = free_port()
                admin_port = None
                if name == "fastlb":
                    admin_port = free_port()
                    proc, extra = fastlb_tls(workdir, port, backend_ports, args.connections, key, certs[key], cmd,
                                             admin_port)
                else:
                    proc, extra = haproxy_tls(workdir, port, backend_ports, args.connections, key, certs[key])
                procs.append(proc)
                logs = proc.logs + tuple(extra)
                try:
                    wait_port(port, proc.p, START_TIMEOUT, logs)
                    sanity(port, certs[key], expected)
                except (RuntimeError, OSError, ssl.SSLError) as exc:
                    log("skipping %s/%s: %s" % (name, key, exc))
                    if "--- " not in str(exc):
                        log(tail_logs(logs))
                    proc.stop()
                    procs.remove(proc)
                    continue
                running[(name, key)] = (proc, port, logs, admin_port)
                for v in versions if "handshake" in tests else ("1.3",):
                    info = negotiated(port, v)
                    results["negotiated"]["%s/%s/%s" % (name, key, v)] = info
                    log("%s/%s TLS %s: %s" % (name, key, v, describe(info)))

        per_run = (len(scenarios) * args.duration if "keepalive" in tests else 0) + \
            (len(versions) * (args.duration + 1) if "handshake" in tests else 0)
        warm = (len(scenarios) * args.warmup if "keepalive" in tests else 0) + \
            (len(versions) * 2 if "handshake" in tests and args.warmup else 0)
        log("measuring %s x %s: about %ds" % (
            ", ".join("%s/%s" % k for k in running) or "nothing", ", ".join(tests),
            len(running) * (warm + per_run * args.repeat)))

        runs = {}
        failed = set()  # (name, key): the proxy died or a load tool could not run
        failed_runs = set()
        for rep in range(args.repeat):
            for key in keys:
                jobs = []
                if "keepalive" in tests:
                    jobs += [("keepalive", sc) for sc in scenarios]
                if "handshake" in tests:
                    jobs += [("handshake", v) for v in versions]
                for test, what in jobs:
                    for name in PROXIES:
                        if (name, key) not in running or (name, key) in failed:
                            continue
                        proc, port, logs, admin_port = running[(name, key)]
                        label = "%s/%s/%s/%s" % (test, key, what, name)
                        try:
                            if test == "keepalive":
                                if rep == 0 and args.warmup:
                                    log("%s: warm-up %ds" % (label, args.warmup))
                                    run_wrk(port, args.warmup, args.connections, script[what], scheme="https")
                                log("%s: run %d/%d, %ds" % (label, rep + 1, args.repeat, args.duration))
                                res = measure_keepalive(proc, port, args, script[what])
                                detail = "%d socket errors, %d non-2xx, %d requests" % (
                                    res["errors"], res["non2xx"], res["requests"])
                                saved = res["wrk_output"]
                            else:
                                if rep == 0 and args.warmup:
                                    log("%s: warm-up 1s" % label)
                                    run_s_time(port, 1, args.clients, what, workdir, "warm", procs)
                                log("%s: run %d/%d, %ds" % (label, rep + 1, args.repeat, args.duration))
                                res = measure_handshake(proc, port, args, what, workdir, "%s-%s" % (name, key),
                                                        procs, admin_port)
                                detail = "; ".join(res["failures"]) or "%d handshakes" % res["handshakes"]
                                saved = "\n".join(res["s_time_output"])
                        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                            log("%s failed: %s" % (label, exc))
                            if "--- " not in str(exc):
                                log(tail_logs(logs))
                            failed.add((name, key))
                            continue
                        path = os.path.join(workdir, "%s-%d.txt" % (label.replace("/", "-"), rep + 1))
                        with open(path, "w") as f:
                            f.write(saved)
                        if not res["ok"]:
                            log("%s FAILED: %s (see %s)" % (label, detail, path))
                            failed_runs.add(label)
                            continue
                        if res.get("server_failures"):
                            log("%s: note: fastlb counted handshake failures %s" % (label, res["server_failures"]))
                        runs.setdefault((test, key, what, name), []).append(res)

        for (test, key, what, name), got in runs.items():
            label = "%s/%s/%s/%s" % (test, key, what, name)
            if (name, key) in failed or label in failed_runs:
                continue
            med = median_by(got, "cpu_us_per_req" if test == "keepalive" else "cpu_us_per_handshake")
            med.pop("wrk_output", None)
            med.pop("s_time_output", None)
            results[test].setdefault(key, {}).setdefault(what, {})[name] = med
        results["failed"] = sorted(failed_runs) + sorted("%s/%s" % k for k in failed)

        for (name, key), (proc, _, _, _) in running.items():
            rc = proc.stop()
            procs.remove(proc)
            if name == "fastlb" and rc != 0:
                log("note: fastlb (%s) exited %s on SIGTERM (expected 0)" % (key, rc))

        info = {tuple(k.split("/")): v for k, v in results["negotiated"].items()}
        for key in keys:
            for sc in scenarios:
                rows = results["keepalive"].get(key, {}).get(sc)
                if rows:
                    print_keepalive(key, sc, rows, args)
            for v in versions:
                rows = results["handshake"].get(key, {}).get(v)
                if rows:
                    print_handshake(key, v, rows, args, info)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
            log("wrote %s" % args.json)
        if results["failed"]:
            log("tls_load: FAILED (left out of the tables): %s" % ", ".join(results["failed"]))
            return 1
    except RuntimeError as exc:
        log("tls_load: %s" % exc)
        return 1
    finally:
        for proc in reversed(procs):
            proc.stop()
        if args.keep_tmp:
            log("kept %s" % workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

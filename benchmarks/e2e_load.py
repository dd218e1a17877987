"""End-to-end load comparison: fastlb vs HAProxy vs nginx in front of the same backends.

    python benchmarks/e2e_load.py [--duration 10] [--connections 50] [--repeat 1]
                                  [--only fastlb,haproxy,nginx] [--json FILE]

    # the cost of observability: metrics off, and the access log on, against the defaults
    python benchmarks/e2e_load.py --only fastlb,fastlb-metrics-off,fastlb-access-log,haproxy
    # the cost of the entry guard: a route with an ip rate limit, an ACL and API-key auth
    python benchmarks/e2e_load.py --only fastlb,fastlb-guard,haproxy

Setup (all on 127.0.0.1, every process started here is killed at the end):
  * backends: one nginx (1 worker, keep-alive) with --backends server blocks on
    their own ports, each answering ``200 {"ok":true}``;
  * the proxy under test, round robin over those backends, pinned to core 0
    (``taskset -c 0``); wrk and the backend nginx share core 1;
  * wrk, 1 thread, N connections, fixed duration, ``--latency``, after a short
    warm-up run; all proxies run side by side and the measurements interleave
    (repetition -> scenario -> proxy); three scenarios: ``minimal`` (GET / with only Host),
    ``realistic`` (a browser/SDK-like API request of about a dozen fields) and
    ``json_post`` (a 1 KiB JSON POST answered with 4 KiB of JSON).
  * like for like: HAProxy and nginx do the forwarding work fastlb does (X-Forwarded-For
    appended, X-Forwarded-Proto set, X-Request-ID kept or generated) and keep at least as
    many idle upstream connections as wrk opens; fastlb runs with
    FASTLB_REQUIRE_EXTENSIONS=1 (the compiled core, or it does not start).
  * a run with any socket error or non-2xx answer is reported as FAILED (exit 1),
    never averaged into the table.

Measured per proxy and scenario: req/s, p50, p99 (wrk), and the proxy's CPU time
(utime+stime of the proxy process and all its descendants, all threads, from
/proc/PID/stat) over the measured run divided by the requests wrk completed:
CPU-µs per request, the number that says how much work the proxy does per request
independent of how fast the load generator is. Ratios are against HAProxy and
nginx from the same run. The CPU% column is the proxy's core utilisation during
the run: near 100 the proxy is the bottleneck; well below, core 1 (wrk + backend)
is, and per-request CPU rises a little because the proxy batches less.

Numbers are only comparable within one run on a quiet machine: run nothing else
(test suites!) meanwhile, or use --repeat 3 to report the median run. Total time
is about proxies x scenarios x (warm-up + duration x repeat) plus a few seconds.

A proxy that is not installed is skipped with a message. fastlb runs as
``python -m fastlb run`` from the installed package when there is one, from this
checkout otherwise (the header says which); --fastlb-cmd overrides the command.
"""

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = "127.0.0.1"
PROXY_CORE = "0"
LOAD_CORE = "1"  # wrk and the backend nginx
CLK_TCK = os.sysconf("SC_CLK_TCK")
PROXIES = ("fastlb", "haproxy", "nginx", "fastlb-metrics-off", "fastlb-access-log", "fastlb-guard")
# fastlb variants measured only when named in --only: the cost of observability.
# "fastlb" runs the defaults (metrics on, no access log); "fastlb-metrics-off" sets
# metrics.enabled: false; "fastlb-access-log" writes the JSON access log to a file.
DEFAULT_PROXIES = ("fastlb", "haproxy", "nginx")
FASTLB_VARIANTS = {
    "fastlb": {},
    "fastlb-metrics-off": {"metrics": {"enabled": False}},
    "fastlb-access-log": {"access_log": {"path": "access.log"}},
    "fastlb-guard": {},  # a guarded route instead of the plain pool (start_fastlb, GUARD_ROUTE)
}
# Every request of every proxy carries this API key (wrk -H), so that the guard
# variant and the others send the same bytes; only fastlb-guard checks it.
API_KEY = "bench-0123456789abcdef"
# fastlb-guard's route: one rate-limit policy (its limit never reached: the cost is
# the check), an ACL and API-key authentication; issue 11's target is <= +10% CPU-us/req.
GUARD_ROUTE = {
    "path_prefix": "/", "pool": "default",
    "access": {"allow": ["127.0.0.0/8"], "deny": ["192.0.2.0/24"]},
    "rate_limits": [{"key": "ip", "rate": "1000000/s", "burst": 1000000}],
    "auth": {"api_key": {"header": "X-API-Key", "keys_sha256": [hashlib.sha256(API_KEY.encode()).hexdigest()]}},
}
SCENARIOS = ("minimal", "realistic", "json_post")
START_TIMEOUT = 15.0  # seconds for a proxy to accept connections
BACKEND_BODY = '{"ok":true}'
# The json_post scenario: a 1 KiB JSON body up, a 4 KiB JSON answer down (an API write).
POST_PATH = "/api/v1/carts/checkout"
POST_BODY = '{"items":[' + ",".join('{"sku":"SKU-%05d","qty":%d}' % (i, i % 7 + 1) for i in range(36)) + ']}'
POST_BODY = POST_BODY[:-2] + " " * (1024 - len(POST_BODY)) + "]}"
POST_ANSWER = '{"id":"ord_1","lines":"' + "x" * (4096 - 35) + '","ok":true}'

# A realistic API request head as browsers and SDKs send it: a JWT bearer token,
# several cookies, W3C traceparent, a request id. About 1.2 KB, 13 fields with Host.
_JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6IjJmNGE5YjE3In0."
    "eyJpc3MiOiJodHRwczovL2F1dGguZXhhbXBsZS5jb20vIiwic3ViIjoidXNlcl8wMUg4WkQ3"
    "S1FWNFJOM1pWNlpNMFdQNFQyIiwiYXVkIjoiYXBpLmV4YW1wbGUuY29tIiwiaWF0IjoxNzE2"
    "MjM5MDIyLCJleHAiOjE3MTYyNDI2MjIsInNjb3BlIjoib3JkZXJzOnJlYWQgb3JkZXJzOndy"
    "aXRlIHByb2ZpbGUifQ."
    "Tm9UQVJlYWxTaWduYXR1cmVKdXN0QmFzZTY0VXJsTG9va2luZ0J5dGVzRm9yVGhlQmVuY2hN"
    "YXJrX3Jlc3VsdHNfYXJlX25vdF9hdXRoZW50aWNhdGVkLWZhc3RsYg"
)
REALISTIC_PATH = "/api/v1/orders?status=open&limit=20&cursor=eyJpZCI6MTIzNDV9"
REALISTIC_HEADERS = [
    (
        "User-Agent",
        "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    ),
    ("Accept", "application/json, text/plain, */*"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Accept-Language", "en-US,en;q=0.9,fr;q=0.8"),
    ("Authorization", "Bearer " + _JWT),
    (
        "Cookie",
        "session_id=s%3A9f8e7d6c5b4a39281706f5e4d3c2b1a0.Jk3mN8pQ2rS5tV7wX9yZ; csrftoken=Zx8Cv7Bn6Mm5Ll4Kk3Jj2Hh1Gg0Ff; "
        "_ga=GA1.1.1234567890.1716239022; _ga_ABC123DEF4=GS1.1.1716239022.3.1.1716239100.0.0.0; "
        "theme=dark; locale=en-US",
    ),
    ("Referer", "https://app.example.com/orders?tab=open"),
    ("Origin", "https://app.example.com"),
    ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    ("X-Request-Id", "7f1c2e9a-3b4d-4c5e-8f6a-9b0c1d2e3f4a"),
    ("Content-Type", "application/json"),
    ("Sec-Fetch-Mode", "cors"),
]


# -- small utilities -------------------------------------------------------------------


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    """A port the kernel just handed out on 127.0.0.1 (tiny race, fine for a benchmark)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port, proc, timeout, logs=()):
    """Wait until HOST:port accepts; raise with the process's output if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("exited with %s before listening\n%s" % (proc.returncode, tail_logs(logs)))
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("not accepting on %s:%d after %.0fs\n%s" % (HOST, port, timeout, tail_logs(logs)))


def tail_logs(paths, n=40):
    out = []
    for p in paths:
        try:
            with open(p, errors="replace") as f:
                lines = f.read().splitlines()[-n:]
        except OSError:
            continue
        if lines:
            out.append("--- %s ---\n%s" % (os.path.basename(p), "\n".join(lines)))
    return "\n".join(out) or "(no output)"


def http_get(port, path="/", timeout=5.0, method="GET", body=None):
    """One request with Connection: close (a GET, or ``method`` with ``body``); returns
    (status, body). For sanity checks only."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        length = "" if body is None else "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        s.sendall(("%s %s HTTP/1.1\r\nHost: %s:%d\r\nX-API-Key: %s\r\n%sConnection: close\r\n\r\n" % (
            method, path, HOST, port, API_KEY, length)).encode() + (body or b""))
        data = bytearray()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    return status, body


def dechunk(data):
    out = bytearray()
    while data:
        line, _, data = data.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)


def process_tree(pid):
    """pid and all its descendants (from /proc/*/stat ppid)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


def cpu_seconds(pid):
    """utime+stime (+cutime+cstime: reaped children) of pid's whole tree, in seconds.

    /proc/PID/stat fields 14-17 (proc(5)), in clock ticks; the per-process
    numbers already include every thread of the process.
    """
    ticks = 0
    for p in process_tree(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                stat = f.read()
        except OSError:
            continue  # exited between listing and reading
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17
        ticks += sum(int(x) for x in fields[11:15])
    return ticks / CLK_TCK


class Proc:
    """A started process with its log files, stopped politely then forcibly."""

    def __init__(self, name, argv, workdir, cwd=None, env=None):
        self.name = name
        self.out = os.path.join(workdir, "%s.out" % name)
        self.err = os.path.join(workdir, "%s.err" % name)
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.p = subprocess.Popen(
                argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=cwd, env=env, start_new_session=True
            )

    @property
    def pid(self):
        return self.p.pid

    @property
    def logs(self):
        return (self.out, self.err)

    def stop(self, timeout=10.0):
        if self.p.poll() is not None:
            return self.p.returncode
        try:
            self.p.send_signal(signal.SIGTERM)
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            # the process group holds its children (nginx workers, fastlb workers)
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            return self.p.wait(timeout)


def taskset(core, argv):
    return (["taskset", "-c", core] if shutil.which("taskset") else []) + argv


# -- the servers ---------------------------------------------------------------------------


NGINX_COMMON = """\
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
"""


def start_backend(workdir, ports):
    d = os.path.join(workdir, "backend")
    os.makedirs(d)
    with open(os.path.join(d, "answer.json"), "w") as f:
        f.write(POST_ANSWER)
    # nginx workers run as another user when started as root: let them read it
    for path in (workdir, d):
        os.chmod(path, 0o755)
    os.chmod(os.path.join(d, "answer.json"), 0o644)
    servers = "\n".join(
        textwrap.dedent(
            """\
            server {{
                listen {host}:{port} backlog=4096;
                location / {{ default_type application/json; return 200 '{body}'; }}
                location = {post_path} {{
                    # 4 KiB is past nginx's limit for a `return` string: a file. The static
                    # handler answers POST with 405; error_page re-serves the file as a GET,
                    # 200. (try_files here would rewrite $uri, and the error page would then
                    # be location /'s 11-byte answer.)
                    error_page 405 =200 /answer.json;
                    return 405;
                }}
                location = /answer.json {{ default_type application/json; root {dir}; }}
            }}"""
        ).format(host=HOST, port=p, body=BACKEND_BODY, post_path=POST_PATH, dir=d)
        for p in ports
    )
    conf = NGINX_COMMON.format(dir=d) + textwrap.dedent(
        """\
        http {{
            access_log off;
            keepalive_requests 1000000;
            keepalive_timeout 75s;
        {servers}
        }}
        """
    ).format(servers=textwrap.indent(servers, "    "))
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    proc = Proc("backend-nginx", taskset(LOAD_CORE, ["nginx", "-p", d, "-e", d + "/error.log", "-c", path]), workdir)
    for p in ports:
        wait_port(p, proc.p, START_TIMEOUT, proc.logs + (d + "/error.log",))
    return proc


def start_haproxy(workdir, port, backends, connections, name="haproxy", bind_options="", proto="http",
                  global_extra=""):
    """HAProxy, one thread, round robin over the backends. name: its directory and log
    files; bind_options: appended to the frontend's bind line (e.g. " ssl crt FILE");
    proto: the X-Forwarded-Proto it sets; global_extra: lines for the global section."""
    d = os.path.join(workdir, name)
    os.makedirs(d)
    # pool-max-conn: idle connections kept per server, at least as many as load connections
    servers = "\n".join("    server s%d %s:%d pool-max-conn %d" % (i + 1, HOST, p, max(64, connections))
                         for i, p in enumerate(backends))
    conf = textwrap.dedent(
        """\
        global
            nbthread 1
            maxconn 4000
            tune.maxaccept -1{global_extra}

        defaults
            mode http
            option http-keep-alive
            http-reuse always
            timeout connect 5s
            timeout client 30s
            timeout server 30s
            timeout http-keep-alive 30s

        frontend fe
            bind {host}:{port}{bind_options}
            default_backend be

        backend be
            balance roundrobin
            # the forwarding work fastlb does on every request
            option forwardfor
            http-request set-header X-Forwarded-Proto {proto}
            http-request set-header X-Request-ID %[uuid] unless {{ req.hdr(X-Request-ID) -m found }}
        """
    ).format(host=HOST, port=port, bind_options=bind_options, proto=proto,
             global_extra="".join("\n    " + line for line in textwrap.dedent(global_extra).strip("\n").splitlines())
             ) + servers + "\n"
    path = os.path.join(d, "haproxy.cfg")
    with open(path, "w") as f:
        f.write(conf)
    return Proc(name, taskset(PROXY_CORE, ["haproxy", "-db", "-f", path]), workdir), ()


def start_nginx_proxy(workdir, port, backends, connections):
    d = os.path.join(workdir, "nginx-proxy")
    os.makedirs(d)
    servers = "\n".join("        server %s:%d;" % (HOST, p) for p in backends)
    conf = NGINX_COMMON.format(dir=d) + textwrap.dedent(
        """\
        http {{
            access_log off;
            keepalive_requests 1000000;
            map $http_x_request_id $fastlb_like_request_id {{
                default $http_x_request_id;
                "" $request_id;
            }}
            upstream be {{
        {servers}
                keepalive {keepalive};
                keepalive_requests 1000000;
            }}
            server {{
                listen {host}:{port} backlog=4096;
                location / {{
                    proxy_pass http://be;
                    proxy_http_version 1.1;
                    proxy_set_header Connection "";
                    # the forwarding work fastlb does on every request
                    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                    proxy_set_header X-Forwarded-Proto $scheme;
                    proxy_set_header X-Request-ID $fastlb_like_request_id;
                }}
            }}
        }}
        """
    ).format(servers=servers, host=HOST, port=port, keepalive=max(64, connections))
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    proc = Proc("nginx-proxy", taskset(PROXY_CORE, ["nginx", "-p", d, "-e", d + "/error.log", "-c", path]), workdir)
    return proc, (d + "/error.log",)


def fastlb_command(override, parent=None):
    """(argv prefix, cwd, env, description) for running fastlb, or raise RuntimeError.
    The compiled core is required (FASTLB_REQUIRE_EXTENSIONS=1): a fallback to the
    pure-Python twins fails to start instead of being measured as fastlb. ``parent``:
    where the neutral working directory is made (the run's temporary directory, removed
    with it)."""
    env = dict(os.environ, FASTLB_REQUIRE_EXTENSIONS="1")
    if override:
        return shlex.split(override), None, env, "command: %s" % override
    probe = "import fastlb, sys; sys.stdout.write(fastlb.__file__)"
    # Installed package first: run from a neutral cwd so the checkout does not shadow it.
    # A fresh empty directory, not the shared temp dir: `python -m` puts the cwd first on
    # sys.path, and any stray queue.py or json.py there would shadow the standard library.
    neutral = tempfile.mkdtemp(prefix="fastlb-bench-cwd-", dir=parent)
    r = subprocess.run([sys.executable, "-c", probe], cwd=neutral, capture_output=True, text=True)
    if r.returncode == 0:
        cwd, where = neutral, "installed package %s" % r.stdout.strip()
    else:
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        cwd, where = REPO, "source checkout %s (not installed)" % REPO
    argv = [sys.executable, "-m", "fastlb"]
    r = subprocess.run(argv + ["run", "--help"], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("`python -m fastlb run --help` failed:\n%s" % (r.stderr or r.stdout).strip()[-2000:])
    version = subprocess.run(argv + ["--version"], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    if version.returncode == 0 and version.stdout.strip():
        where += "; " + " ".join(version.stdout.split())
    return argv, cwd, env, where


def start_fastlb(workdir, port, backends, connections, cmd, variant="fastlb", listener=None, top=None, name=None):
    """fastlb with a config file equal to quick mode (one listener, round robin over
    the backends) plus the variant's observability settings (FASTLB_VARIANTS).
    listener: keys added to the listener (e.g. tls); top: top-level keys added
    (e.g. admin); name: its config and log files (default: the variant)."""
    argv, cwd, env, _ = cmd
    name = name or variant
    doc = {"listeners": [{"name": "bench", "bind": "%s:%d" % (HOST, port), "pool": "default"}],
           "pools": {"default": {"backends": ["%s:%d" % (HOST, p) for p in backends]}}}
    if variant == "fastlb-guard":
        del doc["listeners"][0]["pool"]
        doc["listeners"][0]["routes"] = [GUARD_ROUTE]
    extra = json.loads(json.dumps(FASTLB_VARIANTS[variant]))
    if "access_log" in extra:
        extra["access_log"]["path"] = os.path.join(workdir, "%s-%s" % (variant, extra["access_log"]["path"]))
    doc.update(extra)
    doc["listeners"][0].update(listener or {})
    doc.update(top or {})
    path = os.path.join(workdir, "%s.yaml" % name)
    with open(path, "w") as f:
        json.dump(doc, f)  # JSON is YAML
    args = argv + ["run", "-c", path]
    return Proc(name, taskset(PROXY_CORE, args), workdir, cwd=cwd, env=env), ()


# -- wrk ------------------------------------------------------------------------------------


def lua_string(s):
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def write_lua(workdir):
    """wrk scripts per scenario: {scenario: path or None (plain GET /)}."""
    scripts = {"minimal": None}
    lines = ['wrk.method = "GET"', "wrk.path = %s" % lua_string(REALISTIC_PATH)]
    lines += ["wrk.headers[%s] = %s" % (lua_string(k), lua_string(v)) for k, v in REALISTIC_HEADERS]
    post = ['wrk.method = "POST"', "wrk.path = %s" % lua_string(POST_PATH), "wrk.body = %s" % lua_string(POST_BODY),
            'wrk.headers["Content-Type"] = "application/json"', 'wrk.headers["Accept"] = "application/json"']
    for name, body in (("realistic", lines), ("json_post", post)):
        path = os.path.join(workdir, name + ".lua")
        with open(path, "w") as f:
            f.write("\n".join(body) + "\n")
        scripts[name] = path
    return scripts


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def _ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def parse_wrk(out):
    """req/s, requests, p50/p99 (ms), errors from `wrk --latency` output."""
    res = {"requests": 0, "rps": 0.0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "errors": 0, "non2xx": 0}
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        res["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_ms"), ("90", "p90_ms"), ("99", "p99_ms")):
        m = re.search(r"^\s+%s%%\s+(\S+)" % pct, out, re.M)
        if m:
            res[key] = _ms(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        res["errors"] = sum(int(x) for x in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        res["non2xx"] = int(m.group(1))
    return res


def run_wrk(port, seconds, connections, script, scheme="http"):
    argv = ["wrk", "-t1", "-c%d" % connections, "-d%ds" % seconds, "--latency", "--timeout", "5s",
            "-H", "X-API-Key: " + API_KEY]
    if script:
        argv += ["-s", script]
    argv.append("%s://%s:%d/" % (scheme, HOST, port))
    r = subprocess.run(taskset(LOAD_CORE, argv), capture_output=True, text=True, timeout=seconds + 30)
    if r.returncode != 0:
        raise RuntimeError("wrk failed (%d): %s" % (r.returncode, r.stderr.strip() or r.stdout.strip()))
    return r.stdout


# -- the run ----------------------------------------------------------------------------------


def measure_once(proc, port, args, script):
    """One measured wrk run against a warm proxy: wrk numbers plus the proxy's CPU."""
    if proc.p.poll() is not None:
        raise RuntimeError("proxy exited with %s\n%s" % (proc.p.returncode, tail_logs(proc.logs)))
    before = cpu_seconds(proc.pid)
    out = run_wrk(port, args.duration, args.connections, script)
    after = cpu_seconds(proc.pid)
    res = parse_wrk(out)
    res["cpu_s"] = after - before
    res["cpu_util"] = (after - before) / args.duration  # 1.0 = the proxy's core fully busy
    res["cpu_us_per_req"] = (after - before) * 1e6 / res["requests"] if res["requests"] else None
    res["wrk_output"] = out
    return res


def median_run(runs):
    """The run with the median CPU-us/req (the others are kept as lists)."""
    ordered = sorted(runs, key=lambda r: float("inf") if r["cpu_us_per_req"] is None else r["cpu_us_per_req"])
    res = dict(ordered[(len(ordered) - 1) // 2])
    if len(runs) > 1:
        res["runs_cpu_us_per_req"] = [r["cpu_us_per_req"] for r in runs]
        res["runs_rps"] = [r["rps"] for r in runs]
    return res


def fmt(v, spec, none="-"):
    return none if v is None else format(v, spec)


def print_table(scenario, rows, args):
    print()
    print(
        "scenario %s  (wrk -t1 -c%d -d%ds%s; proxy on core %s, wrk+backend on core %s)"
        % (
            scenario,
            args.connections,
            args.duration,
            ", median of %d" % args.repeat if args.repeat > 1 else "",
            PROXY_CORE,
            LOAD_CORE,
        )
    )
    ref = {name: rows[name]["cpu_us_per_req"] for name in ("haproxy", "nginx", "fastlb") if name in rows}
    hdr = "%-18s %11s %9s %9s %6s %12s %11s %10s %10s %8s" % (
        "proxy",
        "req/s",
        "p50 ms",
        "p99 ms",
        "CPU%",
        "CPU-us/req",
        "vs haproxy",
        "vs nginx",
        "vs fastlb",
        "errors",
    )
    print(hdr)
    print("-" * len(hdr))
    for name in PROXIES:
        if name not in rows:
            continue
        r = rows[name]
        ratios = []
        for other in ("haproxy", "nginx", "fastlb"):
            base = ref.get(other)
            ratios.append(
                "%.2fx" % (r["cpu_us_per_req"] / base) if base and r["cpu_us_per_req"] is not None else "-"
            )
        print(
            "%-18s %11s %9s %9s %6.0f %12s %11s %10s %10s %8d"
            % (
                name,
                fmt(r["rps"], ",.0f"),
                fmt(r["p50_ms"], ".3f"),
                fmt(r["p99_ms"], ".3f"),
                r["cpu_util"] * 100,
                fmt(r["cpu_us_per_req"], ".1f"),
                ratios[0],
                ratios[1],
                ratios[2],
                r["errors"] + r["non2xx"],
            )
        )
    sys.stdout.flush()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="measured seconds per scenario (1-120)")
    ap.add_argument("--warmup", type=int, default=2, help="warm-up seconds per proxy and scenario, before its first run (0-10)")
    ap.add_argument("--repeat", type=int, default=1, help="measured runs per scenario, median reported (1-5)")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections (1-2000)")
    ap.add_argument("--only", default=",".join(DEFAULT_PROXIES), help="comma list of: " + ",".join(PROXIES))
    ap.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma list of: " + ",".join(SCENARIOS))
    ap.add_argument("--backends", type=int, default=3, help="backend server blocks (1-8)")
    ap.add_argument("--fastlb-cmd", default=None, help='override, e.g. "fastlb" or "python -m fastlb"')
    ap.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, wrk output)")
    args = ap.parse_args(argv)

    if not 1 <= args.duration <= 120 or not 0 <= args.warmup <= 10:
        ap.error("--duration must be 1..120 and --warmup 0..10 seconds")
    if not 1 <= args.connections <= 2000 or not 1 <= args.backends <= 8 or not 1 <= args.repeat <= 5:
        ap.error("--connections must be 1..2000, --backends 1..8 and --repeat 1..5")
    only = [p.strip() for p in args.only.split(",") if p.strip()]
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    bad = [p for p in only if p not in PROXIES] + [s for s in scenarios if s not in SCENARIOS]
    if bad:
        ap.error("unknown proxy/scenario: %s" % ", ".join(bad))
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            log("e2e_load: %s is required (wrk drives the load, nginx is the backend); not found" % tool)
            return 2
    if not shutil.which("taskset"):
        log("e2e_load: taskset not found: processes will not be pinned to cores")
    if (os.cpu_count() or 1) < 2:
        log("e2e_load: fewer than 2 CPUs: proxy and load generator will share a core")

    workdir = tempfile.mkdtemp(prefix="fastlb-e2e-")
    procs = []
    results = {"meta": {}, "scenarios": {s: {} for s in scenarios}}
    try:
        backend_ports = [free_port() for _ in range(args.backends)]
        backend = start_backend(workdir, backend_ports)
        procs.append(backend)
        for p in backend_ports:
            status, body = http_get(p)
            if status != 200 or body != BACKEND_BODY.encode():
                raise RuntimeError("backend nginx on %d answered %s %r" % (p, status, body))
            status, body = http_get(p, POST_PATH, method="POST", body=b'{"cart": 1}')
            if status != 200 or body != POST_ANSWER.encode():
                raise RuntimeError("backend nginx on %d answered the json_post request %s with %d bytes, expected "
                                   "the %d-byte answer" % (p, status, len(body), len(POST_ANSWER)))
        script = write_lua(workdir)
        results["meta"] = {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeat": args.repeat,
            "connections": args.connections,
            "backends": args.backends,
            "cpus": os.cpu_count(),
            "clk_tck": CLK_TCK,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "proxies": {},
        }
        log("backends: nginx on %s" % ", ".join("%s:%d" % (HOST, p) for p in backend_ports))

        # Start every proxy first (idle ones cost nothing), then interleave the
        # measurements: repetition -> scenario -> proxy, so that whatever else the
        # machine does is spread over all proxies instead of landing on one.
        running = {}  # name -> (proc, port, extra logs)
        for name in PROXIES:
            if name not in only:
                continue
            try:
                if name in FASTLB_VARIANTS:
                    cmd = fastlb_command(args.fastlb_cmd, workdir)
                    results["meta"]["proxies"][name] = cmd[3]
                    starter = lambda w, p, b, c, cmd=cmd, name=name: start_fastlb(w, p, b, c, cmd, name)  # noqa: E731
                elif name == "haproxy":
                    if not shutil.which("haproxy"):
                        raise RuntimeError("haproxy is not installed")
                    results["meta"]["proxies"][name] = subprocess.run(
                        ["haproxy", "-v"], capture_output=True, text=True
                    ).stdout.splitlines()[0]
                    starter = start_haproxy
                else:
                    results["meta"]["proxies"][name] = (
                        subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
                    )
                    starter = start_nginx_proxy
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                log("skipping %s: %s" % (name, exc))
                continue
            log("%s: %s" % (name, results["meta"]["proxies"][name]))
            port = free_port()
            proc, extra_logs = starter(workdir, port, backend_ports, args.connections)
            procs.append(proc)
            logs = proc.logs + tuple(extra_logs)
            try:
                wait_port(port, proc.p, START_TIMEOUT, logs)
                status, body = http_get(port)
                if status != 200 or body != BACKEND_BODY.encode():
                    raise RuntimeError("sanity GET through %s answered %s %r" % (name, status, body[:200]))
            except (RuntimeError, OSError) as exc:
                log("skipping %s: %s" % (name, exc))
                if "--- " not in str(exc):  # wait_port already showed the logs
                    log(tail_logs(logs))
                proc.stop()
                procs.remove(proc)
                continue
            running[name] = (proc, port, logs)

        n = len(running) * len(scenarios)
        log(
            "measuring %s x %s: about %ds"
            % (", ".join(running) or "nothing", ", ".join(scenarios), n * (args.warmup + args.duration * args.repeat))
        )
        runs = {(sc, name): [] for sc in scenarios for name in running}
        failed = set()
        failed_runs = set()  # (scenario, proxy) with any error or non-2xx response
        for rep in range(args.repeat):
            for scenario in scenarios:
                lua = script[scenario]
                for name, (proc, port, logs) in running.items():
                    if name in failed:
                        continue
                    try:
                        if rep == 0 and args.warmup > 0:
                            log("%s / %s: warm-up %ds" % (name, scenario, args.warmup))
                            run_wrk(port, args.warmup, args.connections, lua)
                        log("%s / %s: run %d/%d, %ds" % (name, scenario, rep + 1, args.repeat, args.duration))
                        res = measure_once(proc, port, args, lua)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        log("%s failed: %s" % (name, exc))
                        if "--- " not in str(exc):
                            log(tail_logs(logs))
                        failed.add(name)
                        continue
                    path = os.path.join(workdir, "wrk-%s-%s-%d.txt" % (name, scenario, rep + 1))
                    with open(path, "w") as f:
                        f.write(res["wrk_output"])
                    if res["errors"] or res["non2xx"] or not res["requests"]:
                        # not averaged in: a proxy answering errors fast is not fast
                        log("%s / %s FAILED: %d socket errors, %d non-2xx responses, %d requests (see %s)"
                            % (name, scenario, res["errors"], res["non2xx"], res["requests"], path))
                        failed_runs.add((scenario, name))
                        continue
                    runs[(scenario, name)].append(res)
        for (scenario, name), got in runs.items():
            if got and name not in failed and (scenario, name) not in failed_runs:
                results["scenarios"][scenario][name] = median_run(got)
        results["failed"] = sorted("%s/%s" % k for k in failed_runs) + sorted(failed)

        for name, (proc, _, _) in running.items():
            rc = proc.stop()
            procs.remove(proc)
            if name in FASTLB_VARIANTS and rc != 0:
                log("note: fastlb exited %s on SIGTERM (expected 0)" % rc)

        for scenario in scenarios:
            if results["scenarios"][scenario]:
                print_table(scenario, results["scenarios"][scenario], args)
        if args.json:
            for rows in results["scenarios"].values():
                for r in rows.values():
                    r.pop("wrk_output", None)
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
            log("wrote %s" % args.json)
        if results["failed"]:
            log("e2e_load: FAILED (errors or non-2xx answers, left out of the tables): %s"
                % ", ".join(results["failed"]))
            return 1
    except RuntimeError as exc:
        log("e2e_load: %s" % exc)
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

"""The ``fastlb`` command: run, check, explain, simulate, demo, cert, version.

Exit codes: 0 ok (and after a graceful drain), 1 runtime failure (e.g. a port
already in use), 2 invalid configuration or command line.
"""

import argparse
import logging
import re
import sys

from . import _core, config as configmod
from ._version import __version__
from .errors import ConfigError

__all__ = ["main"]


def version_text():
    text = "fastlb %s (core: %s)" % (__version__, _core.IMPLEMENTATION)
    if _core.FALLBACK_REASON:
        text += "\npure-Python core in use: %s" % _core.FALLBACK_REASON
    return text


def _parser():
    p = argparse.ArgumentParser(prog="fastlb", description="HTTP/1.1 load balancer for REST APIs.")
    p.add_argument("--version", action="store_true", help="print the version and the core in use")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser("run", help="run the load balancer (from a file, or quick mode from flags)")
    run.add_argument("-c", "--config", metavar="FILE", help="YAML configuration file")
    run.add_argument("--listen", metavar="HOST:PORT", help="quick mode: address to listen on")
    run.add_argument("--backend", metavar="HOST:PORT[,weight=N]", action="append", default=[],
                     help="quick mode: a backend (repeat for more)")
    run.add_argument("--algorithm", metavar="NAME", default=None,
                     help="quick mode: balancing algorithm (default round_robin)")
    run.add_argument("--hash-key", metavar="KEY", default=None,
                     help="quick mode: request key for consistent_hash/maglev: ip, path, header:NAME, cookie:NAME, query:NAME")
    run.add_argument("--admin", metavar="HOST:PORT", help="quick mode: admin API address")
    run.add_argument("--health-path", metavar="PATH", default=None,
                     help="quick mode: active HTTP checks, GET PATH, 2xx-3xx healthy")
    run.add_argument("--health-interval", metavar="SECONDS", default=None,
                     help="quick mode: seconds between checks of each backend (default 5)")
    run.add_argument("--health-rise", metavar="N", type=int, default=None,
                     help="quick mode: passing checks in a row that bring a down backend back (default 2)")
    run.add_argument("--health-fall", metavar="N", type=int, default=None,
                     help="quick mode: failing checks in a row that take a backend down (default 3)")
    run.add_argument("--access-log", metavar="PATH", default=None,
                     help="quick mode: write an access log (JSON lines) to PATH, or - for stdout")
    run.add_argument("--tls-cert", metavar="FILE", action="append", default=[],
                     help="quick mode: serve HTTPS with this PEM certificate (repeatable, with --tls-key; "
                          "chosen by SNI, the first is the default)")
    run.add_argument("--tls-key", metavar="FILE", action="append", default=[],
                     help="quick mode: the private key of the --tls-cert at the same position")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    chk = sub.add_parser("check", help="validate a configuration file")
    chk.add_argument("-c", "--config", metavar="FILE", required=True)

    demo = sub.add_parser("demo", help="three built-in backends behind fastlb on 127.0.0.1:8080")
    demo.add_argument("--port", type=int, default=None, help="balancer port (default 8080, 8443 with --tls)")
    demo.add_argument("--tls", action="store_true",
                      help="serve HTTPS with a development certificate for localhost (fastlb cert) and "
                           "redirect http://127.0.0.1:8080 to it")
    demo.add_argument("--redirect-port", type=int, default=8080,
                      help="with --tls: the plain-HTTP port that redirects to HTTPS (default 8080, 0: none)")
    demo.add_argument("--admin-port", type=int, default=8081, help="admin API port (default 8081)")
    demo.add_argument("--backend-port", type=int, default=9001,
                      help="first demo backend port; the three use this and the next two (default 9001)")
    demo.add_argument("--no-traffic", action="store_true",
                      help="do not send the demo's own background traffic (about 20 requests/s)")
    demo.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    cert = sub.add_parser(
        "cert", help="issue a development TLS certificate signed by a local CA (like mkcert)",
        description="Create a local certificate authority on first use (reused afterwards) and a server "
                    "certificate signed by it for the given names. For development only: the CA is not "
                    "installed into any trust store and its key never leaves --dir; point clients at "
                    "fastlb-ca.pem explicitly (curl --cacert, httpx verify=).")
    cert.add_argument("names", nargs="+", metavar="NAME",
                      help="DNS names, wildcards and IP addresses, e.g. localhost 127.0.0.1 api.test '*.api.test'")
    cert.add_argument("--dir", metavar="DIR", default=None,
                      help="where the CA and certificates live (default $FASTLB_CERT_DIR, else "
                           "$XDG_DATA_HOME/fastlb/certs, else ~/.local/share/fastlb/certs)")
    cert.add_argument("--rsa", action="store_true", help="RSA 2048 keys instead of ECDSA P-256")
    cert.add_argument("--days", metavar="N", type=int, default=825,
                      help="certificate validity in days (default 825)")
    cert.add_argument("--cert-file", metavar="FILE", help="certificate path (default DIR/<first name>.pem)")
    cert.add_argument("--key-file", metavar="FILE", help="key path (default DIR/<first name>-key.pem)")

    exp = sub.add_parser("explain", help="which backend a request would get, and why (dry run)")
    exp.add_argument("-c", "--config", metavar="FILE", required=True)
    exp.add_argument("--pool", metavar="NAME", required=True)
    exp.add_argument("--key", metavar="K", help="the request key itself (the value hash_key would extract)")
    exp.add_argument("--ip", metavar="ADDR", help="client address (ip_hash, hash_key: ip)")
    exp.add_argument("--header", metavar="'NAME: VALUE'", action="append", default=[],
                     help="a request header (hash_key header:NAME or cookie:NAME); repeatable")
    exp.add_argument("--path", metavar="TARGET", help="request path with query (hash_key path or query:NAME)")
    exp.add_argument("--json", action="store_true", help="print the decision as JSON")

    from .simulate import add_arguments as add_simulate_arguments

    add_simulate_arguments(sub.add_parser("simulate", help="compare balancing algorithms on a simulated pool"))

    sub.add_parser("version", help="print the version and the core in use")
    return p


def quick_config(listen, backends, algorithm=None, admin=None, hash_key=None, health_path=None,
                 health_interval=None, health_rise=None, health_fall=None, access_log=None, tls_certs=(),
                 tls_keys=()):
    """The configuration document that ``run --listen/--backend`` flags describe."""
    pool = {"backends": []}
    if algorithm is not None:
        pool["algorithm"] = algorithm
    if hash_key is not None:
        pool["hash_key"] = hash_key
    check = {}
    if health_path is not None:
        check["path"] = health_path
    if health_interval is not None:
        check["interval"] = health_interval
    if health_rise is not None:
        check["rise"] = health_rise
    if health_fall is not None:
        check["fall"] = health_fall
    if check:
        if "path" not in check:
            raise ConfigError(("--health-path", "required with --health-interval/--health-rise/--health-fall"))
        check["method"] = "GET"
        check["expect_status"] = "200-399"
        pool["health_check"] = check
    problems = []
    for i, text in enumerate(backends):
        address, *params = text.split(",")
        entry = {"address": address}
        for param in params:
            key, sep, value = param.partition("=")
            if key.strip() == "weight" and sep and value.strip().isdigit():
                entry["weight"] = int(value)
            else:
                problems.append(("--backend %s" % text, "expected HOST:PORT[,weight=N], got parameter %r" % param))
        pool["backends"].append(entry)
    if len(tls_certs) != len(tls_keys):
        problems.append(("--tls-key" if len(tls_certs) > len(tls_keys) else "--tls-cert",
                         "give one --tls-key for each --tls-cert, in the same order (%d certificate(s), %d key(s))"
                         % (len(tls_certs), len(tls_keys))))
    if problems:
        raise ConfigError(problems)
    listener = {"name": "quick", "bind": listen, "pool": "default"}
    if tls_certs:
        listener["tls"] = {"certificates": [{"cert": c, "key": k} for c, k in zip(tls_certs, tls_keys)]}
    doc = {"listeners": [listener], "pools": {"default": pool}}
    if admin:
        doc["admin"] = {"bind": admin}
    if access_log is not None:
        doc["access_log"] = {"path": access_log}
    return doc


# Key paths of the quick-mode document, shown as the flags that set them.
_FLAG_PATHS = (
    ("listeners[0].bind", "--listen"),
    ("pools.default.algorithm", "--algorithm"),
    ("pools.default.hash_key", "--hash-key"),
    ("pools.default.backends", "--backend"),
    ("admin.bind", "--admin"),
    ("pools.default.health_check.path", "--health-path"),
    ("pools.default.health_check.interval", "--health-interval"),
    ("pools.default.health_check.rise", "--health-rise"),
    ("pools.default.health_check.fall", "--health-fall"),
    ("access_log.path", "--access-log"),
    ("listeners[0].tls", "--tls-cert"),
)
# A quick-mode certificate problem names the flag of the file at fault.
_TLS_FLAG = re.compile(r"^listeners\[0\]\.tls\.certificates\[\d+\]\.(cert|key|password_file)$")


def _flag_problems(err):
    out = []
    for path, msg in err.problems:
        m = _TLS_FLAG.match(path)
        if m:
            out.append(("--tls-key" if m.group(1) == "key" else "--tls-cert", msg))
            continue
        for prefix, flag in _FLAG_PATHS:
            if path.startswith(prefix):
                path = flag + path[len(prefix):]
                break
        out.append((path, msg))
    return ConfigError(out)


def _certificate_warnings(cfg):
    """Certificates that expire within 14 days (or are not valid yet): the check passes, with a warning."""
    from . import tls as tlsmod

    out = []
    for i, lst in enumerate(cfg.listeners):
        for j, c in enumerate(lst.tls.certificates if lst.tls else ()):
            for msg in tlsmod.expiry_warnings(tlsmod.load_certificate(c)):
                out.append("listeners[%d].tls.certificates[%d]: %s" % (i, j, msg))
    return out


def _load(args):
    if args.config:
        if args.listen or args.backend or args.admin or args.algorithm or args.hash_key or args.health_path \
                or args.health_interval or args.health_rise is not None or args.health_fall is not None \
                or args.access_log is not None or args.tls_cert or args.tls_key:
            raise ConfigError(("", "give either -c FILE or the quick-mode flags (--listen/--backend/...), not both"))
        return configmod.load_file(args.config)
    if not args.listen or not args.backend:
        raise ConfigError(("", "fastlb run needs -c FILE, or --listen HOST:PORT and at least one --backend HOST:PORT"))
    try:
        return configmod.from_dict(quick_config(args.listen, args.backend, args.algorithm, args.admin, args.hash_key,
                                                args.health_path, args.health_interval, args.health_rise,
                                                args.health_fall, args.access_log, args.tls_cert, args.tls_key))
    except ConfigError as err:
        raise _flag_problems(err) from None


def explain_key(pool, args):
    """The hash key a request described by the flags would carry, as the proxy extracts it."""
    from . import http1
    from .balancer import KEY_COOKIE, KEY_HEADER, KEY_IP, KEY_NONE, KEY_PATH, KEY_QUERY

    kind = pool.key_kind
    if kind == KEY_NONE:
        return None
    if args.key is not None:
        return args.key.encode("latin-1")
    name = pool.key_name.decode()
    headers = {}
    for h in args.header:
        k, sep, v = h.partition(":")
        if not sep:
            raise ConfigError(("--header %s" % h, "expected 'NAME: VALUE'"))
        headers.setdefault(k.strip().lower(), v.strip())
    if kind == KEY_IP:
        return args.ip.encode("ascii") if args.ip else None
    if kind == KEY_HEADER:
        v = headers.get(name)
        return v.encode("latin-1") if v is not None else None
    if kind == KEY_COOKIE:
        v = headers.get("cookie")
        return http1.cookie_value(v.encode("latin-1"), name.encode()) if v is not None else None
    target = (args.path or "").encode("latin-1")
    if kind == KEY_PATH:
        return http1.path_of(target).partition(b"?")[0] if target else None
    if kind == KEY_QUERY:
        return http1.query_param(target, name.encode()) if target else None
    return None


def explain_main(args):
    import json

    from .balancer import Pool

    try:
        cfg = configmod.load_file(args.config)
        try:
            spec = cfg.pool(args.pool)
        except KeyError:
            raise ConfigError(("--pool", "no pool named %r (pools: %s)" % (
                args.pool, ", ".join(p.name for p in cfg.pools)))) from None
        pool = Pool(spec, seed=0)
        key = explain_key(pool, args)
    except ConfigError as err:
        _report(err, args.config)
        return 2
    decision = pool.explain(key, 0.0)
    if args.json:
        print(json.dumps(decision, indent=2, sort_keys=True))
        return 0
    hk = spec.hash_key
    print("pool %s: %s%s" % (pool.name, pool.algorithm, " (hash_key %s)" % ":".join(x for x in hk if x) if hk else ""))
    print("-> %s" % (decision["backend"] or "no usable backend (503)"))
    for k in sorted(decision):
        if k not in ("backend", "pool", "algorithm"):
            print("   %s: %s" % (k, json.dumps(decision[k])))
    return 0


def _setup_logging(level):
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _report(err, source):
    print("fastlb: invalid configuration%s:" % (" in %s" % source if source else ""), file=sys.stderr)
    for line in err.lines():
        print("  " + line, file=sys.stderr)


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.version or args.command == "version":
        print(version_text())
        return 0
    if args.command is None:
        _parser().print_help()
        return 2
    if args.command == "check":
        try:
            cfg = configmod.load_file(args.config)
        except ConfigError as err:
            _report(err, args.config)
            return 2
        print("%s: OK (%d listener(s), %d pool(s), %d backend(s))" % (
            args.config, len(cfg.listeners), len(cfg.pools), sum(len(p.backends) for p in cfg.pools)))
        for line in _certificate_warnings(cfg):
            print("warning: " + line)
        return 0
    if args.command == "explain":
        return explain_main(args)
    if args.command == "simulate":
        from .simulate import run_command as simulate_main

        return simulate_main(args)
    if args.command == "cert":
        from . import devcert

        directory = args.dir or devcert.default_directory()
        try:
            names = [str(n.value) for n in devcert.validate_names(args.names)]
            if args.days < 1:
                raise ValueError("--days must be at least 1, got %d" % args.days)
            ca_path, _, created = devcert.ensure_ca(directory, rsa=args.rsa)
            cert_path, key_path = devcert.issue(directory, args.names, rsa=args.rsa, days=args.days,
                                                out_cert=args.cert_file, out_key=args.key_file)
        except ValueError as exc:
            print("fastlb cert: %s" % exc, file=sys.stderr)
            return 2
        except OSError as exc:
            print("fastlb cert: %s" % exc, file=sys.stderr)
            return 1
        print("%s: %s" % ("created a new local CA" if created else "using the local CA", ca_path))
        print("certificate for %s: %s" % (", ".join(names), cert_path))
        print("key: %s" % key_path)
        if "localhost" in names or "127.0.0.1" in names:
            host, resolve = ("localhost" if "localhost" in names else "127.0.0.1"), ""
        else:  # another name reaches the 127.0.0.1 listener through curl --resolve
            host = names[0].replace("*", "www", 1)
            resolve = "--resolve %s:8443:127.0.0.1 " % host
        print("try it:  fastlb run --listen 127.0.0.1:8443 --backend 127.0.0.1:9001 --tls-cert %s --tls-key %s"
              % (cert_path, key_path))
        print("         curl %s--cacert %s https://%s:8443/"
              % (resolve, ca_path, "[%s]" % host if ":" in host else host))
        return 0
    _setup_logging(args.log_level)
    if args.command == "demo":
        from .demo import run_demo

        port = args.port if args.port is not None else (8443 if args.tls else 8080)
        return run_demo(port, args.admin_port, args.backend_port, traffic=not args.no_traffic, tls=args.tls,
                        redirect_port=args.redirect_port)
    try:
        cfg = _load(args)
    except ConfigError as err:
        _report(err, args.config)
        return 2
    from .server import run

    try:
        return run(cfg)
    except ConfigError as err:  # found at start: the admin bind and token, key files loaded by auth
        _report(err, args.config)
        return 2
    except OSError as exc:
        print("fastlb: cannot start: %s" % exc, file=sys.stderr)
        return 1

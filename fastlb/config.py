"""YAML (or a plain dict) -> validated ``model.Config``.

Every problem names its key path (``pools.api.backends[1].address``) and what
is wrong; all problems are collected and raised together as one ConfigError,
so ``fastlb check`` shows them all at once. Unknown keys are errors (a typo must
not silently fall back to a default).
"""

import dataclasses
import ipaddress
import json
import re
import ssl

import yaml

from . import tls as tlsmod
from ._core import is_prime
from .errors import ConfigError
from .model import (
    ALGORITHMS,
    AccessLogSpec,
    AccessSpec,
    ApiKeySpec,
    AuthSpec,
    BasicSpec,
    JwtSpec,
    ObservabilitySpec,
    RateLimitSpec,
    RequestLimitSpec,
    DEFAULT_ALGORITHM,
    Address,
    AdminSpec,
    BackendSpec,
    CertificateSpec,
    Config,
    HealthSpec,
    LimitSpec,
    ListenerSpec,
    ListenerTlsSpec,
    OutlierSpec,
    PoolSpec,
    PoolTlsSpec,
    RouteSpec,
    TimeoutSpec,
)

__all__ = ["load_file", "load_text", "from_dict", "parse_address", "parse_duration", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB|k|K|M|G)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
    "k": 1024, "K": 1024, "M": 1024**2, "G": 1024**3,
    "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2


def parse_duration(value):
    """``250ms``, ``2s``, ``1.5m``, ``1h`` or a bare number of seconds -> float seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration like 250ms or 2s, got %r" % (value,))
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if not m:
            raise ValueError("expected a duration like 250ms or 2s, got %r" % (value,))
        seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        raise ValueError("expected a duration like 250ms or 2s, got %r" % (value,))
    if seconds <= 0:
        raise ValueError("must be greater than zero, got %r" % (value,))
    return seconds


def parse_size(value):
    """``8192``, ``8KiB``, ``64k``, ``1MiB`` -> int bytes (k/K/M/G are binary)."""
    if isinstance(value, bool):
        raise ValueError("expected a size like 8KiB or 65536, got %r" % (value,))
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        m = _SIZE.match(value)
        if not m:
            raise ValueError("expected a size like 8KiB or 65536, got %r" % (value,))
        size = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    else:
        raise ValueError("expected a size like 8KiB or 65536, got %r" % (value,))
    if size <= 0:
        raise ValueError("must be greater than zero, got %r" % (value,))
    return size


def parse_address(value, allow_port_zero=False):
    """``HOST:PORT`` or ``[IPv6]:PORT`` -> Address."""
    if not isinstance(value, str):
        raise ValueError("expected HOST:PORT, got %r" % (value,))
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError("expected [IPv6]:PORT, got %r" % (value,))
        host, port = text[1:end], text[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError("%r is not an IPv6 address" % host) from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError("expected HOST:PORT, got %r" % (value,))
        if ":" in host:
            raise ValueError("IPv6 addresses go in brackets: [%s]:PORT" % host)
        if not _HOSTNAME.match(host):
            raise ValueError("%r is not a valid host name or IPv4 address" % host)
    if not port.isdigit():
        raise ValueError("port must be a number, got %r" % (port,))
    port_n = int(port)
    low = 0 if allow_port_zero else 1
    if not low <= port_n <= 65535:
        raise ValueError("port must be %d-65535, got %d" % (low, port_n))
    return Address(host, port_n)


def parse_hash_key(value):
    """``ip``, ``path``, ``header:NAME``, ``cookie:NAME``, ``query:NAME`` -> (kind, name)."""
    if not isinstance(value, str):
        raise ValueError("expected ip, path, header:NAME, cookie:NAME or query:NAME, got %r" % (value,))
    kind, sep, name = value.partition(":")
    kind = kind.strip().lower()
    name = name.strip()
    if kind in ("ip", "path") and not sep:
        return (kind, "")
    if kind in ("header", "cookie", "query") and name and all(33 <= ord(c) < 127 for c in name):
        return (kind, name.lower() if kind == "header" else name)
    raise ValueError("expected ip, path, header:NAME, cookie:NAME or query:NAME, got %r" % (value,))


class _Ctx:
    """Collects (path, message) problems while walking the document."""

    def __init__(self):
        self.problems = []

    def err(self, path, msg):
        self.problems.append((path, msg))

    def mapping(self, value, path, allowed, required=()):
        if not isinstance(value, dict):
            self.err(path, "expected a mapping, got %s" % _kind(value))
            return None
        for key in value:
            if key not in allowed:
                self.err(_join(path, key), "unknown key (allowed: %s)" % ", ".join(allowed))
        for key in required:
            if key not in value:
                self.err(_join(path, key), "required key is missing")
        return value

    def convert(self, value, path, fn, *args):
        try:
            return fn(value, *args)
        except ValueError as exc:
            self.err(path, str(exc))
            return None

    def put_int(self, kw, body, path, key, low, high, dest=None):
        """``kw[dest or key]`` = the integer at ``body[key]``, when present and valid."""
        if key in body:
            n = self.integer(body[key], "%s.%s" % (path, key), low, high)
            if n is not None:
                kw[dest or key] = n

    def put(self, kw, body, path, key, fn, dest=None):
        """``kw[dest or key]`` = ``fn(body[key])``, when present and valid."""
        if key in body:
            v = self.convert(body[key], "%s.%s" % (path, key), fn)
            if v is not None:
                kw[dest or key] = v

    def integer(self, value, path, low, high):
        if isinstance(value, bool) or not isinstance(value, int):
            self.err(path, "expected an integer, got %r" % (value,))
            return None
        if not low <= value <= high:
            self.err(path, "must be between %d and %d, got %d" % (low, high, value))
            return None
        return value


def _kind(value):
    return {dict: "a mapping", list: "a list", str: "a string"}.get(type(value), type(value).__name__)


def _join(path, key):
    return "%s.%s" % (path, key) if path else str(key)


def load_file(path):
    try:
        with open(path, "r", encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(("", "cannot read %s: %s" % (path, exc.strerror or exc))) from None
    return load_text(text, source=str(path))


def load_text(text, source="<config>"):
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = " (line %d, column %d)" % (mark.line + 1, mark.column + 1) if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(("", "%s is not valid YAML%s: %s" % (source, where, problem))) from None
    if doc is None:
        raise ConfigError(("", "%s is empty" % source))
    return from_dict(doc)


_TOP = ("listeners", "pools", "admin", "timeouts", "limits", "metrics", "access_log", "tracing")
_ACCESS_LOG_KEYS = ("path", "format", "sample", "statuses", "query")
TRACING_MODES = ("off", "propagate", "start")
_POOL_KEYS = ("algorithm", "backends", "retries", "hash_key", "hash_balance_factor", "ewma_decay",
              "maglev_table_size", "health_check", "outlier_detection", "slow_start", "retry_non_idempotent",
              "retry_budget", "per_try_timeout", "max_connections", "max_in_flight", "queue_size", "queue_timeout",
              "panic", "tls")
_HEALTH_KEYS = ("type", "interval", "down_interval", "timeout", "rise", "fall", "jitter", "method", "path", "host",
                "expect_status", "expect_body")
_OUTLIER_KEYS = ("consecutive_failures", "statuses", "base_ejection_time", "max_ejection_time",
                 "max_ejection_percent")
HASH_KEY_KINDS = ("ip", "path", "header", "cookie", "query")
_BACKEND_KEYS = ("address", "weight", "max_connections", "max_in_flight")
_LISTENER_KEYS = ("name", "bind", "routes", "pool", "upgrade_protocols", "trusted_proxies", "proxy_protocol",
                  "limits", "tls", "redirect_https")
_LISTENER_TLS_KEYS = ("certificates", "min_version", "ciphers", "client_ca", "client_auth", "subject_header", "hsts",
                      "ticket_rotation", "watch")
_CERTIFICATE_KEYS = ("cert", "key", "password_file")
_POOL_TLS_KEYS = ("ca", "server_name", "cert", "key", "verify", "min_version")
CLIENT_AUTH_MODES = ("none", "optional", "required")
_ROUTE_KEYS = ("name", "host", "path_prefix", "pool", "access", "rate_limits", "auth", "limits")
_TIMEOUT_KEYS = tuple(TimeoutSpec.__dataclass_fields__)
_HEAD_LIMIT_KEYS = ("max_request_line", "max_header_bytes", "max_header_fields")
_REQUEST_LIMIT_KEYS = tuple(RequestLimitSpec.__dataclass_fields__)
_LIMIT_KEYS = tuple(LimitSpec.__dataclass_fields__) + _REQUEST_LIMIT_KEYS
_LISTENER_LIMIT_KEYS = _HEAD_LIMIT_KEYS + _REQUEST_LIMIT_KEYS + ("max_connections_per_client",)
_RATE_LIMIT_KEYS = ("key", "rate", "burst", "name", "max_keys")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
RATE_LIMIT_KEY_KINDS = ("ip", "header", "api_key", "jwt", "route")
JWT_ALGORITHMS = ("HS256", "RS256", "ES256")
_AUTH_KINDS = ("api_key", "jwt", "basic")
_API_KEY_KEYS = ("header", "query", "keys_sha256", "keys_file", "forward_credential")
_JWT_KEYS = ("algorithms", "jwks_file", "jwks_url", "secret_file", "issuer", "audience", "leeway", "forward_claims",
             "required_claims", "jwks_refresh", "forward_credential")
_BASIC_KEYS = ("htpasswd", "realm", "users", "forward_credential")
_HEX_DIGEST = re.compile(r"^[0-9a-fA-F]{64}$")


def from_dict(doc):
    """Validate a parsed document; raise ConfigError listing every problem."""
    ctx = _Ctx()
    if ctx.mapping(doc, "", _TOP, required=("listeners", "pools")) is None:
        raise ConfigError(ctx.problems)
    pools = _pools(ctx, doc.get("pools"))
    pool_names = {p.name for p in pools} if pools else set()
    limits, request_limits = _limits(ctx, doc.get("limits"))
    listeners = _listeners(ctx, doc.get("listeners"), pool_names, request_limits, limits)
    admin = _admin(ctx, doc["admin"]) if "admin" in doc else None
    timeouts = _section(ctx, doc.get("timeouts"), "timeouts", TimeoutSpec, _TIMEOUT_KEYS, parse_duration)
    observability = _observability(ctx, doc)
    binds = {}
    for i, lst in enumerate(listeners or ()):
        key = (lst.bind.host, lst.bind.port)
        if lst.bind.port and key in binds:
            ctx.err("listeners[%d].bind" % i, "%s is already bound by listeners[%d]" % (lst.bind, binds[key]))
        binds.setdefault(key, i)
    if admin is not None and admin.bind.port and (admin.bind.host, admin.bind.port) in binds:
        ctx.err("admin.bind", "%s is already bound by a listener" % admin.bind)
    if ctx.problems:
        raise ConfigError(ctx.problems)
    return Config(listeners=tuple(listeners), pools=tuple(pools), admin=admin, timeouts=timeouts, limits=limits,
                  observability=observability, request_limits=request_limits)


def _observability(ctx, doc):
    kw = {}
    if "metrics" in doc:
        body = doc["metrics"]
        if ctx.mapping(body, "metrics", ("enabled",)) is not None and "enabled" in body:
            if not isinstance(body["enabled"], bool):
                ctx.err("metrics.enabled", "expected true or false, got %r" % (body["enabled"],))
            else:
                kw["metrics"] = body["enabled"]
    if "tracing" in doc:
        body = doc["tracing"]
        if ctx.mapping(body, "tracing", ("mode",)) is not None and "mode" in body:
            mode = body["mode"]
            if mode is False:  # YAML reads a bare off as false
                mode = "off"
            if mode not in TRACING_MODES:
                ctx.err("tracing.mode", "expected off, propagate or start, got %r" % (mode,))
            else:
                kw["tracing"] = mode
    if "access_log" in doc:
        kw["access_log"] = _access_log(ctx, doc["access_log"])
    return ObservabilitySpec(**kw)


def _access_log(ctx, body):
    if body is False or body is None:
        return None
    if ctx.mapping(body, "access_log", _ACCESS_LOG_KEYS) is None:
        return None
    kw = {}
    if "path" in body:
        if not isinstance(body["path"], str) or not body["path"]:
            ctx.err("access_log.path", 'expected a file path, or "-" for stdout, got %r' % (body["path"],))
        else:
            kw["path"] = body["path"]
    if "format" in body:
        if body["format"] not in ("json", "combined"):
            ctx.err("access_log.format", "expected json or combined, got %r" % (body["format"],))
        else:
            kw["format"] = body["format"]
    if "sample" in body:
        sample = body["sample"]
        if isinstance(sample, bool) or not isinstance(sample, (int, float)) or not 0.0 < sample <= 1.0:
            ctx.err("access_log.sample", "expected a fraction above 0 and at most 1 (e.g. 0.1), got %r" % (sample,))
        else:
            kw["sample"] = float(sample)
    ctx.put(kw, body, "access_log", "statuses", parse_status_filter)
    if "query" in body:
        if not isinstance(body["query"], bool):
            ctx.err("access_log.query", "expected true or false, got %r" % (body["query"],))
        else:
            kw["query"] = body["query"]
    return AccessLogSpec(**kw)


def parse_status_filter(value):
    """Like parse_statuses, and classes: ``"5xx"``, ``[404, "5xx"]``."""
    items = value if isinstance(value, list) else [value]
    ranges = []
    rest = []
    for item in items:
        if isinstance(item, str) and re.match(r"^\s*[1-5]xx\s*$", item, re.I):
            lo = int(item.strip()[0]) * 100
            ranges.append((lo, lo + 99))
        else:
            rest.append(item)
    if rest or not ranges:
        try:
            ranges.extend(parse_statuses(rest))
        except ValueError:
            raise ValueError("expected a status, a range like 400-499, a class like 5xx, or a list of them, "
                             "got %r" % (value,)) from None
    return tuple(ranges)


def _pools(ctx, value):
    if value is None:
        return []
    if not isinstance(value, dict) or not value:
        ctx.err("pools", "expected a mapping of pool name -> pool, got %s" % _kind(value))
        return []
    pools = []
    for name, body in value.items():
        path = "pools.%s" % name
        if not isinstance(name, str) or not _NAME.match(name):
            ctx.err(path, "pool names use letters, digits, '_', '-', '.' (max 64)")
            continue
        if ctx.mapping(body, path, _POOL_KEYS, required=("backends",)) is None:
            continue
        algorithm = body.get("algorithm", DEFAULT_ALGORITHM)
        if algorithm not in ALGORITHMS:
            ctx.err(path + ".algorithm", "unknown algorithm %r (known: %s)" % (algorithm, ", ".join(ALGORITHMS)))
        retries = ctx.integer(body.get("retries", 2), path + ".retries", 0, 10)
        caps = ALGORITHMS.get(algorithm, {})
        hash_key = None
        if "hash_key" in body:
            hash_key = ctx.convert(body["hash_key"], path + ".hash_key", parse_hash_key)
            if caps and caps.get("key") != "required":
                ctx.err(path + ".hash_key", "only consistent_hash and maglev take a hash_key (algorithm is %s)" % algorithm)
        elif caps.get("key") == "required":
            ctx.err(path + ".hash_key", "%s needs a hash_key: ip, path, header:NAME, cookie:NAME or query:NAME" % algorithm)
        if caps.get("key") == "ip":
            hash_key = ("ip", "")
        factor = 0.0
        if "hash_balance_factor" in body:
            raw_f = body["hash_balance_factor"]
            if isinstance(raw_f, bool) or not isinstance(raw_f, (int, float)) or raw_f < 1.0:
                ctx.err(path + ".hash_balance_factor", "expected a number >= 1.0 (e.g. 1.25), got %r" % (raw_f,))
            elif caps and not caps.get("bounded"):
                ctx.err(path + ".hash_balance_factor", "applies to consistent_hash, maglev and ip_hash only")
            else:
                factor = float(raw_f)
        decay = 10.0
        if "ewma_decay" in body:
            decay = ctx.convert(body["ewma_decay"], path + ".ewma_decay", parse_duration) or 10.0
            if caps and algorithm != "ewma":
                ctx.err(path + ".ewma_decay", "applies to the ewma algorithm only")
        table = 65537
        if "maglev_table_size" in body:
            table = ctx.integer(body["maglev_table_size"], path + ".maglev_table_size", 7, 10000019)
            if table is not None and not is_prime(table):
                ctx.err(path + ".maglev_table_size", "must be a prime number (e.g. 65537, 655373), got %d" % table)
            if caps and algorithm != "maglev":
                ctx.err(path + ".maglev_table_size", "applies to the maglev algorithm only")
            table = table or 65537
        backends = []
        raw = body.get("backends")
        if not isinstance(raw, list) or not raw:
            if "backends" in body:
                ctx.err(path + ".backends", "expected a non-empty list of backends, got %s" % _kind(raw))
            continue
        seen = {}
        for i, b in enumerate(raw):
            bpath = "%s.backends[%d]" % (path, i)
            if isinstance(b, str):  # shorthand: "- 127.0.0.1:9001"
                b = {"address": b}
            if ctx.mapping(b, bpath, _BACKEND_KEYS, required=("address",)) is None:
                continue
            addr = ctx.convert(b.get("address"), bpath + ".address", parse_address) if "address" in b else None
            weight = ctx.integer(b.get("weight", 1), bpath + ".weight", 1, 1000)
            caps_kw = {}
            for key in ("max_connections", "max_in_flight"):
                ctx.put_int(caps_kw, b, bpath, key, 0, 1000000)
            if addr is not None and str(addr) in seen:
                ctx.err(bpath + ".address", "%s is already backends[%d]" % (addr, seen[str(addr)]))
            elif addr is not None:
                seen[str(addr)] = i
            if addr is not None and weight is not None:
                backends.append(BackendSpec(addr, weight, **caps_kw))
        if algorithm in ("ip_hash", "consistent_hash") and sum(b.weight for b in backends) * 160 > 1 << 24:
            # 160 ring points per weight unit (libketama); the kernel caps the ring at 2^24 points.
            ctx.err(path + ".backends", "the ring would need more than 2^24 points: keep the sum of weights "
                    "at most 104857 (it is %d)" % sum(b.weight for b in backends))
        if algorithm == "maglev" and len(backends) * 7 > table:
            ctx.err(path + ".maglev_table_size", "must be at least 7 x the number of backends (%d)" % (7 * len(backends)))
        health = _health(ctx, body["health_check"], path + ".health_check") if "health_check" in body else None
        outlier = OutlierSpec()
        if "outlier_detection" in body:
            outlier = _outlier(ctx, body["outlier_detection"], path + ".outlier_detection")
        slow_start = 0.0
        if "slow_start" in body:
            slow_start = ctx.convert(body["slow_start"], path + ".slow_start", parse_duration) or 0.0
            if caps and caps.get("key"):
                ctx.err(path + ".slow_start", "does not apply to %s: ramping a hash ring's weights would move "
                        "keys away and back again" % algorithm)
        retry_kw = {}
        if "retry_non_idempotent" in body:
            flag = body["retry_non_idempotent"]
            if not isinstance(flag, bool):
                ctx.err(path + ".retry_non_idempotent", "expected true or false, got %r" % (flag,))
            else:
                retry_kw["retry_non_idempotent"] = flag
        if "retry_budget" in body:
            rb = body["retry_budget"]
            if ctx.mapping(rb, path + ".retry_budget", ("percent", "min_concurrent")) is not None:
                ctx.put_int(retry_kw, rb, path + ".retry_budget", "percent", 0, 100, "retry_budget_percent")
                ctx.put_int(retry_kw, rb, path + ".retry_budget", "min_concurrent", 0, 100000, "retry_budget_min")
        for key in ("max_connections", "max_in_flight", "queue_size"):
            ctx.put_int(retry_kw, body, path, key, 0, 1000000)
        ctx.put(retry_kw, body, path, "queue_timeout", parse_duration)
        if "panic" in body:
            if not isinstance(body["panic"], bool):
                ctx.err(path + ".panic", "expected true or false, got %r" % (body["panic"],))
            else:
                retry_kw["panic"] = body["panic"]
        ctx.put(retry_kw, body, path, "per_try_timeout", parse_duration)
        if "tls" in body and body["tls"] is not False:  # tls: false is plain HTTP, as without the key
            pool_tls = _pool_tls(ctx, body["tls"], path + ".tls")
            if pool_tls is not None:
                retry_kw["tls"] = pool_tls
        pools.append(PoolSpec(name=name, backends=tuple(backends), algorithm=algorithm, retries=retries or 0,
                              hash_key=hash_key, hash_balance_factor=factor, ewma_decay=decay,
                              maglev_table_size=table, health=health, outlier=outlier, slow_start=slow_start,
                              **retry_kw))
    return pools


def parse_statuses(value):
    """``200``, ``"200-399"`` or a list of them -> tuple of inclusive (low, high) ranges."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ValueError("expected a status, a range like 200-399, or a list of them, got []")
    ranges = []
    for item in items:
        if isinstance(item, bool):
            raise ValueError("expected a status, a range like 200-399, or a list of them, got %r" % (item,))
        if isinstance(item, int):
            lo = hi = item
        elif isinstance(item, str) and re.match(r"^\s*\d{3}\s*(-\s*\d{3}\s*)?$", item):
            lo_s, _, hi_s = item.partition("-")
            lo, hi = int(lo_s), int(hi_s or lo_s)
        else:
            raise ValueError("expected a status, a range like 200-399, or a list of them, got %r" % (item,))
        if not 100 <= lo <= hi <= 599:
            raise ValueError("statuses are 100-599 with low <= high, got %r" % (item,))
        ranges.append((lo, hi))
    return tuple(ranges)


def parse_fraction(value):
    """``0.1`` or ``"10%"`` -> 0.1 (0 to 0.5)."""
    if isinstance(value, str) and value.strip().endswith("%"):
        try:
            number = float(value.strip()[:-1]) / 100.0
        except ValueError:
            raise ValueError("expected a fraction like 0.1 or 10%%, got %r" % (value,)) from None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ValueError("expected a fraction like 0.1 or 10%%, got %r" % (value,))
    if not 0.0 <= number <= 0.5:
        raise ValueError("must be between 0 and 0.5 (50%%), got %r" % (value,))
    return number


def _health(ctx, value, path):
    if ctx.mapping(value, path, _HEALTH_KEYS) is None:
        return None
    kw = {}
    kind = value.get("type", "http")
    if kind not in ("http", "tcp"):
        ctx.err(path + ".type", "expected http or tcp, got %r" % (kind,))
    kw["kind"] = kind
    for key in ("interval", "down_interval", "timeout"):
        ctx.put(kw, value, path, key, parse_duration)
    for key in ("rise", "fall"):
        ctx.put_int(kw, value, path, key, 1, 100)
    ctx.put(kw, value, path, "jitter", parse_fraction)
    if kind == "tcp":
        for key in ("method", "path", "host", "expect_status", "expect_body"):
            if key in value:
                ctx.err("%s.%s" % (path, key), "applies to type http only (type is tcp)")
    if "method" in value:
        m = value["method"]
        if not isinstance(m, str) or not _TOKEN.match(m) or m.upper() == "CONNECT":
            ctx.err(path + ".method", "expected an HTTP method like GET or HEAD, got %r" % (m,))
        else:
            kw["method"] = m.upper()
    if "path" in value:
        pth = value["path"]
        if not isinstance(pth, str) or not pth.startswith("/") or any(c <= " " or c == "\x7f" for c in pth):
            ctx.err(path + ".path", "expected a path starting with '/' (no spaces), got %r" % (pth,))
        else:
            kw["path"] = pth
    if "host" in value:
        h = value["host"]
        name, port = (h.rsplit(":", 1) if h.count(":") == 1 else (h, None)) if isinstance(h, str) else ("", None)
        if not isinstance(h, str) or not _HOSTNAME.match(name or "") \
                or (port is not None and not (port.isdigit() and 1 <= int(port) <= 65535)):
            ctx.err(path + ".host", "expected a host name, optionally with :PORT (1-65535), got %r" % (h,))
        else:
            kw["host"] = h
    ctx.put(kw, value, path, "expect_status", parse_statuses)
    if "expect_body" in value:
        b = value["expect_body"]
        if not isinstance(b, str) or not b:
            ctx.err(path + ".expect_body", "expected a non-empty string, got %r" % (b,))
        else:
            kw["expect_body"] = b
    if "timeout" not in kw:
        kw["timeout"] = min(HealthSpec.timeout, kw.get("interval", HealthSpec.interval))
    spec = HealthSpec(**kw)
    if spec.timeout > spec.interval:
        ctx.err(path + ".timeout", "must not exceed interval (%gs): checks would come less often than the "
                "interval says" % spec.interval)
    return spec


def _outlier(ctx, value, path):
    if value is False:
        return None  # passive detection off
    if ctx.mapping(value, path, _OUTLIER_KEYS) is None:
        return OutlierSpec()
    kw = {}
    ctx.put_int(kw, value, path, "consecutive_failures", 1, 1000)
    if "statuses" in value:
        raw = value["statuses"]
        if not isinstance(raw, list) or not all(isinstance(c, int) and not isinstance(c, bool)
                                                and 500 <= c <= 599 for c in raw):
            ctx.err(path + ".statuses", "expected a list of 5xx statuses like [502, 503, 504], got %r" % (raw,))
        else:
            kw["statuses"] = tuple(raw)
    for key in ("base_ejection_time", "max_ejection_time"):
        ctx.put(kw, value, path, key, parse_duration)
    ctx.put_int(kw, value, path, "max_ejection_percent", 0, 100)
    spec = OutlierSpec(**kw)
    if spec.max_ejection_time < spec.base_ejection_time:
        ctx.err(path + ".max_ejection_time", "must be at least base_ejection_time (%gs)" % spec.base_ejection_time)
    return spec


def _listeners(ctx, value, pool_names, request_limits=None, head_base=None):
    base_limits = request_limits or RequestLimitSpec()
    if value is None:
        return []
    if not isinstance(value, list) or not value:
        ctx.err("listeners", "expected a non-empty list of listeners, got %s" % _kind(value))
        return []
    listeners = []
    names = set()
    for i, lst in enumerate(value):
        path = "listeners[%d]" % i
        if ctx.mapping(lst, path, _LISTENER_KEYS, required=("bind",)) is None:
            continue
        name = lst.get("name", "listener%d" % i)
        if not isinstance(name, str) or not _NAME.match(name):
            ctx.err(path + ".name", "expected a name of letters, digits, '_', '-', '.'")
        elif name in names:
            ctx.err(path + ".name", "duplicate listener name %r" % name)
        names.add(name)
        bind = ctx.convert(lst.get("bind"), path + ".bind", parse_address, True) if "bind" in lst else None
        guard = {}
        if "trusted_proxies" in lst:
            guard["trusted_proxies"] = _networks(ctx, lst["trusted_proxies"], path + ".trusted_proxies")
        if "proxy_protocol" in lst:
            if not isinstance(lst["proxy_protocol"], bool):
                ctx.err(path + ".proxy_protocol", "expected true or false, got %r" % (lst["proxy_protocol"],))
            else:
                guard["proxy_protocol"] = lst["proxy_protocol"]
        limits = base_limits
        if "limits" in lst:
            limits = _listener_limits(ctx, lst["limits"], path + ".limits", base_limits, guard)
            if "head_limits" in guard:
                head = dataclasses.replace(head_base or LimitSpec(), **guard["head_limits"])
                if head.max_request_line > head.max_header_bytes:
                    ctx.err(path + ".limits.max_request_line", "must not exceed max_header_bytes (%d)"
                            % head.max_header_bytes)
                guard["head_limits"] = head
        guard["limits"] = limits
        if "tls" in lst:
            listener_tls = _listener_tls(ctx, lst["tls"], path + ".tls")
            if listener_tls is not None:
                guard["tls"] = listener_tls
        redirect = None
        if "redirect_https" in lst:
            redirect = lst["redirect_https"]
            if redirect is True:
                redirect = 443
            if isinstance(redirect, bool) or not isinstance(redirect, int) or not 1 <= redirect <= 65535:
                ctx.err(path + ".redirect_https", "expected true (port 443) or the HTTPS port, got %r" % (redirect,))
                redirect = None
            elif "tls" in lst:
                ctx.err(path + ".redirect_https", "a redirect listener speaks plain HTTP: remove 'tls' here")
            else:
                guard["redirect_https"] = redirect
        routes = []
        if redirect is not None or "redirect_https" in lst:
            if "routes" in lst or "pool" in lst:
                ctx.err(path + ".redirect_https", "a redirect listener has no routes or pool: it answers every "
                        "request with a redirect")
        elif "routes" in lst and "pool" in lst:
            ctx.err(path, "give either 'pool' (one default pool) or 'routes', not both")
        elif "pool" in lst:
            if lst["pool"] not in pool_names:
                ctx.err(path + ".pool", "no pool named %r (pools: %s)" % (lst["pool"], ", ".join(sorted(pool_names)) or "none"))
            else:
                routes.append(RouteSpec(pool=lst["pool"], limits=limits))
        elif "routes" in lst:
            raw = lst["routes"]
            if not isinstance(raw, list) or not raw:
                ctx.err(path + ".routes", "expected a non-empty list of routes, got %s" % _kind(raw))
            else:
                for j, r in enumerate(raw):
                    route = _route(ctx, r, "%s.routes[%d]" % (path, j), pool_names, limits)
                    if route is not None:
                        routes.append(route)
        else:
            ctx.err(path + ".routes", "required: a list of routes (or 'pool: NAME' for one default pool)")
        upgrade = _upgrade_protocols(ctx, lst.get("upgrade_protocols", ["websocket"]), path + ".upgrade_protocols")
        if bind is not None:
            listeners.append(ListenerSpec(name=name, bind=bind, routes=tuple(routes), upgrade_protocols=upgrade,
                                          **guard))
    return _name_routes(ctx, listeners)


def _name_routes(ctx, listeners):
    """Every route gets a label (metrics, access log): its ``name``, else host + path
    prefix, prefixed with the listener's name where two listeners would share one."""
    counts = {}
    for lst in listeners:
        for r in lst.routes:
            if not r.name:
                label = (r.host or "") + r.path_prefix
                counts[label] = counts.get(label, 0) + 1
    seen = {}
    out = []
    for i, lst in enumerate(listeners):
        routes = []
        for j, r in enumerate(lst.routes):
            label = r.name
            if not label:
                label = (r.host or "") + r.path_prefix
                if counts[label] > 1:
                    label = "%s:%s" % (lst.name, label)
            if label in seen and r.name:
                ctx.err("listeners[%d].routes[%d].name" % (i, j), "route name %r is already used by %s" % (
                    label, seen[label]))
            seen.setdefault(label, "listeners[%d].routes[%d]" % (i, j))
            routes.append(dataclasses.replace(r, name=label))
        out.append(dataclasses.replace(lst, routes=tuple(routes)))
    return out


def _upgrade_protocols(ctx, value, path):
    """Upgrade protocol names (RFC 9110 §7.8: protocol-name is a token) a client may
    switch to through this listener; others are forwarded as plain requests."""
    if not isinstance(value, list) or not all(isinstance(v, str) and _TOKEN.match(v) for v in value):
        ctx.err(path, "expected a list of protocol names (tokens), like [websocket], got %r" % (value,))
        return ("websocket",)
    if any(v.lower() == "h2c" for v in value):
        ctx.err(path, "h2c cannot be allowed: fastlb does not speak HTTP/2, and an h2c upgrade would tunnel "
                      "past everything the balancer enforces (RFC 9113 §3.1 deprecates it)")
    return tuple(v.lower() for v in value)


def _route(ctx, value, path, pool_names, listener_limits=None):
    if ctx.mapping(value, path, _ROUTE_KEYS, required=("pool",)) is None:
        return None
    ok = True
    kw = {"limits": listener_limits or RequestLimitSpec()}
    if "name" in value:
        if not isinstance(value["name"], str) or not _NAME.match(value["name"]):
            ctx.err(path + ".name", "expected a name of letters, digits, '_', '-', '.', got %r" % (value["name"],))
        else:
            kw["name"] = value["name"]
    if "access" in value:
        kw["access"] = _access(ctx, value["access"], path + ".access")
    if "auth" in value:
        kw["auth"] = _auth(ctx, value["auth"], path + ".auth")
    if "rate_limits" in value:
        kw["rate_limits"] = _rate_limits(ctx, value["rate_limits"], path + ".rate_limits", kw.get("auth"))
    if "limits" in value:
        kw["limits"] = _request_limits(ctx, value["limits"], path + ".limits", kw["limits"], _REQUEST_LIMIT_KEYS)
    pool = value.get("pool")
    if "pool" in value and pool not in pool_names:
        ctx.err(path + ".pool", "no pool named %r (pools: %s)" % (pool, ", ".join(sorted(pool_names)) or "none"))
        ok = False
    host = value.get("host")
    if host is not None:
        # "*.domain" is the only pattern: "*example.com" or ".example.com" would never
        # match a Host (the router compares whole labels), so they are errors, not silence.
        name = host[2:] if isinstance(host, str) and host.startswith("*.") else host
        if not isinstance(name, str) or not _HOSTNAME.match(name):
            ctx.err(path + ".host", "expected a host name or *.domain, got %r" % (host,))
            ok = False
        else:
            host = host.lower().rstrip(".")
    prefix = value.get("path_prefix", "/")
    if not isinstance(prefix, str) or not prefix.startswith("/") or any(c <= " " or c == "\x7f" for c in prefix):
        ctx.err(path + ".path_prefix", "expected a path starting with '/', got %r" % (prefix,))
        ok = False
    return RouteSpec(pool=pool, host=host, path_prefix=prefix, **kw) if ok else None


def _admin(ctx, value):
    if ctx.mapping(value, "admin", ("bind", "token_file"), required=("bind",)) is None:
        return None
    bind = ctx.convert(value.get("bind"), "admin.bind", parse_address, True) if "bind" in value else None
    token_file = None
    if "token_file" in value:
        token_file = ctx.convert(value["token_file"], "admin.token_file", parse_secret_file)
    return AdminSpec(bind=bind, token_file=token_file) if bind is not None else None


def parse_secret_file(value):
    """A file that must exist and be readable now (a token, a key, a key list)."""
    if not isinstance(value, str) or not value:
        raise ValueError("expected a file path, got %r" % (value,))
    try:
        with open(value, "rb"):
            pass
    except OSError as exc:
        raise ValueError("cannot read %s: %s" % (value, exc.strerror or exc)) from None
    return value


def _section(ctx, value, name, cls, keys, parse):
    if value is None:
        return cls()
    if ctx.mapping(value, name, keys) is None:
        return cls()
    kwargs = {}
    for key, raw in value.items():
        if key in keys:
            parsed = ctx.convert(raw, "%s.%s" % (name, key), parse)
            if parsed is not None:
                kwargs[key] = parsed
    return cls(**kwargs)


def _limits(ctx, value):
    """The top-level ``limits``: (LimitSpec for heads and pools, RequestLimitSpec defaults)."""
    if value is None:
        return LimitSpec(), RequestLimitSpec()
    if ctx.mapping(value, "limits", _LIMIT_KEYS) is None:
        return LimitSpec(), RequestLimitSpec()
    kwargs = _head_limits(ctx, value, "limits")
    if "max_idle_per_backend" in value:
        n = ctx.integer(value["max_idle_per_backend"], "limits.max_idle_per_backend", 0, 100000)
        if n is not None:
            kwargs["max_idle_per_backend"] = n
    limits = LimitSpec(**kwargs)
    if limits.max_request_line > limits.max_header_bytes:
        ctx.err("limits.max_request_line", "must not exceed limits.max_header_bytes (%d)" % limits.max_header_bytes)
    return limits, _request_limits(ctx, value, "limits", RequestLimitSpec(), _LIMIT_KEYS)


def _head_limits(ctx, value, path):
    kwargs = {}
    for key in ("max_request_line", "max_header_bytes"):
        if key in value:
            size = ctx.convert(value[key], "%s.%s" % (path, key), parse_size)
            if size is not None:
                kwargs[key] = size
    if "max_header_fields" in value:
        n = ctx.integer(value["max_header_fields"], path + ".max_header_fields", 1, 10000)
        if n is not None:
            kwargs["max_header_fields"] = n
    return kwargs


def _listener_limits(ctx, value, path, base, guard):
    """A listener's ``limits``: head limits (over the global ones, kept in
    ``guard["head_limits"]`` as a partial dict resolved by the caller), the
    per-client connection cap, and request limits over the global ones."""
    if ctx.mapping(value, path, _LISTENER_LIMIT_KEYS) is None:
        return base
    head = _head_limits(ctx, value, path)
    if head:
        guard["head_limits"] = head  # completed with the global LimitSpec in from_dict
    if "max_connections_per_client" in value:
        n = ctx.integer(value["max_connections_per_client"], path + ".max_connections_per_client", 0, 1000000)
        if n is not None:
            guard["max_connections_per_client"] = n
    return _request_limits(ctx, value, path, base, _LISTENER_LIMIT_KEYS)


def _request_limits(ctx, value, path, base, allowed):
    """RequestLimitSpec: ``base`` with the keys of ``value`` on top."""
    if value is not base and ctx.mapping(value, path, allowed) is None:
        return base
    kw = {}
    if "max_body" in value:
        if value["max_body"] is None or value["max_body"] is False:
            kw["max_body"] = None
        else:
            ctx.put(kw, value, path, "max_body", parse_size)
    if "methods" in value:
        methods = value["methods"]
        if methods is None:
            kw["methods"] = None
        elif not isinstance(methods, list) or not methods or not all(
                isinstance(m, str) and _TOKEN.match(m) for m in methods):
            ctx.err(path + ".methods", "expected a list of methods like [GET, POST], got %r" % (methods,))
        else:
            upper = []
            for m in methods:
                if m.upper() not in upper:
                    upper.append(m.upper())
            if "CONNECT" in upper:
                ctx.err(path + ".methods", "CONNECT cannot be allowed: fastlb is a reverse proxy")
            kw["methods"] = tuple(m.encode("ascii") for m in upper)
    for key in ("reject_dot_segments", "reject_encoded_slashes"):
        if key in value:
            if not isinstance(value[key], bool):
                ctx.err("%s.%s" % (path, key), "expected true or false, got %r" % (value[key],))
            else:
                kw[key] = value[key]
    return dataclasses.replace(base, **kw) if kw else base


def _tls_version(ctx, body, path):
    version = body.get("min_version", "1.2")
    if isinstance(version, float):
        version = "%.1f" % version  # min_version: 1.2 written unquoted
    if version not in tlsmod.VERSIONS:
        ctx.err(path + ".min_version", "expected \"1.2\" or \"1.3\" (TLS 1.0 and 1.1 are not offered), got %r"
                % (body.get("min_version"),))
        return None
    return version


def _file_key(ctx, body, path, key):
    """A path that must name a readable file now; None when absent or bad."""
    if key not in body:
        return None
    return ctx.convert(body[key], "%s.%s" % (path, key), parse_secret_file)


def _check_cert(ctx, spec, path):
    """Read and check a certificate entry now: the error names the file's key."""
    try:
        tlsmod.load_certificate(spec)
    except tlsmod.CertError as exc:
        ctx.err("%s.%s" % (path, exc.which), str(exc))


def _listener_tls(ctx, value, path):
    """``listeners[i].tls`` -> ListenerTlsSpec (docs/tls.md); certificates are read and checked here."""
    if ctx.mapping(value, path, _LISTENER_TLS_KEYS, required=("certificates",)) is None:
        return None
    n_problems = len(ctx.problems)
    certs = []
    raw = value.get("certificates")
    if not isinstance(raw, list) or not raw:
        if "certificates" in value:
            ctx.err(path + ".certificates", "expected a non-empty list of {cert, key}, got %s" % _kind(raw))
    else:
        for i, c in enumerate(raw):
            cpath = "%s.certificates[%d]" % (path, i)
            if ctx.mapping(c, cpath, _CERTIFICATE_KEYS, required=("cert", "key")) is None:
                continue
            files = {k: _file_key(ctx, c, cpath, k) for k in _CERTIFICATE_KEYS}
            if files["cert"] and files["key"] and (files["password_file"] or "password_file" not in c):
                spec = CertificateSpec(files["cert"], files["key"], files["password_file"])
                _check_cert(ctx, spec, cpath)
                certs.append(spec)
    kw = {}
    version = _tls_version(ctx, value, path)
    if version is not None:
        kw["min_version"] = version
    if "ciphers" in value:
        ciphers = value["ciphers"]
        try:
            if not isinstance(ciphers, str) or not ciphers:
                raise ValueError("expected an OpenSSL cipher list string")
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).set_ciphers(ciphers)
        except (ValueError, ssl.SSLError) as exc:
            ctx.err(path + ".ciphers", "not a usable OpenSSL cipher list (%s): %r" % (exc, ciphers))
        else:
            kw["ciphers"] = ciphers
    client_ca = _file_key(ctx, value, path, "client_ca")
    if client_ca:
        try:
            tlsmod.load_ca_bundle(client_ca, "client_ca")
            kw["client_ca"] = client_ca
        except tlsmod.CertError as exc:
            ctx.err(path + ".client_ca", str(exc))
    mode = value.get("client_auth", "none")
    if mode not in CLIENT_AUTH_MODES:
        ctx.err(path + ".client_auth", "expected one of %s, got %r" % (", ".join(CLIENT_AUTH_MODES), mode))
    elif mode != "none" and "client_ca" not in value:
        ctx.err(path + ".client_auth", "client_auth: %s needs client_ca (the CA client certificates chain to)" % mode)
    else:
        kw["client_auth"] = mode
    if "subject_header" in value:
        header = value["subject_header"]
        if not isinstance(header, str) or not _TOKEN.match(header):
            ctx.err(path + ".subject_header", "expected a header name, got %r" % (header,))
        elif value.get("client_auth", "none") == "none":
            ctx.err(path + ".subject_header", "needs client_auth: optional or required (no client certificate "
                    "is asked for otherwise)")
        else:
            kw["subject_header"] = header
    if "hsts" in value:
        hsts = value["hsts"]
        if not isinstance(hsts, str) or not re.match(r"^max-age=\d+(\s*;\s*(includeSubDomains|preload))*$", hsts):
            ctx.err(path + ".hsts", "expected a Strict-Transport-Security value like \"max-age=31536000; "
                    "includeSubDomains\", got %r" % (hsts,))
        else:
            kw["hsts"] = hsts
    ctx.put(kw, value, path, "ticket_rotation", parse_duration)
    if "watch" in value:
        if not isinstance(value["watch"], bool):
            ctx.err(path + ".watch", "expected true or false, got %r" % (value["watch"],))
        else:
            kw["watch"] = value["watch"]
    if len(ctx.problems) != n_problems:
        return None
    return ListenerTlsSpec(certificates=tuple(certs), **kw)


def _pool_tls(ctx, value, path):
    """``pools.NAME.tls`` -> PoolTlsSpec (docs/tls.md#tls-to-backends)."""
    if value is True:
        return PoolTlsSpec()  # "tls: true": the system's CAs, the backend's host name checked
    if ctx.mapping(value, path, _POOL_TLS_KEYS) is None:
        return None
    n_problems = len(ctx.problems)
    kw = {}
    ca = _file_key(ctx, value, path, "ca")
    if ca:
        try:
            tlsmod.load_ca_bundle(ca, "ca")
            kw["ca"] = ca
        except tlsmod.CertError as exc:
            ctx.err(path + ".ca", str(exc))
    if "server_name" in value:
        name = value["server_name"]
        if not isinstance(name, str) or not (_HOSTNAME.match(name) or tlsmod.is_ip(name)):
            ctx.err(path + ".server_name", "expected a host name, got %r" % (name,))
        else:
            kw["server_name"] = name.rstrip(".")
    if ("cert" in value) != ("key" in value):
        ctx.err(path + (".key" if "cert" in value else ".cert"), "cert and key go together (a client certificate)")
    cert = _file_key(ctx, value, path, "cert")
    key = _file_key(ctx, value, path, "key")
    if cert and key:
        _check_cert(ctx, CertificateSpec(cert, key), path)
        kw["cert"], kw["key"] = cert, key
    if "verify" in value:
        if not isinstance(value["verify"], bool):
            ctx.err(path + ".verify", "expected true or false, got %r" % (value["verify"],))
        else:
            kw["verify"] = value["verify"]
            if not value["verify"] and ("ca" in value or "server_name" in value):
                ctx.err(path + ".verify", "verify: false checks nothing: remove ca/server_name, or verify")
    version = _tls_version(ctx, value, path)
    if version is not None:
        kw["min_version"] = version
    if len(ctx.problems) != n_problems:
        return None
    return PoolTlsSpec(**kw)


def _networks(ctx, value, path):
    """A list of CIDR networks (``10.0.0.0/8``, ``2001:db8::/32``; a bare address is /32 or /128)."""
    if not isinstance(value, list):
        ctx.err(path, "expected a list of networks like [10.0.0.0/8, \"2001:db8::/32\"], got %s" % _kind(value))
        return ()
    nets = []
    for i, item in enumerate(value):
        net = ctx.convert(item, "%s[%d]" % (path, i), parse_network)
        if net is not None:
            nets.append(net)
    return tuple(nets)


def parse_network(value):
    if not isinstance(value, str):
        raise ValueError("expected a network like 10.0.0.0/8 or 2001:db8::/32, got %r" % (value,))
    try:
        return ipaddress.ip_network(value.strip(), strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(value.strip(), strict=False)
        except ValueError:
            raise ValueError("%r is not a valid IPv4 or IPv6 network" % (value,)) from None
        raise ValueError("%r has host bits set: did you mean %s?" % (value, loose)) from exc


def _access(ctx, value, path):
    if ctx.mapping(value, path, ("allow", "deny")) is None:
        return None
    allow = _networks(ctx, value["allow"], path + ".allow") if "allow" in value else ()
    deny = _networks(ctx, value["deny"], path + ".deny") if "deny" in value else ()
    if "allow" not in value and "deny" not in value:
        ctx.err(path, "give allow, deny or both (lists of networks)")
        return None
    return AccessSpec(allow=allow, deny=deny)


def parse_rate(value):
    """``100/s``, ``6000/m``, ``10/h`` -> (tokens per second, count, text)."""
    if not isinstance(value, str):
        raise ValueError("expected a rate like 100/s, 6000/m or 10/h, got %r" % (value,))
    m = _RATE.match(value)
    if not m:
        raise ValueError("expected a rate like 100/s, 6000/m or 10/h, got %r" % (value,))
    count = float(m.group(1))
    if count <= 0:
        raise ValueError("the rate must be above zero, got %r" % (value,))
    return count / _RATE_UNITS[m.group(2)], count, value.strip().replace(" ", "")


def _rate_limits(ctx, value, path, auth):
    if not isinstance(value, list) or not value:
        ctx.err(path, "expected a list of policies like [{key: ip, rate: 100/s, burst: 200}], got %s" % _kind(value))
        return ()
    policies = []
    labels = {}
    for i, item in enumerate(value):
        p = "%s[%d]" % (path, i)
        if ctx.mapping(item, p, _RATE_LIMIT_KEYS, required=("key", "rate")) is None:
            continue
        key = item.get("key")
        kind, _, name = key.partition(":") if isinstance(key, str) else ("", "", "")
        ok = True
        if kind not in RATE_LIMIT_KEY_KINDS or (kind in ("header", "jwt")) != bool(name) or (
                kind == "header" and not _TOKEN.match(name)):
            ctx.err(p + ".key", "expected ip, header:NAME, api_key, jwt:CLAIM or route, got %r" % (key,))
            ok = False
        elif kind == "api_key" and (auth is None or auth.kind != "api_key"):
            ctx.err(p + ".key", "api_key keys on the authenticated API key: the route needs auth.api_key")
            ok = False
        elif kind == "jwt" and (auth is None or auth.kind != "jwt"):
            ctx.err(p + ".key", "jwt:%s keys on a verified token's claim: the route needs auth.jwt" % name)
            ok = False
        rate = ctx.convert(item.get("rate"), p + ".rate", parse_rate) if "rate" in item else None
        if rate is None:
            ok = False
        burst = None
        if "burst" in item:
            burst = ctx.integer(item["burst"], p + ".burst", 1, 10**9)
            ok = ok and burst is not None
        max_keys = 100000
        if "max_keys" in item:
            max_keys = ctx.integer(item["max_keys"], p + ".max_keys", 1, 10**8)
            ok = ok and max_keys is not None
        label = item.get("name", key)
        if "name" in item and (not isinstance(label, str) or not _NAME.match(label)):
            ctx.err(p + ".name", "expected a name of letters, digits, '_', '-', '.', got %r" % (label,))
            ok = False
        elif label in labels:
            ctx.err(p + ".name" if "name" in item else p, "policy %r is already on this route (%s): give one of "
                    "them a name" % (label, labels[label]))
            ok = False
        labels.setdefault(label, p)
        if not ok:
            continue
        per_second, count, text = rate
        if burst is None:
            burst = max(1, int(count))
        policies.append(RateLimitSpec(key=key, kind=kind, name=name.lower() if kind == "header" else name,
                                      rate=per_second, burst=burst, rate_text=text, label=label,
                                      max_keys=max_keys))
    return tuple(policies)


def _auth(ctx, value, path):
    if ctx.mapping(value, path, _AUTH_KINDS) is None:
        return None
    kinds = [k for k in _AUTH_KINDS if k in value]
    if len(kinds) != 1:
        ctx.err(path, "give exactly one of api_key, jwt or basic, got %s" % (", ".join(kinds) or "none"))
        return None
    kind = kinds[0]
    body = value[kind]
    p = "%s.%s" % (path, kind)
    spec = {"api_key": _api_key, "jwt": _jwt, "basic": _basic}[kind](ctx, body, p)
    if spec is None:
        return None
    return AuthSpec(kind=kind, **{kind: spec})


def _bool(ctx, kw, body, path, key):
    if key in body:
        if not isinstance(body[key], bool):
            ctx.err("%s.%s" % (path, key), "expected true or false, got %r" % (body[key],))
        else:
            kw[key] = body[key]


def _api_key(ctx, body, path):
    if ctx.mapping(body, path, _API_KEY_KEYS) is None:
        return None
    kw = {}
    _bool(ctx, kw, body, path, "forward_credential")
    if "header" in body and "query" in body:
        ctx.err(path, "give header or query, not both")
        return None
    for key in ("header", "query"):
        if key in body:
            v = body[key]
            if not isinstance(v, str) or not _TOKEN.match(v):
                ctx.err("%s.%s" % (path, key), "expected a %s name, got %r" % (
                    "header field" if key == "header" else "query parameter", v))
                return None
            kw[key] = v
    if "query" in kw:
        kw["header"] = None
    digests = []
    if "keys_sha256" in body:
        keys = body["keys_sha256"]
        if not isinstance(keys, list):
            ctx.err(path + ".keys_sha256", "expected a list of SHA-256 hex digests, got %s" % _kind(keys))
        else:
            for i, d in enumerate(keys):
                if not isinstance(d, str) or not _HEX_DIGEST.match(d):
                    ctx.err("%s.keys_sha256[%d]" % (path, i), "expected 64 hex digits (printf %%s KEY | sha256sum), "
                            "got %r" % (d if not isinstance(d, str) else d[:8] + "..." if len(d) > 8 else d,))
                else:
                    digests.append(bytes.fromhex(d))
    if "keys_file" in body:
        digests.extend(_keys_file(ctx, body["keys_file"], path + ".keys_file"))
    if not digests and not any(p.startswith(path + ".keys") for p, _ in ctx.problems):
        ctx.err(path, "no keys: give keys_sha256 (a list of SHA-256 hex digests) or keys_file")
    if not digests:
        return None
    return ApiKeySpec(digests=tuple(dict.fromkeys(digests)), **kw)


def _read_text(ctx, value, path):
    if not isinstance(value, str) or not value:
        ctx.err(path, "expected a file path, got %r" % (value,))
        return None
    try:
        with open(value, "r", encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        ctx.err(path, "cannot read %s: %s" % (value, getattr(exc, "strerror", None) or exc))
        return None


def _keys_file(ctx, value, path):
    text = _read_text(ctx, value, path)
    if text is None:
        return []
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not _HEX_DIGEST.match(line):
            ctx.err(path, "%s line %d: expected 64 hex digits (a SHA-256 digest), not a key" % (value, n))
            continue
        out.append(bytes.fromhex(line))
    if not out and not any(p == path for p, _ in ctx.problems):
        ctx.err(path, "%s holds no key digests" % value)
    return out


def _duration_or_zero(value):
    if value == 0 or value == "0" or value == "0s":
        return 0.0
    return parse_duration(value)


def _jwt(ctx, body, path):
    if ctx.mapping(body, path, _JWT_KEYS, required=("algorithms",)) is None:
        return None
    kw = {}
    ok = True
    algs = body.get("algorithms")
    if not isinstance(algs, list) or not algs:
        ctx.err(path + ".algorithms", "expected a list like [RS256, ES256], got %r" % (algs,))
        return None
    for i, a in enumerate(algs):
        if not isinstance(a, str) or a not in JWT_ALGORITHMS:
            hint = " (unsigned tokens are never accepted)" if isinstance(a, str) and a.lower() == "none" else ""
            ctx.err("%s.algorithms[%d]" % (path, i), "unknown algorithm %r: expected one of %s%s" % (
                a, ", ".join(JWT_ALGORITHMS), hint))
            ok = False
    if not ok:
        return None
    kw["algorithms"] = tuple(dict.fromkeys(algs))
    sources = [k for k in ("jwks_file", "jwks_url") if k in body]
    if len(sources) > 1:
        ctx.err(path, "give jwks_file or jwks_url, not both")
        return None
    asym = [a for a in kw["algorithms"] if a != "HS256"]
    if asym and not sources:
        ctx.err(path, "%s need public keys: give jwks_file or jwks_url" % ", ".join(asym))
        ok = False
    if sources and not asym:
        ctx.err(path + "." + sources[0], "only HS256 is allowed: a JWKS is not used (add RS256 or ES256)")
        ok = False
    if "HS256" in kw["algorithms"] and "secret_file" not in body:
        ctx.err(path, "HS256 needs secret_file (the shared secret)")
        ok = False
    if "secret_file" in body and "HS256" not in kw["algorithms"]:
        ctx.err(path + ".secret_file", "HS256 is not in algorithms: the secret is not used")
        ok = False
    if "jwks_file" in body:
        text = _read_text(ctx, body["jwks_file"], path + ".jwks_file")
        if text is None:
            ok = False
        else:
            try:
                doc = json.loads(text)
            except ValueError as exc:
                ctx.err(path + ".jwks_file", "%s is not JSON: %s" % (body["jwks_file"], exc))
                ok = False
            else:
                if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"] or not all(
                        isinstance(k, dict) and isinstance(k.get("kty"), str) for k in doc["keys"]):
                    ctx.err(path + ".jwks_file", '%s is not a JWKS: expected {"keys": [{"kty": ...}, ...]}'
                            % body["jwks_file"])
                    ok = False
                else:
                    kw["jwks_file"] = body["jwks_file"]
    if "jwks_url" in body:
        url = body["jwks_url"]
        if not isinstance(url, str) or not re.match(r"^https?://[^\s/]+(/\S*)?$", url):
            ctx.err(path + ".jwks_url", "expected an http:// or https:// URL, got %r" % (url,))
            ok = False
        else:
            kw["jwks_url"] = url
    if "secret_file" in body:
        text = _read_text(ctx, body["secret_file"], path + ".secret_file")
        if text is None:
            ok = False
        elif not text.strip():
            ctx.err(path + ".secret_file", "%s is empty" % body["secret_file"])
            ok = False
        else:
            kw["secret_file"] = body["secret_file"]
    if "issuer" in body:
        if not isinstance(body["issuer"], str) or not body["issuer"]:
            ctx.err(path + ".issuer", "expected a string, got %r" % (body["issuer"],))
            ok = False
        else:
            kw["issuer"] = body["issuer"]
    if "audience" in body:
        aud = body["audience"]
        aud = [aud] if isinstance(aud, str) else aud
        if not isinstance(aud, list) or not aud or not all(isinstance(a, str) and a for a in aud):
            ctx.err(path + ".audience", "expected a string or a list of strings, got %r" % (body["audience"],))
            ok = False
        else:
            kw["audience"] = tuple(aud)
    problems = len(ctx.problems)
    ctx.put(kw, body, path, "leeway", _duration_or_zero)
    ctx.put(kw, body, path, "jwks_refresh", parse_duration)
    ok = ok and len(ctx.problems) == problems
    if "forward_claims" in body:
        fc = body["forward_claims"]
        if not isinstance(fc, dict) or not fc:
            ctx.err(path + ".forward_claims", "expected a mapping of claim: header, like {sub: X-User-Id}, got %r"
                    % (fc,))
            ok = False
        else:
            pairs = []
            for claim, header in fc.items():
                if not isinstance(claim, str) or not isinstance(header, str) or not _TOKEN.match(header):
                    ctx.err("%s.forward_claims.%s" % (path, claim), "expected a header name, got %r" % (header,))
                    ok = False
                elif header.lower() in ("host", "content-length", "transfer-encoding", "connection",
                                        "authorization", "x-request-id"):
                    ctx.err("%s.forward_claims.%s" % (path, claim), "%s cannot carry a claim" % header)
                    ok = False
                else:
                    pairs.append((claim, header))
            kw["forward_claims"] = tuple(pairs)
    if "required_claims" in body:
        rc = body["required_claims"]
        if not isinstance(rc, dict) or not rc:
            ctx.err(path + ".required_claims", "expected a mapping of claim: [allowed values], got %r" % (rc,))
            ok = False
        else:
            pairs = []
            for claim, allowed in rc.items():
                allowed = [allowed] if isinstance(allowed, (str, int)) and not isinstance(allowed, bool) else allowed
                if not isinstance(allowed, list) or not allowed or not all(
                        isinstance(a, (str, int)) and not isinstance(a, bool) for a in allowed):
                    ctx.err("%s.required_claims.%s" % (path, claim), "expected a value or a list of values, got %r"
                            % (rc[claim],))
                    ok = False
                else:
                    pairs.append((str(claim), tuple(str(a) for a in allowed)))
            kw["required_claims"] = tuple(pairs)
    _bool(ctx, kw, body, path, "forward_credential")
    return JwtSpec(**kw) if ok else None


_BCRYPT = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")


def _basic(ctx, body, path):
    if ctx.mapping(body, path, _BASIC_KEYS, required=("htpasswd",)) is None:
        return None
    kw = {}
    ok = True
    if "htpasswd" in body:
        text = _read_text(ctx, body["htpasswd"], path + ".htpasswd")
        if text is None:
            return None
        users = 0
        bad = 0
        for n, line in enumerate(text.splitlines(), 1):
            if bad >= 3:
                ctx.err(path + ".htpasswd", "%s: more bad lines not shown" % body["htpasswd"])
                break
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            user, sep, hashed = line.strip().partition(":")
            if not sep or not user:
                ctx.err(path + ".htpasswd", "%s line %d: expected user:hash" % (body["htpasswd"], n))
                ok = False
                bad += 1
            elif not _BCRYPT.match(hashed):
                ctx.err(path + ".htpasswd", "%s line %d: user %r: only bcrypt entries ($2y$...) are accepted "
                        "(htpasswd -B)" % (body["htpasswd"], n, user))
                ok = False
                bad += 1
            else:
                users += 1
        if ok and not users:
            ctx.err(path + ".htpasswd", "%s has no users" % body["htpasswd"])
            ok = False
        kw["htpasswd"] = body["htpasswd"]
    if "realm" in body:
        realm = body["realm"]
        if not isinstance(realm, str) or not realm or any(c in realm for c in '"\\') or any(
                ord(c) < 32 or ord(c) == 127 for c in realm):
            ctx.err(path + ".realm", "expected a name without quotes, backslashes or control characters, got %r"
                    % (realm,))
            ok = False
        else:
            kw["realm"] = realm
    if "users" in body:
        users = body["users"]
        if not isinstance(users, list) or not users or not all(isinstance(u, str) and u for u in users):
            ctx.err(path + ".users", "expected a list of user names, got %r" % (users,))
            ok = False
        else:
            kw["users"] = tuple(users)
    _bool(ctx, kw, body, path, "forward_credential")
    return BasicSpec(**kw) if ok else None

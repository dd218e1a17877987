"""YAML (or a plain dict) -> validated ``model.Config``.

Every problem names its key path (``pools.api.backends[1].address``) and what
is wrong; all problems are collected and raised together as one ConfigError,
so ``fastlb check`` shows them all at once. Unknown keys are errors (a typo must
not silently fall back to a default).
"""

import ipaddress
import re

import yaml

from ._core import is_prime
from .errors import ConfigError
from .model import (
    ALGORITHMS,
    AccessLogSpec,
    ObservabilitySpec,
    DEFAULT_ALGORITHM,
    Address,
    AdminSpec,
    BackendSpec,
    Config,
    HealthSpec,
    LimitSpec,
    ListenerSpec,
    OutlierSpec,
    PoolSpec,
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
              "panic")
_HEALTH_KEYS = ("type", "interval", "down_interval", "timeout", "rise", "fall", "jitter", "method", "path", "host",
                "expect_status", "expect_body")
_OUTLIER_KEYS = ("consecutive_failures", "statuses", "base_ejection_time", "max_ejection_time",
                 "max_ejection_percent")
HASH_KEY_KINDS = ("ip", "path", "header", "cookie", "query")
_BACKEND_KEYS = ("address", "weight", "max_connections", "max_in_flight")
_LISTENER_KEYS = ("name", "bind", "routes", "pool", "upgrade_protocols")
_ROUTE_KEYS = ("host", "path_prefix", "pool")
_TIMEOUT_KEYS = tuple(TimeoutSpec.__dataclass_fields__)
_LIMIT_KEYS = tuple(LimitSpec.__dataclass_fields__)


def from_dict(doc):
    """Validate a parsed document; raise ConfigError listing every problem."""
    ctx = _Ctx()
    if ctx.mapping(doc, "", _TOP, required=("listeners", "pools")) is None:
        raise ConfigError(ctx.problems)
    pools = _pools(ctx, doc.get("pools"))
    pool_names = {p.name for p in pools} if pools else set()
    listeners = _listeners(ctx, doc.get("listeners"), pool_names)
    admin = _admin(ctx, doc["admin"]) if "admin" in doc else None
    timeouts = _section(ctx, doc.get("timeouts"), "timeouts", TimeoutSpec, _TIMEOUT_KEYS, parse_duration)
    limits = _limits(ctx, doc.get("limits"))
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
                  observability=observability)


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


def _listeners(ctx, value, pool_names):
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
        routes = []
        if "routes" in lst and "pool" in lst:
            ctx.err(path, "give either 'pool' (one default pool) or 'routes', not both")
        elif "pool" in lst:
            if lst["pool"] not in pool_names:
                ctx.err(path + ".pool", "no pool named %r (pools: %s)" % (lst["pool"], ", ".join(sorted(pool_names)) or "none"))
            else:
                routes.append(RouteSpec(pool=lst["pool"]))
        elif "routes" in lst:
            raw = lst["routes"]
            if not isinstance(raw, list) or not raw:
                ctx.err(path + ".routes", "expected a non-empty list of routes, got %s" % _kind(raw))
            else:
                for j, r in enumerate(raw):
                    route = _route(ctx, r, "%s.routes[%d]" % (path, j), pool_names)
                    if route is not None:
                        routes.append(route)
        else:
            ctx.err(path + ".routes", "required: a list of routes (or 'pool: NAME' for one default pool)")
        upgrade = _upgrade_protocols(ctx, lst.get("upgrade_protocols", ["websocket"]), path + ".upgrade_protocols")
        if bind is not None:
            listeners.append(ListenerSpec(name=name, bind=bind, routes=tuple(routes), upgrade_protocols=upgrade))
    return listeners


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


def _route(ctx, value, path, pool_names):
    if ctx.mapping(value, path, _ROUTE_KEYS, required=("pool",)) is None:
        return None
    ok = True
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
    return RouteSpec(pool=pool, host=host, path_prefix=prefix) if ok else None


def _admin(ctx, value):
    if ctx.mapping(value, "admin", ("bind",), required=("bind",)) is None:
        return None
    bind = ctx.convert(value.get("bind"), "admin.bind", parse_address, True) if "bind" in value else None
    return AdminSpec(bind=bind) if bind is not None else None


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
    if value is None:
        return LimitSpec()
    if ctx.mapping(value, "limits", _LIMIT_KEYS) is None:
        return LimitSpec()
    kwargs = {}
    for key in ("max_request_line", "max_header_bytes"):
        if key in value:
            size = ctx.convert(value[key], "limits." + key, parse_size)
            if size is not None:
                kwargs[key] = size
    if "max_header_fields" in value:
        n = ctx.integer(value["max_header_fields"], "limits.max_header_fields", 1, 10000)
        if n is not None:
            kwargs["max_header_fields"] = n
    if "max_idle_per_backend" in value:
        n = ctx.integer(value["max_idle_per_backend"], "limits.max_idle_per_backend", 0, 100000)
        if n is not None:
            kwargs["max_idle_per_backend"] = n
    limits = LimitSpec(**kwargs)
    if limits.max_request_line > limits.max_header_bytes:
        ctx.err("limits.max_request_line", "must not exceed limits.max_header_bytes (%d)" % limits.max_header_bytes)
    return limits

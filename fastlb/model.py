"""Validated configuration as frozen dataclasses, and the algorithm table.

Types only: no I/O, no parsing (config.py turns YAML into these), imports only
errors. Every value here has already been checked, so the rest of fastlb never
re-validates. Defaults are the documented ones (docs/configuration.md).
"""

from dataclasses import dataclass, field

# Algorithms as data (as HAProxy's BE_LB_* flags): config validation, the CLI and
# balancer.py read this table. Capabilities:
#   load     the selector reads live in-flight counts / latency (LoadState)
#   key      the selector needs a request key (hash_key); ip_hash's key is the client address
#   bounded  hash_balance_factor applies (bounded loads)
ALGORITHMS = {
    "round_robin": {"summary": "smooth weighted round robin (nginx's): weights 5,1,1 -> a a b a c a a",
                    "load": False, "key": None, "bounded": False},
    "least_connections": {"summary": "fewest in-flight requests relative to weight; ties round robin",
                          "load": True, "key": None, "bounded": False},
    "random": {"summary": "weighted random", "load": False, "key": None, "bounded": False},
    "p2c": {"summary": "power of two choices: two weighted-random candidates, fewer in-flight wins",
            "load": True, "key": None, "bounded": False},
    "ewma": {"summary": "latency-aware: peak-EWMA response time x (in-flight + 1)",
             "load": True, "key": None, "bounded": False},
    "ip_hash": {"summary": "client address on the consistent (ketama) ring",
                "load": False, "key": "ip", "bounded": True},
    "consistent_hash": {"summary": "libketama-compatible consistent hash ring over hash_key",
                        "load": False, "key": "required", "bounded": True},
    "maglev": {"summary": "Maglev lookup table (NSDI 2016) over hash_key",
               "load": False, "key": "required", "bounded": True},
}

DEFAULT_ALGORITHM = "round_robin"


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self):
        if ":" in self.host:
            return "[%s]:%d" % (self.host, self.port)
        return "%s:%d" % (self.host, self.port)


@dataclass(frozen=True)
class BackendSpec:
    address: Address
    weight: int = 1
    max_connections: int = None  # None: the pool's
    max_in_flight: int = None  # None: the pool's


@dataclass(frozen=True)
class HealthSpec:
    """Active checks of a pool's backends (docs/health.md)."""

    kind: str = "http"  # "http" (a request through h11) or "tcp" (connect only)
    interval: float = 5.0  # seconds between checks of one backend
    down_interval: float = None  # seconds between checks while the backend is down (None: interval)
    timeout: float = 2.0  # one probe: connect + request + response
    rise: int = 2  # passes in a row that bring a down backend back
    fall: int = 3  # failures in a row that take a backend down
    jitter: float = 0.1  # each delay varies by +- this fraction
    method: str = "GET"
    path: str = "/"
    host: str = None  # Host header of the probe (None: the pool's tls.server_name, else the backend's address)
    expect_status: tuple = ((200, 399),)  # inclusive ranges of healthy statuses
    expect_body: str = None  # a substring the body must contain (first 64 KiB)


@dataclass(frozen=True)
class OutlierSpec:
    """Passive outlier detection (docs/health.md)."""

    consecutive_failures: int = 5  # failures in a row that eject a backend
    statuses: tuple = (502, 503, 504)  # backend statuses that count as failures
    base_ejection_time: float = 30.0  # seconds; doubled for each repeated ejection
    max_ejection_time: float = 300.0  # cap of one ejection
    max_ejection_percent: int = 50  # of the pool's backends, ejected at once at most


@dataclass(frozen=True)
class PoolTlsSpec:
    """TLS to a pool's backends (docs/tls.md#tls-to-backends)."""

    ca: str = None  # CA bundle the backends' certificates must chain to (None: the system's)
    server_name: str = None  # SNI and the name checked in the certificate (None: the backend's host)
    cert: str = None  # client certificate (mTLS to the backend), with ``key``
    key: str = None
    verify: bool = True  # false: encrypt only, no certificate or name check (warned at start)
    min_version: str = "1.2"


@dataclass(frozen=True)
class PoolSpec:
    name: str
    backends: tuple
    algorithm: str = DEFAULT_ALGORITHM
    # Connect failures (and idempotent requests whose reused connection died
    # before a response byte) are retried on another backend this many times.
    retries: int = 2
    # Request key for hash algorithms: ("ip"|"header"|"cookie"|"path"|"query", name or "").
    hash_key: tuple = None
    # Bounded loads (Mirrokni et al.): no backend above factor x mean in-flight; 0 = off.
    hash_balance_factor: float = 0.0
    ewma_decay: float = 10.0  # seconds: time constant of the peak-EWMA latency
    maglev_table_size: int = 65537  # prime
    health: HealthSpec = None  # active checks; None = off
    outlier: OutlierSpec = field(default_factory=OutlierSpec)  # passive detection; None = off
    slow_start: float = 0.0  # seconds over which a new or recovered backend ramps to its weight
    retry_non_idempotent: bool = False  # also resend POST/PATCH/... after a failed try (see docs/health.md)
    retry_budget_percent: int = 20  # retries in flight <= this share of active requests ...
    retry_budget_min: int = 3  # ... or this many, whichever is larger (Envoy's retry_budget)
    per_try_timeout: float = None  # seconds to a response head per try; None = timeouts.response
    max_connections: int = 0  # per backend: upstream sockets open (in use + idle); 0 = no limit
    max_in_flight: int = 0  # per backend: requests at once; 0 = no limit
    queue_size: int = 100  # requests that may wait for a backend with capacity (0: 503 at once)
    queue_timeout: float = 5.0  # seconds a request may wait in the queue, then 503
    panic: bool = False  # no usable backend: try every backend anyway instead of 503
    tls: PoolTlsSpec = None  # https backends; None: plain HTTP


@dataclass(frozen=True)
class ApiKeySpec:
    """API keys, held only as SHA-256 digests (docs/auth.md#api-keys)."""

    digests: tuple  # 32-byte SHA-256 digests of the accepted keys
    header: str = "X-API-Key"  # where the key is sent; None when ``query`` is used
    query: str = None  # or this query parameter
    forward_credential: bool = False  # forward the key to the backend (default: removed)


@dataclass(frozen=True)
class JwtSpec:
    """Bearer JWTs (docs/auth.md#jwt); one key source: jwks_file, jwks_url or secret_file."""

    algorithms: tuple  # of "HS256", "RS256", "ES256"
    jwks_file: str = None
    jwks_url: str = None
    secret_file: str = None  # HS256 shared secret
    issuer: str = None  # required "iss" (None: not checked)
    audience: tuple = None  # "aud" must contain one of these (None: not checked)
    leeway: float = 0.0  # seconds of clock skew allowed on exp / nbf
    forward_claims: tuple = ()  # ((claim, header name), ...): claims sent to the backend as headers
    required_claims: tuple = ()  # ((claim, (allowed values...)), ...): else 403
    jwks_refresh: float = 300.0  # seconds between refetches of jwks_url
    forward_credential: bool = False  # forward Authorization to the backend


@dataclass(frozen=True)
class BasicSpec:
    """HTTP Basic against an htpasswd file of bcrypt entries (docs/auth.md#http-basic)."""

    htpasswd: str  # path
    realm: str = "fastlb"
    users: tuple = None  # users allowed on this route (None: everyone in the file); others 403
    forward_credential: bool = False


@dataclass(frozen=True)
class AuthSpec:
    kind: str  # "api_key" | "jwt" | "basic"
    api_key: ApiKeySpec = None
    jwt: JwtSpec = None
    basic: BasicSpec = None


@dataclass(frozen=True)
class RateLimitSpec:
    """One token-bucket policy (docs/security.md#rate-limiting)."""

    key: str  # "ip" | "header:NAME" | "api_key" | "jwt:CLAIM" | "route", as written
    kind: str  # "ip" | "header" | "api_key" | "jwt" | "route"
    name: str  # header name (lowercase) or claim; "" otherwise
    rate: float  # tokens per second
    burst: int
    rate_text: str  # as written ("100/s"), for the docs and logs
    label: str = None  # the policy label of fastlb_ratelimit_rejected_total: ``name``, else ``key``
    max_keys: int = 100000  # distinct keys held per policy (LRU beyond; docs/rate-limiting.md)


@dataclass(frozen=True)
class AccessSpec:
    """CIDR allow/deny (docs/security.md#access-control); deny wins; empty allow = everyone."""

    allow: tuple = ()  # of ipaddress networks
    deny: tuple = ()


@dataclass(frozen=True)
class RequestLimitSpec:
    """Per-request limits, set globally (``limits``), per listener and per route."""

    max_body: int = None  # bytes; larger -> 413 (None: no limit)
    methods: tuple = None  # allowed methods (bytes, uppercase); others -> 405 with Allow
    reject_dot_segments: bool = False  # a "." or ".." path segment (also %2e-encoded) -> 400
    reject_encoded_slashes: bool = False  # %2F or %5C in the path -> 400


@dataclass(frozen=True)
class RouteSpec:
    pool: str
    host: str = None  # lowercase host without port; None matches any host
    path_prefix: str = "/"
    access: AccessSpec = None
    rate_limits: tuple = ()  # of RateLimitSpec; all must pass
    auth: AuthSpec = None
    limits: RequestLimitSpec = None  # the listener's, with this route's keys on top
    name: str = None  # the route's label (metrics, access log); config.py fills it in


# Mozilla's "intermediate" TLS 1.2 cipher list (ssl-config.mozilla.org, v5.7);
# TLS 1.3 suites are OpenSSL's defaults, which are the same three.
INTERMEDIATE_CIPHERS = (
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:"
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"
)


@dataclass(frozen=True)
class CertificateSpec:
    cert: str  # PEM: the certificate, then its chain
    key: str  # PEM private key (RSA or ECDSA)
    password_file: str = None  # the key's passphrase, for an encrypted key


@dataclass(frozen=True)
class ListenerTlsSpec:
    """HTTPS on a listener (docs/tls.md)."""

    certificates: tuple  # of CertificateSpec, chosen by SNI; the first is the default
    min_version: str = "1.2"  # "1.2" | "1.3"
    ciphers: str = INTERMEDIATE_CIPHERS  # TLS 1.2 cipher list (OpenSSL syntax)
    client_ca: str = None  # CA bundle client certificates are verified against (mTLS)
    client_auth: str = "none"  # none | optional | required
    subject_header: str = None  # the verified client subject is forwarded in this header
    hsts: str = None  # Strict-Transport-Security value added to every response (e.g. "max-age=31536000")
    ticket_rotation: float = 43200.0  # seconds: session-ticket keys are replaced this often
    watch: bool = True  # reload when a certificate or key file changes (SIGHUP always reloads)


@dataclass(frozen=True)
class ListenerSpec:
    name: str
    bind: Address
    routes: tuple
    # Upgrade protocols clients may switch to (lowercase); an Upgrade offering none
    # of them is forwarded as a plain request without Upgrade (h2c smuggling).
    upgrade_protocols: tuple = ("websocket",)
    trusted_proxies: tuple = ()  # ipaddress networks whose X-Forwarded-For / Forwarded are believed
    proxy_protocol: bool = False  # every connection starts with a PROXY protocol v1/v2 header
    limits: RequestLimitSpec = None  # the global limits with this listener's keys on top
    head_limits: "LimitSpec" = None  # max_request_line / header bytes / fields here (None: global)
    max_connections_per_client: int = 0  # open connections per client address; 0 = no cap
    tls: ListenerTlsSpec = None  # HTTPS; None: plain HTTP
    redirect_https: int = None  # answer every request with 308 to https on this port (no routes)


@dataclass(frozen=True)
class AdminSpec:
    bind: Address
    token_file: str = None  # bearer token for writes (else FASTLB_ADMIN_TOKEN; docs/security.md)


@dataclass(frozen=True)
class AccessLogSpec:
    """docs/access-log.md. ``statuses``: inclusive (low, high) ranges, None = every status."""

    path: str = "-"  # a file, or "-" for stdout
    format: str = "json"  # json | combined
    sample: float = 1.0  # fraction of ordinary requests logged (flagged and 5xx ones always are)
    statuses: tuple = None
    query: bool = False  # log the query string with the path


@dataclass(frozen=True)
class ObservabilitySpec:
    """docs/metrics.md, docs/access-log.md, docs/tracing.md."""

    metrics: bool = True  # histograms and per-request timing (the counters are always kept)
    access_log: AccessLogSpec = None  # None: off
    tracing: str = "start"  # W3C traceparent: off | propagate | start


@dataclass(frozen=True)
class TimeoutSpec:
    """Seconds. See docs/configuration.md#timeouts for what each one bounds."""

    client_header: float = 10.0  # first byte of a request head -> complete head (slowloris)
    client_idle: float = 60.0  # keep-alive idle between requests; client inactivity in a body
    connect: float = 5.0  # TCP connect to a backend
    response: float = 30.0  # request sent -> response head; then inactivity in the response body
    upstream_idle: float = 60.0  # an idle pooled backend connection is closed after this
    tunnel: float = 3600.0  # inactivity on an upgraded (WebSocket) connection
    drain: float = 30.0  # SIGTERM/SIGINT: how long in-flight requests may finish
    send: float = 30.0  # a client leaving our writes unread (buffer full, no progress) is closed
    linger: float = 5.0  # lingering close: how long the client's late bytes are read and discarded
    dns_refresh: float = 30.0  # backend host names are resolved again this often


@dataclass(frozen=True)
class LimitSpec:
    max_request_line: int = 8192  # bytes; longer -> 414 (RFC 9112 §3)
    max_header_bytes: int = 65536  # whole head; larger -> 431 (RFC 6585 §5)
    max_header_fields: int = 100  # field lines; more -> 431
    max_idle_per_backend: int = 256  # idle keep-alive connections kept per backend


@dataclass(frozen=True)
class Config:
    listeners: tuple
    pools: tuple  # of PoolSpec, in file order
    admin: AdminSpec = None
    timeouts: TimeoutSpec = field(default_factory=TimeoutSpec)
    limits: LimitSpec = field(default_factory=LimitSpec)
    observability: ObservabilitySpec = field(default_factory=ObservabilitySpec)
    request_limits: RequestLimitSpec = field(default_factory=RequestLimitSpec)  # the global ``limits`` part

    def pool(self, name):
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)

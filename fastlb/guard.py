"""The entry guard of a route: limits, access control, authentication, rate limits.

A request meets them in this order, once its head is complete and routed, before
anything is forwarded (docs/security.md):

    methods (405 + Allow) -> path rules (400) -> access allow/deny (403)
    -> declared body size (413) -> rate limits keyed on the request (ip, header,
    route: 429) -> authentication (401 / 403) -> rate limits keyed on the identity
    (api_key, jwt:CLAIM: 429)

Policies keyed on the request run before authentication, so a flood of bad
credentials is limited before it costs a bcrypt or a signature check. Every
policy of the route must pass; a refused request takes no further tokens. A
chunked body is counted while it streams (http1.Exchange.max_body).

``Route`` is what the router returns; it holds the pool, the route's label, and
the guard's parts built once from the configuration. Its counters are plain
dicts and integers read by metrics.snapshot. This module is sans-IO: ``now`` is
passed in, authentication's slow work happens in auth.py.
"""

import math
import re

from . import _core
from .clientaddr import AccessList
from .counters import F_AUTH, F_DENIED, F_LIMITS, F_METHOD, F_RATE_LIMITED
from .http1 import path_of

__all__ = ["Route", "Policy", "Refusal"]

# "." or ".." as a whole path segment, also percent-encoded (%2e); and encoded
# slashes or backslashes, which a backend may decode into a different path than
# the one the routes and ACLs saw.
_DOT_SEGMENT = re.compile(rb"(?:^|/)(?:\.|%2[eE]){1,2}(?:/|$)")
_ENCODED_SLASH = re.compile(rb"%(?:2[fF]|5[cC])")

# Rate-limit key kinds (model.RateLimitSpec.kind).
K_IP, K_HEADER, K_API_KEY, K_JWT, K_ROUTE = range(5)
_KINDS = {"ip": K_IP, "header": K_HEADER, "api_key": K_API_KEY, "jwt": K_JWT, "route": K_ROUTE}


class Refusal:
    """A request the guard answers itself."""

    __slots__ = ("status", "flag", "reason", "message", "extra")

    def __init__(self, status, flag, reason, message, extra=b""):
        self.status = status
        self.flag = flag
        self.reason = reason  # the metric's reason (or policy) label
        self.message = message  # for the log and the JSON body
        self.extra = extra  # header lines (Allow, Retry-After, WWW-Authenticate, RateLimit-*)


class Policy:
    """One token-bucket policy: its buckets (one per key) and its counter."""

    __slots__ = ("spec", "kind", "name", "label", "buckets", "rejected", "burst", "limit_line")

    def __init__(self, spec):
        self.spec = spec
        self.kind = _KINDS[spec.kind]
        self.name = spec.name.encode("latin-1")  # header name (lowercase) or claim
        self.label = spec.label or spec.key
        self.burst = spec.burst
        self.buckets = _core.TokenBuckets(spec.rate, spec.burst, spec.max_keys)
        self.rejected = 0
        self.limit_line = b"RateLimit-Limit: %d\r\nRateLimit-Remaining: " % spec.burst


def _claim_key(claims, name):
    value = claims.get(name) if claims else None
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    return str(value).encode("utf-8")


class Route:
    """A route as the proxy uses it: the pool, the label, the guard."""

    __slots__ = ("name", "pool", "spec", "guarded", "methods", "allow", "max_body", "reject_dot", "reject_slash",
                 "access", "pre", "post", "policies", "auth", "drop_names", "denied", "auth_rejected")

    def __init__(self, spec, pool, authenticator=None, drop_names=()):
        self.name = spec.name or spec.path_prefix
        self.pool = pool
        self.spec = spec
        limits = spec.limits
        self.methods = frozenset(limits.methods) if limits is not None and limits.methods else None
        allowed = list(limits.methods) if self.methods else []
        if b"GET" in allowed and b"HEAD" not in allowed:
            allowed.insert(allowed.index(b"GET") + 1, b"HEAD")  # HEAD goes with GET (RFC 9110 §9.3.2)
        self.allow = b"Allow: %s\r\n" % b", ".join(allowed) if allowed else b""
        self.max_body = limits.max_body if limits is not None and limits.max_body is not None else -1
        self.reject_dot = bool(limits and limits.reject_dot_segments)
        self.reject_slash = bool(limits and limits.reject_encoded_slashes)
        self.access = AccessList(spec.access.allow, spec.access.deny) if spec.access is not None else None
        self.policies = tuple(Policy(p) for p in spec.rate_limits)
        self.pre = tuple(p for p in self.policies if p.kind in (K_IP, K_HEADER, K_ROUTE))
        self.post = tuple(p for p in self.policies if p.kind in (K_API_KEY, K_JWT))
        self.auth = authenticator
        # fields removed from every request of the route before it is forwarded: the
        # credential (unless forward_credential), the headers fastlb sets from claims,
        # and the listener's (its mTLS subject header)
        names = list(drop_names)
        if authenticator is not None:
            names.extend(authenticator.strip)
            names.extend(h for _, h in authenticator.claim_headers)
        self.drop_names = tuple(dict.fromkeys(n.lower() for n in names)) or None
        self.guarded = bool(self.methods or self.reject_dot or self.reject_slash or self.access is not None
                            or self.max_body >= 0 or self.policies or authenticator is not None)
        self.denied = {}  # reason -> requests refused (fastlb_requests_denied_total)
        self.auth_rejected = {}  # reason -> requests refused (fastlb_auth_rejected_total)

    # ------------------------------------------------------------ before auth
    def check(self, method, target, content_length, addr):
        """Methods, path rules, access, declared body size: None or a Refusal."""
        if self.methods is not None and method not in self.methods and not (
                method == b"HEAD" and b"GET" in self.methods):
            return self._deny("method", Refusal(
                405, F_METHOD, "method", "method %s is not allowed on this route" % method.decode("latin-1"),
                self.allow))
        if self.reject_dot or self.reject_slash:
            path = path_of(target).partition(b"?")[0]
            if self.reject_dot and _DOT_SEGMENT.search(path):
                return self._deny("path", Refusal(400, F_DENIED, "path", "dot segments are not allowed in the path"))
            if self.reject_slash and _ENCODED_SLASH.search(path):
                return self._deny("path", Refusal(
                    400, F_DENIED, "path", "encoded slashes are not allowed in the path"))
        if self.access is not None and not self.access.allowed(addr):
            return self._deny("access", Refusal(
                403, F_DENIED, "access", "client address %s is not allowed on this route" % addr.decode("latin-1")))
        if self.max_body >= 0 and content_length > self.max_body:
            return self._deny("body_too_large", Refusal(
                413, F_LIMITS, "body_too_large", "request body of %d bytes is larger than %d (limits.max_body)" % (
                    content_length, self.max_body)))
        return None

    def _deny(self, reason, refusal):
        self.denied[reason] = self.denied.get(reason, 0) + 1
        return refusal

    # ------------------------------------------------------------ rate limits
    def take(self, policies, addr, header, identity, claims, now):
        """One token from each policy in ``policies`` for this request's keys.
        Returns (refusal or None, the tightest (remaining, limit prefix, reset) seen or None).
        ``header(name)`` reads a request field; a policy whose key the request does
        not have (no such header, no such claim) is not applied to it."""
        tight = None
        for p in policies:
            kind = p.kind
            if kind == K_IP:
                key = addr
            elif kind == K_HEADER:
                key = header(p.name)
            elif kind == K_ROUTE:
                key = b""
            elif kind == K_API_KEY:
                key = identity
            else:
                key = _claim_key(claims, p.spec.name)
            if key is None:
                continue
            buckets = p.buckets
            left = buckets.take(key, now)
            if left < 0:
                p.rejected += 1
                retry = max(1, int(math.ceil(buckets.wait)))
                extra = b"Retry-After: %d\r\n%s" % (retry, ratelimit_headers((0, p.limit_line, buckets.reset)))
                return Refusal(429, F_RATE_LIMITED, p.label, "rate limit %s (%s, burst %d) exceeded" % (
                    p.label, p.spec.rate_text, p.burst), extra), None
            if tight is None or left < tight[0]:
                tight = (left, p.limit_line, buckets.reset)
        return None, tight

    # ------------------------------------------------------------ auth
    def auth_refusal(self, verdict):
        """The answer to a failed authentication (counted here)."""
        reason = verdict.reason or "invalid"
        self.auth_rejected[reason] = self.auth_rejected.get(reason, 0) + 1
        status = verdict.status
        extra = b""
        if status == 401:
            extra = b"WWW-Authenticate: %s\r\n" % self.auth.challenge
        elif status == 503:
            extra = b"Retry-After: 1\r\n"
        return Refusal(status, F_AUTH, reason, verdict.detail or "authentication failed", extra)

    def sweep(self, now):
        """Drop refilled buckets (the server's tick): memory shrinks when traffic stops."""
        for p in self.policies:
            p.buckets.sweep(now)


def ratelimit_headers(tight):
    """The RateLimit-* fields (draft-ietf-httpapi-ratelimit-headers) of one policy's
    state ``(remaining, its "RateLimit-Limit: N...Remaining: " prefix, reset seconds)``;
    reset is rounded up to whole seconds."""
    if tight is None:
        return b""
    reset = tight[2]
    whole = int(reset)
    return b"%s%d\r\nRateLimit-Reset: %d\r\n" % (tight[1], tight[0], whole + (reset > whole))

"""Route authentication: API keys, bearer JWTs, HTTP Basic (docs/auth.md).

One ``Authenticator`` per route, built from its validated ``AuthSpec``. The proxy
calls ``check(header, target)`` after the request head is parsed and before
anything is forwarded; it returns a ``Verdict`` at once when it can, or an
asyncio Future resolving to one (never raising) when work has to happen off the
event loop: bcrypt in a thread pool, a JWKS fetch for a key id not seen yet.

Invariants:
- Nothing that holds a raw credential outlives the request. API keys are held and
  compared as SHA-256 digests; the Basic result cache is keyed on a salted SHA-256
  of the Authorization value; the JWT cache is keyed on the Authorization value, which is
  what the client sends with every request anyway (a token, not a secret of ours).
- Keys are typed (RFC 8725 §3.1, §3.2): HS256 only ever verifies with the
  secret_file; RS256 only with RSA keys of the JWKS, ES256 only with EC P-256 keys.
  No other key can be reached from a token's header, so "HS256 keyed with the RSA
  public key" and "alg: none" fail before any signature is looked at.
- Rejection texts (``Verdict.detail``) are constants: they never echo a credential,
  a key id or a claim value, so they are safe in the log and the error body.
- The fast paths are one hash and one dict lookup (API key), one dict lookup and a
  clock read (a cached JWT), a base64 decode, one hash and one lookup (a cached
  Basic check). Everything else is the slow path and may allocate.
"""

import asyncio
import base64
import binascii
import collections
import concurrent.futures
import functools
import hashlib
import hmac
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request

import bcrypt
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import HMACAlgorithm

from .errors import ConfigError

__all__ = [
    "AUTH_REASONS",
    "Verdict",
    "Authenticator",
    "ApiKeyAuth",
    "JwtAuth",
    "BasicAuth",
    "BcryptPool",
    "build",
    "query_param",
    "remove_query_param",
]

log = logging.getLogger("fastlb.auth")

# The ``reason`` label of fastlb_auth_rejected_total, in the order docs/auth.md lists them.
AUTH_REASONS = ("missing", "malformed", "invalid", "expired", "not_yet_valid", "issuer", "audience",
                "algorithm", "unknown_key", "forbidden", "busy")

JWT_CACHE_SIZE = 10000  # verified tokens kept (Authorization value -> verdict), LRU
JWT_CACHE_MAX_TOKEN = 8192  # bytes: longer Authorization values are verified every time, never cached
JWKS_FETCH_TIMEOUT = 5.0  # seconds, per socket operation and for the whole body
JWKS_MAX_BYTES = 1 << 20  # 1 MiB: a larger JWKS document is refused
JWKS_RETRY = 10.0  # seconds between attempts while the JWKS URL fails
JWKS_FORCED_COOLDOWN = 10.0  # seconds: at most one refresh forced by an unknown kid per this period
RSA_MIN_BITS = 2048  # smaller RSA keys in a JWKS are ignored (NIST SP 800-131A; RFC 7518 §3.3)
HS256_MIN_SECRET = 32  # bytes: RFC 7518 §3.2 wants a key at least as long as the hash output

BASIC_CACHE_SIZE = 10000  # recent Basic results, LRU
BASIC_CACHE_TTL = 300.0  # seconds a cached Basic result is believed
BASIC_STAT_INTERVAL = 1.0  # seconds between checks of the htpasswd file's mtime
BCRYPT_WORKERS = 2  # threads of the shared bcrypt pool
BCRYPT_MAX_WAITING = 64  # bcrypt checks submitted and not finished; more -> 503 busy
BCRYPT_MAX_PASSWORD = 72  # bytes bcrypt uses; longer passwords are truncated as htpasswd -B does
BCRYPT_DEFAULT_COST = 10  # cost of the dummy hash when the file gives none

_BCRYPT_ENTRY = re.compile(rb"^\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}$")
_CTL = re.compile(rb"[\x00-\x1f\x7f]")  # control characters: never put into a header value
_TOKEN_CHARS = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 §5.6.2 token (header names)


class Verdict:
    """The outcome of one check. ``status`` 0 means passed; 401/403, or 503 for "busy".

    Verdicts are shared: constants for rejections, one per key for API keys, one per
    cached token. Treat them (and ``claims``) as read-only.
    """

    __slots__ = ("status", "reason", "identity", "claims", "detail", "header_lines")

    def __init__(self, status, reason=None, identity=b"", claims=None, detail=""):
        self.status = status
        self.reason = reason
        self.identity = identity
        self.claims = claims
        self.detail = detail
        self.header_lines = None  # claim_header_lines' result, computed once per verdict

    @property
    def passed(self):
        return self.status == 0

    def __repr__(self):
        if self.status == 0:
            return "Verdict(passed, identity=%r)" % (self.identity,)
        return "Verdict(%d, %r, %r)" % (self.status, self.reason, self.detail)


def _reject(status, reason, detail):
    assert reason in AUTH_REASONS, reason
    return Verdict(status, reason, b"", None, detail)


# Rejections with fixed texts, shared by every route.
MALFORMED = _reject(401, "malformed", "malformed credentials")
BUSY = _reject(503, "busy", "too many password checks waiting; retry later")

KEY_MISSING = _reject(401, "missing", "no API key")
KEY_INVALID = _reject(401, "invalid", "unknown API key")

JWT_MISSING = _reject(401, "missing", "no bearer token")
JWT_SCHEME = _reject(401, "malformed", "expected Authorization: Bearer <token>")
JWT_MALFORMED = _reject(401, "malformed", "malformed token")
JWT_NO_EXP = _reject(401, "malformed", "token has no exp claim")
JWT_INVALID = _reject(401, "invalid", "bad token signature")
JWT_EXPIRED = _reject(401, "expired", "token expired")
JWT_NOT_YET = _reject(401, "not_yet_valid", "token not yet valid")
JWT_ISSUER = _reject(401, "issuer", "wrong token issuer")
JWT_AUDIENCE = _reject(401, "audience", "wrong token audience")
JWT_ALGORITHM = _reject(401, "algorithm", "token algorithm not allowed")
JWT_KEY_TYPE = _reject(401, "algorithm", "token algorithm does not match the key's type")
JWT_UNKNOWN_KEY = _reject(401, "unknown_key", "unknown signing key")
JWT_AMBIGUOUS_KEY = _reject(401, "unknown_key", "token has no kid and several keys could sign it")

BASIC_MISSING = _reject(401, "missing", "no credentials")
BASIC_SCHEME = _reject(401, "malformed", "expected Authorization: Basic <base64 user:password>")
BASIC_INVALID = _reject(401, "invalid", "wrong user name or password")


def _quoted(text):
    """An RFC 9110 §5.6.4 quoted-string."""
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


# -- the query string -----------------------------------------------------------------

def _param_is(part, name):
    """Whether one ``k=v`` part of a query names ``name`` (raw or percent-decoded)."""
    k = part.partition(b"=")[0]
    return k == name or (b"%" in k and urllib.parse.unquote_to_bytes(k) == name)


def query_param(target, name):
    """The first value of query parameter ``name`` in a request target, percent-decoded
    ('+' is kept as it is: API keys are often base64), or None."""
    q = target.find(b"?")
    if q < 0:
        return None
    for part in target[q + 1:].split(b"&"):
        if _param_is(part, name):
            v = part.partition(b"=")[2]
            return urllib.parse.unquote_to_bytes(v) if b"%" in v else v
    return None


def remove_query_param(target, name):
    """``target`` without any ``name`` parameter (every occurrence, raw or percent-encoded
    name, so no copy the check did not see reaches the backend); the same object when
    there is none, the bare path when it was the only one."""
    q = target.find(b"?")
    if q < 0:
        return target
    parts = target[q + 1:].split(b"&")
    kept = [p for p in parts if not _param_is(p, name)]
    if len(kept) == len(parts):
        return target
    if not kept:
        return target[:q]
    return target[:q + 1] + b"&".join(kept)


# -- the base class -------------------------------------------------------------------

class Authenticator:
    """One route's authentication. Subclasses set the attributes in __init__."""

    __slots__ = ("kind", "challenge", "strip", "strip_query", "claim_headers", "memo_header")

    def check(self, header, target):  # pragma: no cover - every subclass has one
        raise NotImplementedError

    def claim_header_lines(self, verdict):
        return b""

    async def start(self):
        return None

    def close(self):
        return None


# -- API keys -------------------------------------------------------------------------

class ApiKeyAuth(Authenticator):
    """API keys held as SHA-256 digests.

    The lookup is a dict keyed by digest followed by hmac.compare_digest. The dict's
    timing (hash bucket, the memcmp of an equal-hash entry) depends only on the
    SHA-256 of what the client sent, never on the key bytes directly: learning that
    a guess's digest shares a prefix with a stored digest tells nothing about which
    key would produce it (that is a preimage search), so the timing leaks nothing
    usable. The compare_digest after it is defence in depth and costs ~60 ns. The
    alternative, compare_digest against every stored digest, is O(keys) per request.
    """

    __slots__ = ("_digests", "_header", "_query")

    def __init__(self, spec):
        self.kind = "api_key"
        self._header = spec.header.lower().encode("ascii") if spec.header else None
        self._query = spec.query.encode("ascii") if spec.query else None
        # digest -> (digest, the passed verdict): the identity is the hex digest, so a
        # passing request allocates nothing.
        self._digests = {}
        for d in spec.digests:
            if len(d) != 32:
                raise ConfigError(("", "an API key digest must be 32 bytes (SHA-256), got %d" % len(d)))
            self._digests[bytes(d)] = (bytes(d), Verdict(0, None, d.hex().encode("ascii")))
        if self._header is not None:
            self.challenge = ('ApiKey realm="fastlb", header=%s' % _quoted(spec.header)).encode("ascii")
            self.strip = () if spec.forward_credential else (self._header,)
            self.strip_query = None
        else:
            self.challenge = ('ApiKey realm="fastlb", query=%s' % _quoted(spec.query)).encode("ascii")
            self.strip = ()
            self.strip_query = None if spec.forward_credential else self._query
        self.claim_headers = ()
        # The verdict depends on this header's value alone: a connection that sends the
        # same value again may reuse its last passed verdict (proxy.py), skipping the hash.
        self.memo_header = self._header

    def check(self, header, target):
        if self._header is not None:
            key = header(self._header)
        else:
            key = query_param(target, self._query)
        if not key:
            return KEY_MISSING
        d = hashlib.sha256(key).digest()
        hit = self._digests.get(d)
        if hit is not None and hmac.compare_digest(hit[0], d):
            return hit[1]
        return KEY_INVALID


# -- JWT ------------------------------------------------------------------------------

def _scalar_text(v):
    """A claim value as header text: strings as they are, JSON's true/false, integers and
    floats in decimal; None for anything else (objects, null)."""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return None


def _claim_allows(value, allowed):
    """required_claims: a string equal to an allowed value or, space-separated ("scope"),
    containing one; a list containing one; a number or boolean whose text is allowed."""
    if isinstance(value, str):
        return value in allowed or (" " in value and any(p in allowed for p in value.split()))
    if isinstance(value, list):
        return any(_scalar_text(v) in allowed for v in value if not isinstance(v, (list, dict)))
    text = _scalar_text(value)
    return text is not None and text in allowed


def _jwk_algorithm(jwk):
    """The one algorithm a JWKS entry may verify, or None: RSA -> RS256, EC P-256 -> ES256.
    Symmetric ("oct") keys are never taken from a JWKS: HS256 uses secret_file only."""
    kty = jwk.get("kty")
    if kty == "RSA":
        alg = "RS256"
    elif kty == "EC" and jwk.get("crv") == "P-256":
        alg = "ES256"
    else:
        return None
    if jwk.get("alg") not in (None, alg):  # e.g. an RSA key published for PS256 or RS512 only
        return None
    if jwk.get("use") not in (None, "sig"):
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    return alg


def parse_jwks(doc, allowed, source):
    """{"keys": [...]} -> (by_kid {kid: {alg: key}}, by_alg {alg: [key, ...]}, fingerprints).

    Entries that cannot verify one of ``allowed`` are skipped with a warning; a JWKS with
    no usable key is an error (ValueError), so a bad refresh never empties the key set."""
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWKS: expected {"keys": [...]}')
    by_kid, by_alg, prints = {}, {}, set()
    for i, jwk in enumerate(doc["keys"]):
        if not isinstance(jwk, dict):
            log.warning("%s: keys[%d] is not an object: ignored", source, i)
            continue
        alg = _jwk_algorithm(jwk)
        if alg is None or alg not in allowed:
            log.warning("%s: keys[%d] (kty %r) cannot verify %s: ignored", source, i, jwk.get("kty"),
                        "/".join(a for a in allowed if a != "HS256"))
            continue
        try:
            key = jwt.PyJWK(jwk, alg).key
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            log.warning("%s: keys[%d]: not a valid %s key (%s): ignored", source, i, alg, exc.__class__.__name__)
            continue
        if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            log.warning("%s: keys[%d] holds a private key; only its public half is used", source, i)
            key = key.public_key()
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < RSA_MIN_BITS:
            log.warning("%s: keys[%d]: RSA key of %d bits, below %d: ignored", source, i, key.key_size, RSA_MIN_BITS)
            continue
        kid = jwk.get("kid")
        if isinstance(kid, str):
            by_kid.setdefault(kid, {}).setdefault(alg, key)
        by_alg.setdefault(alg, []).append(key)
        prints.add(json.dumps([kid, alg, {k: jwk.get(k) for k in ("n", "e", "crv", "x", "y")}], sort_keys=True))
    if not by_alg:
        raise ValueError("no usable key")
    return by_kid, by_alg, prints


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib would also follow one to ftp://)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to a non-HTTP URL refused", headers, fp)
        return urllib.request.HTTPRedirectHandler.redirect_request(self, req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def fetch_jwks(url, timeout=JWKS_FETCH_TIMEOUT, limit=JWKS_MAX_BYTES):
    """GET a JWKS document (blocking: run it in an executor). Bytes, or an exception."""
    deadline = time.monotonic() + timeout
    req = urllib.request.Request(url, headers={"Accept": "application/jwk-set+json, application/json",
                                               "User-Agent": "fastlb"})
    with _OPENER.open(req, timeout=timeout) as resp:
        chunks, size = [], 0
        while True:
            chunk = resp.read(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > limit:
                raise ValueError("JWKS larger than %d bytes" % limit)
            if time.monotonic() > deadline:
                raise TimeoutError("JWKS not received within %gs" % timeout)
            chunks.append(chunk)
    return b"".join(chunks)


def _read_secret(path):
    try:
        with open(path, "rb") as f:
            secret = f.read()
    except OSError as exc:
        raise ConfigError(("", "cannot read secret_file %s: %s" % (path, exc.strerror or exc))) from None
    secret = secret.rstrip(b"\r\n")
    if not secret:
        raise ConfigError(("", "secret_file %s is empty" % path))
    try:
        HMACAlgorithm(HMACAlgorithm.SHA256).prepare_key(secret)
    except jwt.InvalidKeyError:
        raise ConfigError(("", "secret_file %s holds a public key or certificate, not a shared secret "
                               "(HS256 never verifies with an asymmetric key)" % path)) from None
    if len(secret) < HS256_MIN_SECRET:
        log.warning("secret_file %s: %d bytes; RFC 7518 §3.2 wants at least %d for HS256",
                    path, len(secret), HS256_MIN_SECRET)
    return secret


class JwtAuth(Authenticator):
    """Bearer JWTs verified by PyJWT; keys from secret_file (HS256) and a JWKS (RS256, ES256)."""

    __slots__ = ("_loop", "_algorithms", "_secret", "_by_kid", "_by_alg", "_prints", "_url", "_refresh",
                 "_issuer", "_audience", "_leeway", "_options", "_required", "_claim_lines", "_cache",
                 "_cache_size", "_fetching", "_last_forced", "_task", "_loaded")

    def __init__(self, spec, loop):
        self.kind = "jwt"
        self._loop = loop
        self._algorithms = frozenset(spec.algorithms)
        self._secret = _read_secret(spec.secret_file) if spec.secret_file else None
        self._by_kid, self._by_alg, self._prints = {}, {}, set()
        self._url = spec.jwks_url
        self._refresh = spec.jwks_refresh
        self._loaded = False
        if spec.jwks_file:
            try:
                with open(spec.jwks_file, "rb") as f:
                    doc = json.loads(f.read())
                self._by_kid, self._by_alg, self._prints = parse_jwks(doc, self._algorithms, spec.jwks_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(("", "jwks_file %s: %s" % (spec.jwks_file, getattr(exc, "strerror", None) or exc)))
            self._loaded = True
        self._issuer = spec.issuer
        self._audience = list(spec.audience) if spec.audience else None
        self._leeway = float(spec.leeway)
        # exp is required: a token without one would be valid forever, and the cache
        # below relies on it to stop believing a token (docs/auth.md).
        self._options = {"require": ["exp"], "verify_aud": self._audience is not None,
                         "verify_iss": self._issuer is not None}
        self._required = tuple((claim, frozenset(allowed)) for claim, allowed in spec.required_claims)
        lines = []
        for claim, name in spec.forward_claims:
            if not _TOKEN_CHARS.match(name):
                raise ConfigError(("", "forward_claims: %r is not a header name" % (name,)))
            lines.append((claim, name.encode("ascii") + b": "))
        self._claim_lines = tuple(lines)
        self.claim_headers = tuple((claim, name.lower().encode("ascii")) for claim, name in spec.forward_claims)
        self.memo_header = None  # a token expires: verdicts are cached in the token cache, clock-checked
        self.challenge = b'Bearer realm="fastlb"'
        self.strip = () if spec.forward_credential else (b"authorization",)
        self.strip_query = None
        self._cache = collections.OrderedDict()  # Authorization value -> (exp, nbf or None, verdict)
        self._cache_size = JWT_CACHE_SIZE
        self._fetching = None  # the one JWKS fetch in flight (a Task), or None
        self._last_forced = float("-inf")  # loop.time() of the last refresh an unknown kid forced
        self._task = None

    # the per-request path

    def check(self, header, target):
        value = header(b"authorization")
        if value is None:
            return JWT_MISSING
        entry = self._cache.get(value)
        if entry is not None:
            # A cached verdict was true when the signature was checked; the clock moves on.
            now = time.time()
            if entry[0] <= now - self._leeway:
                return JWT_EXPIRED
            if entry[1] is not None and entry[1] > now + self._leeway:
                return JWT_NOT_YET
            self._cache.move_to_end(value)
            return entry[2]
        return self._verify(value, True)

    def claim_header_lines(self, verdict):
        lines = verdict.header_lines
        if lines is None:
            lines = verdict.header_lines = self._render_claims(verdict.claims)
        return lines

    def _render_claims(self, claims):
        if not claims or not self._claim_lines:
            return b""
        out = []
        for claim, prefix in self._claim_lines:
            value = claims.get(claim)
            if isinstance(value, list):
                texts = [_scalar_text(v) for v in value]
                text = None if None in texts else ",".join(texts)
            else:
                text = _scalar_text(value)
            if text is None:
                continue
            raw = text.encode("utf-8", "surrogatepass")
            if _CTL.search(raw):  # CR/LF/NUL would split or end the head: never forwarded
                continue
            out.append(prefix + raw + b"\r\n")
        return b"".join(out)

    # the slow path: a token not in the cache

    def _verify(self, value, may_refresh):
        if len(value) < 8 or value[:7].lower() != b"bearer ":
            return JWT_SCHEME
        token = value[7:].lstrip(b" ")
        try:
            head = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return JWT_MALFORMED
        alg = head.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            return JWT_ALGORITHM  # "none" included: it is never in algorithms
        if alg == "HS256":
            key = self._secret
        else:
            by_kid = self._by_kid.get(head["kid"]) if "kid" in head else None
            if by_kid is not None:
                key = by_kid.get(alg)
                if key is None:
                    return JWT_KEY_TYPE  # the kid names a key of another type
            elif "kid" not in head and len(self._by_alg.get(alg, ())) > 1:
                return JWT_AMBIGUOUS_KEY
            elif "kid" not in head and alg in self._by_alg:
                key = self._by_alg[alg][0]
            else:
                return self._unknown_key(value, may_refresh)
        if key is None:
            return JWT_ALGORITHM
        try:
            claims = jwt.decode(token, key, algorithms=[alg], options=self._options, audience=self._audience,
                                issuer=self._issuer, leeway=self._leeway)
        except jwt.ExpiredSignatureError:
            return JWT_EXPIRED
        except jwt.ImmatureSignatureError:
            return JWT_NOT_YET
        except jwt.InvalidAudienceError:
            return JWT_AUDIENCE
        except jwt.InvalidIssuerError:
            return JWT_ISSUER
        except jwt.MissingRequiredClaimError as exc:
            return {"aud": JWT_AUDIENCE, "iss": JWT_ISSUER, "exp": JWT_NO_EXP}.get(exc.claim, JWT_MALFORMED)
        except jwt.InvalidSignatureError:
            return JWT_INVALID
        except jwt.InvalidAlgorithmError:
            return JWT_ALGORITHM
        except jwt.InvalidTokenError:  # DecodeError, bad iat / sub / jti types
            return JWT_MALFORMED
        except jwt.PyJWTError:  # InvalidKeyError and kin
            return JWT_INVALID
        except Exception:  # a library bug must not reach the proxy: refuse and say why
            log.exception("JWT verification failed unexpectedly")
            return JWT_INVALID
        sub = claims.get("sub")
        identity = sub.encode("utf-8", "surrogatepass") if isinstance(sub, str) else b""
        verdict = None
        for claim, allowed in self._required:
            if not _claim_allows(claims.get(claim), allowed):
                verdict = Verdict(403, "forbidden", identity, None, "token lacks a required %s" % claim)
                break
        if verdict is None:
            verdict = Verdict(0, None, identity, claims)
        if len(value) <= JWT_CACHE_MAX_TOKEN:
            nbf = claims.get("nbf")
            self._cache[value] = (int(claims["exp"]), int(nbf) if nbf is not None else None, verdict)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return verdict

    def _unknown_key(self, value, may_refresh):
        """No key for this token. With jwks_url, wait for a fetch (the one in flight, or a
        forced one, at most one per JWKS_FORCED_COOLDOWN) and verify again; else 401."""
        if not may_refresh or self._url is None:
            return JWT_UNKNOWN_KEY
        fetching = self._fetching
        if fetching is None:
            now = self._loop.time()
            if now - self._last_forced < JWKS_FORCED_COOLDOWN:
                return JWT_UNKNOWN_KEY
            self._last_forced = now
            fetching = self._fetch()
        out = self._loop.create_future()
        fetching.add_done_callback(functools.partial(self._after_fetch, out, value))
        return out

    def _after_fetch(self, out, value, _fetch):
        if not out.done():  # the proxy may have cancelled it (client gone)
            out.set_result(self._verify(value, False))

    # keys from jwks_url

    def _fetch(self):
        if self._fetching is None:
            self._fetching = self._loop.create_task(self._fetch_once())
        return self._fetching

    async def _fetch_once(self):
        try:
            body = await self._loop.run_in_executor(None, fetch_jwks, self._url)
            by_kid, by_alg, prints = parse_jwks(json.loads(body), self._algorithms, self._url)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            held = sum(len(v) for v in self._by_alg.values())
            log.error("jwks_url %s: %s: %s (keeping %d key(s)%s)", self._url, exc.__class__.__name__, exc, held,
                      "" if self._loaded else "; retrying every %gs" % JWKS_RETRY)
            return False
        finally:
            self._fetching = None
        self._install(by_kid, by_alg, prints)
        return True

    def _install(self, by_kid, by_alg, prints):
        if self._prints - prints:
            # a key was removed or replaced: tokens it verified must be checked again
            self._cache.clear()
        if prints != self._prints:
            log.info("jwks_url %s: %d key(s)", self._url, sum(len(v) for v in by_alg.values()))
        self._by_kid, self._by_alg, self._prints = by_kid, by_alg, prints
        self._loaded = True

    async def start(self):
        """Fetch jwks_url once (errors are logged, not raised), then keep it fresh: every
        jwks_refresh seconds, or every JWKS_RETRY seconds while fetches fail."""
        if self._url is None or self._task is not None:
            return
        ok = await self._fetch()
        self._task = self._loop.create_task(self._keep_fresh(ok))

    async def _keep_fresh(self, ok):
        while True:
            await asyncio.sleep(self._refresh if ok else JWKS_RETRY)
            ok = await self._fetch()

    def close(self):
        for task in (self._task, self._fetching):
            if task is not None:
                task.cancel()
        self._task = None


# -- HTTP Basic -----------------------------------------------------------------------

try:  # strict: padding and alphabet checked in C (Python 3.11+)
    binascii.a2b_base64(b"", strict_mode=True)
    _b64decode = functools.partial(binascii.a2b_base64, strict_mode=True)
except TypeError:  # Python 3.10
    _b64decode = functools.partial(base64.b64decode, validate=True)


def _checkpw(password, hashed):
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a hash bcrypt cannot read
        return False


class BcryptPool:
    """The bcrypt threads, shared by every Basic route of a process so that the CPU
    spent on passwords is bounded once (``workers`` threads), and the bound on checks
    submitted and not finished (``max_waiting``: beyond it, 503 busy). The executor is
    created on first use, so a process that forks workers creates it in each child."""

    def __init__(self, workers=BCRYPT_WORKERS, max_waiting=BCRYPT_MAX_WAITING):
        self.workers = workers
        self.max_waiting = max_waiting
        self.pending = 0
        self.checks = 0  # bcrypt checks submitted since start
        self._executor = None

    def full(self):
        return self.pending >= self.max_waiting

    def submit(self, loop, password, hashed):
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="fastlb-bcrypt")
        self.pending += 1
        self.checks += 1
        fut = loop.run_in_executor(self._executor, _checkpw, password, hashed)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, _fut):
        self.pending -= 1

    def shutdown(self):
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None


SHARED_BCRYPT = BcryptPool()


def read_htpasswd(path):
    """user (bytes) -> bcrypt hash (bytes), and the most common cost. Comment and blank
    lines are skipped; entries that are not bcrypt are skipped with a warning (config.py
    refuses them at load; this is the reload path). The first entry of a user wins, as
    in Apache."""
    with open(path, "rb") as f:
        data = f.read()
    users, costs = {}, collections.Counter()
    for n, line in enumerate(data.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, hashed = line.partition(b":")
        m = _BCRYPT_ENTRY.match(hashed)
        if not sep or not user or m is None:
            log.warning("%s line %d: not a user:bcrypt-hash entry: ignored", path, n)
            continue
        if user not in users:
            users[user] = hashed
            costs[int(m.group(1))] += 1
    cost = costs.most_common(1)[0][0] if costs else BCRYPT_DEFAULT_COST
    return users, cost


def _dummy_hash(cost):
    """A well-formed bcrypt hash no password matches: checking against it costs what a
    real entry of ``cost`` costs, without spending a hashpw at load."""
    return bcrypt.gensalt(rounds=min(max(cost, 4), 31)) + b"." * 31


class BasicAuth(Authenticator):
    """HTTP Basic (RFC 7617) against an htpasswd file of bcrypt entries."""

    __slots__ = ("_loop", "_path", "_users", "_dummy", "_allowed", "_pool", "_cache", "_cache_size", "_ttl",
                 "_salt", "_inflight", "_generation", "_sig", "_next_stat", "_realm")

    def __init__(self, spec, loop, pool=None):
        self.kind = "basic"
        self._loop = loop
        self._path = spec.htpasswd
        self._pool = pool if pool is not None else SHARED_BCRYPT
        self._allowed = frozenset(u.encode("utf-8") for u in spec.users) if spec.users is not None else None
        self._realm = spec.realm
        self.challenge = ("Basic realm=%s, charset=\"UTF-8\"" % _quoted(spec.realm)).encode("utf-8")
        self.strip = () if spec.forward_credential else (b"authorization",)
        self.strip_query = None
        self.claim_headers = ()
        self.memo_header = None  # users and the file change: the check cache has its own TTL
        # salted so the cache never holds a plain SHA-256 of a password (a memory dump
        # would otherwise be a fast offline-guessing oracle)
        self._salt = hashlib.sha256(os.urandom(32))
        self._cache = collections.OrderedDict()  # salted sha256(Authorization value) -> (expires, verdict)
        self._cache_size = BASIC_CACHE_SIZE
        self._ttl = BASIC_CACHE_TTL
        self._inflight = {}  # same key -> futures waiting for the bcrypt check in flight
        self._generation = 0
        self._sig = None
        self._next_stat = 0.0
        try:
            self._load(os.stat(self._path))
        except (OSError, ValueError) as exc:
            raise ConfigError(("", "htpasswd %s: %s" % (self._path, getattr(exc, "strerror", None) or exc)))
        self._next_stat = time.time() + BASIC_STAT_INTERVAL

    def _load(self, st):
        users, cost = read_htpasswd(self._path)
        if not users:
            log.warning("htpasswd %s has no bcrypt entries: every request on the route is refused", self._path)
        self._users = users
        self._dummy = _dummy_hash(cost)
        self._sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        self._generation += 1
        self._cache.clear()

    def _maybe_reload(self, now):
        """At most once a second: reload the file when its mtime (or size, inode) changed.
        A file that cannot be read keeps the users loaded last."""
        self._next_stat = now + BASIC_STAT_INTERVAL
        try:
            st = os.stat(self._path)
            if (st.st_mtime_ns, st.st_size, st.st_ino) == self._sig:
                return
            self._load(st)
        except (OSError, ValueError) as exc:
            if self._sig is not None:
                log.error("htpasswd %s: %s; keeping the %d user(s) loaded before", self._path,
                          getattr(exc, "strerror", None) or exc, len(self._users))
            self._sig = None  # log once until the file is back
            return
        log.info("htpasswd %s reloaded: %d user(s)", self._path, len(self._users))

    def check(self, header, target):
        value = header(b"authorization")
        if value is None:
            return BASIC_MISSING
        now = time.time()
        if now >= self._next_stat:
            self._maybe_reload(now)
        # The cache key is a salted SHA-256 of the Authorization value, which encodes
        # exactly "user:password" (a user id has no colon, RFC 7617 §2): a hit costs no
        # base64 decode, and the cache never holds the credential or a plain hash of it.
        h = self._salt.copy()
        h.update(value)
        key = h.digest()
        entry = self._cache.get(key)
        if entry is not None:
            if entry[0] > now:
                self._cache.move_to_end(key)
                return entry[1]
            del self._cache[key]
        if len(value) < 7 or value[:6].lower() != b"basic ":
            return BASIC_SCHEME
        try:
            cred = _b64decode(value[6:].strip(b" "))
        except (binascii.Error, ValueError):
            return MALFORMED
        user, sep, password = cred.partition(b":")
        if not sep:
            return MALFORMED
        waiters = self._inflight.get(key)
        if waiters is not None:  # the same credentials are being checked: share the result
            out = self._loop.create_future()
            waiters.append(out)
            return out
        if self._pool.full():
            return BUSY
        hashed = self._users.get(user)
        known = hashed is not None
        if not known:
            hashed = self._dummy  # one bcrypt anyway: a user's existence does not show in timing
        out = self._loop.create_future()
        self._inflight[key] = [out]
        inner = self._pool.submit(self._loop, password[:BCRYPT_MAX_PASSWORD], hashed)
        inner.add_done_callback(functools.partial(self._checked, key, user, known, self._generation))
        return out

    def _checked(self, key, user, known, generation, inner):
        waiters = self._inflight.pop(key, ())
        ok = False
        if not inner.cancelled():
            exc = inner.exception()
            if exc is not None:
                log.error("bcrypt check failed: %s", exc.__class__.__name__)
            else:
                ok = inner.result()
        if ok and known:
            if self._allowed is not None and user not in self._allowed:
                verdict = Verdict(403, "forbidden", user, None, "user not allowed on this route")
            else:
                verdict = Verdict(0, None, user)
        else:
            verdict = BASIC_INVALID
        if generation == self._generation and not inner.cancelled():
            # a result computed against a file replaced meanwhile is answered, not kept
            self._cache[key] = (time.time() + self._ttl, verdict)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        for fut in waiters:
            if not fut.done():
                fut.set_result(verdict)


# -- wiring ---------------------------------------------------------------------------

def build(spec, loop):
    """The Authenticator for a route's AuthSpec. Reads the files it names (secret_file,
    jwks_file, htpasswd); an unreadable or unusable one is a ConfigError."""
    if spec.kind == "api_key":
        return ApiKeyAuth(spec.api_key)
    if spec.kind == "jwt":
        return JwtAuth(spec.jwt, loop)
    if spec.kind == "basic":
        return BasicAuth(spec.basic, loop)
    raise ConfigError(("", "unknown auth kind %r" % (spec.kind,)))

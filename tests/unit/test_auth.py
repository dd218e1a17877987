"""fastlb.auth: API keys, JWTs and HTTP Basic, with real crypto made here (RSA 2048,
EC P-256, HMAC, bcrypt at cost 4). Nothing of PyJWT or bcrypt is mocked; the one
stand-in is auth's own clock (``auth.time``) where a test needs time to pass for the
token cache. The jwks_url part is tests/integration/test_auth_jwks.py."""

import asyncio
import base64
import hashlib
import hmac
import json
import os
import time

import bcrypt
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from fastlb import auth
from fastlb.errors import ConfigError
from fastlb.model import ApiKeySpec, AuthSpec, BasicSpec, JwtSpec

# -- helpers -------------------------------------------------------------------------

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
SECRET = b"s3cret-shared-between-issuer-and-fastlb!"  # 40 bytes
RSA_PUBLIC_PEM = RSA_KEY.public_key().public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def headers(**fields):
    """The proxy's header(name) accessor over a dict (names lowercase bytes)."""
    table = {k.replace("_", "-").encode(): v for k, v in fields.items()}
    return table.get


NO_HEADERS = {}.get


def jwk(key, kid):
    if isinstance(key, rsa.RSAPublicKey):
        d = RSAAlgorithm.to_jwk(key, as_dict=True)
    else:
        d = ECAlgorithm.to_jwk(key, as_dict=True)
    if kid is not None:
        d["kid"] = kid
    return d


def write_jwks(tmp_path, *entries, name="jwks.json"):
    path = tmp_path / name
    path.write_text(json.dumps({"keys": list(entries)}))
    return str(path)


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def claims(**extra):
    now = int(time.time())
    c = {"sub": "alice", "iss": "https://idp.example", "aud": "api", "exp": now + 300, "iat": now}
    c.update(extra)
    return {k: v for k, v in c.items() if v is not None}


def bearer(token):
    if isinstance(token, str):
        token = token.encode()
    return headers(authorization=b"Bearer " + token)


def rs256(payload, key=RSA_KEY, kid="rsa1", **kw):
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid} if kid else None, **kw)


def es256(payload, kid="ec1"):
    return jwt.encode(payload, EC_KEY, algorithm="ES256", headers={"kid": kid} if kid else None)


def hs256(payload, secret=SECRET):
    return jwt.encode(payload, secret, algorithm="HS256")


def hand_signed(header, payload, secret=None):
    """A JWS made by hand, for tokens PyJWT refuses to produce."""
    signing_input = b64url(json.dumps(header).encode()) + b"." + b64url(json.dumps(payload).encode())
    sig = b"" if secret is None else b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())
    return signing_input + b"." + sig


@pytest.fixture
def loop():
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


@pytest.fixture
def jwks_file(tmp_path):
    return write_jwks(tmp_path, jwk(RSA_KEY.public_key(), "rsa1"), jwk(EC_KEY.public_key(), "ec1"))


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return str(path)


def make_jwt(loop, jwks_file=None, secret_file=None, algorithms=("RS256", "ES256"), **kw):
    kw.setdefault("issuer", "https://idp.example")
    kw.setdefault("audience", ("api",))
    if secret_file and "HS256" not in algorithms:
        algorithms = tuple(algorithms) + ("HS256",)
    spec = JwtSpec(algorithms=tuple(algorithms), jwks_file=jwks_file, secret_file=secret_file, **kw)
    return auth.build(AuthSpec(kind="jwt", jwt=spec), loop)


def resolve(loop, result):
    if isinstance(result, asyncio.Future):
        return loop.run_until_complete(result)
    return result


# -- API keys --------------------------------------------------------------------------

KEY = b"k-3f9a2b71c0d8e4"
OTHER_KEY = b"k-000000000000"


def api_key_auth(**kw):
    return auth.build(AuthSpec(kind="api_key", api_key=ApiKeySpec(
        digests=(hashlib.sha256(KEY).digest(), hashlib.sha256(OTHER_KEY).digest()), **kw)), None)


def test_api_key_valid_passes_with_the_digest_as_identity():
    a = api_key_auth()
    v = a.check(headers(x_api_key=KEY), b"/")
    assert v.status == 0 and v.reason is None and v.passed
    assert v.identity == hashlib.sha256(KEY).hexdigest().encode()
    # one verdict per key: a passing request allocates nothing
    assert a.check(headers(x_api_key=KEY), b"/") is v
    assert a.check(headers(x_api_key=OTHER_KEY), b"/").identity == hashlib.sha256(OTHER_KEY).hexdigest().encode()


def test_api_key_missing_and_wrong():
    a = api_key_auth()
    for h in (NO_HEADERS, headers(x_api_key=b""), headers(authorization=b"Bearer " + KEY)):
        v = a.check(h, b"/?x-api-key=" + KEY)
        assert (v.status, v.reason) == (401, "missing")
    v = a.check(headers(x_api_key=KEY + b"x"), b"/")
    assert (v.status, v.reason) == (401, "invalid")
    assert KEY.decode() not in v.detail


def test_api_key_header_challenge_and_strip():
    a = api_key_auth()
    assert a.challenge == b'ApiKey realm="fastlb", header="X-API-Key"'
    assert a.strip == (b"x-api-key",) and a.strip_query is None and a.claim_headers == ()
    assert a.memo_header == b"x-api-key"  # the verdict depends on that field alone (proxy.py memo)
    assert a.claim_header_lines(a.check(headers(x_api_key=KEY), b"/")) == b""
    custom = api_key_auth(header="X-Token", forward_credential=True)
    assert custom.check(headers(x_token=KEY), b"/").passed
    assert custom.strip == () and custom.challenge == b'ApiKey realm="fastlb", header="X-Token"'


def test_api_key_in_the_query():
    a = api_key_auth(header=None, query="api_key")
    assert a.challenge == b'ApiKey realm="fastlb", query="api_key"'
    assert a.strip == () and a.strip_query == b"api_key" and a.memo_header is None
    assert a.check(NO_HEADERS, b"/v1/items?api_key=" + KEY).passed
    assert a.check(NO_HEADERS, b"/v1/items?a=1&api_key=" + KEY + b"&b=2").passed
    assert a.check(NO_HEADERS, b"/v1/items?api%5Fkey=" + KEY.replace(b"-", b"%2D")).passed  # percent-decoded
    assert a.check(headers(x_api_key=KEY), b"/v1/items").reason == "missing"
    assert a.check(NO_HEADERS, b"/v1/items?api_key=").reason == "missing"
    assert a.check(NO_HEADERS, b"/v1/items?apikey=" + KEY).reason == "missing"
    assert a.check(NO_HEADERS, b"/v1/items?api_key=nope").reason == "invalid"
    # the first occurrence counts ...
    assert a.check(NO_HEADERS, b"/?api_key=nope&api_key=" + KEY).reason == "invalid"
    # ... and every occurrence is removed before forwarding
    assert api_key_auth(header=None, query="api_key", forward_credential=True).strip_query is None


def test_remove_query_param():
    r = auth.remove_query_param
    assert r(b"/a?api_key=k", b"api_key") == b"/a"
    assert r(b"/a?x=1&api_key=k&y=2", b"api_key") == b"/a?x=1&y=2"
    assert r(b"/a?api_key=k&x=1&api_key=j&api%5fkey=z", b"api_key") == b"/a?x=1"
    assert r(b"/a?api_keys=1&xapi_key=2", b"api_key") == b"/a?api_keys=1&xapi_key=2"
    assert r(b"/a?api_key", b"api_key") == b"/a"
    target = b"/a?x=1"
    assert r(target, b"api_key") is target
    assert r(b"/a", b"api_key") == b"/a"
    assert auth.query_param(b"/a?x=1&y", b"y") == b""
    assert auth.query_param(b"/a?k=a+b%2Bc", b"k") == b"a+b+c"  # '+' stays '+'


# -- JWT: passing ----------------------------------------------------------------------

def test_jwt_rs256_es256_hs256_pass(loop, jwks_file, secret_file):
    a = make_jwt(loop, jwks_file, secret_file)
    for token in (rs256(claims()), es256(claims(sub="bob")), hs256(claims(sub="carol"))):
        v = a.check(bearer(token), b"/")
        assert v.status == 0, v
    assert a.check(bearer(rs256(claims())), b"/").identity == b"alice"
    v = a.check(bearer(es256(claims(sub="bob", role="admin"))), b"/")
    assert v.identity == b"bob" and v.claims["role"] == "admin"
    assert a.challenge == b'Bearer realm="fastlb"' and a.strip == (b"authorization",)
    assert a.memo_header is None  # tokens expire: no per-connection memo


def test_jwt_scheme_is_case_insensitive_and_without_sub_identity_is_empty(loop, jwks_file):
    a = make_jwt(loop, jwks_file)
    token = rs256(claims(sub=None)).encode()
    for scheme in (b"bearer ", b"BEARER ", b"Bearer   "):
        v = a.check(headers(authorization=scheme + token), b"/")
        assert v.passed and v.identity == b""


def test_jwt_without_kid_uses_the_only_key_of_its_type(loop, tmp_path):
    one = make_jwt(loop, write_jwks(tmp_path, jwk(RSA_KEY.public_key(), None), jwk(EC_KEY.public_key(), "ec1")))
    assert one.check(bearer(rs256(claims(), kid=None)), b"/").passed
    two = make_jwt(loop, write_jwks(tmp_path, jwk(RSA_KEY.public_key(), "a"), jwk(RSA_OTHER.public_key(), "b"),
                                    name="two.json"))
    v = two.check(bearer(rs256(claims(), kid=None)), b"/")
    assert (v.status, v.reason) == (401, "unknown_key")
    assert two.check(bearer(rs256(claims(), kid="a")), b"/").passed
    assert two.check(bearer(rs256(claims(), key=RSA_OTHER, kid="b")), b"/").passed


def test_jwt_audience_may_be_any_of_several(loop, jwks_file):
    a = make_jwt(loop, jwks_file, audience=("api", "admin"))
    assert a.check(bearer(rs256(claims(aud=["other", "admin"]))), b"/").passed
    assert a.check(bearer(rs256(claims(aud="api"))), b"/").passed
    unchecked = make_jwt(loop, jwks_file, audience=None, issuer=None)
    assert unchecked.check(bearer(rs256(claims(aud="anything", iss="anyone"))), b"/").passed


# -- JWT: refusals -----------------------------------------------------------------------

def reason(a, token):
    v = a.check(bearer(token), b"/")
    assert not isinstance(v, asyncio.Future)
    assert v.status in (401, 403) and v.reason in auth.AUTH_REASONS, v
    if isinstance(token, bytes):
        token = token.decode()
    assert token not in v.detail and "alice" not in v.detail
    return v.status, v.reason


def test_jwt_refusals(loop, jwks_file, secret_file):
    a = make_jwt(loop, jwks_file, secret_file)
    now = int(time.time())
    assert reason(a, rs256(claims(exp=now - 5))) == (401, "expired")
    assert reason(a, rs256(claims(nbf=now + 60))) == (401, "not_yet_valid")
    assert reason(a, rs256(claims(aud="other"))) == (401, "audience")
    assert reason(a, rs256(claims(aud=None))) == (401, "audience")
    assert reason(a, rs256(claims(iss="https://evil.example"))) == (401, "issuer")
    assert reason(a, rs256(claims(iss=None))) == (401, "issuer")
    assert reason(a, rs256(claims(), key=RSA_OTHER)) == (401, "invalid")  # right kid, wrong key
    assert reason(a, hs256(claims(), secret=b"another-secret-of-enough-length!!")) == (401, "invalid")
    assert reason(a, rs256(claims(), kid="nobody")) == (401, "unknown_key")  # jwks_file: no refresh


def test_jwt_issued_in_the_future_is_not_yet_valid(loop, jwks_file):
    a = make_jwt(loop, jwks_file, leeway=30.0)
    now = int(time.time())
    assert reason(a, rs256(claims(iat=now + 120))) == (401, "not_yet_valid")
    assert a.check(bearer(rs256(claims(iat=now + 10))), b"/").passed
    assert reason(a, rs256(claims(iat="yesterday"))) == (401, "malformed")


def test_jwt_without_exp_is_malformed(loop, jwks_file):
    a = make_jwt(loop, jwks_file)
    assert reason(a, rs256(claims(exp=None))) == (401, "malformed")
    v = a.check(bearer(rs256(claims(exp=None))), b"/")
    assert "exp" in v.detail


def test_jwt_malformed_tokens(loop, jwks_file):
    a = make_jwt(loop, jwks_file)
    assert reason(a, b"not-a-jwt") == (401, "malformed")
    assert reason(a, b"a.b.c") == (401, "malformed")
    assert reason(a, hand_signed({"alg": "RS256", "kid": 7}, claims())) == (401, "malformed")
    v = a.check(headers(authorization=b"Basic " + base64.b64encode(b"alice:pw")), b"/")
    assert (v.status, v.reason) == (401, "malformed")
    assert a.check(headers(authorization=b"Bearer"), b"/").reason == "malformed"
    assert a.check(headers(authorization=b"Bearer "), b"/").reason == "malformed"
    v = a.check(NO_HEADERS, b"/")
    assert (v.status, v.reason) == (401, "missing")


def test_jwt_leeway_edges(loop, jwks_file):
    a = make_jwt(loop, jwks_file, leeway=30.0)
    now = int(time.time())
    assert a.check(bearer(rs256(claims(exp=now - 20))), b"/").passed  # expired 20 s ago, 30 s allowed
    assert reason(a, rs256(claims(exp=now - 40))) == (401, "expired")
    assert a.check(bearer(rs256(claims(nbf=now + 20))), b"/").passed
    assert reason(a, rs256(claims(nbf=now + 40))) == (401, "not_yet_valid")
    strict = make_jwt(loop, jwks_file)
    assert reason(strict, rs256(claims(exp=now - 2))) == (401, "expired")


def test_alg_none_is_refused(loop, jwks_file, secret_file):
    a = make_jwt(loop, jwks_file, secret_file)
    for alg in ("none", "None", "NONE"):
        assert reason(a, hand_signed({"alg": alg, "typ": "JWT"}, claims())) == (401, "algorithm")
    assert reason(a, hand_signed({"typ": "JWT"}, claims())) == (401, "algorithm")  # no alg at all


def test_algorithm_not_allowed(loop, jwks_file):
    rs_only = make_jwt(loop, jwks_file, algorithms=("RS256",))
    assert reason(rs_only, es256(claims())) == (401, "algorithm")
    assert reason(rs_only, jwt.encode(claims(), RSA_KEY, algorithm="RS512", headers={"kid": "rsa1"})) == \
        (401, "algorithm")
    assert reason(rs_only, jwt.encode(claims(), RSA_KEY, algorithm="PS256", headers={"kid": "rsa1"})) == \
        (401, "algorithm")
    # a kid naming a key of another type than the token's alg
    assert reason(make_jwt(loop, jwks_file), es256(claims(), kid="rsa1")) == (401, "algorithm")


def test_hs256_keyed_with_the_rsa_public_key_is_refused(loop, jwks_file, secret_file):
    """The classic confusion: the attacker signs HS256 with the server's RSA public key
    (PEM, or its JWK's bytes) as the HMAC secret and points kid at the RSA key."""
    forged = [hand_signed({"alg": "HS256", "kid": "rsa1"}, claims(), secret=RSA_PUBLIC_PEM),
              hand_signed({"alg": "HS256"}, claims(), secret=RSA_PUBLIC_PEM),
              hand_signed({"alg": "HS256", "kid": "rsa1"}, claims(),
                          secret=json.dumps(jwk(RSA_KEY.public_key(), "rsa1")).encode())]
    rs_only = make_jwt(loop, jwks_file)
    for token in forged:
        assert reason(rs_only, token) == (401, "algorithm")
    # with HS256 allowed, the HMAC key is the secret_file and nothing else
    both = make_jwt(loop, jwks_file, secret_file)
    for token in forged:
        assert reason(both, token) == (401, "invalid")
    assert both.check(bearer(hand_signed({"alg": "HS256", "kid": "rsa1"}, claims(), secret=SECRET)), b"/").passed


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_jwks_never_supplies_hmac_or_small_rsa_keys(loop, tmp_path):
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    oct_key = {"kty": "oct", "kid": "sym", "k": b64url(SECRET).decode()}
    path = write_jwks(tmp_path, oct_key, jwk(small.public_key(), "small"), jwk(EC_KEY.public_key(), "ec1"))
    a = make_jwt(loop, path)
    assert reason(a, jwt.encode(claims(), small, algorithm="RS256", headers={"kid": "small"})) == \
        (401, "unknown_key")
    assert reason(a, hand_signed({"alg": "HS256", "kid": "sym"}, claims(), secret=SECRET)) == (401, "algorithm")
    assert a.check(bearer(es256(claims())), b"/").passed


def test_bad_key_sources_are_config_errors(loop, tmp_path):
    with pytest.raises(ConfigError):
        make_jwt(loop, write_jwks(tmp_path, {"kty": "oct", "k": "AAAA"}))
    with pytest.raises(ConfigError):
        make_jwt(loop, str(tmp_path / "absent.json"))
    pem = tmp_path / "pem"
    pem.write_bytes(RSA_PUBLIC_PEM)
    with pytest.raises(ConfigError, match="public key"):
        make_jwt(loop, None, str(pem), algorithms=("HS256",))


def test_jwks_private_key_is_used_as_its_public_half(loop, tmp_path):
    signing_only = RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True)  # key_ops ["sign"]
    with pytest.raises(ConfigError):
        make_jwt(loop, write_jwks(tmp_path, signing_only, name="sign.json"))
    private = RSAAlgorithm.to_jwk(RSA_KEY, as_dict=True)
    private["kid"] = "rsa1"
    del private["key_ops"]  # PyJWT marks it ["sign"], which would (rightly) exclude it
    a = make_jwt(loop, write_jwks(tmp_path, private))
    assert a.check(bearer(rs256(claims())), b"/").passed


def test_secret_file_trailing_newline_is_stripped(loop, tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\r\n")
    a = make_jwt(loop, None, str(path), algorithms=("HS256",))
    assert a.check(bearer(hs256(claims())), b"/").passed
    assert reason(a, hs256(claims(), secret=SECRET + b"\n")) == (401, "invalid")


# -- JWT: required claims, forwarded claims ------------------------------------------

def test_required_claims(loop, jwks_file):
    a = make_jwt(loop, jwks_file, required_claims=(("scope", ("read",)), ("tier", ("gold", "silver"))))
    assert a.check(bearer(rs256(claims(scope="read write", tier="gold"))), b"/").passed
    assert a.check(bearer(rs256(claims(scope=["write", "read"], tier="silver"))), b"/").passed
    assert a.check(bearer(rs256(claims(scope="read", tier=["bronze", "gold"]))), b"/").passed
    for bad in (claims(scope="write", tier="gold"), claims(tier="gold"), claims(scope="read", tier="gol"),
                claims(scope="reader", tier="gold"), claims(scope={"read": True}, tier="gold")):
        v = a.check(bearer(rs256(bad)), b"/")
        assert (v.status, v.reason) == (403, "forbidden"), bad
        assert v.identity == b"alice" and v.claims is None
    numeric = make_jwt(loop, jwks_file, required_claims=(("level", ("3",)),))
    assert numeric.check(bearer(rs256(claims(level=3))), b"/").passed
    assert numeric.check(bearer(rs256(claims(level=4))), b"/").status == 403


def test_claim_header_lines(loop, jwks_file):
    a = make_jwt(loop, jwks_file, forward_claims=(("sub", "X-User-Id"), ("roles", "X-Roles"), ("n", "X-N"),
                                                  ("admin", "X-Admin"), ("name", "X-Name"), ("absent", "X-Absent"),
                                                  ("obj", "X-Obj"), ("nested", "X-Nested")))
    assert a.claim_headers == (("sub", b"x-user-id"), ("roles", b"x-roles"), ("n", b"x-n"), ("admin", b"x-admin"),
                               ("name", b"x-name"), ("absent", b"x-absent"), ("obj", b"x-obj"),
                               ("nested", b"x-nested"))
    v = a.check(bearer(rs256(claims(roles=["a", "b"], n=42, admin=True, name="Zoë", obj={"k": 1},
                                    nested=[["x"]]))), b"/")
    lines = a.claim_header_lines(v)
    assert lines == (b"X-User-Id: alice\r\nX-Roles: a,b\r\nX-N: 42\r\nX-Admin: true\r\n"
                     + "X-Name: Zoë\r\n".encode())
    assert a.claim_header_lines(v) is lines  # computed once per (cached) verdict


@pytest.mark.parametrize("evil", ["alice\r\nX-Admin: true", "alice\nx", "a\rb", "a\x00b", "a\tb", "a\x7fb",
                                  ["ok", "bad\r\nX: y"]])
def test_claim_with_control_characters_is_not_forwarded(loop, jwks_file, evil):
    a = make_jwt(loop, jwks_file, forward_claims=(("sub", "X-User-Id"), ("team", "X-Team")))
    v = a.check(bearer(rs256(claims(sub="alice", team=evil))), b"/")
    assert v.passed
    assert a.claim_header_lines(v) == b"X-User-Id: alice\r\n"


# -- JWT: the token cache ------------------------------------------------------------------

class FakeClock:
    """Stands in for auth's ``time`` module: the cache path reads time.time()."""

    def __init__(self):
        self.offset = 0.0

    def time(self):
        return time.time() + self.offset

    def monotonic(self):
        return time.monotonic() + self.offset


def test_token_cache_hit_is_the_same_verdict_and_respects_exp(loop, jwks_file, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(auth, "time", clock)
    a = make_jwt(loop, jwks_file, leeway=5.0)
    token = rs256(claims(exp=int(time.time()) + 60))
    v = a.check(bearer(token), b"/")
    assert v.passed and len(a._cache) == 1
    assert a.check(bearer(token), b"/") is v
    clock.offset = 64  # inside the leeway
    assert a.check(bearer(token), b"/") is v
    clock.offset = 66
    assert a.check(bearer(token), b"/").reason == "expired"


def test_token_cache_respects_nbf(loop, jwks_file, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(auth, "time", clock)
    a = make_jwt(loop, jwks_file)
    token = rs256(claims(nbf=int(time.time()) - 1))
    assert a.check(bearer(token), b"/").passed
    clock.offset = -30  # the clock stepped back: not valid yet again
    assert a.check(bearer(token), b"/").reason == "not_yet_valid"


def test_token_cache_is_bounded_and_skips_huge_tokens(loop, jwks_file):
    a = make_jwt(loop, jwks_file)
    a._cache_size = 3
    tokens = [rs256(claims(sub="u%d" % i)) for i in range(5)]
    for t in tokens:
        assert a.check(bearer(t), b"/").passed
    assert len(a._cache) == 3
    assert list(a._cache) == [b"Bearer " + t.encode() for t in tokens[2:]]
    huge = rs256(claims(pad="x" * 9000))
    assert a.check(bearer(huge), b"/").passed and len(a._cache) == 3


def test_refusals_are_not_cached(loop, jwks_file):
    a = make_jwt(loop, jwks_file)
    reason(a, rs256(claims(), key=RSA_OTHER))
    reason(a, rs256(claims(aud="other")))
    assert len(a._cache) == 0


def test_removed_key_clears_the_cache(loop, jwks_file):
    a = make_jwt(loop, jwks_file)
    token = rs256(claims())
    assert a.check(bearer(token), b"/").passed
    by_kid, by_alg, prints = auth.parse_jwks({"keys": [jwk(EC_KEY.public_key(), "ec1")]},
                                              frozenset(("RS256", "ES256")), "test")
    a._install(by_kid, by_alg, prints)
    assert len(a._cache) == 0
    assert reason(a, token) == (401, "unknown_key")


# -- HTTP Basic -------------------------------------------------------------------------------

def basic_header(user, password):
    if isinstance(user, str):
        user = user.encode()
    if isinstance(password, str):
        password = password.encode()
    return headers(authorization=b"Basic " + base64.b64encode(user + b":" + password))


def htpasswd_line(user, password, prefix=b"$2b$"):
    """An htpasswd -B entry (bcrypt at cost 4; $2y$ is what htpasswd writes). An 80-byte
    password is hashed from its first 72 bytes, as htpasswd does (bcrypt 5 refuses more)."""
    h = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))
    return user.encode() + b":" + prefix + h[4:] + b"\n"


@pytest.fixture
def htpasswd(tmp_path):
    path = tmp_path / "htpasswd"
    path.write_bytes(b"# users\n\n" + htpasswd_line("alice", "wonderland", b"$2y$")
                     + htpasswd_line("bob", "builder") + htpasswd_line("carol", "x" * 72, b"$2a$"))
    return str(path)


def make_basic(loop, path, pool=None, **kw):
    return auth.BasicAuth(BasicSpec(htpasswd=path, **kw), loop, pool=pool or auth.BcryptPool())


def test_basic_good_password_then_cached(loop, htpasswd):
    a = make_basic(loop, htpasswd)
    first = a.check(basic_header("alice", "wonderland"), b"/")
    assert isinstance(first, asyncio.Future)  # bcrypt runs in the pool, never on the loop
    v = loop.run_until_complete(first)
    assert v.passed and v.identity == b"alice"
    again = a.check(basic_header("alice", "wonderland"), b"/")
    assert again is v  # cached: no second bcrypt
    assert a._pool.checks == 1
    assert resolve(loop, a.check(basic_header("bob", "builder"), b"/")).identity == b"bob"


def test_basic_bad_password_and_unknown_user(loop, htpasswd):
    a = make_basic(loop, htpasswd)
    v = resolve(loop, a.check(basic_header("alice", "hunter2"), b"/"))
    assert (v.status, v.reason) == (401, "invalid") and "hunter2" not in v.detail
    unknown = a.check(basic_header("mallory", "wonderland"), b"/")
    assert isinstance(unknown, asyncio.Future)  # a bcrypt is spent on unknown users too
    v = loop.run_until_complete(unknown)
    assert (v.status, v.reason) == (401, "invalid")
    assert a._pool.checks == 2
    # a wrong password is cached too: repeating it costs no bcrypt
    assert a.check(basic_header("alice", "hunter2"), b"/").reason == "invalid"
    assert a._pool.checks == 2
    assert a.challenge == b'Basic realm="fastlb", charset="UTF-8"' and a.strip == (b"authorization",)
    assert a.memo_header is None


def test_basic_unknown_user_costs_like_a_real_one(loop, tmp_path):
    path = tmp_path / "htpasswd"
    path.write_bytes(b"alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=8)) + b"\n")
    a = make_basic(loop, str(path))
    assert a._dummy.startswith(b"$2b$08$") and len(a._dummy) == 60
    t0 = time.perf_counter()
    assert resolve(loop, a.check(basic_header("alice", "nope"), b"/")).reason == "invalid"
    t1 = time.perf_counter()
    assert resolve(loop, a.check(basic_header("nobody", "nope"), b"/")).reason == "invalid"
    t2 = time.perf_counter()
    known, unknown = t1 - t0, t2 - t1
    assert unknown > known / 4, (known, unknown)  # same cost class, not a dict miss


def test_basic_users_list_forbids_others(loop, htpasswd):
    a = make_basic(loop, htpasswd, users=("alice",))
    assert resolve(loop, a.check(basic_header("alice", "wonderland"), b"/")).passed
    v = resolve(loop, a.check(basic_header("bob", "builder"), b"/"))
    assert (v.status, v.reason) == (403, "forbidden") and v.identity == b"bob"
    # a wrong password of a user not on the list is a 401: membership does not show without the password
    assert resolve(loop, a.check(basic_header("bob", "nope"), b"/")).status == 401


def test_basic_malformed_and_missing(loop, htpasswd):
    a = make_basic(loop, htpasswd)
    assert a.check(NO_HEADERS, b"/").reason == "missing"
    for value in (b"Basic !!!notbase64", b"Basic " + base64.b64encode(b"no-colon"), b"Basic", b"Basic ",
                  b"Bearer abc", b"Basic YWxpY2U6d29uZGVybGFuZA"):  # the last: padding missing
        v = a.check(headers(authorization=value), b"/")
        assert not isinstance(v, asyncio.Future), value
        assert (v.status, v.reason) == (401, "malformed"), value
    assert a._pool.checks == 0
    assert resolve(loop, a.check(headers(authorization=b"basic " + base64.b64encode(b"bob:builder")), b"/")).passed


def test_basic_long_password_is_truncated_as_htpasswd_does(loop, htpasswd):
    a = make_basic(loop, htpasswd)
    assert resolve(loop, a.check(basic_header("carol", "x" * 80), b"/")).passed
    assert resolve(loop, a.check(basic_header("carol", "x" * 72 + "yyy"), b"/")).passed
    assert resolve(loop, a.check(basic_header("carol", "x" * 71), b"/")).reason == "invalid"


def test_basic_busy_bound(loop, htpasswd):
    pool = auth.BcryptPool(workers=1, max_waiting=2)
    a = make_basic(loop, htpasswd, pool=pool)
    good = resolve(loop, a.check(basic_header("bob", "builder"), b"/"))
    f1 = a.check(basic_header("alice", "one"), b"/")
    f2 = a.check(basic_header("alice", "two"), b"/")
    assert isinstance(f1, asyncio.Future) and isinstance(f2, asyncio.Future)
    v = a.check(basic_header("alice", "three"), b"/")
    assert (v.status, v.reason) == (503, "busy")
    # a cached result is still answered while the pool is full
    assert a.check(basic_header("bob", "builder"), b"/") is good
    # the same credentials as one in flight wait for it instead of spending another check
    f1b = a.check(basic_header("alice", "one"), b"/")
    assert isinstance(f1b, asyncio.Future) and pool.checks == 3
    results = loop.run_until_complete(asyncio.gather(f1, f2, f1b))
    assert [r.reason for r in results] == ["invalid"] * 3
    assert pool.pending == 0
    assert resolve(loop, a.check(basic_header("alice", "wonderland"), b"/")).passed


def test_basic_cancelled_waiter_does_not_break_the_others(loop, htpasswd):
    a = make_basic(loop, htpasswd)
    f1 = a.check(basic_header("alice", "wonderland"), b"/")
    f2 = a.check(basic_header("alice", "wonderland"), b"/")
    f1.cancel()
    assert loop.run_until_complete(f2).passed


def test_basic_cache_ttl(loop, htpasswd, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(auth, "time", clock)
    a = make_basic(loop, htpasswd)
    assert resolve(loop, a.check(basic_header("alice", "wonderland"), b"/")).passed
    assert not isinstance(a.check(basic_header("alice", "wonderland"), b"/"), asyncio.Future)
    clock.offset = auth.BASIC_CACHE_TTL + 1
    assert isinstance(a.check(basic_header("alice", "wonderland"), b"/"), asyncio.Future)


def test_basic_cache_holds_no_credential(loop, htpasswd):
    a = make_basic(loop, htpasswd)
    resolve(loop, a.check(basic_header("alice", "wonderland"), b"/"))
    (key,) = a._cache
    assert key != hashlib.sha256(b"alice:wonderland").digest()
    assert key != hashlib.sha256(b"alice\0wonderland").digest()
    assert key != hashlib.sha256(b"Basic " + base64.b64encode(b"alice:wonderland")).digest()
    assert b"wonderland" not in key


def test_basic_reloads_the_file_when_it_changes(loop, htpasswd, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(auth, "time", clock)
    a = make_basic(loop, htpasswd)
    assert resolve(loop, a.check(basic_header("alice", "wonderland"), b"/")).passed
    st = os.stat(htpasswd)
    with open(htpasswd, "wb") as f:
        f.write(htpasswd_line("alice", "looking-glass") + htpasswd_line("dave", "pw"))
    os.utime(htpasswd, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    # within the second since the last look, the old file (and its cached result) is used
    assert a.check(basic_header("alice", "wonderland"), b"/").passed
    clock.offset = 1.5
    assert resolve(loop, a.check(basic_header("alice", "wonderland"), b"/")).reason == "invalid"
    assert resolve(loop, a.check(basic_header("alice", "looking-glass"), b"/")).passed
    assert resolve(loop, a.check(basic_header("dave", "pw"), b"/")).passed
    assert resolve(loop, a.check(basic_header("bob", "builder"), b"/")).reason == "invalid"
    # the file disappearing keeps the users loaded last
    os.unlink(htpasswd)
    clock.offset = 3.0
    assert a.check(basic_header("dave", "pw"), b"/").passed


def test_basic_realm_is_quoted_and_forward_credential(loop, htpasswd):
    a = make_basic(loop, htpasswd, realm='ops "team" \\ x', forward_credential=True)
    assert a.challenge == b'Basic realm="ops \\"team\\" \\\\ x", charset="UTF-8"'
    assert a.strip == ()


def test_basic_unreadable_file_is_a_config_error(loop, tmp_path):
    with pytest.raises(ConfigError):
        make_basic(loop, str(tmp_path / "absent"))


def test_build_dispatches_and_start_close_are_harmless(loop, htpasswd, jwks_file):
    a = auth.build(AuthSpec(kind="basic", basic=BasicSpec(htpasswd=htpasswd)), loop)
    assert isinstance(a, auth.BasicAuth) and a._pool is auth.SHARED_BCRYPT
    j = make_jwt(loop, jwks_file)
    for x in (a, j, api_key_auth()):
        loop.run_until_complete(x.start())
        x.close()


def test_reasons_are_the_metric_labels():
    assert auth.AUTH_REASONS == ("missing", "malformed", "invalid", "expired", "not_yet_valid", "issuer",
                                 "audience", "algorithm", "unknown_key", "forbidden", "busy")
    for name in dir(auth):
        v = getattr(auth, name)
        if isinstance(v, auth.Verdict):
            assert v.reason in auth.AUTH_REASONS and v.status in (401, 403, 503) and v.detail


def test_built_from_the_configuration(loop, tmp_path, jwks_file, htpasswd):
    """The specs config.py makes are the ones auth.build takes."""
    from fastlb import config

    keys = tmp_path / "keys"
    keys.write_text(hashlib.sha256(KEY).hexdigest() + "  # partner\n")
    routes = [{"path_prefix": "/k/", "pool": "p", "auth": {"api_key": {"keys_file": str(keys)}}},
              {"path_prefix": "/q/", "pool": "p", "auth": {"api_key": {
                  "query": "api_key", "keys_sha256": [hashlib.sha256(KEY).hexdigest()]}}},
              {"path_prefix": "/j/", "pool": "p", "auth": {"jwt": {
                  "algorithms": ["RS256", "ES256"], "jwks_file": jwks_file, "issuer": "https://idp.example",
                  "audience": "api", "leeway": "30s", "forward_claims": {"sub": "X-User-Id"},
                  "required_claims": {"scope": ["read"]}}}},
              {"path_prefix": "/b/", "pool": "p", "auth": {"basic": {"htpasswd": htpasswd, "users": ["bob"]}}}]
    cfg = config.from_dict({"listeners": [{"bind": "127.0.0.1:8080", "routes": routes}],
                            "pools": {"p": {"backends": ["127.0.0.1:9001"]}}})
    k, q, j, b = (auth.build(r.auth, loop) for r in cfg.listeners[0].routes)
    assert k.check(headers(x_api_key=KEY), b"/k/").passed
    assert q.check(NO_HEADERS, b"/q/?api_key=" + KEY).passed and q.strip_query == b"api_key"
    v = j.check(bearer(rs256(claims(scope="read"))), b"/j/")
    assert v.passed and j.claim_header_lines(v) == b"X-User-Id: alice\r\n"
    assert j.check(bearer(rs256(claims(scope="write"))), b"/j/").status == 403
    assert resolve(loop, b.check(basic_header("alice", "wonderland"), b"/b/")).status == 403
    assert resolve(loop, b.check(basic_header("bob", "builder"), b"/b/")).passed

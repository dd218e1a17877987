"""HTTP/1.1 request parsing: fastlb's scanner (both twins) against httptools and h11.

group "scanner": parse one request, extract what a proxy needs (method, target, the
framing facts or every header, the body bytes), implementation x input:
  fastlb-cython          scan() + facts + headers() (every (name, value) as bytes) + body
                         slice: the same work as the httptools row, the headline comparison
  fastlb-python          the pure twin, the same work
  httptools              HttpRequestParser with a callback protocol that stores the URL, every
                         header and the body like a proxy would; one parser per connection
  h11                    receive_data + next_event until EndOfMessage; a Connection per request
                         (h11 needs a response before it accepts the next request)
  fastlb-cython-offsets-only, fastlb-python-offsets-only
                         scan() + facts + body slice, no header list: what the proxy's hot
                         path does (it copies header bytes by offset), not comparable with
                         the parsers above, which all build a header list
group "build_head": scan() + build_upstream_head(), cython vs python.

Inputs: small_get (health check), post_json (REST call with a JSON body),
browser_15_headers (a realistic browser API call: user-agent, accept*, authorization
bearer token, cookie, referer, origin, traceparent, sec-fetch-*, ...).

    python -m pytest benchmarks/bench_scanner.py --benchmark-only --benchmark-group-by=group,param:case
"""

import pytest

pytest.importorskip("pytest_benchmark")

import h11  # noqa: E402
import httptools  # noqa: E402

from fastlb._core import scanner_py  # noqa: E402

try:
    from fastlb._core import scanner as scanner_c
except ImportError:  # not built: the compiled rows are skipped, not silently replaced
    scanner_c = None

SMALL_GET = b"GET /health HTTP/1.1\r\nHost: api.example.com\r\n\r\n"

_JSON = (
    b'{"order":{"customer_id":"c_8f14e45f","currency":"EUR","items":['
    b'{"sku":"SKU-10042","qty":2,"unit_price":1999},{"sku":"SKU-20077","qty":1,"unit_price":4999}],'
    b'"shipping":{"method":"express","address":{"line1":"12 Rue de la Paix","city":"Paris",'
    b'"postcode":"75002","country":"FR"}},"notes":"leave at the door"}}'
)
POST_JSON = (
    b"POST /api/v1/orders HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"User-Agent: orders-client/2.3.1 python-httpx/0.27\r\n"
    b"Accept: application/json\r\n"
    b"Content-Type: application/json\r\n"
    b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzdmMtb3JkZXJzIn0.c2lnbmF0dXJl\r\n"
    b"X-Request-ID: 7c9e6679-7425-40de-944b-e07fc1f90ae7\r\n"
    b"Content-Length: " + str(len(_JSON)).encode() + b"\r\n\r\n" + _JSON
)

BROWSER_15_HEADERS = (
    b"GET /api/v2/orders/12345/items?include=product,price&page=2 HTTP/1.1\r\n"
    b"Host: shop.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    b"Chrome/124.0.0.0 Safari/537.36\r\n"
    b"Accept: application/json, text/plain, */*\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Accept-Language: en-US,en;q=0.9,fr;q=0.8\r\n"
    b"Authorization: Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6"
    b"IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c\r\n"
    b"Cookie: session=8f14e45fceea167a5a36dedd4bea2543; csrftoken=Zm9vYmFyYmF6cXV4; "
    b"_ga=GA1.2.123456789.1700000000; theme=dark\r\n"
    b"Referer: https://shop.example.com/orders/12345\r\n"
    b"Origin: https://shop.example.com\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"Sec-Fetch-Dest: empty\r\n"
    b"Sec-Fetch-Mode: cors\r\n"
    b"Sec-Fetch-Site: same-origin\r\n"
    b"Connection: keep-alive\r\n"
    b"Cache-Control: no-cache\r\n"
    b"\r\n"
)

CASES = {"small_get": SMALL_GET, "post_json": POST_JSON, "browser_15_headers": BROWSER_15_HEADERS}


# --- fastlb ------------------------------------------------------------------------------

def _fastlb(module, with_headers):
    if module is None:
        pytest.skip("compiled scanner not built")
    scanner = module.RequestScanner()

    def parse(raw):
        n = scanner.scan(raw)
        sc = scanner
        facts = (sc.method, sc.target, sc.host, sc.content_length, sc.chunked, sc.keep_alive)
        body = raw[n : n + sc.content_length] if sc.content_length > 0 else b""
        if with_headers:
            return facts, sc.headers(raw), body
        return facts, body

    return parse


# --- httptools ---------------------------------------------------------------------------

class _ProxyProtocol:
    """What a proxy keeps from llhttp's callbacks."""

    __slots__ = ("url", "headers", "body", "complete")

    def __init__(self):
        self.url = None
        self.headers = []
        self.body = []
        self.complete = False

    def on_message_begin(self):
        self.url = None
        self.headers = []
        self.body = []
        self.complete = False

    def on_url(self, url):
        self.url = url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        self.complete = True


def _httptools():
    proto = _ProxyProtocol()
    parser = httptools.HttpRequestParser(proto)

    def parse(raw):
        parser.feed_data(raw)
        assert proto.complete
        return parser.get_method(), proto.url, proto.headers, parser.should_keep_alive(), proto.body

    return parse


# --- h11 -----------------------------------------------------------------------------------

def _h11():
    def parse(raw):
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(raw)
        request = conn.next_event()
        body = []
        while True:
            event = conn.next_event()
            if type(event) is h11.Data:
                body.append(event.data)
            else:
                break
        assert type(event) is h11.EndOfMessage
        return request.method, request.target, request.headers, body

    return parse


IMPLEMENTATIONS = {
    "fastlb-cython": lambda: _fastlb(scanner_c, True),
    "fastlb-python": lambda: _fastlb(scanner_py, True),
    "httptools": _httptools,
    "h11": _h11,
    "fastlb-cython-offsets-only": lambda: _fastlb(scanner_c, False),
    "fastlb-python-offsets-only": lambda: _fastlb(scanner_py, False),
}


@pytest.mark.benchmark(group="scanner", warmup=True)  # sub-µs timings need a warm-up
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_scanner(benchmark, impl, case):
    raw = CASES[case]
    parse = IMPLEMENTATIONS[impl]()
    parse(raw)  # warm up, and fail early if an implementation cannot parse the input
    benchmark(parse, raw)


@pytest.mark.benchmark(group="build_head", warmup=True)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("impl", ["fastlb-cython", "fastlb-python"])
def test_build_head(benchmark, impl, case):
    module = scanner_c if impl == "fastlb-cython" else scanner_py
    if module is None:
        pytest.skip("compiled scanner not built")
    raw = CASES[case]
    scanner = module.RequestScanner()

    def scan_and_build():
        scanner.scan(raw)
        return scanner.build_upstream_head(raw, b"203.0.113.7", b"X-Forwarded-Proto: https\r\n", False)

    head = scan_and_build()
    assert head.startswith(raw.split(b" ", 1)[0]) and b"X-Forwarded-For: 203.0.113.7\r\n" in head
    benchmark(scan_and_build)

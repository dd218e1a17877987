"""Read a fastlb process's /metrics in tests: scrape, parse the text exposition, sum samples."""

import re

import httpx

SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def scrape(proc, accept=None):
    headers = {"Accept": accept} if accept else {}
    r = httpx.get("http://127.0.0.1:%d/metrics" % proc.admin_port, headers=headers, timeout=5)
    assert r.status_code == 200
    return r


def parse_samples(text):
    """{(name, frozenset(labels)): value} of a text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, "unparsable sample line: %r" % line
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def value(samples, name, **labels):
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))

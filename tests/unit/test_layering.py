"""The dependency direction of DESIGN.md, enforced on the source.

Leaves first: errors <- model <- config; _core <- http kernels, balancer;
counters (a leaf) <- balancer, health, proxy; clientaddr, proxyproto (stdlib
leaves), auth <- guard <- proxy; metrics, stats, accesslog (renderers,
read on scrape or tick) <- admin, server; metrics/upstream/downstream <- proxy <- server <- cli;
tls (model, cryptography, ssl) <- config, upstream, health, server; devcert stands alone. _core and balancer are
sans-IO: they never import asyncio, ssl or time (time is passed in).
"""

import ast
import pathlib

import pytest

import fastlb

# The package under test (the checkout, or an installed wheel when the tests run from a copy).
PKG = pathlib.Path(fastlb.__file__).resolve().parent

# module -> fastlb modules it must NOT import
FORBIDDEN = {
    "http1": {"errors", "model", "config", "balancer", "proxy", "server", "cli", "upstream", "downstream", "admin"},
    "errors": {"model", "config", "balancer", "proxy", "server", "cli", "upstream", "downstream", "admin"},
    "model": {"config", "balancer", "proxy", "server", "cli", "upstream", "downstream", "admin"},
    "config": {"balancer", "proxy", "server", "cli", "upstream", "downstream", "admin"},
    "balancer": {"proxy", "server", "cli", "upstream", "downstream", "admin", "config", "health"},
    "health": {"proxy", "server", "cli", "upstream", "downstream", "admin", "config"},
    "timers": {"errors", "model", "config", "balancer", "http1", "proxy", "server", "cli", "upstream", "downstream",
               "admin"},
    "upstream": {"proxy", "server", "cli", "downstream", "admin"},
    "downstream": {"proxy", "server", "cli", "admin"},
    "proxy": {"server", "cli", "admin"},
    "server": {"cli"},
    # observability: counters is a leaf every layer may bump; the renderers read the
    # runtime objects they are given and never reach up into the data path
    "counters": {"errors", "model", "config", "balancer", "http1", "health", "proxy", "server", "cli", "upstream",
                 "downstream", "admin", "metrics", "stats", "accesslog"},
    "metrics": {"proxy", "server", "cli", "upstream", "downstream", "admin", "config", "stats", "accesslog"},
    "stats": {"proxy", "server", "cli", "upstream", "downstream", "admin", "config", "metrics", "accesslog"},
    "accesslog": {"proxy", "server", "cli", "upstream", "downstream", "admin", "config", "balancer", "health",
                  "metrics", "stats"},
    # the entry guard: the address and PROXY protocol parsers are stdlib-only leaves;
    # auth knows the validated model only; guard sits between them and the proxy
    "clientaddr": {"errors", "model", "config", "balancer", "http1", "health", "proxy", "server", "cli",
                   "upstream", "downstream", "admin", "metrics", "stats", "accesslog", "guard", "auth", "counters"},
    "proxyproto": {"errors", "model", "config", "balancer", "http1", "health", "proxy", "server", "cli",
                   "upstream", "downstream", "admin", "metrics", "stats", "accesslog", "guard", "auth", "counters",
                   "clientaddr"},
    "auth": {"config", "balancer", "http1", "health", "proxy", "server", "cli", "upstream", "downstream", "admin",
             "metrics", "stats", "accesslog", "guard", "clientaddr"},
    "guard": {"config", "balancer", "health", "proxy", "server", "cli", "upstream", "downstream", "admin",
              "metrics", "stats", "accesslog"},
    # TLS: tls.py reads certificate files and builds ssl contexts from the validated
    # model (config checks files through it; server, upstream and health use its
    # contexts); devcert (``fastlb cert``) stands alone
    "tls": {"config", "balancer", "health", "proxy", "server", "cli", "upstream", "downstream", "admin", "metrics",
            "stats", "accesslog", "guard", "auth", "clientaddr", "proxyproto", "http1", "_core", "counters"},
    "devcert": {"errors", "model", "config", "balancer", "health", "proxy", "server", "cli", "upstream",
                "downstream", "admin", "metrics", "stats", "accesslog", "guard", "auth", "clientaddr", "proxyproto",
                "http1", "_core", "counters", "tls"},
}
SANS_IO = {"asyncio", "ssl", "time", "socket", "selectors"}


def imports_of(path):
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            dots = "." * node.level
            if node.module:
                names.add(dots + node.module)
            else:  # from . import x
                names.update(dots + a.name for a in node.names)
    return names


def local_targets(names):
    out = set()
    for n in names:
        if n.startswith("."):
            out.add(n.lstrip(".").split(".")[0])
        elif n.startswith("fastlb."):
            out.add(n.split(".")[1])
    return out


@pytest.mark.parametrize("module", sorted(FORBIDDEN))
def test_dependency_direction(module):
    path = PKG / (module + ".py")
    bad = local_targets(imports_of(path)) & FORBIDDEN[module]
    assert not bad, "%s imports %s against the dependency direction" % (module, sorted(bad))


@pytest.mark.parametrize("path", sorted((PKG / "_core").glob("*.py")) + sorted((PKG / "_core").glob("*.pyx"))
                         + [PKG / "balancer.py", PKG / "http1.py", PKG / "timers.py", PKG / "counters.py", PKG / "guard.py",
                            PKG / "clientaddr.py", PKG / "proxyproto.py"], ids=lambda p: p.name)
def test_kernels_are_sans_io_and_self_contained(path):
    text = path.read_text()
    if path.suffix == ".pyx":
        names = set()
        for line in text.splitlines():
            s = line.strip()
            if s.startswith("import ") or (s.startswith("from ") and " import " in s):
                names.add(s.split()[1])
    else:
        names = imports_of(path)
    top = {n.lstrip(".").split(".")[0] for n in names if not n.startswith(".")}
    assert not top & SANS_IO, "%s imports %s" % (path.name, sorted(top & SANS_IO))
    if path.parent.name == "_core":
        assert not any(n.startswith("fastlb") for n in names), "_core must not import the rest of fastlb"
        assert not any(n.startswith("..") for n in names), "_core must not import the rest of fastlb"

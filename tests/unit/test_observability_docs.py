"""The monitoring examples name what fastlb exports: every PromQL expression of the
Grafana dashboard (docs/grafana/fastlb.json) and of the alert rules
(docs/prometheus/fastlb-alerts.yml) uses only metric families of
fastlb.metrics.FAMILIES (with their exposition suffixes), the process collector's
process_* metrics, and the labels those metrics have; the dashboard has the
datasource, pool and backend variables; promtool accepts the scrape example and
the rules, and the rules' unit tests (docs/prometheus/fastlb-alerts.test.yml) pass
and fire every alert."""

import json
import pathlib
import re
import shutil
import subprocess

import pytest
import yaml

from fastlb import health

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"
DASHBOARD = DOCS / "grafana" / "fastlb.json"
PROMETHEUS = DOCS / "prometheus"
SCRAPE = PROMETHEUS / "prometheus.yml"
RULES = PROMETHEUS / "fastlb-alerts.yml"
RULE_TESTS = PROMETHEUS / "fastlb-alerts.test.yml"
pytestmark = pytest.mark.skipif(not DOCS.is_dir(), reason="docs/ not beside the tests (installed-wheel run)")

# prometheus_client's process collector (Linux): name -> kind; no labels of its own.
PROCESS = {
    "process_cpu_seconds_total": "counter",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
}
# Labels Prometheus attaches to every scraped series (the dashboard filters on them).
TARGET_LABELS = frozenset(("job", "instance"))
# Series Prometheus makes itself, for the rules only: up{job, instance} per target.
SYNTHETIC = {"up": "gauge"}

# Grafana's built-in variables an expression may use.
GRAFANA_BUILTINS = frozenset(("__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                              "__range_ms", "__dashboard", "__from", "__to"))


# --------------------------------------------------------------------------- metrics

class Series:
    """One exposed series name: its family, kind, the labels it may carry, and whether
    rate()/increase() apply (counters and histogram _bucket/_sum/_count)."""

    def __init__(self, family, kind, labels, counter_like, bucket=False):
        self.family, self.kind, self.bucket = family, kind, bucket
        self.labels = frozenset(labels) | TARGET_LABELS | ({"le"} if bucket else frozenset())
        self.counter_like = counter_like


def _exposed(families, extra=None):
    """Exposed series names of FAMILIES ({name: (kind, labels, help)}), whichever way
    a family is named: a counter with or without its _total, an info metric with or
    without its _info."""
    out = {}
    for name, spec in families.items():
        kind, labels = spec[0], tuple(spec[1])
        if kind == "counter":
            base = name[:-len("_total")] if name.endswith("_total") else name
            out[base + "_total"] = Series(name, kind, labels, True)
        elif kind == "gauge":
            out[name] = Series(name, kind, labels, False)
        elif kind == "info":
            out[name if name.endswith("_info") else name + "_info"] = Series(name, kind, labels, False)
        elif kind in ("histogram", "summary"):
            out[name + "_sum"] = Series(name, kind, labels, True)
            out[name + "_count"] = Series(name, kind, labels, True)
            if kind == "histogram":
                out[name + "_bucket"] = Series(name, kind, labels, True, bucket=True)
            else:
                out[name] = Series(name, kind, tuple(labels) + ("quantile",), False)
        else:
            raise AssertionError("FAMILIES[%r] has kind %r" % (name, kind))
    for name, kind in dict(PROCESS, **(extra or {})).items():
        out.setdefault(name, Series(name, kind, (), kind == "counter"))
    return out


@pytest.fixture(scope="module")
def families():
    from fastlb.metrics import FAMILIES  # the one list of names, kinds and labels
    assert FAMILIES, "fastlb.metrics.FAMILIES is empty"
    return FAMILIES


# --------------------------------------------------------------------------- PromQL

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<var>\$\{[^}]*\}|\$\w+|\[\[[^\]]*\]\])
  | (?P<duration>(?:\d+(?:ms|[smhdwy]))+(?![\w.]))
  | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|(?i:inf|nan)(?![\w:]))
  | (?P<ident>[A-Za-z_:][\w:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=,(){}\[\]@:])
""", re.X)

AGGREGATIONS = frozenset(("sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                          "bottomk", "topk", "quantile", "limitk", "limit_ratio"))
GROUPING = frozenset(("by", "without"))
MATCHING = frozenset(("on", "ignoring", "group_left", "group_right"))
KEYWORDS = frozenset(("and", "or", "unless", "bool", "offset", "atan2", "start", "end"))
RATE_FUNCTIONS = frozenset(("rate", "irate", "increase"))


def tokenize(expr):
    tokens, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise AssertionError("cannot tokenize %r at %r" % (expr, expr[pos:pos + 20]))
        if m.lastgroup not in ("ws", "comment"):
            tokens.append((m.lastgroup, m.group()))
        pos = m.end()
    return tokens


class Ref:
    """A metric named in an expression, with the labels its selector matches on."""

    def __init__(self, name, index, matchers):
        self.name, self.index, self.matchers = name, index, matchers  # matchers: [(label, op, value)]


class Analysis:
    def __init__(self, expr):
        self.expr = expr
        self.refs = []        # Ref
        self.groupings = []   # (keyword, [labels], [Ref in its scope])
        self.functions = []   # (name, [Ref in its argument])
        toks = tokenize(expr)
        match, stack = {}, []
        for i, (_, text) in enumerate(toks):
            if text in "({[":
                stack.append(i)
            elif text in ")}]":
                assert stack, "unbalanced %r in %r" % (text, expr)
                match[stack.pop()] = i
        assert not stack, "unbalanced brackets in %r" % expr
        # in label values (string literals) too
        self.variables = set(re.findall(r"\$\{?(\w+)|\[\[(\w+)", expr))
        self.variables = {a or b for a, b in self.variables}
        scopes = []  # (kind, name or labels, start, end)
        i, n = 0, len(toks)
        while i < n:
            kind, text = toks[i]
            nxt = toks[i + 1][1] if i + 1 < n else None
            if kind != "ident":
                if text == "{":
                    raise AssertionError("a selector without a metric name in %r" % expr)
                i += 1
                continue
            if text in GROUPING or text in MATCHING:
                labels, end = [], i
                if nxt == "(":
                    end = match[i + 1]
                    labels = [t for k, t in toks[i + 2:end] if k == "ident"]
                    assert all(k in ("ident", "op") for k, _ in toks[i + 2:end]), expr
                if text in GROUPING:
                    if end + 1 < n and toks[end + 1][1] == "(":      # sum by (x) (arg)
                        scope = (end + 1, match[end + 1])
                    else:                                           # sum (arg) by (x)
                        assert toks[i - 1][1] == ")", "cannot find the argument of %r in %r" % (text, expr)
                        scope = (next(o for o, c in match.items() if c == i - 1), i - 1)
                else:
                    scope = (0, n)
                scopes.append(("grouping", (text, labels), scope))
                i = end + 1
                continue
            if text in KEYWORDS:
                i += 1
                continue
            if nxt == "(":
                scopes.append(("function", text, (i + 1, match[i + 1])))
                i += 1
                continue
            if text in AGGREGATIONS and nxt in GROUPING:
                i += 1
                continue
            matchers, end = [], i
            if nxt == "{":
                end = match[i + 1]
                body = toks[i + 2:end]
                for j in range(0, len(body), 4):
                    item = body[j:j + 4]
                    assert (len(item) >= 3 and item[0][0] == "ident" and item[1][1] in ("=", "!=", "=~", "!~")
                            and item[2][0] == "string" and (len(item) == 3 or item[3][1] == ",")), \
                        "cannot read the selector of %s in %r" % (text, expr)
                    matchers.append((item[0][1], item[1][1], item[2][1][1:-1]))
            assert text != "__name__" and all(m[0] != "__name__" for m in matchers), expr
            self.refs.append(Ref(text, i, matchers))
            i = end + 1
        for what, arg, (start, end) in scopes:
            inside = [r for r in self.refs if start <= r.index <= end]
            if what == "grouping":
                self.groupings.append((arg[0], arg[1], inside))
            else:
                self.functions.append((arg, inside))

    @property
    def output_labels(self):
        """Labels a legend may name: the grouping labels when the expression
        aggregates by some, else the labels of its metrics (None: unknown here)."""
        by = [labels for kw, labels, _ in self.groupings if kw == "by"]
        if by:
            return set().union(*map(set, by)) - {"le"}
        return None


def check_expr(expr, exposed, where):
    """Problems with one expression, as a list of strings."""
    a = Analysis(expr)
    problems = []
    if not a.refs:
        problems.append("%s: names no metric: %s" % (where, expr))
    for ref in a.refs:
        s = exposed.get(ref.name)
        if s is None:
            problems.append("%s: unknown metric %s" % (where, ref.name))
            continue
        for label, _, _ in ref.matchers:
            if label not in s.labels:
                problems.append("%s: %s has no label %r (it has %s)" % (where, ref.name, label, sorted(s.labels)))
    for kw, labels, inside in a.groupings:
        for ref in inside:
            s = exposed.get(ref.name)
            missing = [l for l in labels if s is not None and l not in s.labels]
            if missing:
                problems.append("%s: %s (%s) over %s, which has no %s"
                                % (where, kw, ", ".join(labels), ref.name, ", ".join(missing)))
    for fn, inside in a.functions:
        for ref in inside:
            s = exposed.get(ref.name)
            if s is None:
                continue
            if fn in RATE_FUNCTIONS and not s.counter_like:
                problems.append("%s: %s() over %s, a %s" % (where, fn, ref.name, s.kind))
            if fn == "histogram_quantile" and not s.bucket:
                problems.append("%s: histogram_quantile over %s, not a _bucket series" % (where, ref.name))
    for ref in a.refs:
        s = exposed.get(ref.name)
        if s is not None and s.counter_like and not any(ref in inside for fn, inside in a.functions
                                                        if fn in RATE_FUNCTIONS):
            problems.append("%s: counter %s used without rate()/increase()" % (where, ref.name))
    return a, problems


# --------------------------------------------------------------------------- the PromQL reader itself

def test_the_expression_reader_finds_metrics_and_labels_only():
    a = Analysis('histogram_quantile(0.99, sum by (le, pool, backend) (rate('
                 'fastlb_request_duration_seconds_bucket{job=~"$job", pool=~"$pool", backend=~"${backend}"}'
                 '[$__rate_interval]))) / on (pool) group_left sum without (code) (fastlb_x{a!="b,c=\\"d\\""} '
                 'offset 5m) > bool 1e3 or vector(0) and up == inf')
    assert [r.name for r in a.refs] == ["fastlb_request_duration_seconds_bucket", "fastlb_x", "up"]
    assert a.refs[0].matchers == [("job", "=~", "$job"), ("pool", "=~", "$pool"), ("backend", "=~", "${backend}")]
    assert a.refs[1].matchers == [("a", "!=", 'b,c=\\"d\\"')]
    assert a.variables == {"job", "pool", "backend", "__rate_interval"}
    groupings = [(kw, labels, [r.name for r in inside]) for kw, labels, inside in a.groupings]
    assert ("by", ["le", "pool", "backend"], ["fastlb_request_duration_seconds_bucket"]) in groupings
    assert ("without", ["code"], ["fastlb_x"]) in groupings
    assert ("on", ["pool"], ["fastlb_request_duration_seconds_bucket", "fastlb_x", "up"]) in groupings
    functions = dict((fn, [r.name for r in inside]) for fn, inside in a.functions)
    assert functions["rate"] == ["fastlb_request_duration_seconds_bucket"]
    assert functions["vector"] == []
    # trailing grouping: sum (x) by (l)
    b = Analysis("sum(rate(fastlb_y_total[5m])) by (pool)")
    assert [(kw, labels, [r.name for r in inside]) for kw, labels, inside in b.groupings] == \
        [("by", ["pool"], ["fastlb_y_total"])]


def test_the_checker_reports_what_it_should():
    fams = {"fastlb_a_total": ("counter", ("pool",), ""), "fastlb_g": ("gauge", ("pool", "backend"), ""),
            "fastlb_h_seconds": ("histogram", ("pool",), "")}
    exposed = _exposed(fams)
    ok = ['sum by (pool) (rate(fastlb_a_total{instance=~"$instance"}[5m]))',
          "histogram_quantile(0.9, sum by (le, pool) (rate(fastlb_h_seconds_bucket[5m])))",
          "max by (pool, backend) (fastlb_g) / sum by (pool) (rate(fastlb_h_seconds_count[1m]))",
          "rate(process_cpu_seconds_total[1m])"]
    for expr in ok:
        assert check_expr(expr, exposed, "ok")[1] == [], expr
    bad = {"sum by (backend) (rate(fastlb_a_total[5m]))": "has no backend",
           'rate(fastlb_a_total{code="5"}[5m])': "no label 'code'",
           "rate(fastlb_b_total[5m])": "unknown metric fastlb_b_total",
           "rate(fastlb_g[5m])": "rate() over fastlb_g, a gauge",
           "histogram_quantile(0.9, sum by (le) (rate(fastlb_h_seconds_count[5m])))": "not a _bucket",
           "sum by (le) (rate(fastlb_a_total[5m]))": "has no le",
           "fastlb_h_seconds": "unknown metric fastlb_h_seconds",
           "sum(fastlb_a_total)": "without rate()"}
    for expr, message in bad.items():
        problems = check_expr(expr, exposed, "bad")[1]
        assert any(message in p for p in problems), (expr, problems)


# --------------------------------------------------------------------------- the dashboard

def _dashboard():
    return json.loads(DASHBOARD.read_text())


def _panels(dash):
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", ())  # panels of a collapsed row


def _variables(dash):
    return {v["name"]: v for v in dash["templating"]["list"]}


def _variable_query(var):
    q = var.get("query")
    return q.get("query", "") if isinstance(q, dict) else q


def test_dashboard_is_importable_grafana_json():
    dash = _dashboard()
    assert dash["schemaVersion"] >= 36
    assert dash.get("id") is None and dash["uid"] and dash["title"]
    ids = [p["id"] for p in _panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in _panels(dash):
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
    # no two panels overlap on the 24-column grid
    cells = {}
    for panel in _panels(dash):
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, "%r overlaps %r" % (panel["title"], cells[(x, y)])
                cells[(x, y)] = panel["title"]


def test_dashboard_variables():
    variables = _variables(_dashboard())
    ds = variables["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name, label in (("pool", "pool"), ("backend", "backend")):
        var = variables[name]
        assert var["type"] == "query" and var["multi"] and var["includeAll"], name
        assert var["datasource"]["uid"] == "${datasource}", name
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", _variable_query(var).strip())
        assert m and m.group(2) == label, _variable_query(var)


def test_every_panel_has_a_title_and_targets_on_the_datasource_variable():
    for panel in _panels(_dashboard()):
        assert panel.get("title"), panel
        if panel["type"] == "row":
            continue
        assert panel["type"] in ("timeseries", "stat", "state-timeline", "table", "bargauge", "gauge"), panel
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel.get("targets"), "%r has no target" % panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["expr"].strip(), panel["title"]
            assert t.get("datasource", panel["datasource"])["uid"] == "${datasource}", panel["title"]


def _dashboard_expressions(dash):
    """(where, expr, legend labels, filtered) for every panel target and every query
    variable (its label_values selector; the variable's label as its legend)."""
    for panel in _panels(dash):
        for t in panel.get("targets", ()):
            legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat") or ""))
            yield "panel %r" % panel["title"], t["expr"], legend, True
    for name, var in _variables(dash).items():
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", _variable_query(var).strip())
            assert m, "variable %s: %r" % (name, _variable_query(var))
            yield "variable $%s" % name, m.group(1), {m.group(2)}, False


def test_dashboard_expressions_use_fastlb_metrics_and_their_labels(families):
    """Metric names, selector labels, by/without labels, rate() on counters only,
    histogram_quantile on buckets only, legend labels the result has; variables
    defined; panel selectors filtered by $job and $instance, multi-value variables
    matched with =~."""
    dash = _dashboard()
    exposed = _exposed(families)
    variables = _variables(dash)
    multi = {n for n, v in variables.items() if v.get("multi") or v.get("includeAll")}
    problems = []
    for where, expr, legend, filtered in _dashboard_expressions(dash):
        a, found = check_expr(expr, exposed, where)
        problems += found
        for var in a.variables - GRAFANA_BUILTINS - set(variables):
            problems.append("%s: undefined variable $%s" % (where, var))
        for ref in a.refs:
            names = {label for label, _, _ in ref.matchers}
            if filtered and not {"job", "instance"} <= names:
                problems.append("%s: %s is not filtered by $job and $instance" % (where, ref.name))
            for label, op, value in ref.matchers:
                if op != "=~" and any(re.search(r"\$\{?%s\b" % v, value) for v in multi):
                    problems.append("%s: %s%s\"%s\": a multi-value variable needs =~" % (where, label, op, value))
        has = a.output_labels
        if has is None:
            has = set().union(*(exposed[r.name].labels for r in a.refs if r.name in exposed))
        for label in sorted(legend - has):
            problems.append("%s: names {{%s}}, which the result of %s does not have" % (where, label, expr))
    assert not problems, "\n".join(problems)


def test_dashboard_shows_every_metric_family(families):
    exposed = _exposed(families)
    used = {exposed[r.name].family for _, expr, _, _ in _dashboard_expressions(_dashboard())
            for r in Analysis(expr).refs if r.name in exposed}
    unshown = set(families) - used
    assert not unshown, "no panel of docs/grafana/fastlb.json shows %s" % ", ".join(sorted(unshown))


# --------------------------------------------------------------------------- the alert rules

def _rules():
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_are_complete(families):
    exposed = _exposed(families, SYNTHETIC)
    problems = []
    names = []
    for rule in _rules():
        assert "alert" in rule, "recording rules have no place here: %r" % rule
        names.append(rule["alert"])
        where = "alert " + rule["alert"]
        assert re.fullmatch(r"Fastlb[A-Z]\w+", rule["alert"]), where
        assert "for" in rule, where
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), where
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), where
        problems += check_expr(rule["expr"], exposed, where)[1]
    assert len(names) == len(set(names)), "alert names repeat"
    assert not problems, "\n".join(problems)


def _promtool():
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package prometheus: apt-get install prometheus)")
    return path


def _run(*args, cwd=None):
    res = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert res.returncode == 0, "%s failed:\n%s%s" % (" ".join(map(str, args)), res.stdout, res.stderr)
    return res.stdout + res.stderr


def test_promtool_checks_the_scrape_config(tmp_path):
    promtool = _promtool()
    # rule_files are resolved relative to the config file: both go to tmp_path, as a user copies them
    for f in (SCRAPE, RULES):
        shutil.copy(f, tmp_path / f.name)
    out = _run(promtool, "check", "config", tmp_path / SCRAPE.name)
    assert "1 rule files found" in out, out
    config = yaml.safe_load(SCRAPE.read_text())
    assert config["rule_files"] == [RULES.name]
    job, = [j for j in config["scrape_configs"] if j["job_name"] == "fastlb"]
    assert job["metrics_path"] == "/metrics" and job["scrape_interval"] == "15s"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9901"]
    # FastlbDown watches the example's job name
    down, = [r for r in _rules() if r["alert"] == "FastlbDown"]
    assert 'job="%s"' % job["job_name"] in down["expr"]


def test_promtool_checks_the_rules():
    out = _run(_promtool(), "check", "rules", RULES)
    assert "SUCCESS: %d rules found" % len(_rules()) in out, out


def test_promtool_rule_unit_tests_pass_and_fire_every_alert():
    out = _run(_promtool(), "test", "rules", RULE_TESTS.name, cwd=PROMETHEUS)
    assert "SUCCESS" in out, out
    tests = yaml.safe_load(RULE_TESTS.read_text())
    fired = {case["alertname"] for group in tests["tests"] for case in group.get("alert_rule_test", ())
             if case.get("exp_alerts")}
    quiet = {case["alertname"] for group in tests["tests"] for case in group.get("alert_rule_test", ())
             if not case.get("exp_alerts")}
    alerts = {rule["alert"] for rule in _rules()}
    assert alerts - fired == set(), "no unit test fires %s" % ", ".join(sorted(alerts - fired))
    assert alerts - quiet == set(), "no unit test keeps %s quiet" % ", ".join(sorted(alerts - quiet))


def _concrete(expr):
    """A dashboard expression as Prometheus receives it: Grafana's interval variables a
    duration, the others (inside label values) a match-anything regex."""
    expr = re.sub(r"\$\{?__(?:rate_)?interval(?:_ms)?\}?|\$\{?__range(?:_s|_ms)?\}?", "5m", expr)
    return re.sub(r"\$\{?\w+\}?|\[\[\w+\]\]", ".*", expr)


def test_promtool_parses_every_dashboard_expression(tmp_path):
    promtool = _promtool()
    exprs = [expr for _, expr, _, _ in _dashboard_expressions(_dashboard())]
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": "fastlb:dashboard:expr%d" % i, "expr": _concrete(e)} for i, e in enumerate(exprs)]}]}
    path = tmp_path / "dashboard-exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    out = _run(promtool, "check", "rules", path)
    assert "SUCCESS: %d rules found" % len(exprs) in out, out


def test_backend_state_timeline_query_encodes_the_worst_state(tmp_path):
    """The state timeline's one query turns fastlb_backend_state into one value per
    backend, mapped back to the state's name; several fastlb instances show the worst."""
    promtool = _promtool()
    panel, = [p for p in _panels(_dashboard()) if p["type"] == "state-timeline"]
    expr = _concrete(panel["targets"][0]["expr"])
    codes = {}
    for mapping in panel["fieldConfig"]["defaults"]["mappings"]:
        for value, shown in mapping["options"].items():
            codes[shown["text"]] = float(value)
    assert set(health.STATES) <= set(codes), "the timeline maps no value to %s" % (
        set(health.STATES) - set(codes))
    # lb1 sees a up, b slow_start, c ejected; lb2 sees a down, b up, c ejected
    now = {"lb1": {"a": "up", "b": "slow_start", "c": "ejected"}, "lb2": {"a": "down", "b": "up", "c": "ejected"}}
    series = []
    for instance, backends in now.items():
        for backend, current in backends.items():
            for state in health.STATES:
                series.append({"series": 'fastlb_backend_state{job="fastlb",instance="%s",pool="api",backend="%s",'
                                         'state="%s"}' % (instance, backend, state),
                               "values": "1x3" if state == current else "0x3"})
    worst = {"a": "down", "b": "slow_start", "c": "ejected"}
    test = {"tests": [{"interval": "1m", "input_series": series, "promql_expr_test": [
        {"expr": expr, "eval_time": "2m",
         "exp_samples": [{"labels": '{pool="api",backend="%s"}' % b, "value": codes[s]} for b, s in worst.items()]}]}]}
    path = tmp_path / "timeline.test.yml"
    path.write_text(yaml.safe_dump(test))
    _run(promtool, "test", "rules", path)


# --------------------------------------------------------------------------- docs/monitoring.md

def test_monitoring_doc_names_the_files_and_every_alert():
    text = (DOCS / "monitoring.md").read_text()
    for path in ("docs/grafana/fastlb.json", "docs/prometheus/prometheus.yml", "docs/prometheus/fastlb-alerts.yml"):
        assert path in text, path
    assert "(metrics.md)" in text
    missing = [r["alert"] for r in _rules() if "`%s`" % r["alert"] not in text]
    assert not missing, "docs/monitoring.md does not explain %s" % ", ".join(missing)

"""docker/: the Grafana dashboard only queries metrics Lifecycle exports, and the compose file,
the Prometheus scrape configuration and Grafana's provisioning fit together.

No Docker engine here: the files are parsed and cross-checked, not run."""
import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DASHBOARD = DOCKER / "grafana" / "lifecycle-serving.json"
TOKEN = "grafana-test-metrics-token"

# The serving process's metrics as the deployments issue fixes them (name: type). The test reads
# lifecycle.deployments.serving.metrics when that module exists and checks it exports all of these.
SERVING_METRICS = {
    "lifecycle_serving_requests": "counter",
    "lifecycle_serving_request_duration_seconds": "histogram",
    "lifecycle_serving_batch_size": "histogram",
    "lifecycle_serving_queue_depth": "gauge",
    "lifecycle_serving_model_load_seconds": "histogram",
    "lifecycle_serving_loaded_models": "gauge",
    "lifecycle_serving_loaded_model_bytes": "gauge",
    "lifecycle_serving_prediction_log_buffered": "gauge",
    "lifecycle_serving_prediction_log_spooled": "counter",
    "lifecycle_serving_prediction_log_dropped": "counter",
    "lifecycle_serving_prediction_log_written": "counter",
    # Beyond the list: requests let through while Redis (the token buckets) was down.
    "lifecycle_serving_rate_limit_unchecked": "counter",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count"),
            "gauge": ("",)}


def series_names(families):
    """{family name: type} -> the series names a query can select."""
    return {name + suffix for name, kind in families.items() for suffix in SUFFIXES.get(kind, ("",))}


def serving_families():
    """{name: type} from the serving process's metrics module, or None when it is not there yet."""
    try:
        from lifecycle.deployments.serving import metrics
    except ModuleNotFoundError as exc:
        if exc.name not in ("lifecycle.deployments.serving", "lifecycle.deployments.serving.metrics"):
            raise
        return None
    families = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            for family in value.describe():
                families[family.name] = family.type
    return families


def web_families(client, settings):
    """{name: type} from a real scrape of the web tier's /metrics."""
    settings.METRICS_TOKEN = TOKEN
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    return {family.name: family.type for family in text_string_to_metric_families(response.content.decode())}


# --- reading PromQL ---------------------------------------------------------------------------------

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}
GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
IDENTIFIER = re.compile(r"(?<![\w.$:])([a-zA-Z_:][\w:]*)(?![\w:]|\s*\()")


def metric_names(expr):
    """The metric names one PromQL expression selects: what is left once strings, label
    matchers, ranges, grouping clauses, function names and keywords are taken away."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', " ", expr)
    expr = re.sub(r"\{[^{}]*\}", " ", expr)
    expr = re.sub(r"\[[^\[\]]*\]", " ", expr)
    expr = GROUPING.sub(" ", expr)
    return {name for name in IDENTIFIER.findall(expr) if name.lower() not in PROMQL_WORDS}


def test_metric_names_reads_promql_the_way_prometheus_does():
    expr = ('histogram_quantile(0.99, sum by (le, deployment) (rate(a_seconds_bucket{deployment=~"$deployment", '
            'route!="shadow"}[$__rate_interval]))) / on (deployment) group_left (route) b_total offset 5m '
            '> bool 0.5 and c without (x) unless max(d) by (le) or 1e3 * e:recorded')
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d", "e:recorded"}
    assert metric_names('sum(rate(x_total{status=~"error|overloaded", a="}"}[5m]))') == {"x_total"}


# --- the dashboard ----------------------------------------------------------------------------------


def dashboard():
    return json.loads(DASHBOARD.read_text())


def query_panels(board):
    """Every panel with queries, rows' nested panels included."""
    for panel in board["panels"]:
        yield from (p for p in [panel, *panel.get("panels", [])] if p.get("type") != "row")


def queried_names(board):
    """{panel title: names} for every panel, plus the template variables' queries."""
    found = {panel["title"]: set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
             for panel in query_panels(board)}
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            # label_values(metric, label): only the first argument is a metric.
            found[f"variable {variable['name']}"] = set(re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)", query))
    return found


@pytest.mark.django_db
def test_every_query_names_a_metric_we_export(client, settings, redis):
    web = web_families(client, settings)
    assert {"lifecycle_jobs", "lifecycle_queue_length", "lifecycle_workers"} <= set(web)
    serving = serving_families() or SERVING_METRICS
    exported = series_names(web) | series_names(serving)
    unknown = {title: sorted(names - exported) for title, names in queried_names(dashboard()).items()
               if names - exported}
    assert not unknown, f"panels querying metrics nobody exports: {unknown}"


def test_the_serving_module_exports_the_metrics_the_dashboard_was_written_for():
    serving = serving_families()
    if serving is None:
        pytest.skip("lifecycle.deployments.serving.metrics is not in this checkout yet")
    missing = {name: kind for name, kind in SERVING_METRICS.items() if serving.get(name) != kind}
    assert not missing, f"not exported (or of another type): {missing}"


def test_every_metric_we_export_has_a_panel():
    used = set().union(*queried_names(dashboard()).values())
    web = {"lifecycle_jobs": "gauge", "lifecycle_queue_length": "gauge", "lifecycle_workers": "gauge",
           "lifecycle_redis_up": "gauge"}
    for name, kind in {**SERVING_METRICS, **web}.items():
        assert used & series_names({name: kind}), f"no panel shows {name}"


def test_the_latency_panels_are_quantiles_of_the_histogram():
    exprs = {panel["title"]: panel["targets"][0]["expr"] for panel in query_panels(dashboard())}
    for quantile, name in (("0.5", "p50"), ("0.95", "p95"), ("0.99", "p99")):
        expr = exprs[f"Latency {name} by deployment and route"]
        assert expr.startswith(f"histogram_quantile({quantile}, sum by (le, ")
        assert "lifecycle_serving_request_duration_seconds_bucket" in expr


def test_panels_are_well_formed():
    board = dashboard()
    panels = list(query_panels(board))
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    assert "__inputs" not in board, "a provisioned dashboard cannot ask for import inputs"
    variables = {v["name"] for v in board["templating"]["list"]}
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        for target in panel["targets"]:
            assert _balanced(target["expr"]), (panel["title"], target["expr"])
            for used in re.findall(r"\$(\w+)", target["expr"]):
                assert used.startswith("__") or used in variables, (panel["title"], used)


def _balanced(expr):
    depth = {"(": 0, "{": 0, "[": 0}
    closing = {")": "(", "}": "{", "]": "["}
    for char in re.sub(r'"(?:[^"\\]|\\.)*"', "", expr):
        if char in depth:
            depth[char] += 1
        elif char in closing:
            depth[closing[char]] -= 1
            if depth[closing[char]] < 0:
                return False
    return not any(depth.values())


# --- compose, Prometheus, Grafana provisioning --------------------------------------------------------


def compose():
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def test_the_compose_file_hangs_together():
    spec = compose()
    services, secrets, volumes = spec["services"], spec["secrets"], spec["volumes"]
    for name, service in services.items():
        mounted = set(service.get("secrets", []))
        assert mounted <= set(secrets), (name, mounted - set(secrets))
        for value in (service.get("environment") or {}).values():
            for secret in re.findall(r"^/run/secrets/(\w+)$", str(value)):
                assert secret in mounted, f"{name} reads /run/secrets/{secret} but does not mount it"
        depends = service.get("depends_on", {})
        assert set(depends) <= set(services), (name, depends)
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in volumes, (name, source)
    for secret in secrets.values():
        assert secret["file"].startswith("./secrets/")


def test_the_serving_service():
    services = compose()["services"]
    serving = services["serving"]
    assert serving["command"][:3] == ["python", "manage.py", "serve"]
    # torch is in the training worker's image, never in web's.
    assert serving["image"] == services["training-worker"]["image"] != services["web"]["image"]
    assert serving["build"] == services["training-worker"]["build"]
    env = serving["environment"]
    assert env["SERVING_PORT"] == "8100" and env["SERVING_HOST"] == "0.0.0.0"
    assert serving["ports"] == ["${SERVING_BIND:-127.0.0.1}:${SERVING_PORT:-8100}:8100"]
    assert serving["healthcheck"]["test"] == ["CMD", "python", "/app/docker/healthcheck.py", "/v2/health/ready", "8100"]
    assert "COPY docker/healthcheck.py docker/healthcheck.py" in (DOCKER / "Dockerfile.gpu").read_text()
    # It verifies and never signs: the public key, not the private one.
    assert "signing_key" not in serving["secrets"] and env["SIGNING_KEY_FILE"] == ""
    assert env["SIGNING_PUBLIC_KEY_FILE"] == "/run/secrets/signing_public_key"
    assert env["METRICS_TOKEN_FILE"] == "/run/secrets/metrics_token"
    assert services["web"]["environment"]["METRICS_TOKEN_FILE"] == "/run/secrets/metrics_token"
    # Nothing but web and serving gets the metrics token.
    holders = {name for name, service in services.items() if "metrics_token" in service.get("secrets", [])}
    assert holders == {"web", "serving", "prometheus"}


def test_prometheus_scrapes_web_and_serving_with_the_token():
    config = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())
    services = compose()["services"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"lifecycle-web", "lifecycle-serving"}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        assert job["authorization"] == {"type": "Bearer", "credentials_file": "/run/secrets/metrics_token"}
    assert "metrics_token" in services["prometheus"]["secrets"]
    assert jobs["lifecycle-web"]["static_configs"] == [{"targets": ["web:8000"]}]
    assert [(sd["names"], sd["port"]) for sd in jobs["lifecycle-serving"]["dns_sd_configs"]] == [(["serving"], 8100)]
    mounts = dict(m.split(":")[:2] for m in services["prometheus"]["volumes"])
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"


def test_grafana_is_provisioned_with_the_dashboard_and_prometheus():
    grafana = compose()["services"]["grafana"]
    mounts = dict(m.split(":")[:2] for m in grafana["volumes"])
    provisioning = DOCKER / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "lifecycle.yaml").read_text())["providers"]
    dashboard_target = mounts["./grafana/lifecycle-serving.json"]
    assert Path(dashboard_target).parent == Path(providers[0]["options"]["path"])
    sources = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert [(s["type"], s["url"]) for s in sources] == [("prometheus", "http://prometheus:9090")]
    assert grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == dashboard_target

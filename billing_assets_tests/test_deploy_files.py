"""The distributed deployment files (deploy/Dockerfile, deploy/helm/values.yaml) hold
together with the code, without Kubernetes, helm or docker: the values parse, the custom
run coordinator they name imports and accepts their config (the class and config the
chart writes into the instance), the per-source limit is there, no secret is inline, and
the Dockerfile's command serves a module that exists."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
VALUES = DEPLOY / "helm" / "values.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
BILLING_IMAGE = "registry.example.com/billing/billing-assets"


def values() -> dict:
    return yaml.safe_load(VALUES.read_text())


def test_run_coordinator_is_the_billing_queue_with_the_per_source_limit():
    import dagster as dg
    from dagster._serdes.config_class import ConfigurableClassData

    coordinator = values()["dagsterDaemon"]["runCoordinator"]
    assert coordinator["enabled"] is True and coordinator["type"] == "CustomRunCoordinator"
    custom = coordinator["config"]["customRunCoordinator"]
    module = importlib.import_module(custom["module"])
    cls = getattr(module, custom["class"])
    assert issubclass(cls, dg.QueuedRunCoordinator)
    limits = custom["config"]["tag_concurrency_limits"]
    assert {"key": "billing/source", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits

    # What the chart renders into the instance: module/class/config under run_coordinator; it must load.
    from dagster._core.run_coordinator import RunCoordinator

    instance_coordinator = ConfigurableClassData(
        custom["module"], custom["class"], yaml.safe_dump(custom["config"])
    ).rehydrate(as_type=RunCoordinator)
    assert isinstance(instance_coordinator, cls)
    queue = instance_coordinator.get_run_queue_config()
    assert queue.max_concurrent_runs == custom["config"]["max_concurrent_runs"]
    assert list(queue.tag_concurrency_limits) == limits


def test_same_limits_as_the_single_host_instance():
    single_host = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())["run_coordinator"]
    custom = values()["dagsterDaemon"]["runCoordinator"]["config"]["customRunCoordinator"]
    assert (custom["module"], custom["class"]) == (single_host["module"], single_host["class"])
    assert custom["config"]["tag_concurrency_limits"] == single_host["config"]["tag_concurrency_limits"]


def test_k8s_run_launcher_user_code_and_external_postgres():
    v = values()
    assert v["runLauncher"]["type"] == "K8sRunLauncher"
    assert "k8sRunLauncher" in v["runLauncher"]["config"]
    assert v["postgresql"]["enabled"] is False and v["postgresql"]["postgresqlHost"]
    assert v["generatePostgresqlPasswordSecret"] is False and v["global"]["postgresqlSecretName"]
    assert v["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"

    user = v["dagster-user-deployments"]
    assert user["enabled"] is True
    (deployment,) = user["deployments"]
    assert deployment["image"]["repository"] == BILLING_IMAGE
    args = deployment["dagsterApiGrpcArgs"]
    module_name = args[args.index("--module-name") + 1]
    assert importlib.import_module(module_name).defs is not None
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert {"name": "billing-secrets"} in deployment["envSecrets"]
    mounts = {m["name"]: m["mountPath"] for m in deployment["volumeMounts"]}
    assert {volume["name"] for volume in deployment["volumes"]} == set(mounts)
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["BILLING_SOURCES_FILE"].startswith(mounts["billing-registry"] + "/")

    # The webserver submits and the daemon dequeues through our coordinator: they need our image.
    for component in ("dagsterWebserver", "dagsterDaemon"):
        assert v[component]["image"]["repository"] == BILLING_IMAGE


def test_event_volume_variables_everywhere_deploy_dagster_yaml_asks_for_them():
    v = values()
    wanted = {"DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true", "DAGSTER_EVENT_BATCH_SIZE": "1000"}
    comment = (DEPLOY / "dagster.yaml").read_text()
    assert all(f"{name}={value}" in comment for name, value in wanted.items())
    for env in (v["dagsterWebserver"]["env"], v["dagsterDaemon"]["env"], v["dagster-user-deployments"]["deployments"][0]["env"]):
        assert wanted.items() <= {e["name"]: e["value"] for e in env}.items()


def test_no_secret_value_inline():
    v = values()
    text = VALUES.read_text()
    assert v["postgresql"]["postgresqlPassword"] == ""
    for line in text.splitlines():  # a URL with a password appears only in the how-to comments
        if re.search(r"://[^:/\s]+:[^@\s]+@", line):
            assert line.lstrip().startswith("#"), line
    for deployment in v["dagster-user-deployments"]["deployments"]:
        for e in deployment.get("env", []):
            assert not re.search(r"TOKEN|PASSWORD|SECRET|DATABASE_URL", e["name"]), e  # those come from envSecrets
            assert "valueFrom" not in e or "secretKeyRef" in e["valueFrom"]


def test_dockerfile_serves_the_code_location_as_non_root_with_nothing_baked():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert "ENTRYPOINT" not in re.sub(r"#.*", "", text)  # the chart passes the command as args
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
    command = json.loads(cmd)
    assert command[:3] == ["dagster", "api", "grpc"]
    module_name = command[command.index("-m") + 1]
    assert importlib.import_module(module_name).defs is not None
    (user,) = re.findall(r"^USER (\S+)$", text, re.M)
    assert not user.startswith(("0", "root"))
    code = re.sub(r"#.*", "", text)
    assert not re.search(r"^(ENV|ARG)\s.*(PASSWORD|TOKEN|SECRET|DATABASE_URL)", code, re.M)
    assert "dagster-k8s" in code  # the instance names the K8sRunLauncher; every process loading it imports dagster_k8s
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert ignore[ignore.index("**") + 1 :][:2] == ["!pyproject.toml", "!billing_assets/"]

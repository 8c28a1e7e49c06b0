"""Static checks of the deployment manifests (deploy/): no Docker, no cluster.

- deploy/compose.yaml against the Compose Specification schema that
  check-jsonschema ships (`vendor.compose-spec`), plus the hardening every tpx
  service must keep (read-only root, uid 10001, secrets as files, health
  checks) and what `--scale exchange=N` needs.
- Every Kubernetes object in deploy/k8s/base and deploy/k8s/overlays/*
  against the Kubernetes OpenAPI schemas that kubernetes-validate ships,
  strict (unknown fields fail). Strategic-merge patches of an overlay are
  applied here onto the base object and the merged result is validated.
- The properties the manifests promise: probes, resources, security
  contexts, secrets wired as TPX_*_FILE, network isolation of the exchange,
  no real secret anywhere.
"""

from __future__ import annotations

import copy
import importlib.resources
import ipaddress
import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tpx.core.config import SECRET_VARIABLES, ConfigError, Settings
from tests.support.paths import ROOT
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
K8S = DEPLOY / "k8s"
BASE = K8S / "base"
OVERLAYS = sorted(p for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# A fixed version the installed kubernetes-validate ships schemas for, so the
# result does not change when the package adds newer ones.
K8S_VERSION = "1.30.0"

UID = 10001
TPX_COMPOSE_SERVICES = ("migrate", "exchange", "jwks-refresher", "revoker")
LONG_RUNNING = ("exchange", "jwks-refresher", "revoker")
# The secrets each tpx service needs, as TPX_*_FILE variables (least privilege:
# only the exchange holds the admin and introspection credentials).
SECRET_FILES = {
    "migrate": {"TPX_DATABASE_URL_FILE"},
    "exchange": {"TPX_DATABASE_URL_FILE", "TPX_AMQP_URL_FILE", "TPX_ADMIN_TOKENS_FILE",
                 "TPX_INTROSPECTION_TOKENS_FILE"},
    "jwks-refresher": {"TPX_DATABASE_URL_FILE", "TPX_AMQP_URL_FILE"},
    "revoker": {"TPX_DATABASE_URL_FILE", "TPX_AMQP_URL_FILE"},
}
SECRET_KEYS = {"database-url", "amqp-url", "admin-tokens", "introspection-tokens"}
# Variables that must never be given a value directly (only as files).
PLAIN_SECRET_VARIABLES = set(SECRET_VARIABLES) | {"POSTGRES_PASSWORD", "RABBITMQ_DEFAULT_PASS"}
PLACEHOLDER = "CHANGE-ME"
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16")
# Sample secret values that tpx's own configuration accepts.
SAMPLE_SECRETS = {
    "database-url": "postgresql://tpx:sample-password@postgresql:5432/tpx",
    "amqp-url": "amqp://tpx:sample-password@rabbitmq:5672/",
    "admin-tokens": "sample-admin-credential-0123456789",
    "introspection-tokens": "sample-introspection-credential-0123456789",
}


# ---------------------------------------------------------------- helpers


def load_documents(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc]


def is_k8s_object(doc: object) -> bool:
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def object_id(doc: dict) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def strategic_merge(base, patch):
    """A small strategic merge: maps merge recursively, `null` deletes a key,
    lists of named maps (containers, env, volumes, ports...) merge by `name`,
    any other list or scalar is replaced by the patch."""
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            elif key in merged:
                merged[key] = strategic_merge(merged[key], value)
            else:
                merged[key] = copy.deepcopy(value)
        return merged
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        merged = [copy.deepcopy(item) for item in base]
        index = {item["name"]: i for i, item in enumerate(merged)}
        for item in patch:
            if item["name"] in index:
                merged[index[item["name"]]] = strategic_merge(merged[index[item["name"]]], item)
            else:
                merged.append(copy.deepcopy(item))
        return merged
    return copy.deepcopy(patch)


def _named(items: list) -> bool:
    return bool(items) and all(isinstance(item, dict) and "name" in item for item in items)


def patch_paths(kustomization: dict) -> list[str]:
    paths = [entry["path"] for entry in kustomization.get("patches", []) if "path" in entry]
    return paths + list(kustomization.get("patchesStrategicMerge", []))


@dataclass
class Build:
    """What a kustomization produces, approximately: its objects (resources
    gathered recursively, strategic-merge patches applied) and where they came from."""

    directory: Path
    objects: dict[tuple[str, str], dict]
    sources: dict[tuple[str, str], Path]


def build(directory: Path) -> Build:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    objects: dict[tuple[str, str], dict] = {}
    sources: dict[tuple[str, str], Path] = {}
    for entry in kustomization.get("resources", []):
        target = (directory / entry).resolve()
        if not target.exists():
            continue  # reported by test_kustomization_lists_only_existing_files
        if target.is_dir():
            sub = build(target)
            objects.update(sub.objects)
            sources.update(sub.sources)
            continue
        for doc in load_documents(target):
            if is_k8s_object(doc):
                assert object_id(doc) not in objects, f"{object_id(doc)} is defined twice"
                objects[object_id(doc)] = doc
                sources[object_id(doc)] = target
    for entry in patch_paths(kustomization):
        path = directory / entry
        if not path.is_file():
            continue  # reported by test_kustomization_lists_only_existing_files
        for patch in load_documents(path):
            key = object_id(patch)
            assert key in objects, f"{path.relative_to(ROOT)} patches {key}, which the overlay does not contain"
            objects[key] = strategic_merge(objects[key], patch)
            sources[key] = path
    return Build(directory, objects, sources)


def kustomization_dirs() -> list[Path]:
    return [BASE, *OVERLAYS]


def every_build() -> list[Build]:
    return [build(directory) for directory in kustomization_dirs()]


def objects_of(kind: str) -> list[tuple[str, dict]]:
    """(label, object) of `kind` in every build, for parametrised tests."""
    found = []
    for result in every_build():
        for (doc_kind, name), doc in result.objects.items():
            if doc_kind == kind:
                found.append((f"{result.directory.relative_to(K8S)}:{name}", doc))
    return found


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def component(doc: dict) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


# ---------------------------------------------------------------- compose


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))


def compose_schema() -> dict:
    resource = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(resource.read_text(encoding="utf-8"))


def test_compose_matches_the_compose_specification(compose):
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_uses_the_specification_not_a_legacy_version(compose):
    assert "version" not in compose, "the Compose Specification has no `version:`; remove it"
    assert set(compose["services"]) >= {"postgres", "rabbitmq", *TPX_COMPOSE_SERVICES}


@pytest.mark.parametrize("name", TPX_COMPOSE_SERVICES)
def test_compose_tpx_service_is_hardened(compose, name):
    service = compose["services"][name]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    assert (COMPOSE_FILE.parent / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    assert service.get("read_only") is True
    assert str(service.get("user", "")).split(":")[0] == str(UID)
    assert "ALL" in service.get("cap_drop", [])
    assert "no-new-privileges:true" in service.get("security_opt", [])
    assert any(str(entry).split(":")[0] == "/tmp" for entry in service.get("tmpfs", [])), "needs a tmpfs at /tmp"
    assert "restart" in service


@pytest.mark.parametrize("name", TPX_COMPOSE_SERVICES)
def test_compose_tpx_service_gets_its_secrets_as_files(compose, name):
    service = compose["services"][name]
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "write `environment:` as a map"
    file_variables = {key for key in environment if key.startswith("TPX_") and key.endswith("_FILE")}
    assert file_variables == SECRET_FILES[name]
    mounted = set(service.get("secrets", []))
    for variable in file_variables:
        path = environment[variable]
        secret = path.removeprefix("/run/secrets/")
        assert path.startswith("/run/secrets/") and secret in mounted, f"{variable}={path} is not a mounted secret"
        assert compose["secrets"][secret]["file"].startswith("./secrets/")


def test_compose_has_no_plain_secret_values(compose):
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        keys = set(environment) if isinstance(environment, dict) else {e.split("=")[0] for e in environment}
        assert not keys & PLAIN_SECRET_VARIABLES, f"{name}: give {keys & PLAIN_SECRET_VARIABLES} as *_FILE"
    for name, secret in compose["secrets"].items():
        assert set(secret) == {"file"}, f"secret {name} must come from a file under deploy/secrets"


@pytest.mark.parametrize("name", LONG_RUNNING)
def test_compose_tpx_service_has_a_readiness_healthcheck(compose, name):
    service = compose["services"][name]
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python", "the slim image has no curl; use python's urllib"
    assert "/readyz" in test[-1]
    port = "8000" if name == "exchange" else "9000"
    assert f"127.0.0.1:{port}/readyz" in test[-1]
    assert service["restart"] in ("unless-stopped", "always", "on-failure")
    depends = service["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["rabbitmq"]["condition"] == "service_healthy"


def test_compose_migrate_is_one_shot(compose):
    migrate = compose["services"]["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_exchange_can_scale(compose):
    exchange = compose["services"]["exchange"]
    assert "container_name" not in exchange, "a fixed container_name prevents --scale exchange=N"
    for port in exchange.get("ports", []):
        if isinstance(port, dict):
            published = str(port.get("published", ""))
        else:
            parts = str(port).split(":")
            published = parts[-2] if len(parts) >= 2 else ""
        assert not published or "-" in published, f"{port!r} publishes one fixed host port; use a range or expose"


def test_compose_backing_services(compose):
    postgres = compose["services"]["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == "/run/secrets/postgres-password"
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert any(str(v).endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])

    rabbitmq = compose["services"]["rabbitmq"]
    assert rabbitmq["image"].startswith("rabbitmq:3.13-management")
    assert rabbitmq["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    mount = next(v for v in rabbitmq["volumes"] if str(v).split(":")[1] == "/etc/rabbitmq/enabled_plugins")
    plugins = (COMPOSE_FILE.parent / str(mount).split(":")[0]).read_text(encoding="utf-8")
    assert re.fullmatch(r"\[[a-z_,\s]+\]\.\s*", plugins), "enabled_plugins is an Erlang list ending with '.'"
    assert "rabbitmq_stream" in plugins, "the audit stream needs the stream plugin"


def test_compose_secret_files_are_kept_out_of_git():
    lines = (DEPLOY / "secrets" / ".gitignore").read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*" and "!README.md" in patterns
    assert (DEPLOY / "secrets" / "README.md").is_file()
    git = shutil.which("git")
    if git and (ROOT / ".git").exists():
        for secret in yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))["secrets"].values():
            path = (COMPOSE_FILE.parent / secret["file"]).resolve().relative_to(ROOT)
            ignored = subprocess.run([git, "check-ignore", "-q", "--no-index", str(path)], cwd=ROOT, check=False)
            assert ignored.returncode == 0, f"git would not ignore {path}"
        kept = subprocess.run([git, "check-ignore", "-q", "--no-index", "deploy/secrets/README.md"], cwd=ROOT,
                              check=False)
        assert kept.returncode == 1, "deploy/secrets/README.md must stay tracked"
    dockerignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    for entry in (".venv", ".git", ".bench-logs", ".tpx-demo", "deploy/secrets"):
        assert entry in dockerignore, f".dockerignore must exclude {entry}"


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile_builds_a_non_root_read_only_friendly_image():
    text = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    instructions = [line.strip() for line in re.sub(r"\\\n", " ", text).splitlines()
                    if line.strip() and not line.lstrip().startswith("#")]
    stages = [line for line in instructions if line.upper().startswith("FROM ")]
    assert len(stages) >= 2, "multi-stage: build tools stay out of the runtime image"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in instructions
    assert all("${PYTHON_IMAGE}" in stage for stage in stages)
    assert any("pip install --require-hashes --only-binary :all: -r deploy/requirements.lock" in line
               for line in instructions), "dependencies only as locked, by hash"
    assert any("pip install --no-deps --no-build-isolation ." in line for line in instructions), \
        "tpx itself resolves nothing the lock did not name"
    labels = " ".join(line for line in instructions if line.upper().startswith("LABEL "))
    for annotation in ("title", "description", "licenses", "version", "revision", "source", "created"):
        assert f"org.opencontainers.image.{annotation}=" in labels
    users = [line for line in instructions if line.upper().startswith("USER ")]
    assert users and users[-1].split()[1].split(":")[0] == str(UID)
    assert 'ENTRYPOINT ["tpx"]' in instructions, "exec form, so tpx is PID 1 and receives SIGTERM"
    env = " ".join(line for line in instructions if line.upper().startswith("ENV "))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    for line in instructions:
        if line.upper().startswith(("ARG ", "ENV ")):
            assert not re.search(r"PASS|SECRET|TOKEN|DATABASE_URL|AMQP_URL", line, re.IGNORECASE), f"no secrets in the image: {line}"


def test_the_image_lock_pins_every_dependency_and_the_build_backend_by_hash():
    import tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    text = (DEPLOY / "requirements.lock").read_text()
    assert "--index-url" not in text and "--find-links" not in text
    pinned = {}
    for block in re.split(r"\n(?=[a-z])", text):
        match = re.match(r"([a-z0-9._-]+)==(\S+)", block)
        if match:
            pinned[match[1]] = re.findall(r"--hash=sha256:[0-9a-f]{64}", block)
    wanted = [re.split(r"[<>=!~;\[ ]", requirement)[0].lower() for requirement in
              project["project"]["dependencies"] + project["build-system"]["requires"]]
    for name in wanted:
        assert pinned.get(name.replace("_", "-")), f"{name} is missing from deploy/requirements.lock (regenerate it)"
    assert all(pinned.values()), "every locked package needs its hashes"


# ---------------------------------------------------------------- Kubernetes: schema


def k8s_documents() -> list[tuple[str, dict]]:
    """Every Kubernetes object in the base and overlays, patches merged onto their target."""
    found = []
    for directory in kustomization_dirs():
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
        patches = {(directory / p).resolve() for p in patch_paths(kustomization)}
        merged = build(directory) if patches else None
        for path in sorted(directory.glob("*.y*ml")):
            if path.name == "kustomization.yaml":
                continue
            for index, doc in enumerate(load_documents(path)):
                if not is_k8s_object(doc):
                    continue
                if path.resolve() in patches:
                    doc = merged.objects[object_id(doc)]
                found.append((f"{path.relative_to(K8S)}#{index}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return found


K8S_DOCUMENTS = k8s_documents()


def test_kubernetes_manifests_were_found():
    kinds = {doc["kind"] for _, doc in K8S_DOCUMENTS}
    assert kinds >= {"Deployment", "Service", "Job", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                     "ConfigMap", "Secret", "NetworkPolicy", "ServiceAccount", "Namespace"}


@pytest.mark.parametrize("label,doc", K8S_DOCUMENTS, ids=[label for label, _ in K8S_DOCUMENTS])
def test_kubernetes_object_is_valid(label, doc):
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{label}: {'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: str(p.relative_to(K8S)))
def test_kustomization_lists_only_existing_files(directory):
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    if directory == BASE:
        assert "labels" in kustomization or "commonLabels" in kustomization
    for entry in kustomization.get("resources", []):
        target = directory / entry
        assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{entry} does not exist"
    for entry in patch_paths(kustomization):
        patch = directory / entry
        assert patch.is_file(), f"patch {entry} does not exist"
        for doc in load_documents(patch):
            assert is_k8s_object(doc) and doc["metadata"].get("name"), f"{entry}: a strategic-merge patch names its target"
    build(directory)  # every patch finds its target


def test_base_lists_every_manifest_but_the_secret_template():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    present = {p.name for p in BASE.glob("*.y*ml")} - {"kustomization.yaml"}
    assert present - listed == {"secret.template.yaml"}, "a manifest file is not in kustomization.yaml"
    assert "secret.template.yaml" not in listed, "applying the template would overwrite the real Secret"


def test_overlay_image_override_matches_the_base_image():
    base_images = {c["image"].split(":")[0] for _, d in objects_of("Deployment") + objects_of("Job")
                   for c in pod_spec(d)["containers"]}
    for overlay in OVERLAYS:
        kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text(encoding="utf-8"))
        assert kustomization.get("namespace")
        names = {image["name"] for image in kustomization.get("images", [])}
        assert names and names <= base_images, f"{overlay.name}: images: {names} matches no container image"


# ---------------------------------------------------------------- Kubernetes: workloads


WORKLOADS = objects_of("Deployment") + objects_of("Job")


def _container_security(pod: dict, container: dict) -> dict:
    return {**pod.get("securityContext", {}), **container.get("securityContext", {})}


@pytest.mark.parametrize("label,workload", WORKLOADS, ids=[label for label, _ in WORKLOADS])
def test_workload_is_locked_down(label, workload):
    pod = pod_spec(workload)
    assert pod.get("automountServiceAccountToken") is False
    assert pod["serviceAccountName"] == f"tpx-{component(workload)}"
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "tpx", \
        "the default-deny NetworkPolicy selects pods by part-of"
    tmp_volumes = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    for container in pod["containers"]:
        security = _container_security(pod, container)
        assert security.get("runAsNonRoot") is True
        assert security.get("runAsUser") == UID
        assert security.get("readOnlyRootFilesystem") is True
        assert security.get("allowPrivilegeEscalation") is False
        assert security.get("capabilities", {}).get("drop") == ["ALL"]
        assert security.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"].get(kind, {})), f"{container['name']}: {kind}"
        assert any(m["mountPath"] == "/tmp" and m["name"] in tmp_volumes for m in container["volumeMounts"])
        assert container["args"] == [component(workload)], "the image's entrypoint is `tpx`; args pick the command"


@pytest.mark.parametrize("label,workload", WORKLOADS, ids=[label for label, _ in WORKLOADS])
def test_workload_reads_secrets_from_files(label, workload):
    pod = pod_spec(workload)
    secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
    for container in pod["containers"]:
        env = {e["name"]: e for e in container.get("env", [])}
        assert not set(env) & PLAIN_SECRET_VARIABLES, "secrets only as *_FILE"
        assert {n for n in env if n.endswith("_FILE")} == SECRET_FILES[component(workload)]
        mounts = {m["mountPath"]: m for m in container["volumeMounts"] if m["name"] in secret_volumes}
        for name in SECRET_FILES[component(workload)]:
            path = Path(env[name]["value"])
            mount = mounts.get(str(path.parent))
            assert mount and mount["readOnly"] is True, f"{name} points outside a read-only secret mount"
            items = {item["path"]: item["key"] for item in secret_volumes[mount["name"]]["items"]}
            assert items.get(path.name) in SECRET_KEYS
        assert any(src.get("configMapRef", {}).get("name") == "tpx-config" for src in container["envFrom"])
    for secret in secret_volumes.values():
        assert secret["secretName"] == "tpx-secrets"
        assert secret["defaultMode"] & 0o027 == 0, "secret files must not be writable or world-readable"


DEPLOYMENTS = objects_of("Deployment")


@pytest.mark.parametrize("label,deployment", DEPLOYMENTS, ids=[label for label, _ in DEPLOYMENTS])
def test_deployment_has_probes_and_metrics(label, deployment):
    template = deployment["spec"]["template"]
    pod = template["spec"]
    [container] = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) in ports.values()
    assert pod["terminationGracePeriodSeconds"] == 30
    assert pod.get("enableServiceLinks") is False
    expected_port = 8000 if component(deployment) == "exchange" else 9000
    assert expected_port in ports.values()


def test_deployment_replicas_in_the_base():
    base = build(BASE).objects
    assert "replicas" not in base["Deployment", "tpx-exchange"]["spec"], "the HPA owns the exchange's count"
    assert base["Deployment", "tpx-jwks-refresher"]["spec"]["replicas"] == 2
    assert base["Deployment", "tpx-revoker"]["spec"]["replicas"] == 2


@pytest.mark.parametrize("result", every_build(), ids=lambda b: str(b.directory.relative_to(K8S)))
def test_no_replica_count_beside_an_autoscaler_and_a_disruption_budget_for_every_deployment(result):
    objects = result.objects
    scaled = {hpa["spec"]["scaleTargetRef"]["name"] for (kind, _), hpa in objects.items()
              if kind == "HorizontalPodAutoscaler"}
    budgets = [pdb for (kind, _), pdb in objects.items() if kind == "PodDisruptionBudget"]
    for (kind, name), deployment in objects.items():
        if kind != "Deployment":
            continue
        if name in scaled:
            assert "replicas" not in deployment["spec"], f"{name}: a replica count beside its HPA fights it"
        labels = deployment["spec"]["selector"]["matchLabels"]
        covering = [pdb for pdb in budgets if pdb["spec"]["selector"]["matchLabels"] == labels]
        assert len(covering) == 1, f"{name} needs exactly one PodDisruptionBudget"
        replicas = deployment["spec"].get("replicas")
        assert replicas is None or covering[0]["spec"]["minAvailable"] < replicas, f"{name}: a drain could never proceed"


@pytest.mark.parametrize("result", every_build(), ids=lambda b: str(b.directory.relative_to(K8S)))
def test_exchange_serves_and_drains_safely(result):
    objects = result.objects
    exchange = objects["Deployment", "tpx-exchange"]
    pod = pod_spec(exchange)
    [container] = pod["containers"]
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert int(container["lifecycle"]["preStop"]["exec"]["command"][1]) + 20 < pod["terminationGracePeriodSeconds"], \
        "preStop sleep + uvicorn's 20 s graceful shutdown must fit in the grace period"
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} >= {"kubernetes.io/hostname"}
    assert exchange["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    service = objects["Service", "tpx-exchange"]
    assert service["spec"]["type"] == "ClusterIP"
    [port] = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["port"] == 80 and container_ports.get(port["targetPort"], port["targetPort"]) == 8000
    assert service["spec"]["selector"] == exchange["spec"]["selector"]["matchLabels"]

    hpa = objects["HorizontalPodAutoscaler", "tpx-exchange"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "tpx-exchange"
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["averageUtilization"] == 70
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] >= 10

    pdb = objects["PodDisruptionBudget", "tpx-exchange"]
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == exchange["spec"]["selector"]["matchLabels"]


def test_base_exchange_hpa_bounds():
    hpa = build(BASE).objects["HorizontalPodAutoscaler", "tpx-exchange"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)


@pytest.mark.parametrize("result", every_build(), ids=lambda b: str(b.directory.relative_to(K8S)))
def test_services_select_their_pods_and_service_accounts_exist(result):
    objects = result.objects
    for (kind, name), doc in objects.items():
        if kind == "Service":
            deployment = objects["Deployment", name]
            assert doc["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert doc["spec"]["selector"].items() <= labels.items()
        if kind in ("Deployment", "Job"):
            account = objects["ServiceAccount", pod_spec(doc)["serviceAccountName"]]
            assert account["automountServiceAccountToken"] is False


@pytest.mark.parametrize("result", every_build(), ids=lambda b: str(b.directory.relative_to(K8S)))
def test_migration_job(result):
    job = result.objects["Job", "tpx-migrate"]
    assert pod_spec(job)["containers"][0]["args"] == ["migrate"]
    assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
    assert 0 < job["spec"]["backoffLimit"] <= 10
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


# ---------------------------------------------------------------- Kubernetes: configuration


def _settings_from(config: dict[str, str], secret_values: dict[str, str], tmp_path: Path) -> Settings:
    environ = dict(config)
    for key, value in secret_values.items():
        path = tmp_path / key
        path.write_text(value, encoding="utf-8")
        environ[f"TPX_{key.upper().replace('-', '_')}_FILE"] = str(path)
    return Settings.from_env(environ)


def _known_variables() -> set[str]:
    names: set[str] = set()
    for folder in ("shared", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            names.update(re.findall(r"TPX_[A-Z0-9_]+", path.read_text(encoding="utf-8")))
    return names


CONFIGMAPS = objects_of("ConfigMap")


@pytest.mark.parametrize("label,configmap", CONFIGMAPS, ids=[label for label, _ in CONFIGMAPS])
def test_configmap_is_accepted_by_tpx(label, configmap, tmp_path):
    data = configmap["data"]
    assert all(isinstance(value, str) for value in data.values()), "ConfigMap values must be strings (quote them)"
    assert not set(data) & PLAIN_SECRET_VARIABLES, "secrets belong in tpx-secrets"
    unknown = set(data) - _known_variables()
    assert not unknown, f"tpx reads no variable named {sorted(unknown)}"
    settings = _settings_from(data, SAMPLE_SECRETS, tmp_path)
    assert settings.host == "0.0.0.0", "probes and Services cannot reach a loopback listener"
    assert settings.log_format == "json"
    assert settings.insecure_loopback_issuers is False


def test_compose_environment_is_accepted_by_tpx(compose, tmp_path):
    for name in LONG_RUNNING:
        environment = {k: str(v) for k, v in compose["services"][name]["environment"].items()
                       if not k.endswith("_FILE")}
        keys = {variable.removeprefix("TPX_").removesuffix("_FILE").lower().replace("_", "-")
                for variable in SECRET_FILES[name]}
        settings = _settings_from(environment, {k: SAMPLE_SECRETS[k] for k in keys}, tmp_path)
        assert settings.host == "0.0.0.0" and settings.log_format == "json"


def test_secret_template_holds_only_placeholders_tpx_refuses(tmp_path):
    [template] = load_documents(BASE / "secret.template.yaml")
    assert template["metadata"]["name"] == "tpx-secrets"
    assert "data" not in template, "use stringData placeholders, not base64 data"
    values = template["stringData"]
    assert set(values) == SECRET_KEYS
    assert all(PLACEHOLDER in value for value in values.values())
    for key in ("admin-tokens", "introspection-tokens"):
        with pytest.raises(ConfigError):
            _settings_from({}, {key: values[key]}, tmp_path)


# ---------------------------------------------------------------- Kubernetes: network policies


def _policies(result: Build) -> dict[str, dict]:
    return {name: doc for (kind, name), doc in result.objects.items() if kind == "NetworkPolicy"}


def _egress_ports(policy: dict) -> set[int]:
    return {port["port"] for rule in policy["spec"].get("egress", []) for port in rule.get("ports", [])}


def _egress_peers(policy: dict) -> list[dict]:
    return [peer for rule in policy["spec"].get("egress", []) for peer in rule.get("to", [])]


@pytest.mark.parametrize("result", every_build(), ids=lambda b: str(b.directory.relative_to(K8S)))
def test_network_policies_isolate_each_component(result):
    policies = _policies(result)
    deny = policies["tpx-default-deny"]["spec"]
    assert deny["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "tpx"}
    assert set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny

    selected = {p["spec"]["podSelector"]["matchLabels"].get("app.kubernetes.io/component") for p in policies.values()}
    workloads = {component(d) for (kind, _), d in result.objects.items() if kind in ("Deployment", "Job")}
    assert workloads <= selected, "every component needs its own allow rules on top of default-deny"

    for policy in policies.values():
        for peer in _egress_peers(policy):
            if "podSelector" in peer and "namespaceSelector" not in peer:
                assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"] in ("postgresql", "rabbitmq")
            if "namespaceSelector" in peer:
                assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "kube-system"}


@pytest.mark.parametrize("result", every_build(), ids=lambda b: str(b.directory.relative_to(K8S)))
def test_only_the_jwks_refresher_reaches_outside(result):
    policies = _policies(result)
    exchange = policies["tpx-exchange"]
    assert [rule.get("from") for rule in exchange["spec"]["ingress"]] == [None], "the exchange is public"
    assert {p["port"] for r in exchange["spec"]["ingress"] for p in r["ports"]} == {8000}
    for name in ("tpx-exchange", "tpx-revoker", "tpx-migrate"):
        peers = _egress_peers(policies[name])
        assert all("ipBlock" not in peer for peer in peers), f"{name} must not reach the internet"
        assert _egress_ports(policies[name]) <= {5432, 5672, 53}
    assert not any(peer.get("ipBlock", {}).get("cidr") == "0.0.0.0/0" for peer in _egress_peers(exchange))
    assert _egress_ports(policies["tpx-exchange"]) == {5432, 5672, 53}

    refresher = policies["tpx-jwks-refresher"]
    outside = [rule for rule in refresher["spec"]["egress"]
               if any("ipBlock" in peer for peer in rule.get("to", []))]
    [rule] = outside
    assert [p["port"] for p in rule["ports"]] == [443]
    blocks = {peer["ipBlock"]["cidr"]: set(peer["ipBlock"].get("except", [])) for peer in rule["to"]}
    assert set(PRIVATE_RANGES) <= blocks["0.0.0.0/0"]
    for cidr, excluded in blocks.items():
        network = ipaddress.ip_network(cidr)
        assert all(ipaddress.ip_network(e).subnet_of(network) for e in excluded)
    for name in ("tpx-jwks-refresher", "tpx-revoker"):
        [ingress] = policies[name]["spec"]["ingress"]
        assert ingress["ports"] == [{"protocol": "TCP", "port": 9000}]
        assert all("namespaceSelector" in peer for peer in ingress["from"]), "metrics only from monitoring"


# ---------------------------------------------------------------- no secrets anywhere


URL_CREDENTIALS = re.compile(r"[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:([^\s@'\"]+)@")
HIGH_ENTROPY = re.compile(r"(?<![A-Za-z0-9+/_.-])[A-Za-z0-9+/_-]{32,}(?![A-Za-z0-9+/_.-])")
TPX_TOKEN = re.compile(r"tpx_[0-9A-Za-z]{40}")


def scanned_files() -> list[Path]:
    files = [ROOT / ".dockerignore"]
    for path in sorted(DEPLOY.rglob("*")):
        if not path.is_file():
            continue
        # Real secret files may exist locally in deploy/secrets (git-ignored);
        # only the instructions there are part of the repository.
        if path.parent == DEPLOY / "secrets" and path.name not in ("README.md", ".gitignore"):
            continue
        files.append(path)
    return files


@pytest.mark.parametrize("path", scanned_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_real_looking_secret(path):
    text = path.read_text(encoding="utf-8")
    assert "-----BEGIN" not in text, "a PEM block (private key?)"
    assert not TPX_TOKEN.search(text), "a tpx token"
    for match in URL_CREDENTIALS.finditer(text):
        password = match.group(1)
        assert password == PLACEHOLDER or password[0] in "<%$" or password.startswith("sample-"), \
            f"credentials in a URL: {match.group(0)}"
    for match in HIGH_ENTROPY.finditer(text):
        word = match.group(0)
        if re.search(r"[0-9]", word) and re.search(r"[a-z]", word) and re.search(r"[A-Z]", word):
            pytest.fail(f"{word[:8]}... looks like a random secret")
    if path.suffix in (".yaml", ".yml"):
        for doc in load_documents(path):
            if is_k8s_object(doc) and doc["kind"] == "Secret":
                assert all(PLACEHOLDER in str(v) for v in {**doc.get("data", {}), **doc.get("stringData", {})}.values())


# ---------------------------------------------------------------- optional: the real kustomize


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=lambda p: str(p.relative_to(K8S)))
def test_kustomize_build_is_valid(directory):
    """When kubectl is installed, build with its kustomize (offline) and validate
    the actual output; the checks above do not depend on it."""
    kubectl = shutil.which("kubectl")
    if not kubectl:
        pytest.skip("kubectl is not installed")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    expected = build(directory).objects
    assert {object_id(doc) for doc in docs} == set(expected)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if directory != BASE and doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == yaml.safe_load(
                (directory / "kustomization.yaml").read_text(encoding="utf-8"))["namespace"]


@pytest.mark.parametrize("result", every_build(), ids=lambda b: str(b.directory.relative_to(K8S)))
def test_argo_cd_applies_what_the_migration_needs_before_it_and_the_services_after(result):
    """A first install works: a PreSync hook ran before the Namespace, ServiceAccount and ConfigMap existed."""
    def wave(obj: dict) -> int:
        annotations = obj["metadata"].get("annotations") or {}
        assert "argocd.argoproj.io/sync-wave" in annotations, f"{obj['kind']}/{obj['metadata']['name']} has no wave"
        return int(annotations["argocd.argoproj.io/sync-wave"])

    objects = result.objects
    job = objects["Job", "tpx-migrate"]
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "Sync"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
    migrate = wave(job)
    pod = pod_spec(job)
    needs = [("ServiceAccount", pod["serviceAccountName"])]
    needs += [("ConfigMap", ref["configMapRef"]["name"]) for c in pod["containers"] for ref in c.get("envFrom", [])
              if "configMapRef" in ref]
    needs += [key for key in objects if key[0] in ("Namespace", "NetworkPolicy")]
    for key in needs:
        if key in objects:
            assert wave(objects[key]) < migrate, f"{key} must exist before the migration runs"
    for key, obj in objects.items():
        if key[0] in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            assert wave(obj) > migrate, f"{key} must wait for the migration"

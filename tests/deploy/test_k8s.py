"""deploy/k8s stays valid Kubernetes and consistent with the code, checked offline.

Every manifest is validated against the Kubernetes API's JSON schemas (the strict ones: an
unknown or misspelt field fails) by ``kubernetes-validate``, which ships them, so no cluster and
no network is needed. The kustomization is built with ``kubectl kustomize`` where kubectl is
installed (it needs no cluster either) and every object it produces is validated the same way.
On top of the schemas, the project's rules: probes on the paths and ports the services serve,
resources, a locked-down security context, replicas and disruption budgets, every variable one
the platform reads (and that each service's own settings loader accepts), no credential in the
repository, and a NATS configuration that nats-server accepts with the platform's users.
"""

from __future__ import annotations

import asyncio
import importlib.util
import re
import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from nexus.bus.embedded import IDENTITIES, find_nats_server, render_authorization
from nexus.config import PlatformSettings
from nexus.runtime import DEFAULT_PORTS, RELAY_PORT, ServiceSettings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"

KUBERNETES_VERSIONS = ("1.31", "1.37")
"""The oldest Kubernetes the manifests are meant for (the preStop ``sleep`` action is on by
default from 1.30) and the newest whose schemas the validator ships."""

SERVICES: Mapping[str, tuple[str, int]] = {
    **{name: (f"nexus.services.{name}", port) for name, port in DEFAULT_PORTS.items()},
    "relay": ("nexus.relay", RELAY_PORT),
}
"""Each Deployment: the module it runs and the port that module listens on by default."""

MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in _documents(path)]


def _find(kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in _objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def _kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return loaded


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _secret_refs(container: dict[str, Any]) -> dict[str, str]:
    """Variable → the key of nexus-secrets it comes from."""
    return {
        e["name"]: e["valueFrom"]["secretKeyRef"]["key"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }


def _validate(obj: dict[str, Any], version: str) -> None:
    kubernetes_validate.validate(obj, version, strict=True)


# -- the schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: str(p.relative_to(K8S)))
def test_every_manifest_validates_against_the_kubernetes_schemas(manifest: Path, version: str) -> None:
    documents = _documents(manifest)
    assert documents, f"{manifest.name} holds no object"
    for obj in documents:
        try:
            _validate(obj, version)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{manifest.name}: {obj['kind']}/{obj['metadata']['name']} at {where}: {exc.message}")


def test_the_validator_refuses_what_the_api_server_would() -> None:
    # The check above is only worth something if the validator fails on a broken manifest: a
    # misspelt field (strict schemas) and a value of the wrong type.
    deployment = _find("Deployment", "workflow")
    _validate(deployment, KUBERNETES_VERSIONS[-1])
    misspelt = yaml.safe_load(yaml.safe_dump(deployment))
    container = _container(misspelt)
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(misspelt, KUBERNETES_VERSIONS[-1])
    wrong_type = yaml.safe_load(yaml.safe_dump(deployment))
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(wrong_type, KUBERNETES_VERSIONS[-1])


# -- the kustomization ---------------------------------------------------------------------------


def test_the_kustomization_ties_every_manifest_and_generates_the_rest() -> None:
    kustomization = _kustomization()
    listed = {K8S / r for r in kustomization["resources"]}
    assert listed == set(MANIFESTS), "kustomization.yaml must list every manifest, and only those"
    assert kustomization["namespace"] == _find("Namespace", "nexus")["metadata"]["name"]
    generated = {g["name"]: g for g in kustomization["configMapGenerator"]}
    assert generated["nats-config"]["files"] == ["nats.conf=nats/nats.conf"]
    assert generated["nexus-require-env"]["files"] == ["require-env.sh"]
    (secret,) = kustomization["secretGenerator"]
    assert secret["name"] == "nexus-secrets" and secret["envs"] == ["nexus-secrets.env"]
    # The file that holds the credentials is never committed.
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", "-q", "deploy/k8s/nexus-secrets.env"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "deploy/k8s/nexus-secrets.env must be listed in .gitignore"


def _example_keys() -> list[str]:
    keys = []
    for line in (K8S / "nexus-secrets.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, value = line.split("=", 1)
            assert value == "", f"{key} has a value in the example: no credential has a default"
            keys.append(key)
    return keys


def _password_recipe() -> str:
    """The Python expression the example gives for a password."""
    text = (K8S / "nexus-secrets.env.example").read_text()
    (recipe,) = re.findall(r"python3 -c \"import secrets; print\((.+)\)\"", text)
    return recipe


def _test_secrets() -> dict[str, str]:
    """A value for each key of the example, made as the example says (test-only)."""
    values = {}
    for key in _example_keys():
        password = str(eval(_password_recipe(), {"secrets": secrets}))  # the example's own recipe
        if key.endswith("_URL"):
            values[key] = f"postgresql://nexus:{password}@db.test:5432/nexus"
        else:
            values[key] = password
    return values


def test_every_credential_a_pod_uses_is_in_the_example_and_every_example_key_is_used() -> None:
    used: set[str] = set()
    for obj in _objects():
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for container in obj["spec"]["template"]["spec"]["containers"]:
                used |= set(_secret_refs(container).values())
    assert used == set(_example_keys())
    assert {f"NEXUS_NATS_{identity.upper()}_PASSWORD" for identity in IDENTITIES} <= used


@pytest.fixture(scope="module")
def built() -> list[dict[str, Any]]:
    """``kubectl kustomize`` of a copy of deploy/k8s with test credentials."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomization build is not checked here")
    return _build(kubectl)


def _build(kubectl: str) -> list[dict[str, Any]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "k8s"
        shutil.copytree(K8S, copy)
        (copy / "nexus-secrets.env").write_text("".join(f"{k}={v}\n" for k, v in _test_secrets().items()))
        result = subprocess.run(
            [kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 0, result.stderr
        # Without the credentials file the build fails: nothing is deployed with a default.
        (copy / "nexus-secrets.env").unlink()
        missing = subprocess.run(
            [kubectl, "kustomize", str(copy)], capture_output=True, text=True, timeout=120, check=False
        )
        assert missing.returncode != 0 and "nexus-secrets.env" in missing.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def test_the_kustomization_builds_and_every_object_it_makes_validates(built: list[dict[str, Any]]) -> None:
    # Everything listed, plus the generated Secret and the two generated ConfigMaps.
    assert len(built) == len(_objects()) + 3
    for obj in built:
        _validate(obj, KUBERNETES_VERSIONS[-1])
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "nexus", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "nexus"
    # The generated names carry a hash of their content, and every reference follows it, so a
    # changed credential or configuration rolls the pods that use it.
    names: dict[str, set[str]] = {}
    for obj in built:
        names.setdefault(obj["kind"], set()).add(obj["metadata"]["name"])
    (secret_name,) = names["Secret"]
    assert re.fullmatch(r"nexus-secrets-[a-z0-9]{10}", secret_name)
    for obj in built:
        if obj["kind"] in ("Deployment", "StatefulSet"):
            spec = obj["spec"]["template"]["spec"]
            for container in spec["containers"]:
                for e in container.get("env", []):
                    if "secretKeyRef" in e.get("valueFrom", {}):
                        assert e["valueFrom"]["secretKeyRef"]["name"] == secret_name
            for volume in spec["volumes"]:
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in names["ConfigMap"]
            assert all(c["image"] == "nexus:0.1.0" for c in spec["containers"] if c["name"] != "nats")


# -- the services --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SERVICES))
def test_every_service_deployment_follows_the_platform_rules(name: str) -> None:
    module, port = SERVICES[name]
    deployment = _find("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    # It runs the service's module, which exists and can be run with python -m.
    assert container["args"] == ["python", "-m", module]
    assert importlib.util.find_spec(f"{module}.__main__") is not None
    # Several replicas (every service shares its work through the log and JetStream).
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    # Probes: readiness on /readyz, liveness on /healthz, both on the port the service listens on.
    (http,) = container["ports"]
    assert http == {"name": "http", "containerPort": port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # Resources: requests and limits of both.
    for bound in ("requests", "limits"):
        assert set(container["resources"][bound]) == {"cpu", "memory"}, bound
    # Locked down: not root (by number, which the kubelet can check), no privilege escalation, no
    # capability, a read-only root filesystem (the writable places are emptyDir volumes).
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume or mount.get("readOnly") is True, mount
    # Its Service forwards its port; a disruption budget keeps one replica serving.
    service = _find("Service", name)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "http", "port": port, "targetPort": "http"}]
    budget = _find("PodDisruptionBudget", name)
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    # Its own NATS identity, with that identity's password.
    env = {e["name"]: e for e in container["env"]}
    assert env["NEXUS_NATS_USER"]["value"] == name
    assert _secret_refs(container)["NEXUS_NATS_PASSWORD"] == f"NEXUS_NATS_{name.upper()}_PASSWORD"


@pytest.mark.parametrize("workload", ["Deployment", "StatefulSet"])
def test_every_container_refuses_to_start_with_an_empty_credential(workload: str) -> None:
    # The command runs require-env.sh over exactly the variables that come from the Secret.
    for obj in _objects():
        if obj["kind"] != workload:
            continue
        container = _container(obj)
        command = container["command"]
        assert command[:2] == ["sh", "/etc/nexus/require-env.sh"] and command[-1] == "--"
        assert set(command[2:-1]) == set(_secret_refs(container)), obj["metadata"]["name"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/nexus"]
        (volume,) = [v for v in obj["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
        assert volume["configMap"]["name"] == "nexus-require-env"


def test_require_env_stops_on_an_empty_or_missing_variable_and_runs_the_command_otherwise(tmp_path: Path) -> None:
    script = K8S / "require-env.sh"
    sh = shutil.which("sh")
    assert sh is not None
    marker = tmp_path / "ran"
    command = [sh, str(script), "NEXUS_A", "NEXUS_B", "--", "touch", str(marker)]

    def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            command, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True, check=False
        )

    missing = run({"NEXUS_A": "x"})
    assert missing.returncode == 64 and "NEXUS_B is empty" in missing.stderr and not marker.exists()
    empty = run({"NEXUS_A": "", "NEXUS_B": "y"})
    assert empty.returncode == 64 and "NEXUS_A is empty" in empty.stderr and not marker.exists()
    ok = run({"NEXUS_A": "x", "NEXUS_B": "y"})
    assert ok.returncode == 0, ok.stderr
    assert marker.exists()
    # A name that is not a variable is refused rather than evaluated.
    hostile = subprocess.run(
        [sh, str(script), "A;touch " + str(tmp_path / "evil"), "--", "true"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert hostile.returncode == 64 and not (tmp_path / "evil").exists()


# -- variables -----------------------------------------------------------------------------------


def _platform_sources() -> str:
    return "\n".join(
        path.read_text() for folder in ("libs", "services") for path in sorted((ROOT / folder).rglob("*.py"))
    )


def _read_by_the_platform(name: str, sources: str) -> bool:
    """The code names it, or ``service_urls`` builds it: ``NEXUS_<SERVICE>_URL`` from a platform
    service's name, ``NEXUS_SERVICE_<NAME>`` by its prefix (test_manifest_env_loads_with_each_services_settings
    shows both are read as meant)."""
    if re.search(rf"\b{name}\b", sources):
        return True
    if name.startswith("NEXUS_SERVICE_") and '"NEXUS_SERVICE_"' in sources:
        return True
    return name in {f"NEXUS_{service.upper()}_URL" for service in DEFAULT_PORTS}


def test_every_variable_the_manifests_set_is_one_the_platform_reads() -> None:
    sources = _platform_sources()
    config = _find("ConfigMap", "nexus-config")["data"]
    names = set(config)
    for name in SERVICES:
        names |= {e["name"] for e in _container(_find("Deployment", name))["env"]}
    unread = sorted(n for n in names if not _read_by_the_platform(n, sources))
    assert not unread, f"set in deploy/k8s but read nowhere in libs/ or services/: {unread}"
    # NATS's own variables (each identity's password, the pod's name) are the ones its
    # configuration refers to.
    conf = (K8S / "nats" / "nats.conf").read_text()
    for e in _container(_find("StatefulSet", "nats"))["env"]:
        assert f"${e['name']}" in conf, e["name"]


def _pod_env(name: str, secret_values: Mapping[str, str]) -> dict[str, str]:
    """The environment Kubernetes gives the Deployment's container."""
    container = _container(_find("Deployment", name))
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        env |= _find("ConfigMap", source["configMapRef"]["name"])["data"]
    for e in container["env"]:
        if "value" in e:
            env[e["name"]] = e["value"]
        elif "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = secret_values[e["valueFrom"]["secretKeyRef"]["key"]]
        else:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[e["name"]] = f"{name}-7d9f8b6c5-x2x4z"
    return env


def _loaders() -> dict[str, Callable[[Mapping[str, str]], ServiceSettings]]:
    from nexus.services.granulator.settings import load_settings as granulator
    from nexus.services.kam.settings import load_settings as kam
    from nexus.services.studio.settings import load_settings as studio
    from nexus.services.workflow.settings import load_settings as workflow

    return {
        "kam": kam,
        "workflow": workflow,
        "granulator": granulator,
        "studio": studio,
        "relay": lambda env: ServiceSettings.from_env("relay", env),
    }


@pytest.mark.parametrize("name", list(SERVICES))
def test_manifest_env_loads_with_each_services_settings(name: str) -> None:
    # The service's own settings loader accepts what the manifests give it, and reads it as meant.
    values = _test_secrets()
    env = _pod_env(name, values)
    settings = _loaders()[name](env)
    assert settings.port == SERVICES[name][1]
    platform: PlatformSettings = settings.platform
    assert platform.host == "0.0.0.0"
    assert platform.nats_url == _find("ConfigMap", "nexus-config")["data"]["NEXUS_NATS_URL"]
    assert platform.nats_user == name and platform.nats_password == values[f"NEXUS_NATS_{name.upper()}_PASSWORD"]
    assert platform.event_log_url == values["NEXUS_EVENT_LOG_URL"]
    assert platform.raw_url == values["NEXUS_RAW_URL"]
    services = {s: f"http://{s}:{port}" for s, port in DEFAULT_PORTS.items()}
    if name == "workflow":
        # api_call steps reach every platform service at its Kubernetes Service, and still count
        # it as a platform service (a delegated token goes with the call).
        assert {k: v for k, v in settings.services.items() if k in services} == services  # type: ignore[attr-defined]
        assert settings.services["core"] == services["granulator"]  # type: ignore[attr-defined]
        assert {*services, "core"} <= settings.platform_services  # type: ignore[attr-defined]
        assert settings.upload_signing_key == values["NEXUS_UPLOAD_SIGNING_KEY"]  # type: ignore[attr-defined]
        assert settings.replica_id == env["NEXUS_WORKFLOW_REPLICA_ID"]  # type: ignore[attr-defined]
    if name == "kam":
        # The console's gateway and status page reach the services and the relay.
        assert settings.services == {**services, "core": services["granulator"], "relay": "http://relay:8085"}  # type: ignore[attr-defined]
        assert settings.admin_password == values["NEXUS_ADMIN_PASSWORD"]  # type: ignore[attr-defined]
    if name == "granulator":
        assert settings.replica_id == env["NEXUS_GRANULATOR_REPLICA_ID"]  # type: ignore[attr-defined]


def test_a_platform_service_url_is_checked_and_unset_means_this_host() -> None:
    from nexus.config import ConfigError
    from nexus.runtime import service_urls

    # Unset (one machine): this host at the service's port, as before.
    assert service_urls({"NEXUS_GRANULATOR_PORT": "9083"})["granulator"] == "http://127.0.0.1:9083"
    # Set: that URL, without its trailing slash, for the service and for `core`.
    urls = service_urls({"NEXUS_GRANULATOR_URL": "https://granulator.nexus.svc:8083/"})
    assert urls["granulator"] == urls["core"] == "https://granulator.nexus.svc:8083"
    # Anything but an http(s) base URL is refused, naming the variable.
    with pytest.raises(ConfigError, match="NEXUS_STUDIO_URL"):
        service_urls({"NEXUS_STUDIO_URL": "studio:8084"})


def test_the_platform_urls_name_the_services_the_manifests_define() -> None:
    config = _find("ConfigMap", "nexus-config")["data"]
    for name, port in DEFAULT_PORTS.items():
        assert config[f"NEXUS_{name.upper()}_URL"] == f"http://{name}:{port}"
        assert _find("Service", name)["spec"]["ports"][0]["port"] == port
    # The NATS URLs are the StatefulSet's pods under its headless Service.
    nats = _find("StatefulSet", "nats")
    pods = [f"nats://{nats['metadata']['name']}-{i}.{nats['spec']['serviceName']}:4222" for i in range(3)]
    assert config["NEXUS_NATS_URL"].split(",") == pods
    assert config["NEXUS_NATS_REPLICAS"] == str(nats["spec"]["replicas"])


# -- no credential in the repository -------------------------------------------------------------

CREDENTIAL = re.compile(r"PASSWORD|_KEY$|^NEXUS_EVENT_LOG_URL$|^NEXUS_RAW_URL$")


def test_no_credential_is_committed() -> None:
    # No Secret object is committed (the kustomization generates it from an uncommitted file).
    assert not [o for o in _objects() if o["kind"] == "Secret"]
    _example_keys()  # every value empty
    # Every credential a container gets comes from the Secret, never from a literal value or the
    # ConfigMap; and nothing in the ConfigMap looks like one.
    for obj in _objects():
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for e in _container(obj).get("env", []):
                if CREDENTIAL.search(e["name"]):
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{obj['metadata']['name']}: {e['name']}"
    config = _find("ConfigMap", "nexus-config")["data"]
    assert not [k for k in config if CREDENTIAL.search(k)]
    assert not [v for v in config.values() if "@" in v], "a URL with credentials in the ConfigMap"
    # No literal password in the NATS configuration, only references to the environment.
    settings = "\n".join(line.split("#", 1)[0] for line in (K8S / "nats" / "nats.conf").read_text().splitlines())
    assert not re.search(r"password:\s*[\"'\w]", settings.replace("password: $", ""))


# -- NATS ----------------------------------------------------------------------------------------


def _nats_env(pod: str = "nats-0") -> dict[str, str]:
    """The environment Kubernetes gives a NATS pod (test credentials; ``$(VAR)`` expanded from the
    variables defined before it, as the kubelet does)."""
    values = _test_secrets()
    env: dict[str, str] = {}
    for e in _container(_find("StatefulSet", "nats"))["env"]:
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), e["value"])
        elif "secretKeyRef" in e["valueFrom"]:
            env[e["name"]] = values[e["valueFrom"]["secretKeyRef"]["key"]]
        else:
            assert e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
            env[e["name"]] = pod
    return env


def test_the_nats_configuration_has_the_platform_users_and_nats_server_accepts_it() -> None:
    conf = K8S / "nats" / "nats.conf"
    text = conf.read_text()
    # The same users and subjects as the embedded server and deploy/nats/, from the same table.
    variables = {name: f"$NEXUS_NATS_{name.upper()}_PASSWORD" for name in IDENTITIES}
    assert render_authorization(variables) in text
    settings = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    # One client authorization block (the cluster's own, for the routes, is indented inside it).
    assert settings.count("\nauthorization {") == 1 and "no_auth_user" not in settings
    assert re.search(
        r"cluster \{[^}]*authorization \{\s*user: route\s*password: \$NEXUS_NATS_ROUTE_PASSWORD\s*\}", settings
    )
    # nats-server accepts it with the environment the StatefulSet gives each pod.
    server = str(find_nats_server())
    env = {"PATH": "/usr/bin:/bin", **_nats_env()}
    result = subprocess.run([server, "-c", str(conf), "-t"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    # The node's name comes from the pod: without POD_NAME the file does not load.
    del env["POD_NAME"]
    result = subprocess.run([server, "-c", str(conf), "-t"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "POD_NAME" in result.stdout + result.stderr


def test_passwords_made_as_the_example_says_are_ones_nats_server_accepts() -> None:
    # nats-server reads a variable's value as a configuration value: a random password such as
    # "2024-x…" or "-x…" is taken for a date or a number and the server refuses to start (about
    # one deployment in ten with token_urlsafe's). The example's recipe makes hexadecimal ones; a
    # few rounds of it all pass, and the failure it avoids is real.
    conf = str(K8S / "nats" / "nats.conf")
    server = str(find_nats_server())
    for _ in range(5):
        env = {"PATH": "/usr/bin:/bin", **_nats_env()}
        result = subprocess.run([server, "-c", conf, "-t"], env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
    env["NEXUS_NATS_KAM_PASSWORD"] = "2024-x" + secrets.token_urlsafe(16)
    result = subprocess.run([server, "-c", conf, "-t"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "NEXUS_NATS_KAM_PASSWORD" in result.stdout + result.stderr


def test_the_nats_statefulset_is_a_three_node_cluster_that_loses_one_node_at_a_time() -> None:
    nats = _find("StatefulSet", "nats")
    spec = nats["spec"]
    assert spec["replicas"] == 3
    headless = _find("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    # The routes are exactly the StatefulSet's pods under the headless Service, each dialled with
    # the routes' password (no password is written in the manifest: Kubernetes expands it).
    conf = (K8S / "nats" / "nats.conf").read_text()
    routes = re.findall(r"^\s+\$(NEXUS_NATS_ROUTE_\d)$", conf, re.MULTILINE)
    assert routes == [f"NEXUS_NATS_ROUTE_{i}" for i in range(3)]
    container = _container(nats)
    env = {e["name"]: e for e in container["env"]}
    for i, route in enumerate(routes):
        host = f"{nats['metadata']['name']}-{i}.{spec['serviceName']}"
        assert env[route]["value"] == f"nats-route://route:$(NEXUS_NATS_ROUTE_PASSWORD)@{host}:6222"
    expanded = _nats_env()
    assert expanded["NEXUS_NATS_ROUTE_1"].startswith(f"nats-route://route:{expanded['NEXUS_NATS_ROUTE_PASSWORD']}@")
    assert "server_name: $POD_NAME" in conf and "store_dir: /data/jetstream" in conf
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] == spec["volumeClaimTemplates"][0]["metadata"]["name"]
    assert mounts["/var/run/nats"] in {v["name"] for v in spec["template"]["spec"]["volumes"] if "emptyDir" in v}
    assert "pid_file: /var/run/nats/nats.pid" in conf
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["nats-server", "-sl=ldm=/var/run/nats/nats.pid"]
    # Each identity's password and the routes', from the Secret; probes on the monitoring port.
    passwords = {f"NEXUS_NATS_{identity.upper()}_PASSWORD" for identity in IDENTITIES} | {"NEXUS_NATS_ROUTE_PASSWORD"}
    assert _secret_refs(container) == {name: name for name in passwords}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"client": 4222, "cluster": 6222, "monitor": 8222}
    assert "listen: 0.0.0.0:4222" in conf and "http: 0.0.0.0:8222" in conf and "listen: 0.0.0.0:6222" in conf
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] == "monitor"
        assert container[probe]["httpGet"]["path"].startswith("/healthz")
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    # A quorum of two keeps JetStream writing: one node may be disrupted at a time.
    budget = _find("PodDisruptionBudget", "nats")
    assert budget["spec"] == {"maxUnavailable": 1, "selector": spec["selector"]}


# -- the NATS configuration, running ---------------------------------------------------------------


class _Node:
    """One nats-server on loopback from deploy/k8s/nats/nats.conf, as a pod would run it.

    The file is used as it is, except where a pod has a machine of its own: its two absolute
    paths (the JetStream store and the pid file, which the StatefulSet mounts) move under a
    temporary directory, and its three listen addresses to free loopback ports. (Not with
    nats-server's --cluster flag: it would replace the routes' authorization as well.) The
    environment is the one the StatefulSet gives the pod, with the route URLs on loopback.
    """

    def __init__(self, directory: Path, pod: str, env: dict[str, str], ports: dict[str, int]) -> None:
        directory.mkdir(parents=True)
        self.pid_file = directory / "nats.pid"
        self.log = directory / "nats.log"
        conf = (K8S / "nats" / "nats.conf").read_text()
        for old, new in (
            ("/data/jetstream", str(directory / "jetstream")),
            ("/var/run/nats/nats.pid", str(self.pid_file)),
            ("listen: 0.0.0.0:4222", f"listen: 127.0.0.1:{ports['client']}"),
            ("http: 0.0.0.0:8222", f"http: 127.0.0.1:{ports['monitor']}"),
            ("listen: 0.0.0.0:6222", f"listen: 127.0.0.1:{ports['cluster']}"),
        ):
            assert conf.count(old) == 1, old
            conf = conf.replace(old, new)
        (directory / "nats.conf").write_text(conf)
        self.monitor = ports["monitor"]
        command = [str(find_nats_server()), "-c", str(directory / "nats.conf")]
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, env={**env, "POD_NAME": pod}, stdout=log, stderr=log)

    def get(self, path: str) -> Any:
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}{path}", timeout=5) as response:
            return json.loads(response.read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _wait(what: str, check: Callable[[], bool], seconds: float = 30.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, KeyError):
            pass  # not listening yet, or not yet reporting that part
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.nats
@pytest.mark.slow
def test_the_nats_configuration_runs_as_a_jetstream_cluster_with_authenticated_routes(tmp_path: Path) -> None:
    from processes import free_port

    from nexus.bus.jetstream import JetStreamBus

    ports = [{"client": free_port(), "cluster": free_port(), "monitor": free_port()} for _ in range(3)]
    env = {"PATH": "/usr/bin:/bin", **_nats_env()}
    secret = env["NEXUS_NATS_ROUTE_PASSWORD"]
    for i, node_ports in enumerate(ports):
        env[f"NEXUS_NATS_ROUTE_{i}"] = f"nats-route://route:{secret}@127.0.0.1:{node_ports['cluster']}"
    nodes: list[_Node] = []
    try:
        for i in range(3):
            nodes.append(_Node(tmp_path / f"nats-{i}", f"nats-{i}", env, ports[i]))
        # The three form one cluster with a JetStream meta group of three (the readiness probe's
        # endpoint answers on each).
        for node in nodes:
            _wait("the JetStream cluster", lambda node=node: node.get("/jsz")["meta_cluster"]["cluster_size"] == 3)
            _wait("readiness", lambda node=node: node.get("/healthz?js-server-only=true")["status"] == "ok")
            _wait("a JetStream leader", lambda node=node: bool(node.get("/jsz")["meta_cluster"].get("leader")))
        _wait(
            "every route", lambda: {r["remote_name"] for r in nodes[0].get("/routez")["routes"]} == {"nats-1", "nats-2"}
        )
        # A service connects as its identity to the three (NEXUS_NATS_URL) and creates the
        # platform's streams with three copies (NEXUS_NATS_REPLICAS).
        urls = ",".join(f"nats://127.0.0.1:{p['client']}" for p in ports)
        password = env["NEXUS_NATS_WORKFLOW_PASSWORD"]

        async def connect() -> None:
            bus = await JetStreamBus.connect(
                urls, name="k8s-test", user="workflow", password=password, replicas=3, reconnect=False
            )
            await bus.close()

        asyncio.run(connect())

        def streams() -> list[dict[str, Any]]:
            details: list[dict[str, Any]] = nodes[1].get("/jsz?streams=true&config=true")["account_details"][0][
                "stream_detail"
            ]
            return details

        assert streams() and all(s["config"]["num_replicas"] == 3 for s in streams())
        # Each stream has a leader and two followers, one per node.
        _wait("every stream's followers", lambda: all(len(s["cluster"].get("replicas", [])) == 2 for s in streams()))
        # A server that dials a route with the wrong password, or none, does not join.
        intruder_env = dict(env)
        first = ports[0]["cluster"]
        # (A route URL without credentials is dialled with the server's own cluster password.)
        intruder_env |= {
            "NEXUS_NATS_ROUTE_PASSWORD": "wrong",
            "NEXUS_NATS_ROUTE_0": f"nats-route://route:wrong@127.0.0.1:{first}",
            "NEXUS_NATS_ROUTE_1": f"nats-route://127.0.0.1:{first}",
            "NEXUS_NATS_ROUTE_2": f"nats-route://127.0.0.1:{ports[1]['cluster']}",
        }
        intruder_ports = {"client": free_port(), "cluster": free_port(), "monitor": free_port()}
        intruder = _Node(tmp_path / "intruder", "intruder", intruder_env, intruder_ports)
        nodes.append(intruder)
        _wait(
            "the refused route", lambda: "Router connection closed: Authentication Failure" in nodes[0].log.read_text()
        )
        assert "intruder" not in {r["remote_name"] for r in nodes[0].get("/routez")["routes"]}
        assert intruder.get("/routez")["num_routes"] == 0
        assert nodes[0].get("/jsz")["meta_cluster"]["cluster_size"] == 3
        # The preStop hook's command puts a node in lame-duck mode (through the pid file).
        hook = _container(_find("StatefulSet", "nats"))["lifecycle"]["preStop"]["exec"]["command"]
        hook = [
            str(find_nats_server()),
            *(arg.replace("/var/run/nats/nats.pid", str(nodes[2].pid_file)) for arg in hook[1:]),
        ]
        subprocess.run(hook, check=True, capture_output=True, timeout=10)
        _wait("lame-duck mode", lambda: "lame duck mode" in nodes[2].log.read_text().lower())
    finally:
        for node in nodes:
            node.stop()

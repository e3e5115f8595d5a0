"""deploy/kubernetes/, checked offline (no cluster here): each kustomization renders, every object
is valid for a pinned Kubernetes version (kubernetes-validate's bundled schemas), and the
manifests say what the tested compose files and images say: the same PROCFLEET_* options, port,
health check, user, stop grace and image version."""

import base64
import json
import re
import secrets
import shutil
import subprocess
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from procfleet.master.settings import MASTER_OPTIONS
from procfleet.shared.settings import ENV_AUTHKEY_FILE
from procfleet.worker.settings import WORKER_OPTIONS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
#: the Kubernetes version the manifests are checked against (a current managed-cluster release)
KUBERNETES_VERSION = "1.32.0"
#: the kustomizations: the default (service mode) and the batch overlay
MODES = {"serve": ".", "batch": "batch"}
VERSION = tomllib.loads((ROOT / "master" / "pyproject.toml").read_text())["project"]["version"]


def kustomize_python(directory: Path) -> list[dict]:
    """What `kubectl kustomize` makes of the subset of kustomize these files use (resources,
    secretGenerator from files, labels, images), for machines without kubectl; the Secret's
    name has no hash suffix."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs = []
    for resource in spec.get("resources", []):
        path = directory / resource
        if path.is_dir():
            docs += kustomize_python(path)
        else:
            docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    for gen in spec.get("secretGenerator", []):
        data = {}
        for entry in gen["files"]:
            key, _, name = entry.rpartition("=")
            data[key or Path(name).name] = base64.b64encode((directory / name).read_bytes()).decode()
        docs.insert(0, {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                        "metadata": {"name": gen["name"]}, "data": data})
    for label in spec.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeTemplates") and pod_spec(doc):
                doc["spec"]["template"]["metadata"].setdefault("labels", {}).update(label["pairs"])
    images = {i["name"]: f"{i.get('newName', i['name'])}:{i['newTag']}" for i in spec.get("images", [])}
    for doc in docs:
        for container in pod_spec(doc).get("containers", []) if pod_spec(doc) else []:
            container["image"] = images.get(container["image"], container["image"])
    return docs


def kustomize_kubectl(directory: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def pod_spec(doc: dict) -> dict | None:
    if doc["kind"] in ("Deployment", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


@pytest.fixture(scope="module")
def deploy_copy(tmp_path_factory):
    """deploy/kubernetes/ copied, with a fresh key in base/authkey as the README says to write
    it (the real one is the user's, git-ignored)."""
    copy = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("authkey"))
    key = secrets.token_urlsafe(32)
    (copy / "base" / "authkey").write_text(key + "\n")
    return copy, key


@pytest.fixture(scope="module", params=["python", "kubectl"])
def renderer(request):
    if request.param == "kubectl":
        if not shutil.which("kubectl"):
            pytest.skip("kubectl is not installed (the Python renderer still runs)")
        return kustomize_kubectl
    return kustomize_python


@pytest.fixture(scope="module", params=sorted(MODES))
def rendered(request, deploy_copy, renderer):
    copy, key = deploy_copy
    docs = renderer(copy / MODES[request.param])
    return request.param, docs, key


def one(docs, kind: str, name: str) -> dict:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def workload(docs, name: str) -> dict:
    [doc] = [d for d in docs if d["kind"] in ("Deployment", "Job") and d["metadata"]["name"] == name]
    return doc


def container(docs, name: str) -> dict:
    [c] = pod_spec(workload(docs, name))["containers"]
    return c


def env(c: dict) -> dict:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def compose(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def dockerfile_stage(stage: str) -> str:
    text = (ROOT / "Dockerfile").read_text()
    return re.split(r"^FROM ", text, flags=re.M)[{"base": 1, "master": 2, "worker": 3}[stage]]


def same_value(value: str, default) -> bool:
    if default is None:
        return False
    try:
        return float(value) == float(default)
    except (TypeError, ValueError):
        return str(value) == str(default)


def test_rendered_objects_are_valid_for_the_pinned_kubernetes(rendered):
    mode, docs, _ = rendered
    kinds = sorted(d["kind"] for d in docs)
    expected = {"serve": ["Deployment", "Deployment", "Secret", "Service"],
                "batch": ["Job", "Job", "Secret", "Service"]}[mode]
    assert kinds == expected
    for doc in docs:
        # strict: an unknown field (a typo) is an error too
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_caught():
    """The validator does reject what a cluster would."""
    doc = yaml.safe_load((DEPLOY / "workers.yaml").read_text())
    doc["spec"]["replicas"] = "four"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    doc = yaml.safe_load((DEPLOY / "workers.yaml").read_text())
    pod_spec(doc)["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_key_is_a_mounted_secret_file(rendered):
    _, docs, key = rendered
    [secret] = [d for d in docs if d["kind"] == "Secret"]
    assert base64.b64decode(secret["data"]["authkey"]).decode().strip() == key
    for name in ("procfleet-master", "procfleet-worker"):
        spec = pod_spec(workload(docs, name))
        c = container(docs, name)
        variables = env(c)
        assert "PROCFLEET_AUTHKEY" not in variables, "the key only as a file"
        path = Path(variables[ENV_AUTHKEY_FILE])
        [mount] = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == path.parent]
        assert mount.get("readOnly") is True
        [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
        assert volume["secret"]["secretName"] == secret["metadata"]["name"]
        assert path.name in secret["data"]
        # readable by the image's user through its group (fsGroup), by nobody else
        assert volume["secret"]["defaultMode"] == 0o440
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]


def test_the_key_file_is_never_committed():
    assert subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q",
                           "deploy/kubernetes/base/authkey"]).returncode == 0


def test_env_names_are_options_and_restate_no_default(rendered):
    """As docker-compose.yml: only PROCFLEET_* options of the command, none set to its default;
    and each is one the compose files set for that side (the tested path)."""
    mode, docs, _ = rendered
    services = {**compose("docker-compose.yml")["services"]}
    serve = compose("docker-compose.serve.yml")["services"]
    for name, side, options in (("procfleet-master", "master", MASTER_OPTIONS),
                                ("procfleet-worker", "worker", WORKER_OPTIONS)):
        table = {o.envvar: o for o in options}
        composed = set(services[side]["environment"]) | set(serve.get(side, {}).get("environment", {}))
        for variable, value in env(container(docs, name)).items():
            if variable == ENV_AUTHKEY_FILE:
                continue
            assert variable in table, f"{name}: {variable} is no option of procfleet {side}"
            assert variable in composed, f"{name}: {variable} is not set by the compose files"
            assert not same_value(value, table[variable].default), \
                f"{name}: {variable}={value} restates the default"


def test_master_runs_as_compose_runs_it(rendered):
    mode, docs, _ = rendered
    master = container(docs, "procfleet-master")
    if mode == "serve":
        assert master["args"] == compose("docker-compose.serve.yml")["services"]["master"]["command"]
        assert workload(docs, "procfleet-master")["kind"] == "Deployment"
        assert workload(docs, "procfleet-master")["spec"]["replicas"] == 1
    else:
        assert master["args"] == ["master"]      # the image's CMD: a batch
        job = workload(docs, "procfleet-master")
        assert job["kind"] == "Job" and job["spec"]["backoffLimit"] == 0
        # the demo waits for the worker Job's pods
        assert env(master)["PROCFLEET_WAIT_WORKERS"] == str(
            workload(docs, "procfleet-worker")["spec"]["parallelism"])
    assert container(docs, "procfleet-worker")["args"] == ["worker"]


def test_port_service_and_worker_address_agree(rendered):
    _, docs, _ = rendered
    expose = re.search(r"^EXPOSE (\d+)$", dockerfile_stage("master"), re.M).group(1)
    worker_default = compose("docker-compose.yml")["services"]["worker"]["environment"]["PROCFLEET_MASTER"]
    assert worker_default.endswith(f":{expose}")
    service = one(docs, "Service", "procfleet-master")
    [port] = service["spec"]["ports"]
    master = container(docs, "procfleet-master")
    [cport] = master["ports"]
    assert port["port"] == cport["containerPort"] == int(expose)
    assert port["targetPort"] == cport["name"]
    assert env(container(docs, "procfleet-worker"))["PROCFLEET_MASTER"] == \
        f"{service['metadata']['name']}:{port['port']}"
    # the Service selects the master's pods and only them
    selector = service["spec"]["selector"]
    for name in ("procfleet-master", "procfleet-worker"):
        labels = workload(docs, name)["spec"]["template"]["metadata"]["labels"]
        assert (selector.items() <= labels.items()) == (name == "procfleet-master")


def test_probes_are_the_images_health_check(rendered):
    _, docs, _ = rendered
    check = re.search(r"^\s+CMD (\[.*\])$", dockerfile_stage("master"), re.M).group(1)
    master = container(docs, "procfleet-master")
    for probe in ("readinessProbe", "livenessProbe"):
        assert master[probe]["exec"]["command"] == json.loads(check)
        assert master[probe]["timeoutSeconds"] >= 3
    # the worker serves nothing (no HEALTHCHECK in its image, none in compose)
    worker = container(docs, "procfleet-worker")
    assert not {"readinessProbe", "livenessProbe", "startupProbe"} & set(worker)


def test_pods_run_as_the_images_user_with_resources_and_stop_grace(rendered):
    _, docs, _ = rendered
    uid = int(re.search(r"useradd --uid (\d+)", dockerfile_stage("base")).group(1))
    services = compose("docker-compose.yml")["services"]
    for name, side in (("procfleet-master", "master"), ("procfleet-worker", "worker")):
        spec = pod_spec(workload(docs, name))
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == uid
        assert spec["automountServiceAccountToken"] is False
        grace = services[side]["stop_grace_period"]
        assert f"{spec['terminationGracePeriodSeconds']}s" == grace
        c = container(docs, name)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"])
        # a read-only root: /tmp is the one writable place (multiprocessing's temp files)
        if c["securityContext"].get("readOnlyRootFilesystem"):
            assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}


def test_images_carry_the_package_version(rendered):
    _, docs, _ = rendered
    for name in ("procfleet-master", "procfleet-worker"):
        assert container(docs, name)["image"] == f"{name}:{VERSION}"


def test_batch_workers_are_the_service_workers_as_a_job(deploy_copy):
    """The worker pod is written twice (a Deployment and a Job cannot share it in kustomize
    without patches): they must not drift apart."""
    copy, _ = deploy_copy
    deployment = workload(kustomize_python(copy), "procfleet-worker")["spec"]["template"]
    job = workload(kustomize_python(copy / "batch"), "procfleet-worker")["spec"]["template"]
    assert job["spec"].pop("restartPolicy") == "OnFailure"
    assert job == deployment


def test_python_renderer_agrees_with_kubectl(deploy_copy):
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    copy, _ = deploy_copy

    def unhashed(docs):
        text = json.dumps(docs, sort_keys=True)
        return json.loads(re.sub(r"procfleet-authkey-[a-z0-9]{10}", "procfleet-authkey", text))

    for directory in MODES.values():
        key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
        assert sorted(unhashed(kustomize_kubectl(copy / directory)), key=key) == \
            sorted(kustomize_python(copy / directory), key=key)

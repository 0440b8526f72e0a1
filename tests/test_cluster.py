"""cluster/: every KubeRay manifest validated offline against the KubeRay v1.7.0 CRD schemas, and checked for what a
schema cannot see: entrypoints that GeoSANE's own parser accepts, one image and one Secret everywhere, the GPUs that
``--workers`` assumes, and no credential in any file."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from geosane.cli import build_parser
from geosane.version import __version__

ROOT = Path(__file__).parents[1]
MANIFESTS = sorted((ROOT / "cluster").glob("*.yaml"))
BROKEN = Path(__file__).parent / "fixtures" / "raycluster-broken.yaml"
CRDS = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayService": "ray.io_rayservices.yaml",
}


def strict(schema: Any) -> Any:
    """The CRD's schema as a strict API server applies it (``kubectl apply --validate=strict``): an object that lists
    its properties accepts no others, unless it says it keeps unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out:
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if "properties" in schema:  # property names are names, not schemas: keep them as they are
        out["properties"] = {name: strict(s) for name, s in schema["properties"].items()}
    return out


@pytest.fixture(scope="module")
def validators(shared: Path) -> dict[str, Any]:
    import jsonschema

    found = {}
    for kind, filename in CRDS.items():
        crd = yaml.safe_load((shared / "schemas" / "kuberay-v1.7.0" / filename).read_text())
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = strict(version["schema"]["openAPIV3Schema"])
        schema["properties"]["apiVersion"] = {"const": "ray.io/v1"}
        schema["properties"]["kind"] = {"const": kind}
        found[kind] = jsonschema.Draft7Validator(schema)
    return found


def problems(validators: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    validator = validators[manifest["kind"]]
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(manifest)]


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def test_cluster_has_the_manifests_the_deployment_needs() -> None:
    names = {p.name for p in MANIFESTS}
    assert {"raycluster.yaml", "rayjob-zoo.yaml", "rayjob-train.yaml", "rayjob-bench.yaml", "rayservice.yaml"} <= names
    assert (ROOT / "cluster" / "Dockerfile").exists() and (ROOT / "cluster" / "README.md").exists()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_for_kuberay_v1_7(validators: dict[str, Any], path: Path) -> None:
    assert problems(validators, load(path)) == []


def test_a_manifest_with_an_unknown_field_or_a_wrong_type_fails(validators: dict[str, Any]) -> None:
    found = problems(validators, load(BROKEN))
    assert any("workerGroupSpecs.0" in p and "'replica' was unexpected" in p for p in found), found
    assert any(p.startswith("spec.workerGroupSpecs.0.minReplicas") and "integer" in p for p in found), found
    assert len(found) == 2


def clusters(manifest: dict[str, Any]) -> dict[str, Any]:
    spec = manifest["spec"]
    return {"RayJob": spec.get("rayClusterSpec"), "RayService": spec.get("rayClusterConfig")}.get(
        manifest["kind"], spec
    )


def containers(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = clusters(manifest)
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def entrypoint(manifest: dict[str, Any]) -> list[str]:
    words = shlex.split(manifest["spec"]["entrypoint"])
    assert words[0] == "geosane", words
    return words[1:]


JOBS = [p for p in MANIFESTS if load(p)["kind"] == "RayJob"]


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_entrypoint_is_a_geosane_command_with_its_configs(path: Path) -> None:
    from geosane.bench import BenchConfig
    from geosane.zoo import ZooConfig

    manifest = load(path)
    args = build_parser().parse_args(entrypoint(manifest))  # exits (fails the test) on anything it does not take
    assert args.command == path.stem.removeprefix("rayjob-")
    for url in (getattr(args, name, None) for name in ("out", "storage", "collection")):
        assert url is None or url.startswith("s3://"), url
    config = getattr(args, "config", None)
    if config:  # configs come from the image's /app, which holds the repository's sweeps/
        local = ROOT / Path(config).relative_to("/app")
        if args.command == "bench":
            BenchConfig.from_yaml(local, check_data=False)
        elif args.command == "zoo":
            ZooConfig.from_yaml(local)
    assert manifest["spec"]["shutdownAfterJobFinishes"] is True
    runtime = yaml.safe_load(manifest["spec"]["runtimeEnvYAML"])
    assert f"geosane=={__version__}" in runtime["pip"]["packages"]


def test_one_image_and_one_secret_everywhere() -> None:
    images, secrets = set(), set()
    for path in MANIFESTS:
        for container in containers(load(path)):
            images.add(container["image"])
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    secrets.add((reference["name"], reference["key"], variable["name"]))
            assert not container.get("envFrom"), "name each Secret key (envFrom hides which ones are used)"
    assert len(images) == 1 and next(iter(images)).endswith(f":{__version__}"), images
    # the same keys, from the same Secret, under the names the AWS SDKs and s3fs read
    assert {name for name, _, _ in secrets} == {"geosane-s3"}
    assert {(key, variable) for _, key, variable in secrets} == {
        (k, k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
    }
    dockerfile = (ROOT / "cluster" / "Dockerfile").read_text()
    assert next(iter(images)).split("/")[-1] in dockerfile  # the tag the Dockerfile's build command makes


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_head_schedules_no_work_and_object_stores_are_sized(path: Path) -> None:
    spec = clusters(load(path))
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    for group in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]:
        assert int(group["rayStartParams"]["object-store-memory"]) > 0


def gpus_of(group: dict[str, Any]) -> int:
    (container,) = group["template"]["spec"]["containers"]
    requests, limits = container["resources"].get("requests", {}), container["resources"].get("limits", {})
    assert requests.get("nvidia.com/gpu") == limits.get("nvidia.com/gpu"), "GPUs are requested as they are limited"
    return int(limits.get("nvidia.com/gpu", 0))


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_gpu_workers_request_the_gpus_training_assumes(path: Path) -> None:
    manifest = load(path)
    groups = {g["groupName"]: g for g in clusters(manifest)["workerGroupSpecs"]}
    gpu = groups["gpu"]
    assert gpus_of(gpu) >= 1 and gpus_of(groups["cpu"]) == 0
    pod = gpu["template"]["spec"]
    assert pod.get("nodeSelector") or pod.get("tolerations"), "GPU pods go to GPU nodes"
    if manifest["kind"] == "RayJob" and entrypoint(manifest)[0] == "train":
        args = build_parser().parse_args(entrypoint(manifest))
        # Ray Train's ScalingConfig(num_workers=--workers, use_gpu=--gpu): one GPU per worker, all of the group
        assert args.use_gpu and args.workers == gpu["maxReplicas"] * gpus_of(gpu) == gpu["replicas"] * gpus_of(gpu)


CREDENTIAL = re.compile(r"AKIA[0-9A-Z]{16}|aws_secret_access_key\s*[:=]|secret(access)?key\s*[:=]\s*\S", re.IGNORECASE)


@pytest.mark.parametrize("path", [*MANIFESTS, ROOT / "cluster" / "Dockerfile"], ids=lambda p: p.name)
def test_no_file_holds_a_credential(path: Path) -> None:
    text = path.read_text()
    assert not CREDENTIAL.search(text)
    if path.suffix == ".yaml":
        for container in containers(load(path)):
            for variable in container.get("env", []):
                if re.search(r"SECRET|KEY|TOKEN|PASSWORD", variable["name"]):
                    assert "value" not in variable, f"{variable['name']} is set inline; take it from the Secret"


def test_the_service_config_builds_the_geosane_application(s3_server: str) -> None:
    """The RayService's Serve config names GeoSANE's application builder, with settings it accepts; its storage's
    bucket must exist (here on a local S3 server), as on the cluster."""
    import boto3

    from geosane.errors import GeoSANEError
    from geosane.serve import ServeConfig, application

    serve_config = yaml.safe_load(load(ROOT / "cluster" / "rayservice.yaml")["spec"]["serveConfigV2"])
    (app,) = serve_config["applications"]
    assert app["import_path"] == "geosane.serve:application" and app["route_prefix"] == "/"
    assert ServeConfig(**app["args"]).storage.startswith("s3://")
    bucket = app["args"]["storage"].removeprefix("s3://").split("/")[0]
    with pytest.raises(GeoSANEError, match=f"bucket {bucket} does not exist"):
        application(app["args"])  # checked before anything binds
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=bucket)
    assert application(app["args"]) is not None  # binds without starting anything
    with pytest.raises(GeoSANEError, match="unknown"):
        application({**app["args"], "replica": 3})

"""infra/: the manifests parse, the KubeRay resources validate against the v1.7 CRD schemas, every `r3p`
command they (and infra/README.md) run is accepted by r3p's own parser, the cluster-launcher config is
accepted by Ray's own validator, and the Dockerfile installs torch before r3p. No cluster, no docker."""

from __future__ import annotations

import contextlib
import copy
import gzip
import io
import json
import os
import re
import shlex
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "data" / "kuberay"
KINDS = {"RayCluster": "raycluster", "RayJob": "rayjob", "RayCronJob": "raycronjob"}
CRD_FILES = {"raycluster": "ray.io_rayclusters.yaml", "rayjob": "ray.io_rayjobs.yaml",
             "raycronjob": "ray.io_raycronjobs.yaml"}
RAY_VERSION_MIN_TOKEN_AUTH = (2, 52, 0)


# ------------------------------------------------------------------------------------------ helpers

def _yaml_files() -> list[Path]:
    return sorted(p for p in INFRA.rglob("*") if p.suffix in (".yaml", ".yml"))


def _docs(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in _docs(p)]


def _embedded_rayjobs() -> list[tuple[str, dict]]:
    """RayJob manifests held as text in ConfigMaps (the CronJob scheduler's)."""
    out = []
    for path, doc in _k8s_docs():
        if doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                if key.endswith((".yaml", ".yml")):
                    for inner in yaml.safe_load_all(text):
                        if isinstance(inner, dict) and inner.get("apiVersion") == "ray.io/v1":
                            out.append((f"{path.name}:{doc['metadata']['name']}/{key}", inner))
    return out


def _ray_resources() -> list[tuple[str, dict]]:
    """Every ray.io/v1 object of infra/k8s, top level or inside a ConfigMap."""
    top = [(f"{p.name}:{d['kind']}/{d['metadata'].get('name') or d['metadata'].get('generateName')}", d)
           for p, d in _k8s_docs() if d.get("apiVersion") == "ray.io/v1"]
    return top + _embedded_rayjobs()


def _load_schema(kind_stem: str) -> dict:
    with gzip.open(SCHEMAS / f"{kind_stem}.v1.schema.json.gz", "rt") as f:
        return json.load(f)


def _strict(schema: Any) -> Any:
    """The CRD schema as JSON Schema the way `kubectl apply` (strict field validation) judges it.

    Structural CRD schemas do not set `additionalProperties: false`: the API server prunes unknown fields,
    or (kubectl's default --validate=strict) rejects them. Objects that list `properties` are closed here
    unless they say `x-kubernetes-preserve-unknown-fields`; `nullable: true` admits null. The
    `x-kubernetes-*` keys are left for the validator to ignore (unknown keywords); `x-kubernetes-validations`
    (CEL rules) are not evaluated here."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    maps = ("properties", "patternProperties")  # maps of name -> schema, not schemas themselves
    out = {k: ({name: _strict(sub) for name, sub in v.items()} if k in maps else _strict(v))
           for k, v in schema.items()}
    if ("properties" in schema and "additionalProperties" not in schema
            and not schema.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    return out


_FORMATS = jsonschema.FormatChecker(formats=())


@_FORMATS.checks("int32")
def _int32(value: Any) -> bool:
    return not isinstance(value, int) or -(2**31) <= value < 2**31


@_FORMATS.checks("int64")
def _int64(value: Any) -> bool:
    return not isinstance(value, int) or -(2**63) <= value < 2**63


_VALIDATORS: dict[str, jsonschema.Draft7Validator] = {}


def _validator(kind: str) -> jsonschema.Draft7Validator:
    stem = KINDS[kind]
    if stem not in _VALIDATORS:
        _VALIDATORS[stem] = jsonschema.Draft7Validator(_strict(_load_schema(stem)), format_checker=_FORMATS)
    return _VALIDATORS[stem]


def schema_errors(obj: dict) -> list[str]:
    """Violations of the KubeRay v1.7 CRD schema of obj's kind, as 'path: message' lines."""
    errs = sorted(_validator(obj["kind"]).iter_errors(obj), key=lambda e: list(e.absolute_path))
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}" for e in errs]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def _cluster_rules(spec: dict, where: str) -> list[str]:
    """The RayClusterSpec checks of KubeRay's operator (ValidateRayClusterSpec) that matter here."""
    errs = []
    groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec.get("workerGroupSpecs", [])]
    v2 = spec.get("enableInTreeAutoscaling") and (spec.get("autoscalerOptions") or {}).get("version") == "v2"
    for name, group in groups:
        params = group.get("rayStartParams") or {}
        if group.get("resources") and any(params.get(k) for k in ("num-cpus", "num-gpus", "memory", "resources")):
            errs.append(f"{where} {name}: resources set in both rayStartParams and resources")
        if "labels" in params:
            errs.append(f"{where} {name}: rayStartParams['labels'] is not supported; use labels")
        if v2 and group["template"]["spec"].get("restartPolicy", "Never") != "Never":
            errs.append(f"{where} {name}: autoscaler v2 needs restartPolicy Never or unset")
    head_env = {e["name"] for e in spec["headGroupSpec"]["template"]["spec"]["containers"][0].get("env", [])}
    if (spec.get("autoscalerOptions") or {}).get("version") and "RAY_enable_autoscaler_v2" in head_env:
        errs.append(f"{where}: autoscalerOptions.version and RAY_enable_autoscaler_v2 are both set")
    if (spec.get("authOptions") or {}).get("mode") == "token":
        if not spec.get("rayVersion"):
            errs.append(f"{where}: authOptions.mode token needs rayVersion")
        elif _version(spec["rayVersion"]) < RAY_VERSION_MIN_TOKEN_AUTH:
            errs.append(f"{where}: authOptions.mode token needs rayVersion >= 2.52.0")
    return errs


def _job_rules(spec: dict, where: str) -> list[str]:
    """KubeRay's RayJobSpec checks (ValidateRayJobSpec) that the schema cannot express, plus one of ours."""
    errs = []
    shutdown = spec.get("shutdownAfterJobFinishes", False)
    selector = spec.get("clusterSelector") or {}
    mode = spec.get("submissionMode", "K8sJobMode")
    if spec.get("suspend") and not shutdown:
        errs.append(f"{where}: suspend needs shutdownAfterJobFinishes")
    if spec.get("ttlSecondsAfterFinished", 0) > 0 and not shutdown:
        errs.append(f"{where}: ttlSecondsAfterFinished > 0 needs shutdownAfterJobFinishes true")
    if spec.get("ttlSecondsAfterFinished", 0) < 0:
        errs.append(f"{where}: ttlSecondsAfterFinished must be >= 0")
    if not selector and "rayClusterSpec" not in spec:
        errs.append(f"{where}: one of rayClusterSpec or clusterSelector must be set")
    if selector:
        if not selector.get("ray.io/cluster"):
            errs.append(f"{where}: clusterSelector needs the key ray.io/cluster (the RayCluster's name)")
        if mode == "SidecarMode":
            errs.append(f"{where}: clusterSelector is not supported in SidecarMode")
        if spec.get("suspend"):
            errs.append(f"{where}: clusterSelector does not support suspend")
        # ours: KubeRay's retry step deletes the RayJob's RayCluster, here the shared one
        if spec.get("backoffLimit", 0) > 0:
            errs.append(f"{where}: backoffLimit > 0 with clusterSelector would delete the shared RayCluster on retry")
    if mode == "InteractiveMode" and spec.get("backoffLimit", 0) > 0:
        errs.append(f"{where}: backoffLimit is incompatible with InteractiveMode")
    if mode == "SidecarMode" and ("submitterPodTemplate" in spec or "submitterConfig" in spec):
        errs.append(f"{where}: SidecarMode supports neither submitterPodTemplate nor submitterConfig")
    if "activeDeadlineSeconds" in spec and spec["activeDeadlineSeconds"] <= 0:
        errs.append(f"{where}: activeDeadlineSeconds must be positive")
    if spec.get("backoffLimit", 0) < 0:
        errs.append(f"{where}: backoffLimit must be >= 0")
    if "rayClusterSpec" in spec:
        errs += _cluster_rules(spec["rayClusterSpec"], f"{where} rayClusterSpec")
    return errs


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$|^[A-Za-z]{3}(-[A-Za-z]{3})?$")


def operator_errors(obj: dict) -> list[str]:
    """A port of the KubeRay operator's own spec checks (ray-operator/controllers/ray/utils/validation.go)
    that the CRD schema does not carry: what `kubectl apply` accepts but the operator then refuses."""
    meta = obj.get("metadata", {})
    name = meta.get("name") or meta.get("generateName", "").rstrip("-")
    where = f"{obj['kind']}/{name}"
    errs = []
    limit = {"RayCluster": 53, "RayJob": 47, "RayCronJob": 41}[obj["kind"]]  # 41: the RayJobs add "-xxxxx"
    if len(meta.get("name") or meta.get("generateName", "") + "xxxxx") > limit or not _DNS1035.match(name):
        errs.append(f"{where}: name must be a DNS-1035 label of at most {limit} characters")
    spec = obj["spec"]
    if obj["kind"] == "RayCluster":
        errs += _cluster_rules(spec, where)
    elif obj["kind"] == "RayJob":
        errs += _job_rules(spec, where)
    else:
        fields = spec["schedule"].split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            errs.append(f"{where}: schedule {spec['schedule']!r} is not a standard 5-field cron expression")
        errs += _job_rules(spec["jobTemplate"], f"{where} jobTemplate")
    return errs


# --------------------------------------------------------------------------------- r3p commands

_SEPARATORS = {";", "&&", "||", "|", "(", ")", "--", "then", "do", "exec"}


def r3p_argvs(command: str) -> list[list[str]]:
    """The argument lists of every `r3p ...` command in a shell command line: the tokens after an `r3p`
    in command position (first, or after `--`, `;`, `&&`, `|`, ...), up to the end of that command."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    out = []
    for i, tok in enumerate(tokens):
        if tok == "r3p" and (i == 0 or tokens[i - 1] in _SEPARATORS):
            end = i + 1
            while end < len(tokens) and tokens[end] not in {";", "&&", "||", "|", "(", ")"}:
                end += 1
            out.append(tokens[i + 1:end])
    return out


def _readme_commands() -> Iterator[str]:
    """The shell commands of infra/README.md's fenced code blocks (backslash continuations joined)."""
    text = (INFRA / "README.md").read_text()
    for block in re.findall(r"```(?:bash|sh|shell|console)?\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                yield line


def _all_r3p_commands() -> list[tuple[str, list[str]]]:
    found: list[tuple[str, list[str]]] = []
    for where, obj in _ray_resources():
        if obj["kind"] == "RayJob":
            found += [(where, argv) for argv in r3p_argvs(obj["spec"].get("entrypoint", ""))]
        elif obj["kind"] == "RayCronJob":
            found += [(where, argv) for argv in r3p_argvs(obj["spec"]["jobTemplate"].get("entrypoint", ""))]
    launcher = yaml.safe_load((INFRA / "cluster-launcher" / "r3p-aws.yaml").read_text())
    for key, value in launcher.items():
        if key.endswith("_commands"):
            for cmd in value or []:
                found += [(f"r3p-aws.yaml:{key}", argv) for argv in r3p_argvs(cmd)]
    for cmd in _readme_commands():
        found += [("infra/README.md", argv) for argv in r3p_argvs(cmd)]
    return found


def _parse_r3p(argv: list[str], where: str = ""):
    from pipeline.cli import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: `r3p {shlex.join(argv)}` is rejected by r3p's parser (exit {exc.code}):\n"
                    f"{err.getvalue()}")


# ------------------------------------------------------------------------------------------ tests

def test_every_yaml_under_infra_parses_and_k8s_documents_have_kind():
    files = _yaml_files()
    assert files, "no YAML under infra/"
    for path in files:
        docs = _docs(path)  # raises on a YAML error
        assert docs, f"{path}: empty"
        if path.parent == K8S:
            for i, doc in enumerate(docs):
                assert isinstance(doc, dict), f"{path} document {i}: not a mapping"
                assert doc.get("apiVersion") and doc.get("kind"), f"{path} document {i}: apiVersion/kind missing"
                assert doc.get("metadata", {}).get("name"), f"{path} document {i}: metadata.name missing"


def test_the_expected_ray_resources_exist():
    kinds = sorted((o["kind"], o["metadata"].get("name") or o["metadata"].get("generateName"))
                   for _, o in _ray_resources())
    assert ("RayCluster", "r3p") in kinds
    assert ("RayCronJob", "r3p-retrain") in kinds
    assert ("RayJob", "r3p-retrain-") in kinds  # the CronJob scheduler's, in its ConfigMap
    assert sum(k == "RayJob" for k, _ in kinds) == 4


def test_ray_resources_validate_against_the_kuberay_v1_7_schemas():
    resources = _ray_resources()
    assert resources
    problems = [f"{where}: {e}" for where, obj in resources for e in schema_errors(obj)]
    assert not problems, "\n".join(problems)


def test_ray_resources_pass_the_operators_own_checks():
    problems = [e for _, obj in _ray_resources() for e in operator_errors(obj)]
    assert not problems, "\n".join(problems)


def _by_kind(kind: str) -> dict:
    return next(o for _, o in _ray_resources() if o["kind"] == kind)


@pytest.mark.parametrize("mutate, expected", [
    (lambda o: o["spec"]["workerGroupSpecs"][0].__setitem__("replicas", "two"), "'two' is not of type 'integer'"),
    (lambda o: o["spec"]["headGroupSpec"].pop("template"), "'template' is a required property"),
    (lambda o: o["spec"].__setitem__("enableInTreeAutoScaling", True), "enableInTreeAutoScaling"),
    (lambda o: o["spec"]["authOptions"].__setitem__("mode", "password"), "'password' is not one of"),
    (lambda o: o["spec"]["workerGroupSpecs"][1].__setitem__("maxReplicas", 2**40), "int32"),
])
def test_a_broken_raycluster_is_rejected_by_the_schema(mutate, expected):
    obj = copy.deepcopy(_by_kind("RayCluster"))
    mutate(obj)
    errors = schema_errors(obj)
    assert any(expected in e for e in errors), errors


def test_a_broken_rayjob_and_raycronjob_are_rejected_by_the_schema():
    job = copy.deepcopy(next(o for _, o in _ray_resources() if o["kind"] == "RayJob"))
    job["spec"]["entrypont"] = job["spec"].pop("entrypoint")  # a typo: unknown field
    job["spec"]["backoffLimit"] = "0"
    errors = schema_errors(job)
    assert any("entrypont" in e for e in errors), errors
    assert any("spec.backoffLimit" in e and "not of type 'integer'" in e for e in errors), errors
    cron = copy.deepcopy(_by_kind("RayCronJob"))
    del cron["spec"]["schedule"]
    cron["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0][
        "containerPort"] = "6379"
    errors = schema_errors(cron)
    assert any("'schedule' is a required property" in e for e in errors), errors
    assert any("containerPort" in e for e in errors), errors


def test_operator_checks_catch_what_the_schema_lets_through():
    job = copy.deepcopy(next(o for _, o in _ray_resources()
                             if o["kind"] == "RayJob" and "clusterSelector" in o["spec"]))
    assert not schema_errors(job)
    job["spec"]["ttlSecondsAfterFinished"] = 60  # with shutdownAfterJobFinishes false
    job["spec"]["backoffLimit"] = 2
    job["spec"]["clusterSelector"] = {"app": "r3p"}
    assert not schema_errors(job)
    errors = operator_errors(job)
    for expected in ("ttlSecondsAfterFinished > 0 needs", "backoffLimit > 0 with clusterSelector",
                     "clusterSelector needs the key ray.io/cluster"):
        assert any(expected in e for e in errors), errors
    cluster = copy.deepcopy(_by_kind("RayCluster"))
    cluster["spec"]["rayVersion"] = "2.50.0"
    cluster["spec"]["headGroupSpec"]["template"]["spec"]["restartPolicy"] = "Always"
    cluster["metadata"]["name"] = "R3P_cluster"
    assert not schema_errors(cluster)
    errors = operator_errors(cluster)
    for expected in ("needs rayVersion >= 2.52.0", "restartPolicy Never", "DNS-1035"):
        assert any(expected in e for e in errors), errors
    cron = copy.deepcopy(_by_kind("RayCronJob"))
    cron["spec"]["schedule"] = "every monday"
    assert not schema_errors(cron)
    assert any("not a standard 5-field cron" in e for e in operator_errors(cron))


def _shared_crds() -> Path:
    env = os.environ.get("R3P_KUBERAY_CRDS")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "kuberay-crds"


def test_vendored_schemas_equal_the_kuberay_crds():
    crds = _shared_crds()
    if not crds.is_dir():
        pytest.skip(f"no KubeRay CRD folder at {crds} (set R3P_KUBERAY_CRDS)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for stem, name in CRD_FILES.items():
        crd = yaml.load((crds / name).read_text(), Loader=loader)
        v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        assert _load_schema(stem) == v1["schema"]["openAPIV3Schema"], f"{stem}: regenerate with extract.py"


def test_every_r3p_command_is_accepted_by_the_cli_parser():
    from pipeline.config import load_config

    commands = _all_r3p_commands()
    subcommands = {argv[0] for _, argv in commands if argv}
    # the jobs, the scheduled round, and the README's submit / registry examples
    assert {"preprocess", "train", "evaluate", "retrain", "models"} <= subcommands, subcommands
    for where, argv in commands:
        args = _parse_r3p(argv, where)
        if getattr(args, "config", None) is None and hasattr(args, "overrides"):
            load_config(args.preset, None, args.overrides)  # --preset / --set keys exist and validate


def test_a_wrong_r3p_command_or_config_key_is_caught():
    from pipeline.config import ConfigError, load_config

    assert r3p_argvs("kubectl -n r3p get pods && ray job submit -- r3p train --stage a2m; echo done") == [
        ["train", "--stage", "a2m"]]
    with pytest.raises(pytest.fail.Exception, match="rejected by r3p's parser"):
        _parse_r3p(r3p_argvs("ray job submit -- r3p train --stage a2m")[0])  # --data and --run missing
    with pytest.raises(pytest.fail.Exception, match="rejected by r3p's parser"):
        _parse_r3p(["evaluate", "--data", "s3://b/d", "--split", "holdout"])
    with pytest.raises(ConfigError):
        load_config("paper", None, ["training.workerz=4"])


def test_every_ray_job_runs_an_r3p_command():
    for where, obj in _ray_resources():
        spec = obj["spec"] if obj["kind"] == "RayJob" else obj["spec"].get("jobTemplate")
        if spec is None:
            continue
        assert spec.get("entrypoint", "").startswith("r3p "), f"{where}: entrypoint is not an r3p command"
        assert len(r3p_argvs(spec["entrypoint"])) == 1, where


def test_the_retrain_round_is_the_same_under_both_schedulers():
    cron = _by_kind("RayCronJob")
    embedded = [o for _, o in _embedded_rayjobs()]
    assert len(embedded) == 1
    assert embedded[0]["spec"] == cron["spec"]["jobTemplate"]
    argv = r3p_argvs(cron["spec"]["jobTemplate"]["entrypoint"])[0]
    expected = ("retrain --new s3://r3p-data/incoming/latest --root /data/lifecycle --stages a2m,motion,htbsr "
                "--gate /etc/r3p/gate.yaml --tracking-uri http://r3p-mlflow:5000 --preset paper").split()
    assert argv[:len(expected)] == expected
    assert cron["spec"]["schedule"] == "0 3 * * 1"
    template = cron["spec"]["jobTemplate"]
    assert template["shutdownAfterJobFinishes"] is True and "rayClusterSpec" in template


def test_the_cronjob_scheduler_forbids_overlap_and_may_create_rayjobs():
    docs = {(d["kind"], d["metadata"]["name"]): d for p, d in _k8s_docs() if p.name == "cronjob-retrain.yaml"}
    cj = docs[("CronJob", "r3p-retrain")]
    assert cj["apiVersion"] == "batch/v1" and cj["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    script = " ".join(pod["containers"][0]["command"] + pod["containers"][0]["args"])
    assert "kubectl create -f /etc/r3p-retrain/rayjob.yaml" in script
    assert cj["spec"]["jobTemplate"]["spec"]["backoffLimit"] == 0
    role = docs[("Role", pod["serviceAccountName"])]
    assert any("ray.io" in r["apiGroups"] and "rayjobs" in r["resources"] and {"create", "get"} <= set(r["verbs"])
               for r in role["rules"])
    binding = docs[("RoleBinding", pod["serviceAccountName"])]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert {"kind": "ServiceAccount", "name": pod["serviceAccountName"], "namespace": "r3p"} in binding["subjects"]
    assert ("ServiceAccount", pod["serviceAccountName"]) in docs
    assert pod["volumes"][0]["configMap"]["name"] in {n for k, n in docs if k == "ConfigMap"}


def _pod_specs() -> Iterator[tuple[str, dict, set[str]]]:
    """(where, pod spec, volume names it gets from elsewhere: a StatefulSet's volumeClaimTemplates)."""
    def walk(node: Any, where: str, claims: set[str]) -> Iterator[tuple[str, dict, set[str]]]:
        if isinstance(node, dict):
            if "containers" in node and isinstance(node["containers"], list):
                yield where, node, claims
            for k, v in node.items():
                yield from walk(v, f"{where}.{k}", claims)
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from walk(v, f"{where}[{i}]", claims)
    for path, doc in _k8s_docs():
        claims = {t["metadata"]["name"] for t in (doc.get("spec") or {}).get("volumeClaimTemplates", [])}
        yield from walk(doc, f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", claims)
    for where, obj in _embedded_rayjobs():
        yield from walk(obj, where, set())


def test_names_the_pods_refer_to_are_defined():
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in _k8s_docs()}
    for where, pod, claims in _pod_specs():
        refs = []
        if pod.get("serviceAccountName"):
            refs.append(("ServiceAccount", pod["serviceAccountName"]))
        for vol in pod.get("volumes", []):
            if "configMap" in vol:
                refs.append(("ConfigMap", vol["configMap"]["name"]))
            if "persistentVolumeClaim" in vol:
                refs.append(("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]))
            if "secret" in vol:
                refs.append(("Secret", vol["secret"]["secretName"]))
        for c in pod["containers"]:
            for env in c.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    refs.append(("Secret", ref["name"]))
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    refs.append(("Secret", src["secretRef"]["name"]))
        missing = [r for r in refs if r not in defined]
        assert not missing, f"{where}: refers to {missing}, defined nowhere in infra/k8s"
        mounts = {m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        volumes = {v["name"] for v in pod.get("volumes", [])} | claims
        assert mounts <= volumes, f"{where}: a volumeMount without its volume"


def test_ray_pods_share_the_environment_and_the_image_ray_version():
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    ray_versions = set(re.findall(r"^ARG RAY_VERSION=(\S+)$", dockerfile, flags=re.M))
    assert len(ray_versions) == 1, ray_versions
    for where, obj in _ray_resources():
        spec = obj["spec"]
        cluster = spec if obj["kind"] == "RayCluster" else (spec.get("jobTemplate", spec)).get("rayClusterSpec")
        if cluster is None:
            continue
        assert cluster["rayVersion"] in ray_versions, where
        groups = [cluster["headGroupSpec"]] + cluster.get("workerGroupSpecs", [])
        for group in groups:
            env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0].get("env", [])}
            assert env.get("R3P_HOME") == "/models", where
            assert env.get("MLFLOW_TRACKING_URI") == "http://r3p-mlflow:5000", where
        gpu = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
        assert gpu and gpu[0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
        head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
        head_mounts = {m["mountPath"] for m in head["volumeMounts"]}
        assert "/etc/r3p" in head_mounts, f"{where}: the head needs the gate for r3p retrain"


def test_mlflow_uses_a_database_never_a_file_store():
    docs = {(d["kind"], d["metadata"]["name"]): d for p, d in _k8s_docs()}
    container = docs[("Deployment", "r3p-mlflow")]["spec"]["template"]["spec"]["containers"][0]
    argv = container["command"] + container.get("args", [])
    assert argv[:2] == ["mlflow", "server"]
    assert argv[argv.index("--artifacts-destination") + 1].startswith("s3://")
    assert argv[argv.index("--port") + 1] == "5000" and "--allowed-hosts" in argv
    assert not any(a.startswith(("file:", "./mlruns", "/mlruns")) for a in argv)
    env = {e["name"]: e for e in container["env"]}
    assert "MLFLOW_ALLOW_FILE_STORE" not in env
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "r3p-mlflow-db"
    secret = docs[("Secret", "r3p-mlflow-db")]
    assert secret["stringData"]["backend-store-uri"].startswith("postgresql://")
    service = docs[("Service", "r3p-mlflow")]
    assert service["spec"]["ports"][0]["port"] == 5000
    pod_labels = docs[("Deployment", "r3p-mlflow")]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


def _ray_config_validator():
    """Ray's own cluster-config check (defaults filled, schema, node types); its JSON schema alone when the
    private helpers move."""
    try:
        from ray.autoscaler._private.util import prepare_config, validate_config
    except ImportError:
        import importlib.util

        schema_file = Path(importlib.util.find_spec("ray").origin).parent / "autoscaler" / "ray-schema.json"
        return jsonschema.Draft7Validator(json.loads(schema_file.read_text())).validate
    return lambda config: validate_config(prepare_config(config))


def test_cluster_launcher_config_is_accepted_by_rays_validator(monkeypatch):
    check = _ray_config_validator()
    monkeypatch.chdir(ROOT)  # file_mounts name local paths relative to the repository root
    config = yaml.safe_load((INFRA / "cluster-launcher" / "r3p-aws.yaml").read_text())
    check(copy.deepcopy(config))
    broken = copy.deepcopy(config)
    broken["head_start_commands"] = []  # not a cluster-launcher key
    with pytest.raises(Exception, match="head_start_commands"):
        check(broken)
    types = config["available_node_types"]
    assert config["head_node_type"] in types and types["gpu"]["resources"]["GPU"] == 1
    assert config["provider"]["type"] == "aws"


def _stage(dockerfile: str, name: str) -> list[str]:
    """The instruction lines of one build stage (`FROM ... AS name` up to the next FROM)."""
    lines, inside = [], False
    for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
        if re.match(r"^FROM\s", line):
            inside = bool(re.match(rf"^FROM\s+\S+\s+AS\s+{name}\s*$", line, flags=re.I))
            continue
        if inside and line.strip() and not line.lstrip().startswith("#"):
            lines.append(line.strip())
    return lines


def test_dockerfile_installs_torch_before_r3p():
    dockerfile = (INFRA / "docker" / "Dockerfile").read_text()
    assert not re.search(r"^ENTRYPOINT", dockerfile, flags=re.M), "keep the images' entrypoint neutral"
    for stage, index in (("cpu", "https://download.pytorch.org/whl/cpu"), ("cuda", "${TORCH_CUDA_INDEX_URL}")):
        lines = _stage(dockerfile, stage)
        assert lines, f"no stage {stage}"
        torch = [i for i, l in enumerate(lines) if l.startswith("RUN") and '"torch==2.13.0"' in l and index in l]
        package = [i for i, l in enumerate(lines) if l.startswith("RUN") and re.search(r"pip install /src\b", l)]
        assert torch and package, f"{stage}: torch==2.13.0 ({index}) and `pip install /src` expected"
        assert torch[0] < package[0], f"{stage}: torch must be installed before the r3p package"
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, flags=re.M)
    assert base and base.group(1).startswith("python:3.11-slim")
    assert (INFRA / "docker" / "Dockerfile.dockerignore").is_file()


def test_gate_yaml_has_the_gate_format_and_the_configmap_holds_it_verbatim():
    text = (INFRA / "gate.yaml").read_text()
    gate = yaml.safe_load(text)
    assert set(gate) == {"min_test_clips", "rules", "improve_any"}
    assert isinstance(gate["min_test_clips"], int) and gate["min_test_clips"] > 0
    for rule in gate["rules"]:
        assert {"metric", "protocol"} <= set(rule) and set(rule) - {"metric", "protocol"} <= {"max_drop", "max_ratio"}
    assert all(set(ref) == {"metric", "protocol"} for ref in gate["improve_any"])
    configmap = next(d for _, d in _k8s_docs() if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "r3p-gate")
    assert configmap["data"]["gate.yaml"] == text


def test_gate_yaml_loads_with_r3p_when_the_gate_module_exists():
    gate_module = pytest.importorskip("pipeline.lifecycle.gate")
    gate = gate_module.load_gate(INFRA / "gate.yaml")
    assert gate.min_test_clips == 20 and len(gate.rules) == 3 and len(gate.improve_any) == 3

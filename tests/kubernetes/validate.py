#!/usr/bin/env python3
"""Validates deploy/kubernetes as a cluster would take it, without a cluster.

- Renders the kustomization with `kubectl kustomize` (kubectl's built-in
  kustomize: what `kubectl apply -k` applies).
- Every built-in kind against the Kubernetes API's OpenAPI schemas with
  kubernetes-validate (PyPI), strict: an unknown field is an error, as
  kubectl's default server-side field validation (`--validate=strict`)
  rejects it.
- The KEDA ScaledObject against KEDA's CRD, as generated into the
  `cloudcoil-models-keda` models (PyPI), walked strictly (an unknown key is
  an error: the API server's structural-schema validation in strict mode),
  then its kafka trigger's metadata as KEDA's Kafka scaler parses it
  (kedacore/keda pkg/scalers/kafka_scaler.go, parseKafkaMetadata): every
  value a string (the CRD's map[string]string), bootstrapServers and
  consumerGroup required, lagThreshold and activationLagThreshold integers
  (strconv.ParseInt), offsetResetPolicy `earliest` or `latest`,
  allowIdleConsumers and the other flags booleans (strconv.ParseBool).
- References between the objects: the ConfigMap and Secret keys the pods
  name exist, the PodDisruptionBudget and the ScaledObject select the
  ingester Deployment, and the ScaledObject watches the consumer group,
  topic and brokers the ingester's config uses.
- Any other kind is an error: nothing is accepted unchecked.

`--self-test` shows each check failing on a broken copy of the manifests.
Whether each container's configuration passes the real binaries'
check-config is tests/tests/kubernetes.rs.
"""

import copy
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import yaml
from cloudcoil.models.keda.v1alpha1 import ScaledObject
from pydantic import BaseModel

REPO = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.31.0"


def render(path):
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(f"kubectl kustomize {path} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def name(doc):
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def unknown_keys(model_cls, data, path):
    """Keys of `data` that the pydantic model (KEDA's CRD) does not define."""
    problems = []
    if not isinstance(data, dict):
        return problems
    fields = {}
    for field_name, field in model_cls.model_fields.items():
        fields[field.alias or field_name] = field
    for key, value in data.items():
        if key not in fields:
            problems.append(f"{path}.{key}: not a field of {model_cls.__name__}")
            continue
        problems.extend(nested(fields[key].annotation, value, f"{path}.{key}"))
    return problems


def nested(annotation, value, path):
    """Walks into model-typed fields (also inside Optional[...] and List[...])."""
    args = getattr(annotation, "__args__", ()) or ()
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return unknown_keys(annotation, value, path)
    for arg in args:
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            if isinstance(value, list):
                return [p for i, v in enumerate(value) for p in unknown_keys(arg, v, f"{path}[{i}]")]
            return unknown_keys(arg, value, path)
        inner = getattr(arg, "__args__", None)
        if inner and isinstance(value, list):
            return [p for i, v in enumerate(value) for p in nested(arg, v, f"{path}[{i}]")]
    return []


# The API groups kubernetes-validate has schemas for that these manifests use.
BUILT_IN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "rbac.authorization.k8s.io", "networking.k8s.io"}

PARSE_BOOL = {"1", "t", "T", "TRUE", "true", "True", "0", "f", "F", "FALSE", "false", "False"}


def kafka_trigger_problems(meta, where):
    """KEDA's parseKafkaMetadata (pkg/scalers/kafka_scaler.go) on `meta`."""
    p = []
    for key, value in meta.items():
        if not isinstance(value, str):
            p.append(f"{where}.{key}: {value!r} is not a string (the CRD's metadata is map[string]string)")
    if not (meta.get("bootstrapServers") or meta.get("bootstrapServersFromEnv")):
        p.append(f"{where}: no bootstrapServers given")
    if not (meta.get("consumerGroup") or meta.get("consumerGroupFromEnv")):
        p.append(f"{where}: no consumer group given")
    for key in ("lagThreshold", "activationLagThreshold"):
        if key in meta:
            try:
                int(str(meta[key]), 10)
            except ValueError:
                p.append(f"{where}: error parsing {key}: {meta[key]!r}")
    if "lagThreshold" in meta and str(meta["lagThreshold"]).lstrip("-").isdigit() and int(meta["lagThreshold"]) <= 0:
        p.append(f"{where}: lagThreshold must be a positive number")
    policy = meta.get("offsetResetPolicy")
    if policy not in (None, "", "earliest", "latest"):
        p.append(f"{where}: err offsetResetPolicy policy {policy} given")
    for key in ("allowIdleConsumers", "scaleToZeroOnInvalidOffset", "excludePersistentLag", "limitToPartitionsWithLag"):
        if key in meta and str(meta[key]) not in PARSE_BOOL:
            p.append(f"{where}: error parsing {key}: {meta[key]!r}")
    return p


def pod_spec(doc):
    if doc["kind"] in ("Deployment", "DaemonSet", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def check(docs):
    problems = []
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    for doc in docs:
        kind = doc.get("kind")
        if doc.get("apiVersion") == "keda.sh/v1alpha1" and kind == "ScaledObject":
            problems.extend(unknown_keys(ScaledObject, doc, name(doc)))
            try:
                ScaledObject.model_validate(doc)
            except Exception as e:  # pydantic's ValidationError, with every field
                problems.append(f"{name(doc)}: {e}")
            for i, t in enumerate(doc.get("spec", {}).get("triggers", [])):
                if t.get("type") == "kafka":
                    problems.extend(kafka_trigger_problems(t.get("metadata", {}), f"{name(doc)} triggers[{i}].metadata"))
            continue
        group = doc.get("apiVersion", "").rpartition("/")[0]
        if group not in BUILT_IN_GROUPS:
            problems.append(f"{name(doc)}: {doc['apiVersion']} is not a kind this check knows")
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            problems.append(f"{name(doc)}: {e.message} at {'.'.join(map(str, e.path))}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{name(doc)}: no Kubernetes {KUBERNETES_VERSION} schema for it")
        except kubernetes_validate.InvalidSchemaError as e:
            problems.append(f"{name(doc)}: {e}")

    # References between the objects.
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind.get("ConfigMap", [])}
    secrets = {d["metadata"]["name"]: {**d.get("data", {}), **d.get("stringData", {})} for d in by_kind.get("Secret", [])}
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                for kind, objects in (("configMapKeyRef", config_maps), ("secretKeyRef", secrets)):
                    if kind in ref:
                        r = ref[kind]
                        if r["name"] not in objects or r["key"] not in objects[r["name"]]:
                            problems.append(f"{name(doc)} {c['name']} env {e['name']}: no {r['name']}/{r['key']}")
            for m in c.get("volumeMounts", []):
                v = volumes.get(m["name"])
                if v is None:
                    problems.append(f"{name(doc)} {c['name']}: mounts volume {m['name']}, which the pod lacks")
                    continue
                if "configMap" in v:
                    cm = config_maps.get(v["configMap"]["name"])
                    if cm is None or (m.get("subPath") and m["subPath"] not in cm):
                        problems.append(f"{name(doc)} {c['name']}: {v['configMap']['name']} lacks {m.get('subPath')}")
                if "secret" in v and v["secret"]["secretName"] not in secrets:
                    problems.append(f"{name(doc)} {c['name']}: no Secret {v['secret']['secretName']}")

    deployments = {d["metadata"]["name"]: d for d in by_kind.get("Deployment", [])}
    for pdb in by_kind.get("PodDisruptionBudget", []):
        sel = pdb["spec"]["selector"]["matchLabels"]
        if not any(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items()) for d in deployments.values()):
            problems.append(f"{name(pdb)}: selects no Deployment's pods")
    ingester_config = tomllib.loads(config_maps.get("spillway-config", {}).get("ingester.toml", ""))
    kafka = ingester_config.get("kafka", {})
    for so in by_kind.get("ScaledObject", []):
        target = so["spec"]["scaleTargetRef"]["name"]
        if target not in deployments:
            problems.append(f"{name(so)}: scales {target}, which is not a Deployment here")
        for t in so["spec"].get("triggers", []):
            meta = t.get("metadata", {})
            if meta.get("consumerGroup") != kafka.get("group_id"):
                problems.append(f"{name(so)}: watches group {meta.get('consumerGroup')}, the ingester is {kafka.get('group_id')}")
            if meta.get("topic") not in kafka.get("topics", []):
                problems.append(f"{name(so)}: watches topic {meta.get('topic')}, the ingester reads {kafka.get('topics')}")
            if meta.get("bootstrapServers") != kafka.get("brokers"):
                problems.append(f"{name(so)}: asks {meta.get('bootstrapServers')}, the ingester {kafka.get('brokers')}")
    return problems


def self_test(docs):
    """Each check must fail on a broken copy (a check that cannot fail is none)."""
    def edit(kind, fn):
        broken = copy.deepcopy(docs)
        fn(next(d for d in broken if d["kind"] == kind))
        return broken

    def ingester(d):
        return d["spec"]["template"]["spec"]["containers"][0]

    cases = {
        "unknown field in a Deployment": edit("Deployment", lambda d: ingester(d).__setitem__("readynessProbe", {})),
        "wrong type in a DaemonSet": edit("DaemonSet", lambda d: d["spec"]["template"]["spec"].__setitem__("hostPID", "yes")),
        "unknown field in the ScaledObject": edit("ScaledObject", lambda d: d["spec"].__setitem__("maxReplicas", 3)),
        "lagThreshold not an integer": edit("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("lagThreshold", "20k")),
        "lagThreshold as a YAML number": edit("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("lagThreshold", 20000)),
        "consumer group not the ingester's": edit("ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("consumerGroup", "other")),
        "secret key missing": edit("Secret", lambda d: d["stringData"].pop("clickhouse-password")),
        "unknown kind": docs + [{"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": {"name": "x"}}],
    }
    failed = []
    for what, broken in cases.items():
        found = check(broken)
        print(f"self-test: {what}: {found[0] if found else 'NOT DETECTED'}")
        if not found:
            failed.append(what)
    return failed


def main():
    path = REPO / "deploy" / "kubernetes"
    docs = render(path)
    kinds = sorted({d["kind"] for d in docs})
    for wanted in ("DaemonSet", "Deployment", "PodDisruptionBudget", "ScaledObject", "Job", "ConfigMap", "Secret"):
        if wanted not in kinds:
            raise SystemExit(f"deploy/kubernetes renders no {wanted}")
    problems = check(docs)
    for p in problems:
        print(f"invalid: {p}")
    if problems:
        raise SystemExit(1)
    print(f"deploy/kubernetes: {len(docs)} objects valid ({', '.join(kinds)}) against Kubernetes {KUBERNETES_VERSION} and KEDA's ScaledObject")
    if "--self-test" in sys.argv:
        failed = self_test(docs)
        if failed:
            raise SystemExit(f"checks that did not fail: {failed}")


if __name__ == "__main__":
    main()

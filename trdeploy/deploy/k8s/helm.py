"""`render-k8s --format helm`: a Helm chart made by the same builders as the kustomize folder.

`chart_files(rendered)` runs trdeploy.deploy.k8s.build_files over the rendered Plan with its knob fields
tagged (trdeploy.deploy.k8s.knobs): every template is the object the folder holds, dumped with PyYAML, with
`{{ ... }}` where a value of `values.yaml` flows. values.yaml holds the profile's numbers and the operator's
knobs, each with its default from the same Plan, so with default values `helm template NAME CHART
--namespace NS` renders exactly the folder's objects (names follow the release name, the namespace the
release namespace). Structural choices (the autoscaler, the scrape object, the model source, multi-node)
are made when the chart is rendered, as for the folder; what the image fixes (its command, the profile's
drain window and hash, the driver its CUDA build needs) is not a value.
"""

from __future__ import annotations

import json
import re
import textwrap
from dataclasses import dataclass, replace
from typing import Any, Literal

import yaml

from trdeploy import __version__
from trdeploy.deploy.k8s.knobs import (
    RELEASE,
    RELEASE_NAME,
    RELEASE_NAMESPACE,
    Cond,
    JsonText,
    Optional,
    Splice,
    TBool,
    TInt,
    TList,
    TMap,
    TStr,
)
from trdeploy.deploy.k8s.objects import fetches_weights
from trdeploy.deploy.k8s.plan import SECRET_API_KEY_KEY, Plan

Kind = Literal["int", "str", "bool", "optional", "map", "list"]


@dataclass(frozen=True)
class Knob:
    """One value of values.yaml: where it lives there, the Plan field it sets, and its JSON-schema type."""

    path: str
    field: str
    kind: Kind
    help: str
    minimum: int | None = None
    enum: tuple[str, ...] = ()
    items: str = "string"  # element type of a list/optional-list value
    derived: str | None = None  # "{}-api-key": the default follows the release name unless the value is set

    def applies(self, p: Plan) -> bool:
        opts = p.opts
        return {
            "autoscaling.fallbackReplicas": opts.autoscaler == "keda",
            "autoscaling.prometheusUrl": opts.autoscaler == "keda",
            "autoscaling.targetInFlight": opts.autoscaler != "none",
            "autoscaling.scaleUpStabilizationSeconds": opts.autoscaler != "none",
            "replicas.max": opts.autoscaler != "none",
            "cache.sizeGi": p.model_source in ("pvc", "download"),
            "cache.accessMode": p.model_source == "pvc",
            "cache.storageClass": p.model_source == "pvc",
            "apiKey.secretName": p.api_key,
            "hfToken.secretName": fetches_weights(p),
        }.get(self.path, True)

    def default(self, p: Plan) -> Any:
        value = getattr(p, self.field)
        if self.derived and value == self.derived.format(p.name):
            return ""  # follows the release name
        if self.kind == "optional" and value is None:
            return [] if self.items == "integer" else ""
        if self.kind == "map":
            return dict(value)
        if self.kind == "list":
            return list(value)
        return value

    def tagged(self, p: Plan) -> Any:
        value = getattr(p, self.field)
        ref = "$.Values." + self.path
        if self.kind == "int":
            return TInt(value, f"int {ref}")
        if self.kind == "bool":
            return TBool(value, ref)
        if self.kind == "optional":
            return Optional(value, ref)
        if self.kind == "map":
            return TMap(value, ref)
        if self.kind == "list":
            return TList(value, ref)
        if self.derived and value == self.derived.format(p.name):
            return TStr(value, f'default (printf {json.dumps(self.derived.replace("{}", "%s"))} $.Release.Name) {ref}')
        return TStr(value, ref)

    def schema(self) -> dict[str, Any]:
        s: dict[str, Any]
        if self.kind == "int":
            s = {"type": "integer"}
            if self.minimum is not None:
                s["minimum"] = self.minimum
        elif self.kind == "bool":
            s = {"type": "boolean"}
        elif self.kind == "map":
            s = {"type": "object", "additionalProperties": {"type": "string"}}
        elif self.kind == "list" or (self.kind == "optional" and self.items == "integer"):
            item: dict[str, Any] = {"type": self.items}
            if self.items == "integer":
                item["minimum"] = 1
            s = {"type": "array", "items": item}
        else:
            s = {"type": "string"}
            if self.enum:
                s["enum"] = list(self.enum)
            elif self.kind == "str" and not self.derived:
                s["minLength"] = 1
        s["description"] = self.help
        return s


KNOBS: tuple[Knob, ...] = (
    Knob("image", "image", "str", "The image `trdeploy build` made from this profile, as the cluster pulls it (REGISTRY/NAME:TAG or @sha256:...)."),
    Knob("replicas.min", "replicas_min", "int", "Fewest replicas (the autoscaler's minimum; the profile's capacity plan: the average load).", 1),
    Knob("replicas.max", "replicas_max", "int", "Most replicas (the profile's capacity plan: the peak).", 1),
    Knob("autoscaling.targetInFlight", "target", "int", "Requests in flight (running + waiting) per replica to scale at: where the profile's SLA holds.", 1),
    Knob("autoscaling.scaleUpStabilizationSeconds", "scale_up_window_s", "int", "Load must last this long before a replica is added (the predicted start of one).", 0),
    Knob("autoscaling.fallbackReplicas", "fallback_replicas", "int", "Replicas KEDA holds while it cannot read the metric.", 1),
    Knob("autoscaling.prometheusUrl", "prometheus_url", "str", "Prometheus the KEDA trigger queries."),
    Knob("rollout.surge", "surge", "int", "Replicas a rollout starts before stopping old ones (needs that many spare GPU sets); 0 replaces one at a time.", 0),
    Knob("startup.budgetSeconds", "startup_budget_s", "int", "Seconds a new pod may take to answer /health (the profile's start-up budget).", 10),
    Knob("resources.cpu", "cpu", "int", "CPU cores per pod (requests = limits).", 1),
    Knob("resources.memoryGi", "memory_gi", "int", "Memory per pod in GiB (requests = limits; /dev/shm counts against it).", 1),
    Knob("resources.shmGi", "shm_gi", "int", "/dev/shm size in GiB (NCCL, vLLM's shared-memory broadcast).", 1),
    Knob("cache.sizeGi", "cache_gi", "int", "Cache volume size in GiB (weights, compile caches).", 1),
    Knob("cache.accessMode", "access_mode", "str", "ReadWriteOnce (one node) or ReadWriteMany (replicas on several nodes share it).",
         enum=("ReadWriteOnce", "ReadWriteMany")),
    Knob("cache.storageClass", "storage_class", "optional", "storageClassName of the cache PVC; empty: the cluster's default class."),
    Knob("cache.supplementalGroups", "supplemental_groups", "optional", "Groups that may write the cache volume (volumes that ignore fsGroup).", items="integer"),
    Knob("securityContext.readOnlyRootFilesystem", "read_only_root", "bool",
         "Read-only root file system for the containers (fails on nodes whose NVIDIA toolkit runs in CDI mode)."),
    Knob("runtimeClassName", "runtime_class", "optional", "runtimeClassName of the pods (e.g. nvidia); empty: the cluster's default."),
    Knob("apiKey.secretName", "api_key_secret", "str", f"Secret holding key '{SECRET_API_KEY_KEY}' (the API key); empty: <release>-api-key.", derived="{}-api-key"),
    Knob("hfToken.secretName", "hf_token_secret", "str", "Secret holding key 'token' (optional, gated models); empty: <release>-hf-token.", derived="{}-hf-token"),
    Knob("monitoring.labels", "monitoring_labels", "map",
         "Labels on the ServiceMonitor/PodMonitor and PrometheusRule so your Prometheus selects them (kube-prometheus-stack: release: <its release>)."),
    Knob("networkPolicy.monitoringNamespace", "monitoring_namespace", "str", "Namespace allowed to scrape the pods."),
    Knob("networkPolicy.allowNamespaces", "allow_namespaces", "list", "Namespaces (ingress controllers, gateways) allowed to reach the API port."),
)


def knobs_for(p: Plan) -> list[Knob]:
    return [k for k in KNOBS if k.applies(p)]


def helm_plan(p: Plan) -> Plan:
    """The plan with every knob tagged and the release's name and namespace standing in for the rendered ones."""
    changes = {k.field: k.tagged(p) for k in knobs_for(p)}
    return replace(p, name=TStr(RELEASE_NAME, "$.Release.Name"), namespace=TStr(RELEASE_NAMESPACE, "$.Release.Namespace"), **changes)


def values(p: Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for knob in knobs_for(p):
        *groups, leaf = knob.path.split(".")
        node = out
        for g in groups:
            node = node.setdefault(g, {})
        node[leaf] = knob.default(p)
    return out


def values_schema(p: Plan) -> dict[str, Any]:
    root: dict[str, Any] = {"$schema": "https://json-schema.org/draft-07/schema#", "type": "object",
                            "properties": {"global": {"type": "object"}}, "additionalProperties": False}
    for knob in knobs_for(p):
        *groups, leaf = knob.path.split(".")
        node = root
        for g in groups:
            node = node["properties"].setdefault(g, {"type": "object", "properties": {}, "additionalProperties": False})
        node["properties"][leaf] = knob.schema()
    return root


# ---------------------------------------------------------------------------------------------
# Templates: the tagged objects dumped, then their tokens replaced by template actions


_TOKEN = "ZZKNOB{}ZZ"
_TOKEN_LINE = re.compile(r"^(?P<indent> *)(?P<dash>- )?(?P<token>ZZKNOB\d+ZZ)(?P<key>: null)?$")


class _LiteralStr(str):
    pass


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_representer(_LiteralStr, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", str(v), style="|"))


def _dump(obj: Any) -> str:
    """YAML of a walked object; text that looks like a template action (a Grafana legend "{{pod}}") stays text."""
    text = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1 << 30)
    return text.replace("{{", '{{ "{{" }}')


class _Templater:
    def __init__(self) -> None:
        self.inline: dict[str, str] = {}  # token -> action (a scalar)
        self.in_json: dict[str, str] = {}  # '"token"' -> action (a JSON value)
        self.blocks: dict[str, tuple[str, Any]] = {}  # token -> what the line becomes

    def _token(self) -> str:
        return _TOKEN.format(len(self.inline) + len(self.in_json) + len(self.blocks))

    def scalar(self, x: Any, *, json_value: bool = False) -> str:
        token = self._token()
        action = f"{{{{ {x.expr} }}}}" if isinstance(x, (TInt, TBool)) else (
            f"{{{{ {x.expr} | toJson }}}}" if json_value else f"{{{{ {x.expr} | quote }}}}")
        if json_value:
            self.in_json[json.dumps(token)] = action
        else:
            self.inline[token] = action
        return token

    def walk(self, x: Any, *, in_json: bool = False) -> Any:
        if isinstance(x, JsonText):
            return _LiteralStr(json.dumps(self.walk(x.obj, in_json=True), indent=1, sort_keys=True))
        if isinstance(x, (TInt, TBool, TStr)):
            return self.scalar(x, json_value=in_json)
        if isinstance(x, (Optional, Cond, Splice, TMap, TList)) and in_json:
            raise TypeError("structural knobs inside JSON are not supported")
        if isinstance(x, dict):
            out: dict[Any, Any] = {}
            for k, v in x.items():
                if isinstance(k, Splice):
                    token = self._token()
                    self.blocks[token] = ("map", k.value.expr)
                    out[token] = None
                elif isinstance(v, (Optional, Cond)):
                    token = self._token()
                    self.blocks[token] = ("optional" if isinstance(v, Optional) else "cond", (k, v))
                    out[token] = None
                else:
                    out[k] = self.walk(v, in_json=in_json)
            return out
        if isinstance(x, (list, tuple)):
            items: list[Any] = []
            for item in x:
                if isinstance(item, Splice):
                    token = self._token()
                    self.blocks[token] = ("range", item)
                    items.append(token)
                else:
                    items.append(self.walk(item, in_json=in_json))
            return items
        return x

    def _block(self, token: str, indent: str, dash: bool, key: bool) -> list[str]:
        what, data = self.blocks[token]
        if what in ("optional", "cond", "map") and (dash or not key):
            raise ValueError(f"a {what} knob must be a mapping key that is not the first of a list item")
        if what == "range" and not dash:
            raise ValueError("a list knob must be a list item")
        if what == "map":
            return [f"{indent}{{{{- with {data} }}}}", f"{indent}{{{{- toYaml . | nindent {len(indent)} }}}}", f"{indent}{{{{- end }}}}"]
        if what == "optional":
            k, v = data
            return [f"{indent}{{{{- with {v.expr} }}}}", f"{indent}{k}: {{{{ toJson . }}}}", f"{indent}{{{{- end }}}}"]
        if what == "cond":
            k, v = data
            body = self._lines(_dump({k: self.walk(v.value)}))
            return [f"{indent}{{{{- if {v.expr} }}}}", *(indent + line for line in body), f"{indent}{{{{- end }}}}"]
        splice: Splice = data
        item = splice.item(TStr("", "."))  # type: ignore[misc]
        body = self._lines(_dump([self.walk(item)]))
        return [f"{indent}{{{{- range {splice.value.expr} }}}}", *(indent + line for line in body), f"{indent}{{{{- end }}}}"]

    def _lines(self, text: str) -> list[str]:
        out: list[str] = []
        for line in text.splitlines():
            m = _TOKEN_LINE.match(line)
            if m and m.group("token") in self.blocks:
                out += self._block(m.group("token"), m.group("indent"), bool(m.group("dash")), bool(m.group("key")))
            else:
                out.append(line)
        return out

    def template(self, objs: list[dict[str, Any]]) -> str:
        docs = [_dump(self.walk(o)) for o in objs]
        text = "---\n".join("\n".join(self._lines(d)) + "\n" for d in docs)
        for token, action in self.in_json.items():
            text = text.replace(token, action)
        for token, action in sorted(self.inline.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(token, action)
        for stand_in, ref in RELEASE.items():
            text = text.replace(stand_in, f"{{{{ {ref} }}}}")
        if re.search(r"ZZKNOB\d+ZZ", text):
            raise ValueError("a knob token was left in a template")
        return text


# ---------------------------------------------------------------------------------------------
# The chart


def _values_text(p: Plan) -> str:
    comments = {k.path: k.help for k in knobs_for(p)}
    lines = [
        f"# Values of the trdeploy chart for profile {p.profile_name} (sha256 {p.profile_sha256[:12]}): the profile's numbers and the",
        "# operator's knobs, each defaulting to what `trdeploy render-k8s` rendered. Names follow the release name and",
        "# the namespace the release namespace. See the README section \"On a real cluster\".",
    ]

    def emit(node: dict[str, Any], indent: int, prefix: str) -> None:
        for key, value in node.items():
            path = prefix + key
            pad = " " * indent
            if path in comments:
                lines.extend(pad + "# " + c for c in textwrap.wrap(comments[path], 110 - indent))
                dumped = yaml.safe_dump({key: value}, sort_keys=False, default_flow_style=False, width=1 << 30).rstrip("\n")
                lines.extend(pad + line for line in dumped.splitlines())
            else:
                lines.append(f"{pad}{key}:")
                emit(value, indent + 2, path + ".")

    emit(values(p), 0, "")
    return "\n".join(lines) + "\n"


def _notes(p: Plan) -> str:
    lines = [
        "vLLM serving {{ .Release.Name }} in namespace {{ .Release.Namespace }}" + f" (trdeploy profile {p.profile_name}).",
    ]
    if p.api_key:
        secret = next(k for k in KNOBS if k.path == "apiKey.secretName").tagged(p).expr
        lines.append(f"The API key comes from Secret {{{{ {secret} }}}} (key {SECRET_API_KEY_KEY}); create it before the pods start:")
        lines.append(f"  kubectl -n {{{{ .Release.Namespace }}}} create secret generic {{{{ {secret} }}}} --from-literal={SECRET_API_KEY_KEY}=\"$(openssl rand -hex 24)\"")
    lines.append("Check it against the SLA: trdeploy bench --url http://<service>:" + str(p.port) + " --profile <the profile>")
    return "\n".join(lines) + "\n"


def chart_files(files: dict[str, list[dict[str, Any]]], tagged_files: dict[str, list[dict[str, Any]]], p: Plan) -> dict[str, str]:
    """{path in the chart folder: text}. `tagged_files` are build_files(helm_plan(p)), `files` the folder's objects."""
    if list(files) != list(tagged_files):
        raise ValueError("the chart and the folder hold different files")
    chart = {
        "apiVersion": "v2",
        "name": p.name,
        "description": f"vLLM {p.vllm_version} serving {p.served_model_name} on {p.gpus} GPU(s) per replica (trdeploy profile {p.profile_name})",
        "type": "application",
        "version": f"{__version__}+{p.profile_sha256[:12]}",
        "appVersion": p.vllm_version,
        "kubeVersion": ">=1.29.0-0",
        "annotations": {"trdeploy.io/profile": p.profile_name, "trdeploy.io/profile-sha256": p.profile_sha256},
    }
    out = {
        "Chart.yaml": yaml.safe_dump(chart, sort_keys=False, width=1 << 30),
        "values.yaml": _values_text(p),
        "values.schema.json": json.dumps(values_schema(p), indent=2) + "\n",
        "templates/NOTES.txt": _notes(p),
    }
    templater = _Templater()
    for name, objs in tagged_files.items():
        out[f"templates/{name}"] = templater.template(objs)
    return out

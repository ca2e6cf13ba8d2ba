#!/usr/bin/env bash
# The validators `render-k8s --validate` and its tests use, idempotent:
# - checkov in its own virtual environment (.venv/tools/checkov): it pins packaging<24, which
#   pytest>=9 cannot live with in one environment;
# - kubectl (for `kubectl kustomize`), from Debian's kubernetes-client when none is installed.
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

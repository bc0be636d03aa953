#!/usr/bin/env bash
# Offline checks of everything deploy/ ships: every kustomize overlay renders and validates
# strictly against the Kubernetes 1.37 schemas, the Dockerfiles pass hadolint, the image's
# install steps work (deploy/check-image-steps.sh), and the monitoring in deploy/monitoring/ holds:
# promtool (Debian 12's, Prometheus 2.42) checks and unit-tests the alert rules and parses every
# dashboard query, and a test pins the dashboard and the rules to the metrics the server exports.
# Run through `make deploy-check`, which installs the tools first.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=$PWD/.tools/bin
VENV=${VENV:-.venv}
# kustomize (a pinned Go module) and promtool (from Debian's pinned prometheus package): `make tools`
KUSTOMIZE=$TOOLS/kustomize
PROMTOOL=$TOOLS/promtool
for tool in "$KUSTOMIZE" "$PROMTOOL"; do
  [ -x "$tool" ] || { echo "deploy/check.sh: $tool is missing: run \`make tools\` (or \`make deploy-check\`)" >&2; exit 1; }
done

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Overlays, and the examples nested in them (node-local/embedded-inference).
for kfile in deploy/k8s/overlays/*/kustomization.yaml deploy/k8s/overlays/*/*/kustomization.yaml; do
  overlay=$(dirname "$kfile")/
  name=$(echo "${overlay#deploy/k8s/overlays/}" | tr / - | sed 's/-$//')
  echo "== kustomize build $overlay"
  "$KUSTOMIZE" build "$overlay" > "$out/$name.yaml"
  echo "== kubernetes-validate --strict ($name)"
  "$VENV/bin/kubernetes-validate" --strict --quiet "$out/$name.yaml"
done

echo "== promtool check rules (alerts)"
"$PROMTOOL" check rules deploy/monitoring/alerts.yml
echo "== promtool test rules (alerts.test.yml)"
"$PROMTOOL" test rules deploy/monitoring/alerts.test.yml
echo "== promtool check rules (every dashboard query, as a recording rule)"
"$VENV/bin/python" deploy/monitoring/dashboard_queries.py deploy/monitoring/quiver-dashboard.json \
  > "$out/dashboard-queries.yml"
"$PROMTOOL" check rules "$out/dashboard-queries.yml"
echo "== dashboard and rules against the exported metrics"
"$VENV/bin/pytest" -q -p no:cacheprovider tests/unit/test_monitoring.py

echo "== hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile
echo "== hadolint deploy/spark/Dockerfile"
"$VENV/bin/hadolint" deploy/spark/Dockerfile

echo "== image install steps"
bash deploy/check-image-steps.sh
echo "deploy checks passed"

#!/usr/bin/env bash
# Offline checks of everything deploy/ ships: every kustomize overlay renders and validates
# strictly against the Kubernetes 1.37 schemas, the Dockerfiles pass hadolint, and the image's
# install steps work (deploy/check-image-steps.sh). Run through `make deploy-check`.
set -euo pipefail
cd "$(dirname "$0")/.."

KUSTOMIZE_VERSION=v5.8.1   # v5.8.2+ needs Go >= 1.27
TOOLS=$PWD/.tools/bin
VENV=${VENV:-.venv}
KUSTOMIZE=$TOOLS/kustomize

if ! [ -x "$KUSTOMIZE" ] || ! "$KUSTOMIZE" version 2>/dev/null | grep -q "$KUSTOMIZE_VERSION"; then
  echo "== installing kustomize $KUSTOMIZE_VERSION into $TOOLS"
  mkdir -p "$TOOLS"
  GOBIN=$TOOLS GOTOOLCHAIN=local go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

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

echo "== hadolint Dockerfile"
"$VENV/bin/hadolint" Dockerfile
echo "== hadolint deploy/spark/Dockerfile"
"$VENV/bin/hadolint" deploy/spark/Dockerfile

echo "== image install steps"
bash deploy/check-image-steps.sh
echo "deploy checks passed"

#!/usr/bin/env bash
# Which snapshot version every quiver replica serves, from GetSnapshotInfo.
#
#   deploy/versions.sh HOST:PORT|unix:///PATH ...          ask these servers directly
#   deploy/versions.sh -k [-n NS] [-l SELECTOR] [-c NAME]  ask every matching pod, via kubectl exec
#                                                          into its quiver container (127.0.0.1:50051)
#
# Each target is asked over several fresh connections, because a server with QUIVER_WORKERS > 1
# spreads connections over its worker processes (SO_REUSEPORT) and each worker swaps on its own.
# Prints one line per target; exits 0 when all serve the same version, 1 when they differ (a
# rollout of data in progress, or a stuck replica), 2 when a target did not answer.
set -euo pipefail

PYTHON=${PYTHON:-$(dirname "$0")/../.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
CONNECTIONS=${CONNECTIONS:-6}

# Runs where quiver is installed (locally, or inside the pod); prints one JSON line per target.
ASK=$(cat <<'PY'
import json, sys
import grpc
from quiver.client import FeatureClient
conns = int(sys.argv[1])
for target in sys.argv[2:]:
    seen, err = {}, ""
    for _ in range(conns):
        try:
            # A local subchannel pool: a new connection each time, not a shared one.
            with FeatureClient(target, options=[("grpc.use_local_subchannel_pool", 1)]) as c:
                i = c.snapshot_info(timeout=5)
            cur = i.loaded[0] if i.loaded else None
            seen[i.current_version] = {
                "loaded": [v.version for v in i.loaded], "age_s": round(i.current_age_seconds),
                "checksum": cur.content_checksum if cur else ""}
        except grpc.RpcError as e:
            err = f"{e.code().name}: {e.details()}"
    print(json.dumps({"target": target, "versions": seen, "error": err}))
PY
)

kube=0; ns=(); selector="app.kubernetes.io/name=quiver"; container=quiver
while getopts "kn:l:c:" opt; do
  case $opt in
    k) kube=1 ;;
    n) ns=(-n "$OPTARG") ;;
    l) selector=$OPTARG ;;
    c) container=$OPTARG ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))

lines=$(
  if [ "$kube" = 1 ]; then
    for pod in $(kubectl get pods "${ns[@]}" -l "$selector" --field-selector=status.phase=Running -o name); do
      kubectl exec "${ns[@]}" "$pod" -c "$container" -- python -c "$ASK" "$CONNECTIONS" 127.0.0.1:50051 \
        | sed "s|\"target\": \"127.0.0.1:50051\"|\"target\": \"${pod#pod/}\"|" \
        || echo "{\"target\": \"${pod#pod/}\", \"versions\": {}, \"error\": \"kubectl exec failed\"}"
    done
  else
    [ $# -gt 0 ] || { sed -n '2,12p' "$0" >&2; exit 2; }
    "$PYTHON" -c "$ASK" "$CONNECTIONS" "$@"
  fi
)

python3 - "$lines" <<'PY'
import json, sys
rows = [json.loads(line) for line in sys.argv[1].splitlines() if line.strip()]
if not rows:
    sys.exit("no quiver replicas found")
current, failed = set(), False
for r in rows:
    if r["error"] and not r["versions"]:
        failed = True
        print(f"{r['target']:<40} NO ANSWER  {r['error']}")
    for v, info in sorted(r["versions"].items()):
        current.add(v)
        print(f"{r['target']:<40} {v:<32} age {info['age_s']:>7}s  loaded {','.join(info['loaded'])}"
              f"  {info['checksum'][:19]}")
if len(current) > 1:
    print(f"DIFFER: {len(current)} versions served: {', '.join(sorted(current))}")
    sys.exit(1)
if failed:
    sys.exit(2)
print(f"OK: all {len(rows)} replicas serve {current.pop() if current else '-'}")
PY

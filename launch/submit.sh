#!/usr/bin/env bash
# Submit an rlmaml training run to a running Ray cluster as a Ray job.
#
#   launch/submit.sh PRESET [dotted.overrides ...] [--resume RUN_DIR]
#
# It runs, from the repository root,
#   ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
#       rlmaml train PRESET [overrides ...] --address auto
# so the cluster runs the code of this checkout (uploaded as the job's
# working directory) against the rlmaml installed on the nodes.
#
# 127.0.0.1:8265 is the head's dashboard / Jobs API as seen through a tunnel;
# the head binds it to 127.0.0.1 and it must never face the internet.  Open
# the tunnel first, in another terminal, and leave it running:
#   ray dashboard launch/aws.yaml        # or gcp.yaml / local.yaml (SSH -L 8265)
#   kubectl -n rlmaml port-forward svc/<raycluster>-head-svc 8265:8265   # KubeRay
#
# Token authentication stays on: RAY_AUTH_MODE defaults to "token" and the
# token comes from RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token
# (the file `ray up` copied to the nodes).
#
# Environment:
#   RLMAML_DASHBOARD_URL  Jobs API address (default http://127.0.0.1:8265)
#   RLMAML_REMOTE_RUNS    where run directories go on the head when no
#                         run.dir=... override is given
#                         (default /home/ubuntu/rlmaml-runs)
#   RLMAML_NO_WAIT=1      submit and return instead of streaming the logs
set -euo pipefail

usage() {
    cat <<'EOF'
usage: launch/submit.sh PRESET [dotted.overrides ...] [--resume RUN_DIR]

Submit `rlmaml train PRESET ... --address auto` to the Ray cluster whose Jobs
API is tunnelled to 127.0.0.1:8265 (`ray dashboard launch/aws.yaml`).

examples:
  launch/submit.sh halfcheetah-vel
  launch/submit.sh ant-dir rl.num_workers=48 run.dir=/home/ubuntu/rlmaml-runs/ant-dir-1
  launch/submit.sh halfcheetah-vel --resume /home/ubuntu/rlmaml-runs/halfcheetah-vel-20260101-120000

environment: RLMAML_DASHBOARD_URL (default http://127.0.0.1:8265),
RLMAML_REMOTE_RUNS (default /home/ubuntu/rlmaml-runs), RLMAML_NO_WAIT=1,
RAY_AUTH_MODE (default token), RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH.
EOF
}

if [[ $# -eq 0 ]]; then
    usage >&2
    exit 2
fi
case "$1" in
    -h|--help) usage; exit 0 ;;
    -*) echo "submit.sh: the first argument must be a preset, not '$1'" >&2; usage >&2; exit 2 ;;
esac

preset="$1"
dashboard_url="${RLMAML_DASHBOARD_URL:-http://127.0.0.1:8265}"
remote_runs="${RLMAML_REMOTE_RUNS:-/home/ubuntu/rlmaml-runs}"

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
if [[ "$RAY_AUTH_MODE" == "token" && -z "${RAY_AUTH_TOKEN:-}" ]]; then
    token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [[ ! -s "$token_file" ]]; then
        echo "submit.sh: no Ray auth token at $token_file (and RAY_AUTH_TOKEN is unset)." >&2
        echo "  Use the token the cluster was started with: the file 'ray up' copied," >&2
        echo "  or for KubeRay the Secret named after the RayCluster (see launch/README.md)." >&2
        exit 1
    fi
fi

# Without run.dir the run would land in the job's temporary working directory
# on the head and vanish with it; give it a stable place unless the caller
# chose one or is resuming.
has_run_dir=0
for arg in "$@"; do
    case "$arg" in
        run.dir=*|--resume|--resume=*) has_run_dir=1 ;;
    esac
done
extra=()
if [[ $has_run_dir -eq 0 ]]; then
    run_dir="$remote_runs/$preset-$(date -u +%Y%m%d-%H%M%S)"
    extra+=("run.dir=$run_dir")
    echo "submit.sh: run directory on the head: $run_dir" >&2
fi

wait_flag=()
if [[ "${RLMAML_NO_WAIT:-0}" == "1" ]]; then
    wait_flag+=(--no-wait)
fi

# --working-dir . is this checkout, whatever directory the script was called from.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

exec ray job submit \
    --address "$dashboard_url" \
    --working-dir . \
    --runtime-env-json '{"excludes": [".git"]}' \
    ${wait_flag[@]+"${wait_flag[@]}"} \
    -- rlmaml train "$@" ${extra[@]+"${extra[@]}"} --address auto

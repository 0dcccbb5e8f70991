#!/usr/bin/env bash
# A real deployment on this machine's loopback: a SuperLink with TLS and SuperNode
# authentication, two registered sites with their own budgets and ledgers, a two-round DP job
# with secure aggregation launched with `flwr run`, the audit of every ledger, and two intruders
# that must be refused.
# Every process it starts is stopped by its process id when it ends.
# Usage: bash scripts/deploy-loopback.sh [WORKDIR]   (default runs/deployment; wiped first)
# JOB="KEY=VALUE ..." adds to the job's run config (keys not set above: another scenario's settings, e.g. the
# entity-recognition job); INTRUDERS=0 skips step 7; PORT (default 29092) moves the four ports it uses (PORT, PORT+2 to PORT+4).
set -euo pipefail
cd "$(dirname "$0")/.."
APP=$PWD
D=$(python3 -c 'import os,sys; print(os.path.abspath(sys.argv[1]))' "${1:-runs/deployment}")
PORT=${PORT:-29092}  # the SuperLink; the SuperNodes take PORT+2, PORT+3 and PORT+4
export PATH="$APP/.venv/bin:$PATH" FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
rm -rf "$D"; mkdir -p "$D/logs" "$D/flwr-home"
PIDS=()
stop_all() {  # newest first; each runs in its own session (setsid), so its group id is its pid
  for ((k=${#PIDS[@]}-1; k>=0; k--)); do
    p=${PIDS[k]}
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 -- "-$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$p" 2>/dev/null || true
  done
  PIDS=()
}
trap stop_all EXIT
step() { printf '\n== %s\n' "$*"; }

step "1. keys: CA, SuperLink certificate, SuperNode keys (site-0, site-1, and an intruder never registered)"
fedshield keys create --dir "$D/keys" --sites site-0,site-1,intruder --tls --superlink "127.0.0.1:$PORT" \
  > "$D/logs/keys.txt"
T=$D/keys/tls N=$D/keys/supernode

step "2. SuperLink with TLS and SuperNode authentication"
FLWR_HOME=$D/flwr-home setsid flower-superlink --ssl-ca-certfile "$T/ca.crt" --ssl-certfile "$T/server.crt" \
  --ssl-keyfile "$T/server.key" --enable-supernode-auth --host 127.0.0.1 --port "$PORT" \
  --database "$D/superlink.db" --disable-runtime-dependency-installation > "$D/logs/superlink.log" 2>&1 &
PIDS+=($!)
python3 - "$T/ca.crt" "$PORT" <<'EOF'
import ssl, sys, time, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
for _ in range(300):
    try:
        urllib.request.urlopen(f"https://127.0.0.1:{sys.argv[2]}/health", context=ctx, timeout=2)
        sys.exit(0)
    except OSError:
        time.sleep(0.2)
sys.exit("SuperLink did not become ready")
EOF

step "3. register the two sites' SuperNode keys"
cat > "$D/flwr-home/config.toml" <<EOF
[superlink]
default = "fedshield"

[superlink.fedshield]
address = "127.0.0.1:$PORT"
root-certificates = "$T/ca.crt"
EOF
for i in 0 1; do
  FLWR_HOME=$D/flwr-home flwr supernode register "$N/site-$i.pub" fedshield --name "site-$i"
done

step "4. each site starts its SuperNode: its data, budget and ledger stay at the site"
for i in 0 1; do
  mkdir -p "$D/sites/site-$i/flwr-home"
  FLWR_HOME=$D/sites/site-$i/flwr-home setsid flower-supernode --root-certificates "$T/ca.crt" \
    --superlink "127.0.0.1:$PORT" --auth-supernode-private-key "$N/site-$i.key" \
    --node-config "partition-id=$i num-partitions=2 site-name=\"site-$i\" state-dir=\"$D/sites/site-$i\" budget-epsilon=1.0 budget-delta=1e-5 require-dp=true" \
    --host 127.0.0.1 --port $((PORT + 2 + i)) > "$D/logs/supernode-$i.log" 2>&1 &
  PIDS+=($!)
done
online=0
for _ in $(seq 1 300); do
  [ "$(grep -l 'SuperNode ID:' "$D"/logs/supernode-{0,1}.log 2>/dev/null | wc -l)" = 2 ] && { online=1; break; }
  sleep 0.2
done
[ $online = 1 ] || { tail -5 "$D"/logs/supernode-*.log; echo "the SuperNodes did not come online"; exit 1; }

step "5. a two-round DP job with secure aggregation, launched with flwr run"
FLWR_HOME=$D/flwr-home timeout 600 flwr run "$APP" fedshield \
  --run-config "rounds=2 sites=2 secure-aggregation=true out='$D/server' ${JOB:-}" --stream > "$D/logs/run.log" 2>&1
run_id=$(grep -oE 'Successfully started run [0-9]+' "$D/logs/run.log" | awk '{print $4}')
status=$(FLWR_HOME=$D/flwr-home flwr ls fedshield --run-id "$run_id" --format json \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["runs"][0]["status"])')
echo "run $run_id: $status"
[ "$status" = "finished:completed" ] || { tail -40 "$D/logs/run.log"; exit 1; }

step "6. the auditor verifies every ledger with the public keys it was given"
mkdir -p "$D/auditor-keys"
cp "$D"/sites/site-*/site-*.pub "$D/server/keys/server.pub" "$D/auditor-keys/"
fedshield audit "$D/server/server/ledger.jsonl" "$D"/sites/site-{0,1}/ledger.jsonl --keys "$D/auditor-keys" \
  --plot "$D/audit.png" | tee "$D/logs/audit.txt"

[ "${INTRUDERS:-1}" = 0 ] && { step "done: logs in $D/logs"; exit 0; }
step "7. intruders are refused: an unregistered SuperNode, and one without the CA certificate"
set +e
FLWR_HOME=$D/flwr-home-x timeout 60 flower-supernode --root-certificates "$T/ca.crt" --superlink "127.0.0.1:$PORT" \
  --auth-supernode-private-key "$N/intruder.key" --node-config "partition-id=0 num-partitions=2" \
  --host 127.0.0.1 --port $((PORT + 4)) --max-retries 2 --max-wait-time 10 > "$D/logs/unregistered.log" 2>&1
echo "unregistered SuperNode: exit $? ($(grep -m1 -o 'Failed to activate SuperNode' "$D/logs/unregistered.log"))"
FLWR_HOME=$D/flwr-home-x timeout 60 flower-supernode --superlink "127.0.0.1:$PORT" \
  --auth-supernode-private-key "$N/site-0.key" --node-config "partition-id=0 num-partitions=2" \
  --host 127.0.0.1 --port $((PORT + 4)) --max-retries 2 --max-wait-time 10 > "$D/logs/no-ca.log" 2>&1
echo "SuperNode without the CA certificate: exit $? ($(grep -m1 -o 'CERTIFICATE_VERIFY_FAILED' "$D/logs/no-ca.log"))"
set -e
step "done: logs in $D/logs"

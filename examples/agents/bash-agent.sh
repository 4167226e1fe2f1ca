#!/usr/bin/env bash
# A CFN agent in bash with plain redis-cli (seed: "CLI Coordination").
#
# Started by `cfn spawn-agent AGENT TASK --command 'bash examples/agents/bash-agent.sh'`
# (or any spawner), it gets AGENT_ID, TASK_ID, MODE, PROVIDER and CFN_AGENT_CONTEXT
# (the seed's CLI context JSON) in its environment, and REDISCLI_AUTH when Redis
# has a password (with per-agent ACL users, the password of the agent's own user,
# whose name `rcli` passes as --user from the context's cfn.redis.username). It
#   1. reads its context (python3 parses the JSON; jq is not required),
#   2. heartbeats: SET swarm:{task}:heartbeat:{agent} {ts,pid,status} PX 2*interval,
#   3. does a small real piece of work in its workspace: writes a report file
#      listing the workspace, and checks it reads back,
#   4. honours a `stop` signal queued on swarm:{task}:signal:{agent},
#   5. reports with the seed's signal_completion: LPUSH coord:{task}:complete
#      "{agent}:success" and the JSON payload (with a confidence) on
#      coord:{task}:payload:{agent}.
# BASH_AGENT_CONFIDENCE overrides the confidence it reports (default 0.85).

set -euo pipefail

: "${AGENT_ID:?AGENT_ID required}"
: "${TASK_ID:?TASK_ID required}"
: "${CFN_AGENT_CONTEXT:?CFN_AGENT_CONTEXT required (path to the context JSON)}"

# --- 1. context -------------------------------------------------------------------
eval "$(python3 - "$CFN_AGENT_CONTEXT" <<'PY'
import json, shlex, sys
ctx = json.load(open(sys.argv[1]))
cfn = ctx.get("cfn", {})
values = {
    "CTX_TASK_ID": ctx["task_id"],
    "CTX_AGENT_ID": ctx["agent_id"],
    "WORKSPACE": ctx["workspace"],
    "REDIS_HOST": ctx["coordination"]["redis"]["host"],
    "REDIS_PORT": ctx["coordination"]["redis"]["port"],
    "CHANNEL_COMPLETE": ctx["coordination"]["channels"]["complete"],
    "CHANNEL_ERROR": ctx["coordination"]["channels"]["error"],
    "HB_KEY": cfn["heartbeat"]["key"],
    "HB_INTERVAL": cfn["heartbeat"]["interval"],
    "HB_TTL_MS": cfn["heartbeat"]["ttl_ms"],
    "SIGNAL_KEY": cfn["signal_key"],
    "PAYLOAD_KEY": cfn["payload_key"],
    "REDIS_DB": cfn.get("redis", {}).get("db", 0),
    "REDIS_USER": cfn.get("redis", {}).get("username", ""),
}
for name, value in values.items():
    print(f"{name}={shlex.quote(str(value))}")
PY
)"

if [ "$CTX_TASK_ID" != "$TASK_ID" ] || [ "$CTX_AGENT_ID" != "$AGENT_ID" ]; then
  echo "[ERROR] context is for $CTX_AGENT_ID/$CTX_TASK_ID, not $AGENT_ID/$TASK_ID" >&2
  exit 2
fi

rcli() {
  local args=(-h "$REDIS_HOST" -p "$REDIS_PORT" -n "$REDIS_DB" --no-auth-warning)
  if [ -n "$REDIS_USER" ]; then args+=(--user "$REDIS_USER"); fi
  redis-cli "${args[@]}" "$@"   # the password, if any, comes from REDISCLI_AUTH
}

# --- 2. heartbeat -------------------------------------------------------------------
heartbeat() {
  rcli SET "$HB_KEY" "{\"ts\":$(date +%s.%N),\"pid\":$$,\"status\":\"$1\"}" PX "$HB_TTL_MS" >/dev/null
}
heartbeat running
# The beat loop sleeps in the background so a TERM ends it at once; a TERM that
# arrives during a beat waits for that beat's redis-cli to finish, so once
# stop_beats returns no "running" beat can land after the final one.
( trap 'kill "$nap" 2>/dev/null; exit 0' TERM
  while :; do
    sleep "$HB_INTERVAL" & nap=$!
    wait "$nap"
    heartbeat running || true
  done ) &
HB_LOOP=$!
stop_beats() {
  kill "$HB_LOOP" 2>/dev/null || true
  wait "$HB_LOOP" 2>/dev/null || true
}
trap stop_beats EXIT

# The seed's signal_completion, verbatim but for redis-cli's connection flags.
signal_completion() {
  local task_id="$1"
  local agent_id="$2"
  local result="${3:-success}"
  local payload="$4"

  rcli LPUSH "coord:${task_id}:complete" "$agent_id:$result" >/dev/null

  if [ -n "$payload" ]; then
    rcli LPUSH "coord:${task_id}:payload:${agent_id}" "$payload" >/dev/null
  fi
}

# --- 4. a stop signal queued before we start counts too -----------------------------
signal="$(rcli RPOP "$SIGNAL_KEY")"
if [[ "$signal" == *'"type": "stop"'* || "$signal" == stop ]]; then
  stop_beats
  heartbeat stopped
  signal_completion "$TASK_ID" "$AGENT_ID" stopped \
    "{\"agent_id\":\"$AGENT_ID\",\"status\":\"stopped\",\"reason\":\"stop signal\"}"
  echo "stopped on request"
  exit 0
fi

# --- 3. the work ------------------------------------------------------------------------
report="$WORKSPACE/bash-agent-$AGENT_ID.txt"
{
  echo "agent $AGENT_ID of task $TASK_ID (mode ${MODE:-cli}, provider ${PROVIDER:-zai})"
  echo "workspace files:"
  find "$WORKSPACE" -maxdepth 1 -type f ! -name 'bash-agent-*' -printf '  %f %s bytes\n' | sort
} > "$report"
lines=$(wc -l < "$report")
echo "wrote $report ($lines lines)"

# --- 5. report ---------------------------------------------------------------------------
confidence="${BASH_AGENT_CONFIDENCE:-0.85}"
if ! grep -q "agent $AGENT_ID" "$report"; then
  confidence=0.1
fi
stop_beats
heartbeat done
payload="{\"agent_id\":\"$AGENT_ID\",\"confidence\":$confidence,\"deliverables\":[\"$(basename "$report")\"],\"lines\":$lines}"
signal_completion "$TASK_ID" "$AGENT_ID" success "$payload"
echo "reported success with confidence $confidence"

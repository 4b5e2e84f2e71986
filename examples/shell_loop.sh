#!/usr/bin/env bash
# A complete training loop in bash alone: an algorithm publishes a prompt, enqueues tasks and
# waits; two runner loops dequeue, add a span and a reward, and complete. Needs agl and jq.
#
#   examples/shell_loop.sh [STORE_DIR] [TASKS]
set -euo pipefail

export AGL_STORE="${1:-runs/shell-loop}"
TASKS="${2:-6}"

agl init "$AGL_STORE"
agl resources add --template "Answer briefly: {any_question}" >/dev/null

runner() {  # one runner: claim work until the queue stays empty for 3 seconds
  local worker="$1" r rid aid
  while r=$(agl dequeue --worker-id "$worker" --wait 3); do
    rid=$(jq -r .rollout_id <<<"$r")
    aid=$(jq -r .attempt.attempt_id <<<"$r")
    question=$(jq -r .input <<<"$r")
    # "Call the model": record what would be sent, then score the answer.
    jq -nc --arg q "$question" '{name: "openai.chat.completion", attributes: {"gen_ai.prompt.0.content": $q}}' \
      | agl spans add "$rid" "$aid" >/dev/null
    agl reward "$rid" "0.${#question}" --attempt "$aid" >/dev/null
    agl complete "$rid" "$aid" >/dev/null
    echo "[$worker] $rid done" >&2
  done
}

runner Worker-0 & r0=$!
runner Worker-1 & r1=$!

ids=()
for i in $(seq 1 "$TASKS"); do
  ids+=("$(agl enqueue "\"question number $i\"" --mode train | jq -r .rollout_id)")
done
echo "[Algo] queued ${ids[*]}" >&2

status=0
agl wait "${ids[@]}" --timeout 60 >/dev/null || status=$?
for rid in "${ids[@]}"; do
  reward=$(agl spans list "$rid" | jq -s '[.[] | .attributes["agentlightning.reward.0.value"] // empty] | last')
  echo "[Algo] $rid reward $reward"
done
wait "$r0" "$r1"
exit "$status"

#!/usr/bin/env bash
# WarrenMQ vs RabbitMQ on this machine: the scenario set S1-S7 (+S3b) of
# ../shared/bench/run_scenarios.sh (beside the checkout; BENCH_DIR) against both brokers, alternating
# A B A B, then one table with each headline figure and the WarrenMQ/RabbitMQ ratio.
#
# usage: tests/bench/side_by_side.sh
# env:
#   ROUNDS        rounds of (warren, rabbit) runs (default 2)
#   DURATION, DRAIN, ONLY, QUIET_MAX, QUIET_TIMEOUT, OTHER_MAX, RETRIES
#                 passed to run_scenarios.sh (e.g. DURATION=2s ONLY="S1" for a smoke run)
#   WARREN_AMQP_PORT / WARREN_HTTP_PORT / WARREN_RAFT_PORT
#                 ports of the WarrenMQ node started here (default 5680/15680/25680)
#   RABBIT_URL    default amqp://guest:guest@127.0.0.1:5673/ (anchors/rabbitmq.sh);
#                 a RabbitMQ already listening there is used and left running,
#                 otherwise one is started and stopped at the end
#   BENCH_DIR     default ../shared/bench beside the checkout;  RESULTS_DIR default $BENCH_WORK/results
#   RUN_PREFIX    result file prefix (default sbs-<UTC time>)
# Each run writes RESULTS_DIR/<RUN_PREFIX>-{warren,rabbit}-r<N>.jsonl; the table is
# tests/bench/compare.py over those files.  The WarrenMQ node runs from this
# checkout with a fresh data dir under a temp dir, removed at the end.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
BENCH_DIR=${BENCH_DIR:-$REPO/../shared/bench}
WORK=${BENCH_WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/warren-bench}
export RESULTS_DIR=${RESULTS_DIR:-$WORK/results}
ROUNDS=${ROUNDS:-2}
WPORT=${WARREN_AMQP_PORT:-5680}
WHTTP=${WARREN_HTTP_PORT:-15680}
WRAFT=${WARREN_RAFT_PORT:-25680}
WARREN_URL="amqp://guest:guest@127.0.0.1:$WPORT/"
RABBIT_URL=${RABBIT_URL:-amqp://guest:guest@127.0.0.1:5673/}
RPORT=$(printf '%s' "$RABBIT_URL" | sed -E 's#^amqp://([^@]*@)?[^:/]*:?([0-9]*).*#\2#'); RPORT=${RPORT:-5672}
PREFIX=${RUN_PREFIX:-sbs-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$RESULTS_DIR"

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# generator and RabbitMQ: build only what is missing
if [ ! -x "${AMQPBENCH:-$WORK/bin/amqpbench}" ] || ! command -v rabbitmq-server >/dev/null 2>&1; then
  "$BENCH_DIR/build.sh" --anchors
fi

TMP=$(mktemp -d /tmp/warren-sbs.XXXXXX)
WPID=""; STARTED_RABBIT=0
cleanup() {
  if [ -n "$WPID" ] && kill -0 "$WPID" 2>/dev/null; then
    kill -TERM "$WPID"; wait "$WPID" 2>/dev/null || true
  fi
  if [ "$STARTED_RABBIT" = 1 ]; then "$BENCH_DIR/anchors/rabbitmq.sh" stop >/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

if listening "$WPORT"; then
  echo "port $WPORT is taken: set WARREN_AMQP_PORT (and _HTTP_/_RAFT_PORT)" >&2; exit 2
fi
(cd "$REPO" && exec python3 -m node --data-dir "$TMP/data" --amqp-host 127.0.0.1 \
   --amqp-port "$WPORT" --http-host 127.0.0.1 --http-port "$WHTTP" \
   --raft-address "127.0.0.1:$WRAFT" --log-level warning) >"$TMP/warren.log" 2>&1 &
WPID=$!
for _ in $(seq 1 150); do listening "$WPORT" && break; kill -0 "$WPID" || break; sleep 0.2; done
listening "$WPORT" || { echo "WarrenMQ did not start:" >&2; cat "$TMP/warren.log" >&2; exit 1; }
echo "# WarrenMQ pid $WPID on $WARREN_URL ($(git -C "$REPO" rev-parse --short HEAD))" >&2

if ! listening "$RPORT"; then
  "$BENCH_DIR/anchors/rabbitmq.sh" start >&2
  STARTED_RABBIT=1
fi
RPID=$("$BENCH_DIR/anchors/rabbitmq.sh" pid 2>/dev/null || true)
echo "# RabbitMQ pid ${RPID:-?} on $RABBIT_URL" >&2

WFILES=(); RFILES=()
for r in $(seq 1 "$ROUNDS"); do
  echo "### round $r/$ROUNDS: WarrenMQ" >&2
  BROKER_PID=$WPID "$BENCH_DIR/run_scenarios.sh" "$WARREN_URL" "$PREFIX-warren-r$r" >/dev/null
  WFILES+=("$RESULTS_DIR/$PREFIX-warren-r$r.jsonl")
  echo "### round $r/$ROUNDS: RabbitMQ" >&2
  BROKER_PID=${RPID:-} "$BENCH_DIR/run_scenarios.sh" "$RABBIT_URL" "$PREFIX-rabbit-r$r" >/dev/null
  RFILES+=("$RESULTS_DIR/$PREFIX-rabbit-r$r.jsonl")
done

echo "# $PREFIX: $ROUNDS round(s), DURATION=${DURATION:-10s}, results in $RESULTS_DIR" >&2
python3 "$REPO/tests/bench/compare.py" --warren "${WFILES[@]}" --rabbit "${RFILES[@]}"

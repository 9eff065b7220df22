# Sourced by scripts/check-engines.sh and scripts/check-lmms-eval.sh: wait for a server started in the background.
#
# wait_for_health PID PORT TRIES PAUSE NAME LOG
#   returns 0 once http://127.0.0.1:PORT/health answers; 1 when the process PID exits first (then
#   prints "FAIL NAME exited" and the last lines of LOG) or after TRIES checks PAUSE seconds apart.
wait_for_health() {
  local server=$1 port=$2 tries=$3 pause=$4 name=$5 log=$6
  for _ in $(seq "$tries"); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null && return 0
    kill -0 "$server" 2>/dev/null || { echo "FAIL $name exited; last lines of $log:"; tail -5 "$log"; return 1; }
    sleep "$pause"
  done
  return 1
}

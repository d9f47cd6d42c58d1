#!/usr/bin/env bash
# The prepared GPU run: SmolLM2-135M + LoRA quality, every arm x seed, on one H200 (issue 22).
#
# Here, once:   make smollm2 && .venv/bin/python benchmarks/gpu/carry.py prepare
# Then two device calls back to back (the machine stays warm 30 s; each call <= 64 MiB):
#   run(command="bash benchmarks/gpu/run.sh", carry=[".whl", ".gpu/part0"], timeout_s=60)
#   run(command="bash benchmarks/gpu/run.sh", carry=[".gpu/part1"], timeout_s=600)
# The first call stashes its part and installs the wheels outside the repository (they survive
# while the machine is warm) and stops; the second joins the model and trains. One call is
# enough where 64 MiB holds the whole model (a smaller --model).
#
# CPU rehearsal (make gpu-rehearsal): PYTHON=.venv/bin/python OUT=/tmp/x bash benchmarks/gpu/run.sh --toy
#
# Environment: PYTHON (default python3), CARRY_DIR (where .whl/ and .gpu/ are; default the
# repository root), OUT (results folder; the device tool sets it), STASH
# (default /tmp/colm_gpu), GPU_BUDGET_S (wall-clock cap of the training, default 500 s: the
# device allows 600 s a call; seeds finished before the cap are kept),
# ARMS / SEEDS / STEPS / PARALLEL (override the sizing below).
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${OUT:-/tmp/colm_gpu_out}
STASH=${STASH:-/tmp/colm_gpu}
CARRY_DIR=${CARRY_DIR:-$PWD}
export CARRY_DIR
TOY=0
[ "${1:-}" = "--toy" ] && TOY=1
mkdir -p "$OUT" "$STASH/parts"
exec > >(tee -a "$OUT/run_log.txt") 2>&1
echo "run.sh $(date -u +%FT%TZ) toy=$TOY on $(hostname)"

# 1. Keep what this call carried: model parts and wheels outlive the repository copy.
for f in "$CARRY_DIR"/.gpu/part*/*; do [ -f "$f" ] && cp -f "$f" "$STASH/parts/"; done
# The rehearsal's interpreter is not the device's 3.12: there the wheels are installed as they
# would be for 3.12 (which checks they are installable) but the venv's own packages are used.
SITE="$STASH/site"
INSTALL=(--no-index --no-deps --no-compile --no-cache-dir --upgrade)
[ "$TOY" = 1 ] && SITE="$STASH/site-cp312" && INSTALL+=(--only-binary=:all: --python-version 3.12
  --implementation cp --abi cp312 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64)
if ls "$CARRY_DIR"/.whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q "${INSTALL[@]}" --target "$SITE" "$CARRY_DIR"/.whl/*.whl || { echo "FAILED: wheel install"; exit 1; }
  cp -f "$CARRY_DIR"/.whl/*.whl "$STASH/" 2>/dev/null
fi
[ "$TOY" = 1 ] && SITE=""
export PYTHONPATH="$PWD/src${SITE:+:$SITE}${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

# 2. The model: wait for the other part(s) if they have not come yet.
"$PY" benchmarks/gpu/carry.py join --parts "$STASH/parts" --out "$STASH/model.gguf"
case $? in
  0) ;;
  3) echo "SUMMARY waiting: run again carrying the next part"; exit 0 ;;
  *) echo "FAILED: model join"; exit 1 ;;
esac

# 3. Requirements against this machine, before any training time is spent.
ls "$STASH"/*.whl >/dev/null 2>&1 && mkdir -p "$CARRY_DIR/.whl" && cp -f "$STASH"/*.whl "$CARRY_DIR/.whl/"
"$PY" benchmarks/gpu/carry.py check-env || { echo "FAILED: requirements (see above)"; exit 1; }
[ "$TOY" = 1 ] || nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv,noheader || true

# 4. The arms, one seed at a time (every arm of a seed in its own process, in parallel: a 135M
#    model leaves an H200 mostly idle, and 16 CPU cores drive ~6 processes well). Sizing (issue
#    22): 3 seeds, 300 steps, b = 16, length 512, bf16. A wave that would not fit in what is left
#    of GPU_BUDGET_S (judged by the first wave's time) is skipped and said so, and the time cap
#    stops a wave that overruns: the seeds already finished are kept in the results file.
BUDGET=${GPU_BUDGET_S:-500}
[ "$TOY" = 1 ] && BUDGET=${GPU_BUDGET_S:-3600}  # the CPU is slow; nothing is at stake
if [ "$TOY" = 1 ]; then
  ARGS=(--toy --lora-r 2 --max-length 512)
  SEED_LIST=${SEEDS:-0}
else
  ARGS=(--steps "${STEPS:-300}" --batch 16 --max-length 512 --dtype bf16 --parallel "${PARALLEL:-8}"
        --em-per-source 20 --max-new-tokens 256 --threads 1)
  SEED_LIST=${SEEDS:-0,1,2}
fi
[ -n "${ARMS:-}" ] && ARGS+=(--arms "$ARMS")
started=$SECONDS
wave=0
status=0
for seed in ${SEED_LIST//,/ }; do
  used=$((SECONDS - started))
  left=$((BUDGET - used))
  if [ $wave -gt 0 ] && [ $((used / wave)) -gt $left ]; then
    echo "NOTE: seed $seed skipped: a wave took $((used / wave)) s and $left s of the ${BUDGET} s budget are left"
    status=124
    break
  fi
  echo "wave $wave: seed $seed ($left s left)"
  timeout --signal=INT "$left" "$PY" -u benchmarks/pretrained.py --model "$STASH/model.gguf" \
    --workdir "$STASH/work" --out "$OUT/pretrained.json" --seeds "$seed" "${ARGS[@]}"
  status=$?
  [ $status = 124 ] && { echo "NOTE: the time cap (${BUDGET} s) stopped seed $seed; earlier seeds are kept"; break; }
  [ $status = 0 ] || { echo "FAILED: seed $seed exited $status"; break; }
  wave=$((wave + 1))
done

# 5. One line to read first.
"$PY" benchmarks/gpu/carry.py summary "$OUT/pretrained.json"
exit $status

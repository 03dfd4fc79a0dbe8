#!/usr/bin/env bash
# The GPU checks in one run, for a session lent a GPU machine: the CUDA tests and the GPU rows
# of docs/benchmarks.md. With the device tool: run(command="bash benchmarks/gpu.sh",
# timeout_s=580; the steps take at most 530 s); what it writes to $OUT (a log and 4 JSON
# files) comes back.
#
#   DEVICE=cpu QUICK=1 bash benchmarks/gpu.sh     # a dry run of the same commands, tiny sizes
#
# Each step has its own time limit, so one that hangs cannot take the others' time; a step
# that fails is reported and the next one runs. The exit status counts the failed steps.
set -u
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
if [ -n "$(ls -A "$OUT" 2>/dev/null)" ]; then  # never overwrite an earlier run's results
    echo "gpu.sh: $OUT already holds files; set OUT to a new or empty folder" >&2
    exit 2
fi
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/gpu.log"
failed=0

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "== $name: rc $rc" | tee -a "$LOG"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

if [ "${QUICK:-0}" = 1 ]; then
    T=(--batch 2 --context 8 --width 32 --heads 2 --depth 1 --repeats 2 --iters 1)
    BIG=(--batch 2 --context 8 --width 64 --heads 2 --depth 1 --repeats 2 --iters 1)
    IMG=(--batch 2 --size 32 --repeats 2)
else
    T=(--batch 32 --context 256 --width 512 --heads 8 --repeats 21 --iters 5)
    BIG=(--batch 16 --context 512 --width 2048 --heads 16 --repeats 11 --iters 3)
    IMG=(--batch 64 --size 224 --repeats 20)
fi

{ command -v nvidia-smi >/dev/null && nvidia-smi; "$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } >>"$LOG" 2>&1
step cuda-tests 150 "$PY" -m pytest -q -p no:cacheprovider -k "cuda" \
    tests/test_streams.py tests/test_train.py tests/test_cli_inputs.py
step transformer 110 "$PY" benchmarks/bench_transformer.py --device "$DEVICE" \
    --control --floor "${T[@]}" --json "$OUT/transformer.json"
step streams-wide 110 "$PY" benchmarks/bench_transformer.py --device "$DEVICE" \
    --control --floor --only streams "${BIG[@]}" --json "$OUT/streams-wide.json"
step resnet50 80 "$PY" benchmarks/bench_resnet50.py --device "$DEVICE" "${IMG[@]}" \
    --json "$OUT/resnet50.json"
step densenet121 80 "$PY" benchmarks/bench_densenet.py --device "$DEVICE" "${IMG[@]}" \
    --memory profiler --json "$OUT/densenet121.json"
echo "== done: $failed step(s) failed" | tee -a "$LOG"
exit "$failed"

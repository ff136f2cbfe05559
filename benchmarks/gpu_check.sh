#!/usr/bin/env bash
# One command for a GPU machine (issue 6): full-size correctness of every kernel, compute-sanitizer once per kernel
# module, and the timing table; everything lands in $RESULTS (default benchmarks/results, or build/gpu_check when $OUT
# is set). $OUT is the device tool's return folder, which brings back at most 8 files: it gets each stage's log as
# the stage runs (a stage killed at the call's time limit still returns its rows) and, after every stage,
# gpu_check.tar.gz of $RESULTS (build/ survives between calls on a warm machine, so the archive accumulates the
# stages of the session's calls): `tar xzf gpu_check.tar.gz` here, then move what to keep into benchmarks/results.
#
#   bash benchmarks/gpu_check.sh                       # all stages: check sanitize mix bench-float16 bench-bfloat16 decode
#   bash benchmarks/gpu_check.sh bench-float16         # a subset: the device tool allows 10 minutes per call, so run
#   bash benchmarks/gpu_check.sh sanitize mix          #   these three calls there, on the same warm machine (Triton's
#   bash benchmarks/gpu_check.sh decode bench-bfloat16 #   compile and autotune caches carry over between them)
#
# check: every regime at 11008x4096 with the autotuned configs (autotuning them all is slow); bench-* also checks every
# output it times against the reference (full size, every shape, "rel err" column), so a short session can skip it.
# sanitize: pinned configs (64x64 decode and 32-row prefill tiles, the fp16 half-precision paths included) at
# 1000x1152 under compute-sanitizer memcheck, one process per format.
# mix: the decode loops' instruction mix as the GPU's own triton compiles them (tests/kernels/instruction_mix.py), the
# 1-4 token loops also pipelined (--pipelined); and whether a PackedLinear's direct launch equals the autotuner's under
# this machine's triton (tests/kernels/direct_launch_check.py);
# decode: end-to-end tokens/s of Llama-2-7B shapes, eager and CUDA-graph replay (benchmarks/decode.py), also with
# q/k/v and gate/up merged (+merged: four launches per block instead of seven; dense+merged for a fair comparison).
# BENCH_FORMATS=int4,sparse24_int4 bash benchmarks/gpu_check.sh bench-float16   # a subset per call, should the first
#   autotuning of all five formats not fit in one 10-minute call (`python benchmarks/kernels.py --plan` counts it)
# bench-*: also $RESULTS/<report>.crossovers.json, the dispatch table measured here: copy it (fp16's, or the stricter of
# the two; after BENCH_FORMATS subsets, each format's entries from the run that measured it) to
# kernels/crossovers/<GPU name>.json and commit it.
#
# Exit status: non-zero if a correctness check or the sanitizer reports an error (later stages still run).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${OUT:-}" ]; then RESULTS="${RESULTS:-build/gpu_check}"; else RESULTS="${RESULTS:-benchmarks/results}"; fi
mkdir -p "$RESULTS"
STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(check sanitize mix bench-float16 bench-bfloat16 decode)
FORMATS=(int4 sparse24 sparse24_int4 group_sparse_int4 spqr)
status=0

# A regular (not editable) install: the package maps cli/, evals/, kernels/ into llmprune.*, which a bare checkout on
# sys.path does not; the check runs outside the checkout so it sees the installed package.
python3 -m pip install . --no-deps --no-build-isolation -q --root-user-action=ignore || exit 3
(cd /tmp && python3 -c "import llmprune.kernels, triton, torch; print('torch', torch.__version__, 'triton', \
triton.__version__, 'cuda', torch.cuda.is_available())") || exit 3
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$RESULTS/nvidia-smi.csv"

logs() {  # where stage $1's log goes: $RESULTS, and $OUT while the stage runs
  echo "$RESULTS/$1.log"
  [ -n "${OUT:-}" ] && echo "$OUT/$1.log"
}

pack() {  # every result so far, as one file for the device tool's $OUT (written aside, then renamed)
  [ -n "${OUT:-}" ] || return 0
  tar czf "$OUT/gpu_check.tar.gz.tmp" -C "$RESULTS" . && mv "$OUT/gpu_check.tar.gz.tmp" "$OUT/gpu_check.tar.gz"
}

sanitizer() {
  command -v compute-sanitizer 2>/dev/null && return
  for c in /usr/local/cuda*/bin/compute-sanitizer \
           "$(python -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]))' 2>/dev/null)"/nvidia/cuda_sanitizer_api/compute-sanitizer/compute-sanitizer; do
    [ -x "$c" ] && { echo "$c"; return; }
  done
}

for stage in "${STAGES[@]}"; do
  case "$stage" in
    check)
      python benchmarks/kernels.py --check --results "$RESULTS" 2>&1 | tee $(logs check) || status=1 ;;
    sanitize)
      CS="$(sanitizer)"
      if [ -z "$CS" ]; then
        echo "compute-sanitizer not found (install the CUDA toolkit or nvidia-cuda-sanitizer-api-cu12)" \
          | tee $(logs sanitize); status=1
      else
        for fmt in "${FORMATS[@]}"; do  # pinned configs: one compile per kernel, no autotuning under the sanitizer
          "$CS" --tool memcheck --error-exitcode 9 --log-file "$RESULTS/sanitizer-$fmt.log" \
            python benchmarks/kernels.py --check --pinned --formats "$fmt" --dtypes float16 \
            --results "$RESULTS/sanitize" > "$RESULTS/sanitizer-$fmt.out" 2>&1
          rc=$?; echo "compute-sanitizer memcheck $fmt: exit $rc" | tee -a $(logs sanitize)
          [ $rc -eq 0 ] || status=1
        done
      fi ;;
    mix)
      { python tests/kernels/instruction_mix.py --out "$RESULTS/instruction_mix.md" &&
        python tests/kernels/instruction_mix.py --blocks 1,2,4 --pipelined --out "$RESULTS/instruction_mix-pipelined.md" &&
        python tests/kernels/direct_launch_check.py; } \
        2>&1 | tee $(logs mix) || status=1 ;;
    decode)
      python benchmarks/decode.py llama-7b --batch 1,16 \
        --formats sparse24_int4,int4,group_sparse_int4,sparse24_int4+merged,dense+merged \
        --new-tokens 64 --runs 3 --results "$RESULTS" 2>&1 | tee $(logs decode) || status=1 ;;
    bench-float16|bench-bfloat16)
      python benchmarks/kernels.py --bench --dtypes "${stage#bench-}" --results "$RESULTS" \
        ${BENCH_FORMATS:+--formats "$BENCH_FORMATS"} 2>&1 | tee $(logs "$stage") || status=1 ;;
    *) echo "unknown stage '$stage' (use check, sanitize, mix, bench-float16, bench-bfloat16, decode)"; exit 2 ;;
  esac
  pack
done
exit $status

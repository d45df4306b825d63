#!/usr/bin/env bash
# The CPU headline benchmarks of docs/issue 16, side by side in one pytest-benchmark run per thread count:
# ATP (APViT block 4, DeiT-S + EViT) and APP (APViT) against eager / SDPA / torch.compile, fp32 and bf16, forward
# and forward+backward; the full APViT (inference B=8 and B=1, train step B=8) against the official-style fp32
# model. Writes bench/results/cpu-<date>-t<threads>.json and one markdown report for all thread counts.
#
#   bench/cpu_run.sh [THREADS...]        # default: 1 2      (≈ 10 minutes per thread count on 2 cores)
#   TAG=spr bench/cpu_run.sh 1 2         # names the files cpu-<date>-spr-t1.json … (several machines a day)
#
# Run it on a quiet machine: other processes disturb the times (the JSON records the load average).
set -uo pipefail  # a failed case does not stop the other thread counts; the report shows what ran
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
day=$(date +%F)${TAG:+-$TAG}
threads=("${@:-1}")
[ $# -eq 0 ] && threads=(1 2)
jsons=()
for t in "${threads[@]}"; do
  out="bench/results/cpu-$day-t$t"
  OMP_NUM_THREADS=$t python -m pytest bench/test_ops.py bench/test_models.py --benchmark-only -q \
    --bench-threads "$t" --bench-models=apvit --benchmark-max-time=0.5 --benchmark-min-rounds=3 \
    -k "(apvit_b4 or apvit_app or deits_evit or test_model) and not triton and not cuda \
        and not (deits_evit and compile) and not (bf16 and compile) and not (test_model and (compile or graphs or torch-amp or fused-amp-B or -fused-amp]))" \
    --benchmark-json="$out.json" -p no:cacheprovider
  jsons+=("$out.json")
done
python -m bench.report "${jsons[@]}" -o "bench/results/cpu-$day.md" --note "bench/cpu_run.sh ${threads[*]} on $(hostname)"

#!/usr/bin/env bash
# The README's methods table, over-optimisation fits and active-learning curve in one go: the work of
# `benchmarks/rlhf_methods.py --seeds 0 1 2` split into 6 parts of 3 seeds each, all 18 processes side by
# side (for a GPU and 16 cores), then reported as one with --merge.
#
#     benchmarks/methods_frontier.sh [OUT_DIR] [options for every part, e.g. --labels 400]
#
# Each part's log and raw rows go to OUT_DIR (default benchmarks/results/frontier); PYTHON picks the
# interpreter (default .venv/bin/python); CPU_PARTS names parts to keep on the CPU cores beside a busy GPU
# (say, CPU_PARTS=active). A part that fails or is stopped leaves its log, and the merge reports the rest.
set -u
out=${1:-benchmarks/results/frontier}
shift || true
python=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
part() {  # part NAME ARGS...: one rlhf_methods.py run over the 3 seeds, in the background
    local name=$1 where=()
    shift
    [[ " ${CPU_PARTS:-} " == *" $name "* ]] && where=(CUDA_VISIBLE_DEVICES=)  # no GPU visible
    rm -f "$out/$name.json"  # an earlier run's rows must not stand in for a part that fails this time
    env "${where[@]}" OMP_NUM_THREADS=1 "$python" benchmarks/rlhf_methods.py --seeds 0 1 2 --jobs 3 "$@" \
        --out "$out/$name.json" >"$out/$name.log" 2>&1 &
}
rest=("$@")
part offline_and_best_of --methods dpo kto --rl-steps 0 --no-active "${rest[@]}"
part ilql_and_ppo --methods ilql ppo --best-of --curve-n 0 --rl-steps 0 --no-active "${rest[@]}"
part nlpo --methods nlpo --best-of --curve-n 0 --rl-steps 0 --no-active "${rest[@]}"
part critic_free --methods rloo grpo --best-of --curve-n 0 --rl-steps 0 --no-active "${rest[@]}"
part rl_curve --methods --best-of --curve-n 0 --no-active "${rest[@]}"
part active --methods --best-of --curve-n 0 --rl-steps 0 "${rest[@]}"
wait
for log in "$out"/*.log; do echo "== $log: $(grep -c . "$log") lines; last: $(tail -n 1 "$log")"; done
shopt -s nullglob
parts=("$out"/*.json)
(( ${#parts[@]} )) || { echo "no part finished: see the logs above"; exit 1; }
"$python" benchmarks/rlhf_methods.py --merge "${parts[@]}"

# Sourced by scripts/reproduce_*.sh: the repository root as working directory, the environment they
# share (DATA, WORLDSIM, COLLECT_ARGS, TRAIN_ARGS, SHIP_ARGS; see scripts/reproduce_default.sh) and
# collect(), done_or_resume() and ended_at().
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA=${DATA:-data}
WORLDSIM=${WORLDSIM:-worldsim}
read -r -a collect_args <<< "${COLLECT_ARGS:-}"
read -r -a train_args <<< "${TRAIN_ARGS:-}"
read -r -a ship_args <<< "${SHIP_ARGS:-}"

collect() {  # CONFIG NAME [options]: a collection into DATA/NAME (a re-run continues it to its total)
    local config=$1 name=$2
    shift 2
    "$WORLDSIM" collect --config "$config" --out "$DATA/$name" "$@" ${collect_args[@]+"${collect_args[@]}"}
}

done_or_resume() {  # FILE WHAT: exit with a hint when a training step stopped before writing FILE
    if [[ ! -f $1 ]]; then
        echo "$2 stopped before its last step; run this script again to resume it" >&2
        exit 1
    fi
}

ended_at() {  # STEP OUT_DIR CONFIG [key=value ...]: a stage-1 run into OUT_DIR ended at step STEP of its
    # schedule (run.stop_after checkpoints there, then OUT_DIR/FINISH writes its output at that step); a run
    # stopped earlier by a signal writes nothing and resumes exactly on the next call
    local step=$1 out=$2
    shift 2
    [[ -f $out/final.safetensors ]] && return 0
    "$WORLDSIM" train stage1 "$@" "out_dir=$out" run.stop_after="$step" ${train_args[@]+"${train_args[@]}"}
    local at=0
    if [[ -f $out/checkpoint.safetensors ]]; then
        at=$(python -c "from worldsim.checkpoint import read_meta; print(read_meta('$out/checkpoint.safetensors')['step'])")
    fi
    if [[ ! -f $out/final.safetensors && $at -ge $step ]]; then
        touch "$out/FINISH"
        "$WORLDSIM" train stage1 "$@" "out_dir=$out" ${train_args[@]+"${train_args[@]}"}
    fi
}

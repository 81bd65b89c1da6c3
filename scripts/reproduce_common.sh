# Sourced by scripts/reproduce_*.sh: the repository root as working directory, the environment they
# share (DATA, WORLDSIM, COLLECT_ARGS, TRAIN_ARGS, SHIP_ARGS; see scripts/reproduce_default.sh) and
# collect() and done_or_resume().
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

#!/usr/bin/env bash
# Build the Ms. Pac-Man model (assets/mspacman.safetensors) from a clone: the two frameskip-2 collections,
# the stage-1 student of configs/mspacman_student_fs2.yaml trained on them from scratch, and the ship step
# of configs/mspacman.yaml. Only committed configs:
#   configs/collect_mspacman{,_scripted}_fs2.yaml   the data (sticky-random and the maze-walking script)
#   configs/mspacman_student_fs2.yaml               the student (stage 1, 30 steps a second)
#   configs/mspacman.yaml                           the ship step (stage 1, 2 Euler steps, cache 6 + 1)
#
#   scripts/reproduce_mspacman.sh [OUT]   (OUT default runs/mspacman_fs2; OUT and DATA relative to the repo root)
#
# Result: OUT/ship/student.safetensors (playable: python play.py --checkpoint OUT/ship/student.safetensors;
# compare it with worldsim eval before copying it to assets/mspacman.safetensors). The collections take a
# few minutes; the student about 2 hours on 2 cores. Idempotent as scripts/reproduce_default.sh: finished
# steps are skipped and an interrupted one resumes exactly, so after a stop run it again.
#
# Environment: DATA, COLLECT_ARGS, TRAIN_ARGS, SHIP_ARGS, WORLDSIM as in scripts/reproduce_default.sh.
source "$(dirname "$0")/reproduce_common.sh"
OUT=${1:-runs/mspacman_fs2}
FS2="data.paths=[$DATA/mspacman_fs2,$DATA/mspacman_scripted_fs2]"

collect configs/collect_mspacman_fs2.yaml mspacman_fs2
collect configs/collect_mspacman_scripted_fs2.yaml mspacman_scripted_fs2
if [[ ! -f $OUT/final.safetensors ]]; then
    "$WORLDSIM" train stage1 configs/mspacman_student_fs2.yaml "out_dir=$OUT" "$FS2" \
        ${train_args[@]+"${train_args[@]}"}
    if [[ ! -f $OUT/final.safetensors ]]; then
        echo "the student stopped before its last step; run this script again to resume it" >&2
        exit 1
    fi
fi
if [[ ! -f $OUT/ship/student.safetensors ]]; then
    mkdir -p "$OUT/ship/stage1_teacher_forcing"
    cp "$OUT/final.safetensors" "$OUT/ship/stage1_teacher_forcing/final.safetensors"
    "$WORLDSIM" train ship configs/mspacman.yaml "out_dir=$OUT/ship" "$FS2" ${ship_args[@]+"${ship_args[@]}"}
fi
echo "done: $OUT/ship/student.safetensors"

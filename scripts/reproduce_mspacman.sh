#!/usr/bin/env bash
# Build the Ms. Pac-Man model (assets/mspacman.safetensors) from a clone: the two frameskip-2 collections,
# the stage-1 student trained on them from scratch in three legs, and the ship step of configs/mspacman.yaml.
# Only committed configs:
#   configs/collect_mspacman{,_scripted}_fs2.yaml   the data (sticky-random and the maze-walking script)
#   configs/mspacman_student_fs2.yaml               the first leg (stage 1, 30 steps a second, plain loss),
#                                                   ended at step 1,020 of its 3,000
#   configs/mspacman_sprites_fs2.yaml               the second and third legs (the loss weighted near
#                                                   motion; 1,200 and 1,400 steps)
#   configs/mspacman.yaml                           the ship step (stage 1, 2 Euler steps, cache 6 + 1)
#
#   scripts/reproduce_mspacman.sh [OUT]   (OUT default runs/mspacman_fs2; OUT and DATA relative to the repo root)
#
# Result: OUT/ship/student.safetensors (playable: python play.py --checkpoint OUT/ship/student.safetensors;
# compare it with worldsim eval before copying it to assets/mspacman.safetensors). The collections take a
# few minutes; the student about 2.5 hours on 2 cores. Idempotent as scripts/reproduce_default.sh: finished
# steps are skipped and an interrupted one resumes exactly, so after a stop run it again.
#
# Environment: DATA, COLLECT_ARGS, TRAIN_ARGS, SHIP_ARGS, WORLDSIM as in scripts/reproduce_default.sh.
source "$(dirname "$0")/reproduce_common.sh"
OUT=${1:-runs/mspacman_fs2}
FS2="data.paths=[$DATA/mspacman_fs2,$DATA/mspacman_scripted_fs2]"

collect configs/collect_mspacman_fs2.yaml mspacman_fs2
collect configs/collect_mspacman_scripted_fs2.yaml mspacman_scripted_fs2
# The first leg ends at step 1,020 of its 3,000 (ended_at: run.stop_after, then FINISH).
if [[ ! -f $OUT/final.safetensors ]]; then
    ended_at 1020 "$OUT" configs/mspacman_student_fs2.yaml "$FS2"
    done_or_resume "$OUT/final.safetensors" "the first leg"
fi
if [[ ! -f $OUT/sprites/final.safetensors ]]; then
    "$WORLDSIM" train stage1 configs/mspacman_sprites_fs2.yaml "out_dir=$OUT/sprites" "$FS2" \
        "init.student=$OUT/final.safetensors" ${train_args[@]+"${train_args[@]}"}
    done_or_resume "$OUT/sprites/final.safetensors" "the second leg"
fi
if [[ ! -f $OUT/sprites2/final.safetensors ]]; then
    "$WORLDSIM" train stage1 configs/mspacman_sprites_fs2.yaml "out_dir=$OUT/sprites2" "$FS2" \
        "init.student=$OUT/sprites/final.safetensors" optim.steps=1400 ${train_args[@]+"${train_args[@]}"}
    done_or_resume "$OUT/sprites2/final.safetensors" "the third leg"
fi
if [[ ! -f $OUT/ship/student.safetensors ]]; then
    mkdir -p "$OUT/ship/stage1_teacher_forcing"
    cp "$OUT/sprites2/final.safetensors" "$OUT/ship/stage1_teacher_forcing/final.safetensors"
    "$WORLDSIM" train ship configs/mspacman.yaml "out_dir=$OUT/ship" "$FS2" ${ship_args[@]+"${ship_args[@]}"}
fi
echo "done: $OUT/ship/student.safetensors"

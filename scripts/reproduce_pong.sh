#!/usr/bin/env bash
# Build the Pong model (assets/pong.safetensors once it ships) from a clone: the two frameskip-4 Pong
# collections and the stage-1 student of configs/pong.yaml on them, then the two frameskip-2 collections,
# the two legs that continue that student on them (init.retime), the two legs of its pixel refiner and
# the ship step. Only committed configs:
#   configs/collect_pong{,_scripted}{,_fs2}.yaml   the data
#   configs/pong.yaml                               the frameskip-4 student (stage 1) and the ship step
#   configs/pong_student_fs2.yaml                   the frameskip-2 legs
#   configs/pong_refiner_fs2.yaml                   the refiner legs
#
#   scripts/reproduce_pong.sh [OUT]       (OUT default runs/pong; OUT and DATA are relative to the repo root)
#
# Result: OUT/ship/student.safetensors (playable: python play.py --checkpoint OUT/ship/student.safetensors;
# compare it with worldsim eval before copying it to assets/pong.safetensors). About 2.8 hours on
# 2 cores (4.0 CPU-hours), the collections a few minutes. Idempotent as scripts/reproduce_default.sh:
# finished steps are skipped and an interrupted one resumes exactly, so after a stop run it again.
#
# Environment: DATA, COLLECT_ARGS, TRAIN_ARGS, SHIP_ARGS, WORLDSIM as in scripts/reproduce_default.sh.
source "$(dirname "$0")/reproduce_common.sh"
OUT=${1:-runs/pong}
FS4="data.paths=[$DATA/pong,$DATA/pong_scripted]"
FS2="data.paths=[$DATA/pong_fs2,$DATA/pong_scripted_fs2]"

# -- frameskip 4: the student learns to draw Pong (1,850 steps at a constant rate)
collect configs/collect_pong.yaml pong --steps 100000
collect configs/collect_pong_scripted.yaml pong_scripted --steps 30000
fs4=$OUT/stage1_teacher_forcing/final.safetensors
if [[ ! -f $fs4 ]]; then
    "$WORLDSIM" train pipeline --threads 2 configs/pong.yaml "out_dir=$OUT" "$FS4" stages=[stage1] \
        stage1.optim.steps=1850 ${train_args[@]+"${train_args[@]/#/stage1.}"}
    done_or_resume "$fs4" "the frameskip-4 student"
fi
# -- frameskip 2 (30 steps a second): two collections, that student continued on them, shipped
collect configs/collect_pong_fs2.yaml pong_fs2
collect configs/collect_pong_scripted_fs2.yaml pong_scripted_fs2
leg() {  # NAME INIT THREADS CONFIG [key=value ...]: a frameskip-2 stage-1 leg into OUT/NAME from the student INIT
    local name=$1 from=$2 threads=$3 config=$4
    shift 4
    if [[ ! -f $OUT/$name/final.safetensors ]]; then
        "$WORLDSIM" train stage1 --threads "$threads" "$config" "out_dir=$OUT/$name" \
            "init.student=$from" "$FS2" "$@" \
            ${train_args[@]+"${train_args[@]}"}
        done_or_resume "$OUT/$name/final.safetensors" "leg $name"
    fi
}
student=configs/pong_student_fs2.yaml refiner=configs/pong_refiner_fs2.yaml
leg fs2 "$fs4" 1 $student                                     # 2,400 steps, cosine from 3e-4
leg fs2b "$OUT/fs2/final.safetensors" 2 $student optim.steps=3600   # 3,600 more, cosine from 3e-4
# the pixel refiner, trained alone: 800 steps at 3e-3, then 1,600 cosine from 3e-3
leg refine "$OUT/fs2b/final.safetensors" 2 $refiner optim.steps=800 optim.schedule=constant
leg refine2 "$OUT/refine/final.safetensors" 2 $refiner
if [[ ! -f $OUT/ship/student.safetensors ]]; then
    mkdir -p "$OUT/ship/stage1_teacher_forcing"
    cp "$OUT/refine2/final.safetensors" "$OUT/ship/stage1_teacher_forcing/final.safetensors"
    "$WORLDSIM" train ship configs/pong.yaml "out_dir=$OUT/ship" "$FS2" ${ship_args[@]+"${ship_args[@]}"}
fi
echo "done: $OUT/ship/student.safetensors"

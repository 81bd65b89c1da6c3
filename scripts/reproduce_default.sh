#!/usr/bin/env bash
# Rebuild the shipped model, assets/default.safetensors, from a clone: the three frameskip-4 Boxing
# collections, the eleven stage-1 legs of the frameskip-4 student in order (each continues the one
# before, init.student), the two weight averages, the ship steps, then the two frameskip-2 collections,
# the leg that continues that student on them and the two legs of its pixel refiner. Only committed
# configs and key=value overrides:
#   configs/collect_boxing{,_scripted,_switchy}{,_fs2}.yaml   the data
#   configs/boxing_student.yaml                        every frameskip-4 stage-1 leg (the last legs' config)
#   configs/boxing_student_fs2.yaml                    the frameskip-2 leg (init.retime)
#   configs/boxing_refiner_fs2.yaml                    the refiner's two legs (refiner_only)
#   configs/boxing_controllable.yaml                   the ship step (ship.stage: stage1, 2 Euler steps, cache 6 + 1)
#
#   scripts/reproduce_default.sh [OUT]       (OUT default runs/default; OUT and DATA are relative to the repo root)
#
# Result: OUT/refined/student.safetensors (playable; compare it with the shipped file, e.g. worldsim eval
# --checkpoint OUT/refined/student.safetensors ..., before copying it to assets/default.safetensors).
# About 12 CPU-hours on 2 cores (the legs' wall-clock is in the model card), the collections a few minutes.
#
# Idempotent: a finished collection, leg, average or ship is skipped (its output exists), and an
# interrupted leg resumes exactly from its checkpoint, so after a stop run the same command again.
# A leg can also be ended early: touch OUT/<leg>/FINISH (its output is written at the current step).
#
# The weights are the recipe's, not bit for bit the shipped ones: the first leg now starts the action
# embedding at std 0.5 (it was 0.02 when it first ran; the second leg re-draws those rows at 0.5 anyway,
# then from another seed), and thread counts and CPUs change the floating-point sums.
# None of the legs used an option that has since been removed: the student is input-anchored
# throughout (model.anchor_mode=input), with stage 1's anchor_self=0 and motion_weight=0 (no-ops) and
# model.depth 6 from the first leg to the last; the train_config stored in assets/default.safetensors
# says so for the last legs.
#
# Environment (for a quick check of the whole sequence on little data, e.g.
# COLLECT_ARGS="--steps 600 --heldout-episodes 1 --max-episode-steps 300"
# TRAIN_ARGS="optim.steps=2 optim.batch_size=2 run.sample_every=-1" SHIP_ARGS="ship.eval.starts=1 ship.eval.steps=[2]"):
#   DATA          where the collections go (default data, the configs' paths)
#   COLLECT_ARGS  extra options for every `worldsim collect`, after the leg's own (the last one wins)
#   TRAIN_ARGS    extra key=value overrides for every training leg, after the leg's own
#   SHIP_ARGS     extra key=value overrides for every ship step
#   WORLDSIM      the command (default: worldsim)
source "$(dirname "$0")/reproduce_common.sh"
OUT=${1:-runs/default}
TWO="data.paths=[$DATA/boxing,$DATA/boxing_scripted]"
THREE="data.paths=[$DATA/boxing,$DATA/boxing_scripted,$DATA/boxing_switchy]"

leg() {  # NAME INIT [key=value ...]: one stage-1 leg into OUT/NAME from the student INIT ('' : from scratch)
    local name=$1 from="init.student=$2"
    [[ -n $2 ]] || from="init.student=''"
    shift 2
    if [[ -f $OUT/$name/final.safetensors ]]; then
        echo "leg $name: done ($OUT/$name/final.safetensors)"
        return
    fi
    "$WORLDSIM" train stage1 "${LEG_CONFIG:-configs/boxing_student.yaml}" "out_dir=$OUT/$name" "$from" "$THREE" "$@" \
        ${train_args[@]+"${train_args[@]}"}
    if [[ ! -f $OUT/$name/final.safetensors ]]; then
        echo "leg $name stopped before its last step; run this script again to resume it" >&2
        exit 1
    fi
}

average() {  # OUT_FILE CHECKPOINT...: their uniform weight average
    local out=$1
    shift
    if [[ -f $out ]]; then
        echo "average: done ($out)"
        return
    fi
    "$WORLDSIM" train average "$@" --out "$out"
}

ship() {  # DIR STUDENT [key=value ...]: the playable DIR/student.safetensors from the stage-1 student STUDENT
    local dir=$1 student=$2
    shift 2
    if [[ -f $dir/student.safetensors ]]; then
        echo "ship: done ($dir/student.safetensors)"
        return
    fi
    if [[ $student != "$dir/stage1_teacher_forcing/final.safetensors" ]]; then
        mkdir -p "$dir/stage1_teacher_forcing"
        cp "$student" "$dir/stage1_teacher_forcing/final.safetensors"
    fi
    "$WORLDSIM" train ship configs/boxing_controllable.yaml "out_dir=$dir" "$THREE" "$@" ${ship_args[@]+"${ship_args[@]}"}
}

# -- data: sticky-random play, scripted close quarters, and keys that change often ----------------------
collect configs/collect_boxing.yaml boxing --steps 100000 --workers 2
collect configs/collect_boxing_scripted.yaml boxing_scripted --steps 30000 --workers 2
collect configs/collect_boxing_switchy.yaml boxing_switchy

# -- stage 1, leg by leg. The earlier legs set back what the later ones changed: two collections, one
# temporal block in every block, one anchor frame, a constant rate of 5e-4, the v-loss's bell weighting.
early=(model.anchor_history=1 min_sigma=0.05 bell_width=0.3)
# 1a: from scratch, on the first two collections (the action rows then drawn at the initial scale)
leg 1a "" "$TWO" model.temporal_every=1 "${early[@]}" optim.lr=5e-4 optim.warmup=100 optim.schedule=constant \
    optim.steps=1800 run.sample_every=1000
# 1b: the action rows re-drawn at ACTION_INIT_STD (a student that had learned to ignore its keys)
leg 1b "$OUT/1a/final.safetensors" "$TWO" model.temporal_every=1 "${early[@]}" init.redraw_actions=true \
    optim.lr=5e-4 optim.schedule=constant optim.steps=2450
# 1c: every other block attends only within its frame (a quarter less work per frame); all three collections
leg 1c "$OUT/1b/final.safetensors" "${early[@]}" optim.lr=5e-4 optim.schedule=constant optim.steps=1000
# 1d, 1e: cosine rates
leg 1d "$OUT/1c/final.safetensors" "${early[@]}" optim.lr=5e-4 optim.steps=2000
leg 1e "$OUT/1d/final.safetensors" "${early[@]}" optim.lr=3e-4 optim.steps=4500
# 1f: a second anchor frame (its weights start at zero: the same function, then trained)
leg 1f "$OUT/1e/final.safetensors" min_sigma=0.05 bell_width=0.3 optim.lr=2e-4 optim.steps=3600
# 1g: the loss weighted towards the 2-step sampler's noise levels (configs/boxing_student.yaml from here on)
leg 1g "$OUT/1f/final.safetensors" optim.steps=2400
ship "$OUT/ship_1g" "$OUT/1g/final.safetensors"
# 1h, 1i: two legs from the shipped (bf16) 1g at two rates, and their average
leg 1h "$OUT/ship_1g/student.safetensors" optim.lr=1e-4 optim.steps=2400
leg 1i "$OUT/ship_1g/student.safetensors" optim.steps=3000
average "$OUT/ship_hi/stage1_teacher_forcing/final.safetensors" "$OUT/1i/final.safetensors" "$OUT/1h/final.safetensors"
ship "$OUT/ship_hi" "$OUT/ship_hi/stage1_teacher_forcing/final.safetensors"
# 1j, 1k: two legs from that shipped average (other seeds and rates), then the average of both and their start
leg 1j "$OUT/ship_hi/student.safetensors" run.seed=1 optim.steps=4000
leg 1k "$OUT/ship_hi/student.safetensors" run.seed=2 optim.lr=1e-4 optim.steps=4000
average "$OUT/stage1_teacher_forcing/final.safetensors" "$OUT/1j/final.safetensors" "$OUT/1k/final.safetensors" \
    "$OUT/ship_hi/stage1_teacher_forcing/final.safetensors"
# -- the frameskip-4 student: that average, its weights in bf16, 8 real context frames, 2 Euler steps, cache 6 + 1
ship "$OUT" "$OUT/stage1_teacher_forcing/final.safetensors"
# -- frameskip 2 (30 steps a second): two collections, that student continued on them (init.retime), shipped
collect configs/collect_boxing_fs2.yaml boxing_fs2
collect configs/collect_boxing_switchy_fs2.yaml boxing_switchy_fs2
FS2="data.paths=[$DATA/boxing_fs2,$DATA/boxing_switchy_fs2]"
LEG_CONFIG=configs/boxing_student_fs2.yaml leg 1l "$OUT/student.safetensors" "$FS2"
ship "$OUT/fs2" "$OUT/1l/final.safetensors" "$FS2"
# -- the pixel refiner on that student (configs/boxing_refiner_fs2.yaml: only the refiner trains), in two
# legs: the first ends at step 1,160 of its 2,400-step schedule (run.stop_after, then FINISH), the second
# continues it at a lower rate
REFINER=(configs/boxing_refiner_fs2.yaml "$FS2")
if [[ ! -f $OUT/ra/final.safetensors ]]; then
    ended_at 1160 "$OUT/ra" "${REFINER[@]}" "init.student=$OUT/fs2/student.safetensors"
    done_or_resume "$OUT/ra/final.safetensors" "the refiner's first leg"
fi
if [[ ! -f $OUT/rb/final.safetensors ]]; then
    "$WORLDSIM" train stage1 "${REFINER[@]}" "out_dir=$OUT/rb" "init.student=$OUT/ra/final.safetensors" \
        optim.lr=5e-4 optim.warmup=0 optim.steps=600 ${train_args[@]+"${train_args[@]}"}
    done_or_resume "$OUT/rb/final.safetensors" "the refiner's second leg"
fi
ship "$OUT/refined" "$OUT/rb/final.safetensors" "$FS2"
echo "done: $OUT/refined/student.safetensors"

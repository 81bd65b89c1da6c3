"""``worldsim train``: run one stage, the whole pipeline, or the stage-2 comparison from a config;
average students; ship one.

    worldsim train pipeline configs/smoke.yaml out_dir=runs/smoke
    worldsim train stage0 configs/stage0_teacher.yaml out_dir=runs/teacher optim.steps=2000
    worldsim train stage1 configs/stage1_teacher_forcing.yaml out_dir=runs/tf init.teacher=runs/teacher/final.safetensors
    worldsim train stage2 configs/stage2_consistency.yaml out_dir=runs/cd init.teacher=runs/tf/final.safetensors
    worldsim train stage2-ode configs/stage2_ode.yaml out_dir=runs/ode init.teacher=runs/tf/final.safetensors
    worldsim train stage3 configs/stage3_dmd.yaml out_dir=runs/dmd init.student=... init.teacher=...
    worldsim train compare-stage2 configs/smoke.yaml out_dir=runs/smoke
    worldsim train average A/final.safetensors B/final.safetensors --out C/final.safetensors
    worldsim train ship configs/boxing_controllable.yaml      (the playable file from an existing student)
    torchrun --nproc_per_node 2 -m worldsim train stage1 CONFIG out_dir=...   (data parallel)

Thin entry: parses the command line, fills the stage's config dataclass (YAML + ``key=value``
overrides; ``out_dir=PATH`` is short for ``run.out_dir=PATH`` in single-stage configs) and runs it.
A config file written for an older version loads with its removed options dropped where they were at
their no-op value (``trainer.drop_removed``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from worldsim.config import load_config

STAGE_ALIASES = {
    "stage0": "stage0", "teacher": "stage0",
    "stage1": "stage1", "teacher-forcing": "stage1", "tf": "stage1",
    "stage2": "stage2", "consistency": "stage2", "cd": "stage2",
    "stage2-ode": "stage2-ode", "ode": "stage2-ode",
    "stage3": "stage3", "dmd": "stage3",
    "pipeline": "pipeline", "compare-stage2": "compare-stage2", "ship": "ship", "average": "average",
}


def _stage_classes(name: str):
    if name == "stage0":
        from worldsim.train.stage0_teacher import Stage0Config, TeacherTrainer
        return Stage0Config, TeacherTrainer
    if name == "stage1":
        from worldsim.train.stage1_teacher_forcing import Stage1Config, TeacherForcingTrainer
        return Stage1Config, TeacherForcingTrainer
    if name == "stage2":
        from worldsim.train.stage2_consistency import ConsistencyTrainer, Stage2Config
        return Stage2Config, ConsistencyTrainer
    if name == "stage2-ode":
        from worldsim.train.stage2_ode import ODETrainer, Stage2ODEConfig
        return Stage2ODEConfig, ODETrainer
    from worldsim.train.stage3_dmd import DMDTrainer, Stage3Config
    return Stage3Config, DMDTrainer


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="worldsim train", description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="stages: stage0 (teacher), stage1 (teacher-forcing), stage2 (consistency), "
                                        "stage2-ode (ode), stage3 (dmd), pipeline, compare-stage2, ship, "
                                        "average (worldsim train average --help)")
    ap.add_argument("what", help="stage0|stage1|stage2|stage2-ode|stage3|pipeline|compare-stage2|ship|average")
    ap.add_argument("config", help="YAML config (e.g. configs/smoke.yaml)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides, e.g. out_dir=runs/x optim.steps=100")
    ap.add_argument("--json", help="also write the run's summary (costs, evaluation) here")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default; 1 is faster on a busy shared CPU)")
    return ap


def average_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="worldsim train average",
                                 description="The uniform weight average of two or more students fine-tuned from one "
                                             "parent (same role, stage and model config), written as a checkpoint of "
                                             "their stage (for worldsim eval --checkpoint, init.student, or the ship step).")
    ap.add_argument("checkpoints", nargs="+", help="two or more stage outputs (final.safetensors) of the same model")
    ap.add_argument("--out", required=True, help="where to write the average (.safetensors)")
    return ap


def average_main(argv) -> int:
    from worldsim.train.average import average_students

    args = average_parser().parse_args(argv)
    path = average_students(args.checkpoints, args.out)
    print(f"wrote {path}: the mean of {len(args.checkpoints)} checkpoints")
    return 0


def main(argv=None) -> int:
    argv = list(argv) if argv is not None else None
    if argv and argv[0] == "average":
        return average_main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("worldsim.kernels").setLevel(logging.WARNING)
    from worldsim.train.trainer import drop_removed

    if args.threads > 0:
        import torch

        torch.set_num_threads(args.threads)
    what = STAGE_ALIASES.get(args.what)
    if what is None:
        import difflib

        from worldsim.errors import ConfigError

        near = difflib.get_close_matches(args.what, list(STAGE_ALIASES), n=1)
        raise ConfigError(f"unknown stage '{args.what}'" + (f"; did you mean '{near[0]}'?" if near else "")
                          + f" (choose from {', '.join(sorted(set(STAGE_ALIASES.values())))})")
    if what == "average":
        from worldsim.errors import ConfigError

        raise ConfigError("average takes checkpoints, not a config: worldsim train average A.safetensors "
                          "B.safetensors --out C.safetensors")
    overrides = list(args.overrides)
    if args.no_progress:
        overrides.append("progress=false" if what in ("pipeline", "compare-stage2", "ship") else "run.progress=false")
    if what in ("pipeline", "compare-stage2", "ship"):
        from worldsim.train.pipeline import PipelineConfig, compare_stage2, run_pipeline, ship_pipeline

        cfg = load_config(PipelineConfig, args.config, overrides, upgrade=drop_removed)
        summary = {"pipeline": run_pipeline, "compare-stage2": compare_stage2, "ship": ship_pipeline}[what](cfg)
    else:
        cfg_cls, trainer_cls = _stage_classes(what)
        overrides = [("run." + o if o.startswith("out_dir=") or o.startswith("seed=") else o) for o in overrides]
        cfg = load_config(cfg_cls, args.config, overrides, upgrade=drop_removed)
        trainer = trainer_cls(cfg)
        out = trainer.fit()
        summary = {"stage": trainer.stage_name, "output": str(out) if out else None, "step": trainer.step,
                   "cost": trainer.cost_now(), "last_metrics": trainer.last_metrics}
        if trainer.rank == 0:
            print(f"{trainer.stage_name}: step {trainer.step}, output {out or '(stopped early, resumable)'}, "
                  f"cost {summary['cost']}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2, default=str))
    return 0

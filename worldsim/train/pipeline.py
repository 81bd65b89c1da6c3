"""The whole recipe in order: stage 0 teacher -> stage 1 teacher forcing -> stage 2 causal consistency
distillation -> stage 3 DMD with self-rollout -> the playable student file and its evaluation.

Boundary: a ``PipelineConfig`` in; stage outputs, ``student.safetensors`` (the shipped/playable model:
``model.*`` = the generator's EMA weights, ``context.frames``/``context.actions`` = real frames it
starts from, meta ``engine`` = recommended settings) and ``report.json`` (cost of every stage,
student vs copy-last-frame PSNR) out. ``compare_stage2`` runs the stage-2 comparison (consistency vs
ODE distillation) on the same data and budget.

Layout of ``out_dir``::

    data/ cache/                 the built-in game's episodes when collected here (``collect``)
    stage0_teacher/ ... stage3_dmd/   one trainer directory per stage (final.safetensors = its output)
    student.safetensors          the playable model
    report.json                  costs and evaluation
    compare_stage2/              consistency/ and ode/ runs and compare.json (compare-stage2 only)

Composition: the pipeline's ``data``, ``shift`` and ``seed`` and the ``teacher``/``student`` model
configs replace the stages' own (a stage section that sets them is refused: set them once at the top);
``out_dir`` and the ``init`` paths are wired from stage to stage. A stage whose ``final.safetensors``
exists is skipped, after checking it was trained with the same config; a stage with only a
``checkpoint.safetensors`` resumes from it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from worldsim.checkpoint import load_checkpoint, read_meta, save_checkpoint
from worldsim.config import to_dict
from worldsim.engine import EngineConfig
from worldsim.errors import CheckpointError, ConfigError
from worldsim.model import ModelConfig
from worldsim.train.data import DataConfig
from worldsim.train.evaluate import EvalSpec, evaluate_model, load_heldout
from worldsim.train.stage0_teacher import Stage0Config, TeacherTrainer, teacher_model_config
from worldsim.train.stage1_teacher_forcing import (Stage1Config, TeacherForcingTrainer, init_blockers,
                                                   student_model_config)
from worldsim.train.stage2_consistency import ConsistencyTrainer, Stage2Config, fewstep_engine
from worldsim.train.stage2_ode import ODETrainer, Stage2ODEConfig
from worldsim.train.stage3_dmd import DMDTrainer, Stage3Config
from worldsim.train.trainer import FINAL, config_differences, dist_env, fmt_bytes

log = logging.getLogger("worldsim.train")

PLAYABLE = "student.safetensors"
REPORT = "report.json"


@dataclass
class CollectSpec:
    """Episodes collected into ``data.paths[0]`` when it holds none (the built-in game by default)."""

    env_id: str = "worldsim/Tiny-v0"
    policy: str = "sticky"
    steps: int = 6000  # training steps (frames) to collect
    heldout_episodes: int = 4  # whole episodes kept for evaluation
    max_episode_steps: int = 256
    seed: int = 0
    enabled: bool = True  # false: never collect, fail if the data is missing


@dataclass
class ShipConfig:
    engine: EngineConfig = field(default_factory=fewstep_engine)  # recommended settings written into the file
    context_frames: int = 4  # real frames stored as context.frames (the player starts from them)
    dtype: str = "bf16"  # weights of the playable file: bf16 | fp16 | fp32 (inference runs bf16 on CPU anyway)
    eval: EvalSpec = field(default_factory=EvalSpec)  # held-out evaluation against copy-last-frame
    # The stage whose student is shipped: stage3 (the recipe's end), or an earlier one where the later
    # stages were run and measured worse (the report evaluates every later student too, so the choice is on
    # record; see assets/README.md). stage1 ships the teacher-forcing student sampled in few steps.
    stage: str = "stage3"


@dataclass
class PipelineConfig:
    out_dir: str = ""  # everything goes here (out_dir=PATH)
    seed: int = 0
    progress: bool = True
    # Stages this invocation runs (the rest must already be done when a later one needs them). When the
    # student cannot start from the teacher's weights (other width), stages 0 and 1 are independent:
    # two processes with stages=[stage0] and stages=[stage1] use both cores, then a plain run goes on.
    stages: list[str] = field(default_factory=lambda: ["stage0", "stage1", "stage2", "stage3"])
    shift: float = 3.0  # timestep shift of every stage and of the shipped engine settings
    data: DataConfig = field(default_factory=lambda: DataConfig(paths=["${out_dir}/data"]))
    collect: CollectSpec = field(default_factory=CollectSpec)
    teacher: ModelConfig = field(default_factory=teacher_model_config)  # bidirectional, larger
    student: ModelConfig = field(default_factory=student_model_config)  # causal
    stage0: Stage0Config = field(default_factory=Stage0Config)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    stage3: Stage3Config = field(default_factory=Stage3Config)
    stage2_ode: Stage2ODEConfig = field(default_factory=Stage2ODEConfig)  # only for compare-stage2
    ship: ShipConfig = field(default_factory=ShipConfig)


SHIPPABLE = ("stage1", "stage2", "stage3")  # stages whose output is a causal student
STAGES = (("stage0", "stage0_teacher", TeacherTrainer), ("stage1", "stage1_teacher_forcing", TeacherForcingTrainer),
          ("stage2", "stage2_consistency", ConsistencyTrainer), ("stage3", "stage3_dmd", DMDTrainer))


def _refuse_stage_level(cfg: PipelineConfig, key: str, section: str) -> None:
    st = getattr(cfg, key)
    default = type(st)()
    for name in ("data", "model"):
        if hasattr(st, name) and to_dict(getattr(st, name)) != to_dict(getattr(default, name)):
            raise ConfigError(f"pipeline: {key}.{name} is set by the pipeline ({section}); set it once at the "
                              f"top level instead of in {key}.{name}")
    init = getattr(st, "init", None)
    if init is not None and any(v for v in to_dict(init).values()):
        raise ConfigError(f"pipeline: {key}.init is wired from the previous stage's output; remove it")
    if st.run.out_dir:
        raise ConfigError(f"pipeline: {key}.run.out_dir is set by the pipeline (out_dir/<stage>); remove it")


def stage_configs(cfg: PipelineConfig) -> dict[str, Any]:
    """The four stage configs with the pipeline's shared settings and the wiring applied."""
    if not cfg.out_dir:
        raise ConfigError("pipeline: set out_dir=PATH")
    if cfg.data.resolution != cfg.teacher.resolution or cfg.data.resolution != cfg.student.resolution:
        raise ConfigError(f"pipeline: data.resolution {cfg.data.resolution}, teacher.resolution "
                          f"{cfg.teacher.resolution} and student.resolution {cfg.student.resolution} must agree")
    out = Path(cfg.out_dir)
    res = {}
    for key, name, _ in STAGES:
        _refuse_stage_level(cfg, key, "data/teacher/student")
        st = dataclasses.replace(getattr(cfg, key))
        st.data = dataclasses.replace(cfg.data)
        st.run = dataclasses.replace(st.run, out_dir=str(out / name), seed=cfg.seed, progress=cfg.progress)
        res[key] = st
    res["stage0"].model = dataclasses.replace(cfg.teacher, causal=False)
    res["stage1"].model = dataclasses.replace(cfg.student, causal=True)
    final = {key: str(out / name / FINAL) for key, name, _ in STAGES}
    if not init_blockers(res["stage1"].model, res["stage0"].model):  # "initialise from the teacher where shapes allow"
        res["stage1"].init = dataclasses.replace(res["stage1"].init, teacher=final["stage0"])
    res["stage2"].init = dataclasses.replace(res["stage2"].init, teacher=final["stage1"])
    res["stage3"].init = dataclasses.replace(res["stage3"].init, student=final["stage2"], teacher=final["stage0"])
    for key in ("stage0", "stage1", "stage2", "stage3"):
        res[key].shift = cfg.shift
    res["stage3"].rollout = dataclasses.replace(res["stage3"].rollout, shift=cfg.shift)
    for key in ("stage1", "stage2", "stage3"):
        res[key].engine = dataclasses.replace(res[key].engine, shift=cfg.shift)
    # A distilled student (stages 2, 3) samples at the levels it was trained at; an Euler-sampled stage-1
    # student may ship at another shift (its later stages keep the training one).
    if cfg.ship.engine.shift != cfg.shift and not (cfg.ship.stage == "stage1" and cfg.ship.engine.sampler == "euler"):
        raise ConfigError(f"pipeline: ship.engine.shift {cfg.ship.engine.shift} != shift {cfg.shift}; only a stage-1 "
                          f"student sampled with ship.engine.sampler=euler may ship at another shift")
    res["stage2"].engine = dataclasses.replace(cfg.ship.engine, shift=cfg.shift)
    res["stage3"].engine = dataclasses.replace(cfg.ship.engine, shift=cfg.shift)
    return res


def ensure_data(cfg: PipelineConfig) -> None:
    """Collect the configured game into ``data.paths[0]`` when no path holds an episode."""
    from worldsim.data.episode import list_episodes
    from worldsim.errors import DataError

    for p in cfg.data.paths:
        try:
            if Path(p).exists() and list_episodes(p):
                return
        except DataError:
            continue
    if not cfg.collect.enabled:
        raise ConfigError(f"pipeline: no episodes under {cfg.data.paths} and collect.enabled is false; "
                          f"collect some with 'worldsim collect' or set collect.enabled=true")
    rank, world, _ = dist_env()
    if rank == 0:
        from worldsim.data.collect import CollectConfig, collect
        from worldsim.envs import EnvConfig

        c = cfg.collect
        log.info("pipeline: collecting %d steps of %s into %s", c.steps, c.env_id, cfg.data.paths[0])
        summary = collect(CollectConfig(env=EnvConfig(env_id=c.env_id, max_episode_steps=c.max_episode_steps),
                                        policy=c.policy, steps=c.steps, out=str(cfg.data.paths[0]), workers=0,
                                        heldout_episodes=c.heldout_episodes, seed=c.seed), progress=cfg.progress)
        print(f"collected {summary['train_steps']} training steps ({summary['train_episodes']} episodes) and "
              f"{summary['heldout_episodes']} held-out episodes of {c.env_id} in {summary['seconds']:.1f}s")
    if world > 1:
        import torch.distributed as dist

        from worldsim.device import pick_device
        from worldsim.train.trainer import init_distributed

        init_distributed(pick_device())
        dist.barrier()


def check_existing_output(path: Path, stage_cfg, trainer_cls) -> dict:
    """Metadata of an existing stage output, refused if it is another stage's or another config's."""
    meta = read_meta(path)
    if meta.get("stage") != trainer_cls.stage or meta.get("stage_name") != trainer_cls.stage_name:
        raise CheckpointError(f"'{path}' is not a {trainer_cls.stage_name} output (it is stage {meta.get('stage')} "
                              f"{meta.get('stage_name')}); delete it to retrain")
    diffs = config_differences(meta.get("train_config", {}), to_dict(stage_cfg))
    if diffs:
        raise CheckpointError(f"'{path}' exists but was trained with another config ({'; '.join(diffs[:3])}); "
                              f"delete {path.parent} to retrain it or restore the config")
    return meta


def run_stage(key: str, name: str, trainer_cls, stage_cfg, progress: bool = True) -> dict:
    """Run (or skip) one stage; returns its cost and output path."""
    final = Path(stage_cfg.run.out_dir) / FINAL
    if final.is_file():
        meta = check_existing_output(final, stage_cfg, trainer_cls)
        if progress:
            print(f"{name}: output exists, skipped ({final})")
        return {"stage": name, "skipped": True, "output": str(final), "cost": meta.get("cost", {})}
    t0 = time.perf_counter()
    trainer = trainer_cls(stage_cfg)
    out = trainer.fit()
    if out is None and trainer.rank == 0:  # stop_after: not finished
        return {"stage": name, "skipped": False, "output": None, "cost": trainer.cost_now()}
    cost = read_meta(final)["cost"] if final.is_file() else trainer.cost_now()
    if progress and trainer.rank == 0:
        print(f"{name}: done in {time.perf_counter() - t0:.1f}s -> {final} "
              f"(loss {trainer.last_metrics.get('loss', float('nan')):.4f})")
    return {"stage": name, "skipped": False, "output": str(final), "cost": cost}


def write_playable(cfg: PipelineConfig, student_final: Path, episodes, out_path: Path) -> Path:
    """The shipped file: the generator's EMA weights, real context frames, recommended engine settings."""
    tensors, meta = load_checkpoint(student_final, "model.")
    K = cfg.ship.context_frames
    ep = episodes[0]
    if len(ep.frames) < K:
        raise ConfigError(f"ship.context_frames {K} exceeds the first held-out episode ({len(ep.frames)} frames)")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if cfg.ship.dtype not in dtypes:
        raise ConfigError(f"ship.dtype '{cfg.ship.dtype}' is not one of {', '.join(dtypes)}")
    out = {f"model.{k}": (v.to(dtypes[cfg.ship.dtype]) if v.is_floating_point() else v) for k, v in tensors.items()}
    out["context.frames"] = torch.from_numpy(np.ascontiguousarray(ep.frames[:K]))  # (K, R, R, 3) uint8
    out["context.actions"] = torch.from_numpy(np.ascontiguousarray(ep.actions[:K]))  # (K,) recorded alignment: the action after each frame
    meta = {k: v for k, v in meta.items() if k not in ("format", "code_version", "_path", "_hash")}
    meta.update({"engine": to_dict(cfg.ship.engine), "shipped_from": str(student_final),
                 "context_source": str(ep.path)})
    return save_checkpoint(out_path, out, meta)


def load_model_weights(path: Path):
    from worldsim.checkpoint import load_weights

    tensors, meta = load_checkpoint(path, "model.")
    m = load_weights(tensors, meta, path)
    return m.eval(), meta


def _episodes(cfg: PipelineConfig, meta: dict):
    eps, split = load_heldout(cfg.data.paths, cfg.data.resolution, meta["env_id"], meta["action_meanings"],
                              cfg.data.heldout_split, cfg.ship.eval.max_episodes)
    if split is None:
        log.warning("no '%s' episodes: evaluating on every episode (training data included)", cfg.data.heldout_split)
    return eps, split


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run every stage (skipping finished ones), write the playable student and evaluate it."""
    stages = stage_configs(cfg)
    known = [k for k, _, _ in STAGES]
    bad = [k for k in cfg.stages if k not in known]
    if bad or not cfg.stages:
        raise ConfigError(f"pipeline: stages {list(cfg.stages)} must be a non-empty subset of {known}")
    if cfg.ship.stage not in SHIPPABLE:
        raise ConfigError(f"pipeline: ship.stage '{cfg.ship.stage}' must be one of {', '.join(SHIPPABLE)} "
                          f"(stage3 by default)")
    ensure_data(cfg)
    out = Path(cfg.out_dir)
    t0 = time.perf_counter()
    report: dict[str, Any] = {"out_dir": str(out), "stages": {}}
    for key, name, cls in STAGES:
        if key not in cfg.stages:
            continue
        r = run_stage(key, name, cls, stages[key], cfg.progress)
        report["stages"][name] = r
        if r["output"] is None:
            return report
    if max(known.index(k) for k in cfg.stages) < known.index(cfg.ship.stage):
        return report  # a subset run: the playable model comes from a run that reaches the shipped stage
    rank, _, _ = dist_env()
    if rank != 0:
        return report
    return ship_student(cfg, stages, report, t0)


def ship_pipeline(cfg: PipelineConfig) -> dict:
    """``worldsim train ship``: the playable file from the ship stage's existing output, evaluated,
    with no training (after a stage-1 leg run by hand, say; the file names its source)."""
    stages = stage_configs(cfg)
    if cfg.ship.stage not in SHIPPABLE:
        raise ConfigError(f"ship: ship.stage '{cfg.ship.stage}' must be one of {', '.join(SHIPPABLE)}")
    final = Path(stages[cfg.ship.stage].run.out_dir) / FINAL
    if not final.is_file():
        raise ConfigError(f"ship: no {cfg.ship.stage} output at '{final}'; train it first (worldsim train pipeline "
                          f"... stages=[{cfg.ship.stage}]) or copy the student to ship there")
    return ship_student(cfg, stages, {"out_dir": cfg.out_dir, "stages": {}}, time.perf_counter())


def ship_student(cfg: PipelineConfig, stages: dict, report: dict, t0: float) -> dict:
    """Write the playable file from the ship stage's output, evaluate it and every later student there is,
    and write the report (``REPORT`` in ``out_dir``)."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    known = [k for k, _, _ in STAGES]
    student_final = Path(stages[cfg.ship.stage].run.out_dir) / FINAL
    model, meta = load_model_weights(student_final)
    episodes, split = _episodes(cfg, meta)
    playable = write_playable(cfg, student_final, episodes, out / PLAYABLE)
    spec = cfg.ship.eval
    ev = evaluate_model(model, cfg.ship.engine, episodes, spec, steps_list=spec.steps,
                        action_meanings=meta.get("action_meanings"))
    ev["split"] = split
    report["playable"] = str(playable)
    report["shipped_stage"] = cfg.ship.stage
    report["eval"] = ev
    passed_over = {}  # the later students it passed over (those trained), evaluated the same way
    for key in known[known.index(cfg.ship.stage) + 1:]:
        final = Path(stages[key].run.out_dir) / FINAL
        if final.is_file():
            later, later_meta = load_model_weights(final)
            # with the sampler and shift it was trained for (a stage-1 student is shipped with Euler, perhaps at
            # another shift; a distilled one steps with its own schedule), the rest of the shipped settings
            sampler = later_meta.get("engine", {}).get("sampler", cfg.ship.engine.sampler)
            eng = dataclasses.replace(cfg.ship.engine, sampler=sampler, shift=cfg.shift)  # its training levels
            passed_over[key] = evaluate_model(later, eng, episodes, spec, steps_list=spec.steps,
                                              action_meanings=later_meta.get("action_meanings"))
            passed_over[key]["sampler"] = sampler
    if passed_over:
        report["eval_passed_over"] = passed_over
    report["pipeline_wall_s"] = round(time.perf_counter() - t0, 2)
    report["total_stage_wall_s"] = round(sum(float(r["cost"].get("wall_s", 0)) for r in report["stages"].values()), 2)
    (out / REPORT).write_text(json.dumps(report, indent=2))
    print(format_report(report))
    return report


def format_report(report: dict) -> str:
    lines = [f"{'stage':<24}{'wall s':>9}{'teacher NFE':>13}{'storage':>12}  status"]
    for name, r in report["stages"].items():
        c = r["cost"]
        lines.append(f"{name:<24}{float(c.get('wall_s', 0)):>9.1f}{int(c.get('teacher_nfe', 0)):>13}"
                     f"{fmt_bytes(int(c.get('storage_bytes', 0))):>12}  {'skipped (exists)' if r['skipped'] else 'trained'}")
    ev = report.get("eval")
    if ev:
        H = ev["horizon"]
        lines.append(f"held-out {ev['split'] or 'all'} episodes, {ev['rollouts']} rollouts, context {ev['context']}, "
                     f"PSNR (dB) mean over h=1..{H}:")
        for k, v in ev.items():
            if isinstance(v, dict) and "psnr" in v:
                lines.append(f"  {k:<12} {v['psnr']:6.2f}   (h=1: {v['psnr_h1']:.2f})")
        best = max((v["psnr"] for k, v in ev.items() if k.startswith("steps=")), default=None)
        if best is not None:
            lines.append(f"student (best few-step setting) {best:.2f} dB vs copy-last-frame "
                         f"{ev['copy_last']['psnr']:.2f} dB")
    for key, ev_o in report.get("eval_passed_over", {}).items():
        best_o = max(v["psnr"] for k, v in ev_o.items() if k.startswith("steps="))
        lines.append(f"{key} student (not shipped: ship.stage={report['shipped_stage']}) best {best_o:.2f} dB")
    if "playable" in report:
        lines.append(f"playable model: {report['playable']} (the {report.get('shipped_stage', 'stage3')} student)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# stage 2: consistency vs ODE distillation on the same data and budget


def compare_stage2(cfg: PipelineConfig) -> dict:
    """Stages 0-1 as in the pipeline (skipped when done), then stage 2 by consistency distillation
    and by ODE distillation with the same data, stage-1 model, optimiser budget, levels, shift and
    guidance; each evaluated at 1/2/4 steps on held-out episodes, beside copy-last-frame and the
    stage-1 multi-step model."""
    stages = stage_configs(cfg)
    ensure_data(cfg)
    out = Path(cfg.out_dir) / "compare_stage2"
    for key, name, cls in STAGES[:2]:
        r = run_stage(key, name, cls, stages[key], cfg.progress)
        if r["output"] is None:
            return {}
    cd = stages["stage2"]
    if len(cd.chunks) != 1:
        raise ConfigError(f"compare-stage2: stage2.chunks {cd.chunks} must hold one size (the ODE baseline "
                          f"stores trajectories for one chunking); e.g. stage2.chunks=[1]")
    cd.run = dataclasses.replace(cd.run, out_dir=str(out / "consistency"))
    _refuse_stage_level(cfg, "stage2_ode", "data/init")
    ode = dataclasses.replace(cfg.stage2_ode, data=cd.data, init=dataclasses.replace(cd.init), optim=cd.optim,
                              run=dataclasses.replace(cfg.stage2_ode.run, out_dir=str(out / "ode"), seed=cfg.seed,
                                                      progress=cfg.progress),
                              num_levels=cd.num_levels, shift=cd.shift, guidance=cd.guidance, chunk=cd.chunks[0],
                              student_steps=list(cd.student_steps), engine=cd.engine)
    result: dict[str, Any] = {"budget": {"steps": cd.optim.steps, "batch_size": cd.optim.batch_size,
                                         "num_levels": cd.num_levels, "guidance": cd.guidance}}
    runs = {}
    for method, cls, scfg in (("consistency", ConsistencyTrainer, cd), ("ode", ODETrainer, ode)):
        runs[method] = run_stage("stage2", f"stage2_{method}", cls, scfg, cfg.progress)
    if dist_env()[0] != 0:
        return result
    teacher_path = Path(stages["stage1"].run.out_dir) / FINAL
    teacher, tmeta = load_model_weights(teacher_path)
    episodes, split = _episodes(cfg, tmeta)
    spec = cfg.ship.eval
    ev_teacher = evaluate_model(teacher, stages["stage1"].engine, episodes, spec)
    result["stage1_multistep"] = {"engine": to_dict(stages["stage1"].engine), "psnr": ev_teacher["default"]["psnr"]}
    result["copy_last"] = ev_teacher["copy_last"]
    for method, r in runs.items():
        model, meta = load_model_weights(Path(r["output"]))
        ev = evaluate_model(model, cd.engine, episodes, spec, steps_list=spec.steps)
        c = meta["cost"]
        result[method] = {"teacher_nfe": int(c.get("teacher_nfe", 0)), "wall_s": float(c.get("wall_s", 0)),
                          "precompute_s": float(c.get("precompute_s", 0)),
                          "storage_bytes": int(c.get("storage_bytes", 0)),
                          "psnr": {k: v["psnr"] for k, v in ev.items() if k.startswith("steps=")},
                          "output": r["output"]}
    result["split"] = split
    result["rollouts"] = ev_teacher["rollouts"]
    c_, o_ = result["consistency"], result["ode"]
    result["ratios"] = {"teacher_nfe_ode_over_consistency": o_["teacher_nfe"] / max(c_["teacher_nfe"], 1),
                        "wall_ode_over_consistency": o_["wall_s"] / max(c_["wall_s"], 1e-9)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    print(format_compare(result))
    return result


def format_compare(r: dict) -> str:
    steps = list(r["consistency"]["psnr"])
    head = f"{'method':<14}{'teacher NFE':>12}{'wall s':>9}{'storage':>12}" + "".join(f"{s:>10}" for s in steps)
    lines = [f"stage 2 comparison, same data and budget ({r['budget']['steps']} steps x batch "
             f"{r['budget']['batch_size']}); PSNR dB on {r['rollouts']} held-out rollouts", head]
    for m in ("consistency", "ode"):
        v = r[m]
        lines.append(f"{m:<14}{v['teacher_nfe']:>12}{v['wall_s']:>9.1f}{fmt_bytes(v['storage_bytes']):>12}"
                     + "".join(f"{v['psnr'][s]:>10.2f}" for s in steps))
    lines.append(f"copy-last-frame {r['copy_last']['psnr']:.2f} dB; stage-1 multi-step "
                 f"({r['stage1_multistep']['engine']['steps']} Euler steps) {r['stage1_multistep']['psnr']:.2f} dB")
    lines.append(f"ODE / consistency: teacher NFE x{r['ratios']['teacher_nfe_ode_over_consistency']:.2f}, "
                 f"wall-clock x{r['ratios']['wall_ode_over_consistency']:.2f}")
    return "\n".join(lines)

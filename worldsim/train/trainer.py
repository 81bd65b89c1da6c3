"""The training loop every stage shares: data, randomness, optimisation, EMA, checkpoints, logs, samples.

Boundary: a stage subclasses ``Trainer`` and supplies ``setup()`` (build and initialise its networks,
register them) and ``train_step(batch)`` (one optimisation step, returning scalar metrics); the
trainer owns everything around it. No argument parsing (``worldsim.train.cli`` does that).

Exact resume. All randomness of a step comes from two ``torch.Generator``s the trainer owns and
checkpoints: ``gen_data`` (which clips) and ``gen`` (noise levels, noise, dropout, chunk sizes,
exit steps), both on the CPU so the draws do not depend on the device. The checkpoint holds the
weights, the EMA, the optimiser state, both generator states (and torch/numpy/python global RNG
states for anything else), the step and the number of batches drawn; a run killed at any point and
restarted from its last checkpoint reaches the same numbers as an uninterrupted run. The learning
rate is a pure function of the step (linear warm-up, then constant), so it needs no state.

Data parallel. Under ``torchrun`` each rank builds the same networks from the same seed (then rank
0's weights are broadcast), draws the same global batch indices and the same global-batch-shaped
noise, and keeps its own slice (``rand_b``/``randn_b``), so 2 ranks x B/2 compute exactly what
1 rank x B computes; gradients are averaged with one flat all-reduce per network after backward
(gloo on CPU, nccl on CUDA). We average gradients by hand instead of wrapping in
``DistributedDataParallel``: the self-rollout of stage 3 calls the generator many times per step
(several with gradient) and alternates two networks, which DDP's one-forward-one-backward reducer
does not allow; a flat all-reduce after backward is the same arithmetic.

Files in ``run.out_dir``: ``checkpoint.safetensors`` (training state, for resume),
``final.safetensors`` (the stage's output, read by the next stage), ``metrics.jsonl``,
``samples/step_XXXXXX.{png,mp4}`` (rollouts under real actions beside the ground truth),
``config.yaml`` (the resolved config).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from worldsim.checkpoint import file_hash, load_checkpoint, read_meta, save_checkpoint
from worldsim.config import to_dict, to_yaml
from worldsim.data.frames import scale_to_uint8
from worldsim.data.palette import palette_of
from worldsim.device import autocast, pick_device, pick_dtype
from worldsim.errors import CheckpointError, ConfigError
from worldsim.train.data import (DataConfig, check_dataset_fits, collate, data_frame_period, draw_indices, open_clips,
                                 open_heldout, to_model_inputs)

log = logging.getLogger("worldsim.train")

CHECKPOINT = "checkpoint.safetensors"  # training state (resume)
FINISH = "FINISH"  # touch out_dir/FINISH: end the stage at the current step and write its output
FINAL = "final.safetensors"  # the stage's output
METRICS = "metrics.jsonl"

# Config keys that may change between a checkpoint and its resume without breaking exactness.
RESUMABLE_CHANGES = ("optim.steps", "run.log_every", "run.ckpt_every", "run.sample_every", "run.progress",
                     "run.out_dir", "run.resume", "run.device", "run.stop_after", "run.samples",
                     "run.sample_context", "run.sample_horizon", "data.paths", "data.cache_dir", "data.preload",
                     "engine")  # engine: how samples are drawn during training, not what is trained


@dataclass
class OptimConfig:
    lr: float = 2e-4  # small models from scratch want 1e-4..3e-4 (RECIPE.md); billion-scale fine-tuning ~2e-6
    warmup: int = 50  # linear warm-up steps
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.01
    grad_clip: float = 1.0  # max global grad norm (0: off)
    batch_size: int = 8  # GLOBAL batch: split evenly over the ranks
    steps: int = 1000
    ema_decay: float = 0.999  # EMA of the shipped weights; effective decay min(d, (1+n)/(10+n)) early on
    schedule: str = "constant"  # after warm-up: constant | cosine (to min_lr_ratio x lr at the last step)
    min_lr_ratio: float = 0.1


@dataclass
class RunConfig:
    out_dir: str = ""  # everything of this run goes here (override with out_dir=PATH)
    seed: int = 0
    bf16: bool = True  # bf16 autocast where the device has it fast (CUDA; CPUs with AVX512-BF16/AMX)
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 10  # steps per JSONL line (means over the interval)
    ckpt_every: int = 200  # steps per training-state checkpoint (and always at the end)
    sample_every: int = 0  # steps per sample video (0: only at the end; -1: never)
    samples: int = 4  # held-out clips per sample grid
    sample_context: int = 2  # real context frames of a sample rollout
    sample_horizon: int = 6  # generated frames of a sample rollout
    progress: bool = True  # tqdm bar with loss, steps/s and ETA
    resume: bool = True  # continue from out_dir/checkpoint.safetensors when it exists
    stop_after: int = 0  # stop (with a checkpoint, no final output) after this many steps: for tests / time slicing


# ---------------------------------------------------------------------------------------------
# distributed


def dist_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment (1 process: 0, 1, 0)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: torch.device) -> None:
    rank, world, _ = dist_env()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def all_reduce_mean_(tensors: list[torch.Tensor], world: int) -> None:
    """Average ``tensors`` over the ranks in place with one flat all-reduce."""
    if world <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    off = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[off:off + n].view_as(t))
        off += n


# ---------------------------------------------------------------------------------------------
# EMA


class EMA:
    """Exponential moving average of a network's parameters, kept as a frozen copy of the network
    (so it can run forwards: the shipped weights, the consistency target)."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.model = copy.deepcopy(model).requires_grad_(False).eval()
        self.updates = 0

    def rate(self) -> float:
        d = self.decay
        if self.warmup:  # early on average over fewer steps: short runs otherwise ship the init
            d = min(d, (1 + self.updates) / (10 + self.updates))
        return d

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        d = self.rate()
        ema_p = [p for p in self.model.parameters()]
        src = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, src, 1.0 - d)
        self.updates += 1


# ---------------------------------------------------------------------------------------------
# checkpoint helpers


def state_tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v.detach() for k, v in module.state_dict().items()}


def optim_tensors(prefix: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            tensors[f"{prefix}{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def load_optim(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str, groups: list) -> None:
    state: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith(prefix):
            pid, key = k[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[key] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def rng_tensors(gens: dict[str, torch.Generator]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {f"rng.{k}": g.get_state() for k, g in gens.items()}
    tensors["rng.torch_cpu"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.torch_cuda"] = torch.cuda.get_rng_state()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, np.int64))
    version, pstate, gauss = random.getstate()
    tensors["rng.python"] = torch.tensor(pstate, dtype=torch.int64)
    meta = {"numpy": [name, int(pos), int(has_gauss), float(cached)], "python": [version, gauss]}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict, gens: dict[str, torch.Generator]) -> None:
    for k, g in gens.items():
        g.set_state(tensors[f"rng.{k}"])
    torch.set_rng_state(tensors["rng.torch_cpu"])
    if "rng.torch_cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.torch_cuda"])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, gauss = meta["python"]
    random.setstate((version, tuple(int(v) for v in tensors["rng.python"].tolist()), gauss))


def flatten_config(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_config(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Keys added to a config after checkpoints were written, with the value that older checkpoints behave
# as (matched on the key's last part): such a checkpoint is the same config as one that sets it so.
ADDED_KEYS = {"redraw_actions": False, "temporal_every": 1, "anchor": False, "anchor_history": 1,
              "motion_weight": 0.0, "refine": 0, "refiner_only": False}

# Options removed since configs and checkpoints were written (matched on the key's last part), with the
# value at which each changed nothing: stage 1's self-anchoring, and the model's anchor_mode (at "input"
# the one form there is now; any value on a model without anchors).
REMOVED_KEYS = {"anchor_self": 0.0, "anchor_mode": "input"}


def _removed_is_noop(key: str, value: Any, siblings: dict) -> bool:
    if key == "anchor_mode" and siblings.get("anchor", True) is False:
        return True
    return value == REMOVED_KEYS[key]


def drop_removed(cfg: dict, where: str, prefix: str = "") -> dict:
    """``cfg`` (a nested config dict, as a YAML file holds it) without the removed options: each at its
    no-op value is dropped with a logged note; any other value is refused with one line naming it, since
    the run it asks for can no longer be trained. ``where`` names the file in the messages."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out[k] = drop_removed(v, where, f"{prefix}{k}.")
        elif k in REMOVED_KEYS:
            if not _removed_is_noop(k, v, cfg):
                raise ConfigError(f"{where}: {prefix}{k}={v} is no longer an option (the experiment it served lost "
                                  f"and was removed); delete the key, or set it to {REMOVED_KEYS[k]!r}")
            log.warning("%s: %s%s=%s dropped (a removed option; at that value it changed nothing)", where, prefix, k, v)
        else:
            out[k] = v
    return out


def config_differences(saved: dict, current: dict, ignore=RESUMABLE_CHANGES) -> list[str]:
    a, b = flatten_config(saved), flatten_config(current)
    for k in [k for k in a if k not in b and k.rsplit(".", 1)[-1] in REMOVED_KEYS]:
        prefix, _, last = k.rpartition(".")
        siblings = {kk.rsplit(".", 1)[-1]: v for kk, v in a.items() if kk.rpartition(".")[0] == prefix}
        if _removed_is_noop(last, a[k], siblings):
            del a[k]  # a removed option at its no-op value: the same config without it
    for k in set(b) - set(a):
        if k.rsplit(".", 1)[-1] in ADDED_KEYS:
            a[k] = ADDED_KEYS[k.rsplit(".", 1)[-1]]
    diffs = []
    for k in sorted(set(a) | set(b)):
        if k in ignore or any(k.startswith(p + ".") for p in ignore):
            continue
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            diffs.append(f"{k}={a.get(k, '<absent>')!r} in the checkpoint but {b.get(k, '<absent>')!r} now")
    return diffs


def describe_checkpoint(meta: dict) -> str:
    return f"role '{meta.get('role')}' from stage {meta.get('stage')} ({meta.get('stage_name', '?')})"


def load_stage_output(path: str | Path, *, role: str, stages: tuple[int, ...], what: str, needed_by: str,
                      hint: str = "", prefix: str = "model.", device="cpu") -> tuple[torch.nn.Module, dict]:
    """Load a previous stage's output, refusing a checkpoint of another role or stage with the fix."""
    from worldsim.checkpoint import load_weights

    if not path:
        raise ConfigError(f"{needed_by} needs {what}: set its path (e.g. {hint or 'init.teacher=PATH'})")
    meta = read_meta(path)
    if meta.get("kind") == "train_state":
        raise CheckpointError(f"'{path}' is a training-state checkpoint, not a stage output; {needed_by} reads the "
                              f"stage's final.safetensors ({what})")
    if meta.get("role") != role or int(meta.get("stage", -1)) not in stages:
        want = " or ".join(str(s) for s in stages)
        raise CheckpointError(f"{needed_by} needs {what} (role '{role}', stage {want}) but '{path}' is a "
                              f"{describe_checkpoint(meta)} checkpoint; pass {hint or 'the right stage output'}")
    tensors, meta = load_checkpoint(path, prefix)
    model = load_weights(tensors, meta, path)
    meta["_path"] = str(path)
    meta["_hash"] = file_hash(path)
    return model.to(device), meta


def check_same_game(meta: dict, ds, path: str, needed_by: str, same_period: bool = True) -> None:
    if meta.get("action_meanings") is not None and list(meta["action_meanings"]) != list(ds.action_meanings):
        raise CheckpointError(f"{needed_by}: '{path}' was trained on {meta.get('env_id')} "
                              f"({len(meta['action_meanings'])} actions) but the data is {ds.env_id} "
                              f"({ds.num_actions} actions); pass a checkpoint of the same game")
    if same_period and meta.get("frame_period") is not None:  # continued on data of another time step, a model learns another game speed
        from worldsim.gametime import FramePeriod

        theirs, ours = FramePeriod.from_meta(meta["frame_period"], f"checkpoint '{path}'"), data_frame_period(ds)
        if ours is not None and abs(theirs.ms - ours.ms) > 1e-6:
            raise CheckpointError(f"{needed_by}: '{path}' was trained at {theirs.describe()} but the data steps "
                                  f"{ours.describe()}; collect the data at frameskip {theirs.frameskip}, "
                                  f"train from scratch or set init.retime=true")
    R = meta.get("resolution")
    if R is not None and int(R) != int(ds.resolution[0]):
        raise CheckpointError(f"{needed_by}: '{path}' works at resolution {R} but data.resolution is "
                              f"{ds.resolution[0]}; set data.resolution={R}")


# ---------------------------------------------------------------------------------------------
# the loop


class Trainer:
    """Base class of every stage. Subclasses set ``stage``, ``stage_name``, ``role`` and implement
    ``setup`` and ``train_step``; they register networks with ``add_net``."""

    stage: int = -1
    stage_name: str = "?"
    role: str = "?"

    def __init__(self, cfg, data=None, heldout=None):
        self.cfg = cfg
        if not cfg.run.out_dir:
            raise ConfigError(f"{self.stage_name}: set run.out_dir (or out_dir=PATH on the command line)")
        self.rank, self.world, local_rank = dist_env()
        dev = pick_device(cfg.run.device)
        if dev.type == "cuda" and self.world > 1:
            dev = torch.device("cuda", local_rank)
            torch.cuda.set_device(dev)
        self.device = dev
        self.dtype = pick_dtype(dev) if cfg.run.bf16 else torch.float32
        init_distributed(dev)
        self.out = Path(cfg.run.out_dir)
        self._data, self._heldout = data, heldout
        seed = cfg.run.seed
        self.gen_data = torch.Generator().manual_seed(seed)  # which clips (same on every rank)
        self.gen = torch.Generator().manual_seed(seed + 1_000_003)  # noise, levels, dropout (same on every rank)
        self.step = 0
        self.finished_early: Optional[int] = None  # step at which out_dir/FINISH ended the stage
        self.batches_drawn = 0
        self.nets: dict[str, torch.nn.Module] = {}
        self.optims: dict[str, torch.optim.Optimizer] = {}
        self.lrs: dict[str, float] = {}
        self.emas: dict[str, EMA] = {}
        self.frozen: set[str] = set()
        self.cost = {"wall_s": 0.0, "teacher_nfe": 0, "student_nfe": 0, "storage_bytes": 0}
        self.init_info: dict[str, Any] = {}
        self._metric_sums: dict[str, tuple[float, int]] = {}
        self._metric_n = 0
        self.last_metrics: dict[str, float] = {}

    # -- things subclasses provide ---------------------------------------------------------
    def setup(self) -> None:
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def sample_frames(self, ctx: torch.Tensor, prev: torch.Tensor, actions: torch.Tensor, seed: int) -> torch.Tensor:
        """Rollout for the sample video: context (B, K, 3, R, R) in [-1, 1] with the actions that produced it
        (B, K), then frames under ``actions`` (B, H) (recorded alignment: the action after each frame): (B, H, 3, R, R)."""
        raise NotImplementedError

    def output_meta(self) -> dict[str, Any]:
        """Extra metadata of the final output (e.g. recommended engine settings)."""
        return {}

    @property
    def main_net(self) -> str:
        return "model"

    @property
    def clip_len(self) -> int:
        return self.cfg.data.clip_len

    # -- data ------------------------------------------------------------------------------
    @property
    def data(self):
        if self._data is None:
            self._data = open_clips(self.cfg.data, self.cfg.data.split, self.clip_len)
        return self._data

    @property
    def heldout(self):
        if self._heldout is None:
            need = self.cfg.run.sample_context + self.cfg.run.sample_horizon
            self._heldout = open_heldout(self.cfg.data, need, fallback=None)
        return self._heldout

    @property
    def num_actions(self) -> int:
        return self.data.num_actions

    @property
    def local_batch(self) -> int:
        B = self.cfg.optim.batch_size
        if B % self.world:
            raise ConfigError(f"optim.batch_size {B} is not divisible by the {self.world} ranks")
        return B // self.world

    def next_batch(self) -> dict[str, torch.Tensor]:
        idx = draw_indices(len(self.data), self.cfg.optim.batch_size, self.gen_data, self.rank, self.world)
        self.batches_drawn += 1
        return collate([self.data[i] for i in idx])

    def model_inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return to_model_inputs(batch, self.num_actions, self.device)

    # -- randomness: global-batch draws, sliced per rank -------------------------------------
    def _slice(self, t: torch.Tensor) -> torch.Tensor:
        per = t.shape[0] // self.world
        return t[self.rank * per:(self.rank + 1) * per].to(self.device)

    def rand_b(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) of shape (B_local, *shape): this rank's part of a global-batch draw."""
        return self._slice(torch.rand((self.cfg.optim.batch_size,) + shape, generator=self.gen))

    def randn_b(self, *shape: int) -> torch.Tensor:
        return self._slice(torch.randn((self.cfg.optim.batch_size,) + shape, generator=self.gen))

    def randint(self, high: int) -> int:
        """One integer in [0, high) shared by every rank (per-batch choices: chunk size, exit step)."""
        return int(torch.randint(high, (1,), generator=self.gen))

    # -- networks --------------------------------------------------------------------------
    def add_net(self, name: str, net: torch.nn.Module, *, lr: float | None = None, betas=None,
                ema_decay: float | None = None, trainable: bool = True) -> torch.nn.Module:
        net = net.to(self.device)
        self.nets[name] = net
        if not trainable:
            net.requires_grad_(False).eval()
            self.frozen.add(name)
            return net
        o = self.cfg.optim
        self.lrs[name] = o.lr if lr is None else lr
        self.optims[name] = torch.optim.AdamW(net.parameters(), lr=self.lrs[name],
                                              betas=tuple(betas or o.betas), weight_decay=o.weight_decay)
        if ema_decay is not None:
            self.emas[name] = EMA(net, ema_decay)
        return net

    def broadcast_nets(self) -> None:
        if self.world <= 1:
            return
        for name, net in self.nets.items():
            for p in net.parameters():
                dist.broadcast(p.data, 0)
            if name in self.emas:
                for p in self.emas[name].model.parameters():
                    dist.broadcast(p.data, 0)

    def lr_at(self, name: str) -> float:
        """Learning rate of step ``self.step``: a pure function of the step (no scheduler state to save)."""
        o = self.cfg.optim
        base = self.lrs[name]
        if o.warmup > 0 and self.step < o.warmup:
            return base * (self.step + 1) / o.warmup
        if o.schedule == "cosine":
            t = (self.step - o.warmup) / max(o.steps - o.warmup, 1)
            return base * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))
        if o.schedule != "constant":
            raise ConfigError(f"optim.schedule '{o.schedule}' is not 'constant' or 'cosine'")
        return base

    def optimize(self, name: str, loss: torch.Tensor) -> float:
        """Backward ``loss`` into network ``name`` only, average gradients over ranks, clip, step,
        update its EMA. Returns the gradient norm before clipping."""
        net, opt = self.nets[name], self.optims[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in net.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        all_reduce_mean_([p.grad for p in params], self.world)
        clip = self.cfg.optim.grad_clip
        if clip > 0:
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        else:
            gnorm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
        for g in opt.param_groups:
            g["lr"] = self.lr_at(name)
        opt.step()
        if name in self.emas:
            self.emas[name].update(net)
        return gnorm

    def autocast(self):
        return autocast(self.device, self.dtype)

    def shipped(self, name: str | None = None) -> torch.nn.Module:
        """The weights a network ships with: its EMA if it has one."""
        name = name or self.main_net
        return self.emas[name].model if name in self.emas else self.nets[name]

    # -- metadata --------------------------------------------------------------------------
    def base_meta(self, role: str | None = None, model_cfg=None) -> dict[str, Any]:
        net = self.nets[self.main_net]
        return {"role": role or self.role, "stage": self.stage, "stage_name": self.stage_name, "step": self.step,
                "model_config": to_dict(model_cfg or net.cfg), "env_id": self.data.env_id,
                "action_meanings": list(self.data.action_meanings), "resolution": int(self.data.resolution[0]),
                "train_config": to_dict(self.cfg), "cost": self.cost_now(), "init": self.init_info,
                "finished_early": self.finished_early, **self.frame_period_meta(), **self.palette_meta()}

    def palette_meta(self) -> dict[str, Any]:
        """The game's colours in the training frames (``worldsim.data.palette``), measured once a run: the
        engine snaps every frame it draws to them. Nothing when the frames are not drawn from a palette."""
        if not hasattr(self, "_palette"):
            self._palette = palette_of(self.data)
        return {} if self._palette is None else {"palette": self._palette.to_meta()}

    def frame_period_meta(self) -> dict[str, Any]:
        """The game time one model frame spans, from the training data (``worldsim.gametime``): what
        play.py paces generation by. Nothing when the data does not say (in-memory test clips)."""
        period = data_frame_period(self.data)
        return {} if period is None else {"frame_period": period.to_meta()}

    def _agree(self, flag: bool) -> bool:
        """True when any rank says so (every rank must call this at the same step)."""
        if self.world <= 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def cost_now(self) -> dict[str, Any]:
        c = dict(self.cost)
        c["wall_s"] = round(self.cost["wall_s"] + (time.perf_counter() - self._t_start), 3) \
            if hasattr(self, "_t_start") else round(self.cost["wall_s"], 3)
        return c

    # -- checkpoints -----------------------------------------------------------------------
    def save_state(self) -> Path | None:
        if self.rank != 0:
            return None
        tensors: dict[str, torch.Tensor] = {}
        meta = self.base_meta()
        meta["kind"] = "train_state"
        meta["data_position"] = self.batches_drawn
        groups = {}
        for name, net in self.nets.items():
            if name in self.frozen:
                continue  # frozen networks are re-read from their source checkpoint
            tensors.update(state_tensors(f"{name}.", net))
            t, g = optim_tensors(f"optim.{name}.", self.optims[name])
            tensors.update(t)
            groups[name] = g
        for name, ema in self.emas.items():
            tensors.update(state_tensors(f"ema.{name}.", ema.model))
        meta["ema_updates"] = {n: e.updates for n, e in self.emas.items()}
        meta["optim_groups"] = groups
        rt, rmeta = rng_tensors({"data": self.gen_data, "noise": self.gen})
        tensors.update(rt)
        meta["rng"] = rmeta
        meta["extra_state"] = self.extra_state()
        tensors.update(self.extra_tensors())
        return save_checkpoint(self.out / CHECKPOINT, tensors, meta)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def extra_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def load_extra(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def try_resume(self) -> bool:
        path = self.out / CHECKPOINT
        if not (self.cfg.run.resume and path.is_file()):
            return False
        meta = read_meta(path)
        if meta.get("kind") != "train_state":
            raise CheckpointError(f"'{path}' is not a training-state checkpoint; move it away or use another out_dir")
        if meta.get("stage") != self.stage or meta.get("role") != self.role:
            raise CheckpointError(f"cannot resume {self.stage_name} (stage {self.stage}) from '{path}': it is a "
                                  f"{describe_checkpoint(meta)} checkpoint; use another out_dir")
        diffs = config_differences(meta.get("train_config", {}), to_dict(self.cfg))
        if diffs:
            raise CheckpointError(f"cannot resume from '{path}': the config changed ({'; '.join(diffs[:3])}); "
                                  f"restore the config or use a fresh out_dir")
        tensors, _ = load_checkpoint(path)
        for name, net in self.nets.items():
            if name in self.frozen:
                continue
            sd = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
            missing, unexpected = net.load_state_dict(sd, strict=False)
            if missing or unexpected:
                raise CheckpointError(f"'{path}' does not fit network '{name}' (missing {missing[:3]}); "
                                      f"use a fresh out_dir")
            load_optim(self.optims[name], tensors, f"optim.{name}.", meta["optim_groups"][name])
        for name, ema in self.emas.items():
            ema.model.load_state_dict({k[len(name) + 5:]: v for k, v in tensors.items()
                                       if k.startswith(f"ema.{name}.")})
            ema.updates = int(meta["ema_updates"][name])
        restore_rng(tensors, meta["rng"], {"data": self.gen_data, "noise": self.gen})
        self.step = int(meta["step"])
        self.batches_drawn = int(meta["data_position"])
        self.cost = {k: meta["cost"].get(k, v) for k, v in self.cost.items()}
        self.init_info = meta.get("init", self.init_info)
        self.load_extra(meta, tensors)
        self._truncate_metrics()
        log.info("%s: resumed from %s at step %d", self.stage_name, path, self.step)
        return True

    def export_final(self) -> Path | None:
        if self.rank != 0:
            return None
        meta = self.base_meta()
        meta.update(self.output_meta())
        tensors = state_tensors("model.", self.shipped())
        return save_checkpoint(self.out / FINAL, tensors, meta)

    # -- logs ------------------------------------------------------------------------------
    def _truncate_metrics(self) -> None:
        p = self.out / METRICS
        if self.rank != 0 or not p.is_file():
            return
        keep = [ln for ln in p.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
        p.write_text("".join(ln + "\n" for ln in keep))

    def _accumulate(self, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():  # per-key counts: some metrics come only every few steps
            s, n = self._metric_sums.get(k, (0.0, 0))
            self._metric_sums[k] = (s + float(v), n + 1)
        self._metric_n += 1

    def _write_metrics(self, rate: float) -> None:
        if not self._metric_n:
            return
        row = {"step": self.step, **{k: s / n for k, (s, n) in self._metric_sums.items()}}
        row.update({"lr": self.lr_at(self.main_net) if self.main_net in self.lrs else 0.0,
                    "steps_per_s": rate, "wall_s": self.cost_now()["wall_s"],
                    "teacher_nfe": self.cost["teacher_nfe"]})
        self.last_metrics = row
        self._metric_sums, self._metric_n = {}, 0
        if self.rank == 0:
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(row) + "\n")

    # -- samples ---------------------------------------------------------------------------
    def write_samples(self) -> list[Path]:
        if self.rank != 0 or self.cfg.run.samples <= 0:
            return []
        from worldsim.train.samples import fixed_clips, write_media

        K, H = self.cfg.run.sample_context, self.cfg.run.sample_horizon
        ds = self.heldout
        batch = fixed_clips(ds, self.cfg.run.samples, K + H, seed=self.cfg.run.seed)
        x, acts_design = batch["frames"], batch["actions"]  # uint8 (B, K+H, 3, R, R), (B, K+H)
        x0, prev = to_model_inputs(batch, self.num_actions, self.device)
        nets_mode = {n: m.training for n, m in self.nets.items()}
        for m in self.nets.values():
            m.eval()
        with torch.no_grad():
            fake = self.sample_frames(x0[:, :K], prev[:, :K], acts_design[:, K - 1:K + H - 1].to(self.device),
                                      seed=self.cfg.run.seed)
        for n, m in self.nets.items():
            m.train(nets_mode[n])
        fake_u8 = scale_to_uint8(fake.cpu())
        return write_media(self.out / "samples", f"step_{self.step:06d}", x, fake_u8, K)

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> Path | None:
        """Train to ``optim.steps`` (resuming if possible); write and return the final output."""
        from tqdm import tqdm

        torch.manual_seed(self.cfg.run.seed)  # global RNG: only for anything outside our generators
        np.random.seed(self.cfg.run.seed % 2**32)
        random.seed(self.cfg.run.seed)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        self.setup()
        check_dataset_fits(self.data, self.nets[self.main_net].cfg, self.stage_name)
        resumed = self.try_resume()
        self.broadcast_nets()
        if self.rank == 0:
            (self.out / "config.yaml").write_text(to_yaml(self.cfg))
        o, r = self.cfg.optim, self.cfg.run
        self._t_start = time.perf_counter()
        bar = tqdm(total=o.steps, initial=self.step, desc=f"{self.stage_name}", unit="step", dynamic_ncols=True,
                   disable=not r.progress or self.rank != 0, smoothing=0.1)
        t_log, s_log = time.perf_counter(), self.step
        stopped = False
        for name, m in self.nets.items():
            m.train(name not in self.frozen)
        signals = _StopSignals()
        finish = self.out / FINISH
        try:
            while self.step < o.steps:
                if (r.stop_after and self.step >= r.stop_after) or signals.received:
                    # SIGTERM/SIGINT: checkpoint and leave resumable (rerunning continues from here)
                    stopped = True
                    break
                if self.step % 10 == 0 and self._agree(finish.exists()):
                    # an operator ends a long stage early without losing it: the output is written now
                    log.info("%s: %s found, finishing at step %d of %d", self.stage_name, finish, self.step, o.steps)
                    self.finished_early = self.step
                    if self.rank == 0:
                        finish.unlink(missing_ok=True)  # consumed: a later run of this stage trains normally
                    break
                batch = self.next_batch()
                metrics = self.train_step(batch)
                self.step += 1
                self._accumulate(metrics)
                bar.update(1)
                if "loss" in metrics:
                    bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
                if self.step % r.log_every == 0 or self.step == o.steps:
                    now = time.perf_counter()
                    self._write_metrics((self.step - s_log) / max(now - t_log, 1e-9))
                    t_log, s_log = now, self.step
                if r.sample_every > 0 and self.step % r.sample_every == 0 and self.step < o.steps:
                    self.write_samples()
                if self.step % r.ckpt_every == 0 and self.step < o.steps:
                    self.save_state()
        finally:
            bar.close()
            signals.restore()
        self.save_state()
        if stopped:
            log.info("%s: stopped at step %d; run the same command again to resume", self.stage_name, self.step)
            return None
        if r.sample_every >= 0:
            self.write_samples()
        out = self.export_final()
        self.cost["wall_s"] = self.cost_now()["wall_s"]
        del self._t_start  # the clock is in cost now: a later cost_now() must not add the run's time again
        if self.world > 1:
            dist.barrier()
        return out


class _StopSignals:
    """SIGTERM/SIGINT set a flag the loop checks between steps (main thread only; else a no-op)."""

    def __init__(self):
        import signal
        import threading

        self.received = False
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received:  # a second signal: leave now
            raise KeyboardInterrupt
        self.received = True

    def restore(self):
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)


def v_loss(x0_hat: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor, min_sigma: float = 0.05,
           pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-frame flow-matching velocity loss (B, T) from an x0 prediction.

    With ``v_hat = (x_t - x0_hat) / s`` and ``v = eps - x0 = (x_t - x0) / s`` the error is
    ``(x0_hat - x0) / s``; dividing by ``max(s, min_sigma)`` instead keeps near-clean frames from
    dominating (the loss at s < min_sigma is the x0 error scaled by 1 / min_sigma^2).
    ``pixel_weight`` (broadcast to the frames, e.g. (B, T, 1, H, W)) weights the squared error per pixel."""
    s = sigma.float().clamp_min(min_sigma)  # (B, T)
    sq = (x0_hat.float() - x0.float()).pow(2)
    if pixel_weight is not None:
        sq = sq * pixel_weight
    return sq.mean(dim=(2, 3, 4)) / s.pow(2)


def bell_weight(sigma: torch.Tensor, width: float = 0.3) -> torch.Tensor:
    """Bell-shaped timestep weight, largest mid-schedule: exp(-(s - 0.5)^2 / (2 width^2)) (0.25 at the ends)."""
    return torch.exp(-((sigma.float() - 0.5) ** 2) / (2 * width ** 2))


def masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (v * mask).sum() / mask.sum().clamp_min(1)


def fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"

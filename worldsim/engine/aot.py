"""Ahead-of-time compiled forwards for play on the CPU (torch.export + AOTInductor).

Why. The default model is tiny (64 tokens a frame, 2M parameters): a 2-step frame is ~0.25 GFLOP,
yet an eager frame takes 12-18 ms on the 2-core CPU, 2-3% of its bf16 peak. Nearly all of it is
per-op overhead: ~2,000 ATen calls a frame, each dispatched from Python. Once the KV cache is full,
though, every step of a session has the same shapes. There are two forwards per chunk size C
(frame-wise: C = 1):

    (2C, C)  the fused cache write: [clean chunk k | noisy chunk k+1], the first C frames' outputs dropped
    (C, 0)   any later denoising step of chunk k+1

Each is exported (``torch.export``) as one graph over fixed shapes, with the KV cache buffers as
inputs it writes in place, and compiled by Inductor ahead of time into one C++ function: weights frozen
in (the linears packed for oneDNN), the pointwise ops fused into a few loops, no Python between ops.
On the 2-core target one frame-wise forward drops from ~7 ms (fused) and ~5.5 ms (plain) eager to ~3.9
and ~3.0. A package holds one chunk size's two graphs: play builds the frame-wise one first and a
chunk-wise one when chunk-wise play is first used.

What stays eager: everything between forwards (noise, the re-noising update, the cache commit and the
sinks' re-rotation), the first frames after a reset while the cache fills (none after the usual
8-frame prefill), other batch sizes and chunk sizes without a package. A package is for one batch: 1,
or 2 for play with classifier-free guidance (``worldsim.engine.guidance``: the player's stream and the
one without keys).

Life cycle. ``CompiledForwards`` owns all of it for one model, cache layout and chunk size: it finds
the package, builds it in the background when allowed (``worldsim compile`` at nice 19 on the cores the
generation process does not use), loads it beside generation, sets a damaged one aside and builds it
again, and gives up for good after a few failures. The engine holds it as its forward
(``attach``) and asks ``accepts`` before each call, falling back to its eager forward whenever the
answer is no, so the compiled path is an accelerator, never a requirement; a caller (play's backend,
eval, the benchmarks) only creates it and hands it over.

Numbers. The graph computes what the eager forward computes, in the same dtypes, but Inductor keeps
fused intermediates in fp32 where eager rounds each op's output to bf16: outputs differ by bf16
rounding (~1e-2 at most on x0 in [-1, 1]; the tests bound it). A session played compiled is not bit
for bit the session played eagerly, as a session on another machine would not be.

Where the packages live: ``$WORLDSIM_CACHE_DIR/aot/<key>`` (default ``~/.cache/worldsim/aot``), one
directory per (weights, model config, window, sink, chunk, dtype, torch version, CPU capability), written to a
temporary name and renamed when complete, so a reader never sees half a package. Building takes
~1 minute on the target (``worldsim compile``, or play.py in the background); loading ~10 ms.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from worldsim.engine.engine import cache_scratch_frames
from worldsim.errors import WorldsimError
from worldsim.model.dit import param_slots, weights_stamp

FORMAT = 2  # bump when the graphs' inputs or what they compute change: old packages are then not found
LOCK_STALE_S = 1800.0  # a build lock older than this (or whose process is gone) is taken over


class AotError(WorldsimError):
    """A compiled package that cannot be built or loaded."""


def cache_root() -> Path:
    root = os.environ.get("WORLDSIM_CACHE_DIR") or Path.home() / ".cache" / "worldsim"
    return Path(root) / "aot"


# -- what a package is specialised to -----------------------------------------------------------
def graphs(chunk: int = 1) -> tuple[tuple[int, int], ...]:
    """(frames in, first frames dropped) of a package's two graphs: the fused cache write [clean chunk |
    noisy chunk], and any later step of a chunk. One package per chunk size (frame-wise: chunk 1)."""
    return ((2 * chunk, chunk), (chunk, 0))


def spec(model, window: int, sink: int, chunk: int = 1, batch: int = 1) -> dict[str, Any]:
    """Everything the compiled graphs depend on besides the weights' values."""
    import dataclasses

    mc = model.cfg
    out = {
        "format": FORMAT, "model_config": dataclasses.asdict(mc), "window": int(window), "sink": int(sink),
        "chunk": int(chunk), "dtype": str(model.patch_embed.weight.dtype).removeprefix("torch."),
        "torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
        "graphs": [list(g) for g in graphs(chunk)],
    }
    if batch != 1:  # batch-1 packages keep the keys they were built under
        out["batch"] = int(batch)
    return out


def package_key(model, window: int, sink: int, chunk: int = 1, batch: int = 1) -> str:
    """sha256 of the spec and every weight's bytes (2M parameters: ~10 ms)."""
    h = hashlib.sha256(json.dumps(spec(model, window, sink, chunk, batch), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:24]


def _graph_file(frames: int, drop: int) -> str:
    return f"forward_t{frames}_d{drop}.pt2"


# -- the graphs ---------------------------------------------------------------------------------
class SteadyCache:
    """The KV cache's buffers once full (every sink and window slot valid): the frames being computed
    write their keys at the one fixed scratch offset, so the write traces into the graph."""

    exportable = True  # worldsim.model.dit: attention traces through this cache instead of stopping at it

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor], prefix_tokens: int):
        self.k, self.v, self.prefix = k, v, prefix_tokens

    def write_scratch(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        M = k.shape[2]
        self.k[layer][:, :, self.prefix:self.prefix + M].copy_(k)
        self.v[layer][:, :, self.prefix:self.prefix + M].copy_(v)
        return self.k[layer], self.v[layer], self.prefix + M


class SteadyForward(nn.Module):
    """``model(x, ...)`` with the KV cache full, as a function of tensors only (what gets exported):
    ``forward(x, cond, rot, [anchor], *k_layers, *v_layers) -> x0`` (B, frames - drop, 3, H, W) float32.
    cond: ``model.conditioning`` (B, frames, cfg.cond_rows, dim); rot: ``rope.real_rotations``."""

    def __init__(self, model, frames: int, drop: int, prefix_tokens: int, chunk: int = 1):
        super().__init__()
        self.model, self.frames, self.drop, self.prefix, self.chunk = model, frames, drop, prefix_tokens, chunk
        self.anchored = bool(model.cfg.anchor)

    def forward(self, x, cond, rot, *rest):
        anchor, kv = (rest[0], rest[1:]) if self.anchored else (None, rest)
        n = len(kv) // 2
        cache = SteadyCache(list(kv[:n]), list(kv[n:]), self.prefix)
        out = self.model(x, None, None, chunk=self.chunk, cache=cache, anchor=anchor, drop_first=self.drop, cond=cond,
                         rot=rot)
        return out.float()


def _example_inputs(model, frames: int, window: int, sink: int, chunk: int, batch: int = 1) -> tuple:
    mc = model.cfg
    wd = model.patch_embed.weight.dtype
    N = mc.tokens_per_frame
    slots = (sink + window + cache_scratch_frames(chunk, sink, window)) * N  # as Engine.reset sizes the cache
    B = batch
    x = torch.randn(B, frames, mc.channels, mc.resolution, mc.resolution)
    cond = torch.randn(B, frames, mc.cond_rows, mc.dim).to(wd)
    rot = model.rope.real_rotations(torch.arange(sink + window, sink + window + frames))
    anchor = [torch.randn(B, frames, mc.channels * mc.anchor_history, mc.resolution, mc.resolution)] if mc.anchor else []
    kv = [torch.randn(B, mc.kv_heads, slots, mc.head_dim).to(wd) for _ in range(2 * mc.cache_layers)]
    return (x, cond, rot, *anchor, *kv)


# -- building ------------------------------------------------------------------------------------
def build(model, window: int, sink: int, *, chunk: int = 1, batch: int = 1, root: Path | None = None,
          compile_threads: int | None = None, log=print) -> Path:
    """Export and compile both graphs for ``model`` (eval mode, its play dtype, on the CPU) and this cache
    layout, chunk size and batch into ``root/<key>``; returns that directory (at once if it exists). Needs a
    C++ compiler."""
    if next(model.parameters()).device.type != "cpu":
        raise AotError("compiled forwards are for the CPU; on a GPU the engine runs its Triton kernels")
    if not model.cfg.causal:
        raise AotError("compiled forwards need a causal (student) model with a KV cache")
    if not 1 <= chunk <= window:
        raise AotError(f"chunk {chunk} must be between 1 and the window ({window} frames)")
    missing = compiler_missing()
    if missing:
        raise AotError(missing)
    root = Path(root) if root is not None else cache_root()
    if batch < 1:
        raise AotError(f"batch {batch} must be >= 1")
    key = package_key(model, window, sink, chunk, batch)
    final = root / key
    if (final / "meta.json").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    for old in root.glob(f".{key}.*.tmp"):  # left by a build that was killed (a booth switched off mid-build)
        if not _pid_alive(old.name.split(".")[-2]):
            shutil.rmtree(old, ignore_errors=True)
    tmp = root / f".{key}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    import torch._inductor.config as inductor_config

    patches = {"freezing": True}
    if compile_threads is not None:
        patches["compile_threads"] = int(compile_threads)
    t_all = time.perf_counter()
    try:
        with torch.no_grad(), inductor_config.patch(patches):
            for frames, drop in graphs(chunk):
                t0 = time.perf_counter()
                mod = SteadyForward(model, frames, drop, (sink + window) * model.cfg.tokens_per_frame, chunk).eval()
                exported = torch.export.export(mod, _example_inputs(model, frames, window, sink, chunk, batch))
                torch._inductor.aoti_compile_and_package(exported, package_path=str(tmp / _graph_file(frames, drop)))
                log(f"compiled the {frames}-frame forward (dropping {drop}) in {time.perf_counter() - t0:.0f} s")
        meta = {**spec(model, window, sink, chunk, batch), "key": key, "build_s": round(time.perf_counter() - t_all, 1),
                "built": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, final)
        except OSError:  # another builder finished first: theirs is as good
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def compiler_missing() -> str | None:
    """Why nothing can be compiled here (no C++ compiler), or None."""
    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        return ("no C++ compiler found (g++): install one (Debian: apt install g++) to compile the model for this "
                "CPU; play runs eagerly meanwhile")
    return None


def load_built(model, window: int, sink: int, *, chunk: int = 1, batch: int = 1) -> "CompiledForwards | None":
    """Ready forwards for this model, cache layout, chunk size and batch if built (``worldsim compile``),
    else None; an ``AotError`` if the package does not load."""
    key = package_key(model, window, sink, chunk, batch)
    path = cache_root() / key
    if not (path / "meta.json").is_file():
        return None
    return CompiledForwards.of(model, Package.load(path), key=key)


def build_command(checkpoint, dtype: str, window: int, sink: int, chunk: int = 1, guidance: float | None = None) -> str:
    """The ``worldsim compile`` line that builds that package (for messages)."""
    return (f"worldsim compile --checkpoint {checkpoint} --dtype {dtype} --window {window} --sink {sink}"
            + (f" --chunk {chunk}" if chunk > 1 else "") + (f" --guidance {guidance:g}" if guidance is not None else ""))


def find(model, window: int, sink: int, *, chunk: int = 1, batch: int = 1, root: Path | None = None) -> Path | None:
    """The package directory for this model, cache layout, chunk size and batch, if built."""
    d = (Path(root) if root is not None else cache_root()) / package_key(model, window, sink, chunk, batch)
    return d if (d / "meta.json").is_file() else None


@contextlib.contextmanager
def build_lock(key: str, root: Path | None = None):
    """Yields True for the one process that should build ``key`` now, False while another does."""
    root = Path(root) if root is not None else cache_root()
    root.mkdir(parents=True, exist_ok=True)
    lock = root / f".{key}.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            if not _stale(lock):
                yield False
                return
            lock.unlink(missing_ok=True)
            continue
        try:
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
            yield True
        finally:
            lock.unlink(missing_ok=True)
        return
    yield False


def discard(path: Path) -> Path | None:
    """Move a damaged package out of the way (renamed ``.bad-<time>-<key>`` beside it, kept for a look;
    older set-aside copies of the same key are removed), so that it is built again. None if it could not."""
    path = Path(path)
    for old in path.parent.glob(f".bad-*-{path.name}"):
        shutil.rmtree(old, ignore_errors=True)
    dest = path.parent / f".bad-{int(time.time())}-{path.name}"
    try:
        os.replace(path, dest)
    except OSError:
        return None
    return dest


def build_running(key: str, root: Path | None = None) -> bool:
    """Whether a live process holds the build lock of ``key``."""
    lock = (Path(root) if root is not None else cache_root()) / f".{key}.lock"
    return lock.exists() and not _stale(lock)


def _stale(lock: Path) -> bool:
    try:
        pid = int(lock.read_text() or "0")
        age = time.time() - lock.stat().st_mtime
    except (OSError, ValueError):
        return True
    return age > LOCK_STALE_S or not _pid_alive(pid)


def _pid_alive(pid) -> bool:
    try:
        pid = int(pid)
        if pid <= 0:
            return False
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def build_in_background(checkpoint: str, dtype: str, window: int, sink: int, chunk: int = 1,
                        guidance: float | None = None) -> subprocess.Popen | None:
    """Start ``worldsim compile`` for this checkpoint in a low-priority process (nice 19). Called from a
    pinned generation process, it runs on the other cores (the display's, which sleeps most of a frame),
    so the frames being generated meanwhile keep their core; unpinned, on every core. Its output goes to
    ``<cache>/aot/build.log``. None if it could not start."""
    root = cache_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        logf = open(root / "build.log", "ab")
    except OSError:
        return None
    cores = None
    if hasattr(os, "sched_getaffinity"):
        every = set(range(os.cpu_count() or 1))
        cores = (every - os.sched_getaffinity(0)) or every

    def _lower():  # in the child, before exec
        os.nice(19)
        if cores:
            try:
                os.sched_setaffinity(0, cores)
            except OSError:
                pass

    cmd = [sys.executable, "-m", "worldsim", "compile", "--checkpoint", checkpoint, "--dtype", dtype,
           "--quiet", "--no-check", f"window={window}", f"sink={sink}", f"chunk={chunk}", "--compile-threads", "1"]
    if guidance is not None:  # the engine settings play runs with decide the batch (2 with classifier-free guidance)
        cmd.append(f"guidance={guidance:g}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        return subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_lower, env=env, start_new_session=True)
    except OSError:
        return None
    finally:
        logf.close()


# -- a package's graphs ------------------------------------------------------------------------
class Package:
    """The loaded graphs of one built package: ``runners[(frames, drop)](*inputs) -> x0``, and its meta."""

    def __init__(self, runners: dict[tuple[int, int], Any], meta: dict[str, Any], path: Path | str):
        self.runners, self.meta, self.path = runners, meta, Path(path)
        self.window, self.sink, self.chunk = int(meta["window"]), int(meta["sink"]), int(meta.get("chunk", 1))
        self.batch = int(meta.get("batch", 1))
        self.key = meta["key"]
        self.dtype = getattr(torch, str(meta.get("dtype")), None)  # the weights' (and the cache's) dtype

    @classmethod
    def load(cls, path: str | Path) -> "Package":
        path = Path(path)
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise AotError(f"compiled package '{path}' has no readable meta.json ({e}); run 'worldsim compile "
                           f"--force' to build it again") from None
        if meta.get("format") != FORMAT or meta.get("torch") != torch.__version__:
            raise AotError(f"compiled package '{path}' was built for format {meta.get('format')} / torch "
                           f"{meta.get('torch')}; this is format {FORMAT} / torch {torch.__version__}: run 'worldsim compile'")
        runners = {}
        for frames, drop in graphs(int(meta.get("chunk", 1))):
            f = path / _graph_file(frames, drop)
            try:
                runners[(frames, drop)] = _load_graph(f)
            except Exception as e:  # a truncated or foreign file: the loader's own message, shortened
                raise AotError(f"compiled graph '{f}' does not load ({type(e).__name__}: {str(e)[:120]}); run "
                               f"'worldsim compile --force' to build it again") from None
        return cls(runners, meta, path)


class _Graph:
    """One compiled graph, called with its flat tensor inputs; returns its one output."""

    def __init__(self, loader):
        self.loader = loader

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return self.loader.boxed_run(list(args))[0]


def _load_graph(f: Path):
    """The package's runner through torch's C++ loader: 5 ms, where ``torch._inductor.aoti_load_package``
    first imports Inductor and dynamo and probes the CPU's vector ISA by compiling test programs (~6 s
    on the target, in every new play worker); the ISA is part of our key already. Falls back to the
    public loader if this torch has no such class."""
    loader_cls = getattr(getattr(torch._C, "_aoti", None), "AOTIModelPackageLoader", None)
    if loader_cls is None:
        return torch._inductor.aoti_load_package(str(f))
    return _Graph(loader_cls(str(f), "model", False, 1, -1))


# -- the engine's compiled forward: from package to forward ------------------------------------
POLL_S = 2.0  # how often forwards without a package look for a finished build (from ``accepts``)
BUILD_TRIES = 3  # background builds (and loads of our own packages) tried before playing eagerly for good


class CompiledForwards:
    """The compiled forwards of one model, cache layout and chunk size, from the package on disk to the
    engine's forward: the one owner of their life cycle.

        absent -> [building ->] loading -> ready
        failed from any of them (no compiler, builds or loads that kept failing): eager for good

    absent: no package found yet. building: a background ``worldsim compile`` runs (ours, started when
    ``build_from`` names the checkpoint and dtype to build from, or another process's, seen by its lock).
    loading: the package loads on a thread beside generation. A package that does not load is set aside
    (``discard``) and built again when we may build (absent again), else the forwards fail.

    The engine holds it as its forward (``attach``): before each forward it asks ``accepts``, the one
    predicate (ready, a full cache of this layout, its batch, no autocast or gradients, the weights the
    package was built from), and runs the eager forward whenever it says no. ``accepts`` also advances
    the life cycle, at most every ``POLL_S`` seconds of ``clock``; ``poll`` does so at once.
    """

    def __init__(self, model, window: int, sink: int, chunk: int = 1, batch: int = 1, *,
                 build_from: dict[str, Any] | None = None, root: Path | None = None, log=print, clock=time.monotonic):
        self.model = model
        self.window, self.sink, self.chunk, self.batch = int(window), int(sink), int(chunk), int(batch)
        # {"checkpoint": path, "dtype": "bf16"[, "guidance": w]}: build in the background if absent
        self.build_from = build_from
        self.root = Path(root) if root is not None else cache_root()
        self.log, self.clock = log, clock
        self.state = "absent"
        self.package: Package | None = None
        self.key: str | None = None  # package key of the model's weights (a hash: computed once)
        self._slots = self._stamp = None  # the weights the key was computed from (identity, version)
        self._build = None  # our background build's Popen
        self._failures = 0
        self._next_poll = 0.0
        self._settled = threading.Event()  # set while no load is in flight
        self._settled.set()

    @classmethod
    def of(cls, model, package: Package, key: str | None = None) -> "CompiledForwards":
        """Ready forwards from a loaded ``package``, checked against ``model``'s weights (``key``: the
        model's package key when already computed)."""
        fw = cls(model, package.window, package.sink, package.chunk, package.batch)
        fw._keyed(key)
        if fw.key != package.key:
            raise AotError(f"compiled package '{package.path}' was built for other weights or settings "
                           f"(key {package.key}, this model {fw.key}); run 'worldsim compile' for this checkpoint")
        fw.package, fw.state = package, "ready"
        return fw

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    @property
    def path(self) -> Path | None:
        return self.package.path if self.package is not None else None

    def _keyed(self, key: str | None = None) -> str:
        if self.key is None:
            self._slots = param_slots(self.model)  # read before the hash: a change during it shows as stale
            self._stamp = weights_stamp(self._slots)
            self.key = key or package_key(self.model, self.window, self.sink, self.chunk, self.batch)
        return self.key

    def bind(self, model) -> None:
        """Serve ``model`` (an engine's): the same weights as the package's, or an ``AotError``. Weights
        changed in place since (a load, an optimiser step) are hashed again; equal bytes are accepted."""
        if model is self.model and (self._stamp is None or weights_stamp(self._slots) == self._stamp):
            return
        key = package_key(model, self.window, self.sink, self.chunk, self.batch)
        if self.key is not None and key != self.key:
            raise AotError(f"compiled package '{self.path or self.root / self.key}' was built for other weights or "
                           f"settings (key {self.key}, this model {key}); run 'worldsim compile' for this checkpoint")
        self.model, self.key = model, None
        self._keyed(key)

    # -- the life cycle --------------------------------------------------------------------------
    def poll(self, wait: bool = False) -> str:
        """Advance the life cycle now and return the state: find a built package and load it (on a thread,
        or here with ``wait``), start or watch the background build."""
        if self.state in ("ready", "failed", "loading"):
            return self.state
        self._next_poll = self.clock() + POLL_S
        path = self.root / self._keyed()
        if (path / "meta.json").is_file():
            if wait:
                self._load(path)
            else:
                self.state = "loading"
                self._settled.clear()
                threading.Thread(target=self._load, args=(path, True), daemon=True, name="worldsim-aot-load").start()
            return self.state
        if self.build_from is None:  # look again later: a 'worldsim compile' elsewhere may finish
            return self.state
        if self._build is None and build_running(self.key, self.root):  # another process builds it
            self.state = "building"
            return self.state
        if self._build is None:
            missing = compiler_missing()
            if missing:
                self._fail(missing)
                return self.state
            self._build = build_in_background(self.build_from["checkpoint"], self.build_from.get("dtype", "auto"),
                                              self.window, self.sink, self.chunk, self.build_from.get("guidance"))
            if self._build is None:
                self._fail("could not start the background build")
                return self.state
            self.state = "building"
            self.log(f"compiling the model's {self._what()} forwards for this CPU in the background (1-3 minutes; "
                     f"playing meanwhile, faster once done; log: {self.root / 'build.log'})")
        elif self._build.poll() is not None:  # ended without a package: a lock held elsewhere, or a failure
            self._build = None
            self._failures += 1
            if self._failures >= BUILD_TRIES:
                self._fail(f"the background build failed ({self.root / 'build.log'}; worldsim compile shows why)")
        return self.state

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no load is in flight (False if ``timeout`` seconds passed first)."""
        return self._settled.wait(timeout)

    def _load(self, path: Path, announce: bool = False) -> None:
        try:
            package = Package.load(path)
            if package.key != self.key:
                raise AotError(f"compiled package '{path}' holds key {package.key}, not its directory's name")
        except AotError as e:
            self._failures += 1
            if self.build_from is not None and self._failures < BUILD_TRIES:
                # a damaged package in our own cache (a disk fault, a copy cut short): set it aside and build
                # it again, as an unattended booth must
                discard(path)
                self.state, self._next_poll = "absent", 0.0
                self.log(f"compiled forwards: {e}; set aside, building them again (playing eagerly meanwhile)")
            else:
                self._fail(str(e))
            self._settled.set()
            return
        self.package = package
        self.state = "ready"  # after the package: a reader that sees 'ready' finds it
        self._settled.set()
        if announce:
            self.log(f"compiled forwards loaded ({path}): {self._what()} steps run them from now on")

    def _fail(self, why: str) -> None:
        self.state = "failed"
        self.log(f"compiled forwards: {why}; playing eagerly")

    def _what(self) -> str:
        what = "frame-wise" if self.chunk == 1 else f"chunk-wise (C={self.chunk})"
        return what + (f" batch {self.batch}" if self.batch > 1 else "")

    # -- the forward -----------------------------------------------------------------------------
    def accepts(self, x: torch.Tensor, cache, drop: int, dtype: torch.dtype) -> bool:
        """Whether the compiled graphs compute this forward: ``x`` (B, frames, 3, H, W) against ``cache`` (a
        ``KVCache``), the first ``drop`` frames' outputs dropped, under the engine's compute ``dtype``."""
        if self.state != "ready":
            if self.state != "failed" and self.clock() >= self._next_poll:
                self.poll()
            if self.state != "ready":
                return False
        if (x.shape[1], drop) not in self.package.runners or x.shape[0] != self.batch:
            return False
        if cache is None or not cache.full or cache.S != self.sink or cache.W != self.window:
            return False
        if dtype != torch.float32 or torch.is_grad_enabled() or x.device.type != "cpu":
            return False  # autocast (fp32 weights run in bf16) or training: the eager path
        if cache.k[0].dtype != self.package.dtype:
            return False  # not written yet (the cache's dtype is decided on its first write)
        return weights_stamp(self._slots) == self._stamp  # changed weights: the frozen ones would be stale

    def __call__(self, x, sigma, actions, pos, anchor, cache, drop: int) -> torch.Tensor:
        """The model's forward over a full ``cache`` (as ``accepts`` said): x0 (batch, frames - drop, 3, H, W)."""
        m = self.model
        frames = x.shape[1]
        cond = m.conditioning(actions, sigma)
        rot = m.rope.real_rotations(pos)
        if m.cfg.anchor:
            if anchor is None:
                anchor = x.new_zeros(x.shape[0], frames, m.cfg.channels * m.cfg.anchor_history, *x.shape[3:])
            args = (x.contiguous(), cond, rot, anchor.float().contiguous(), *cache.k, *cache.v)
        else:
            args = (x.contiguous(), cond, rot, *cache.k, *cache.v)
        out = self.package.runners[(frames, drop)](*args)
        cache.pending = frames  # as write_scratch leaves it: the engine commits the clean frames next
        return out


def attach(engine, forwards: CompiledForwards | None) -> None:
    """Hand ``forwards`` to ``engine`` as its compiled forward (None: eager only). They may still be
    building: the engine runs eagerly until ``accepts`` says yes."""
    if forwards is not None:
        if engine.compiled_error is not None:
            raise AotError(f"this engine dropped its compiled forwards ({engine.compiled_error}); a new one can take them")
        have = (engine.cfg.window, engine.cfg.sink, engine.cfg.chunk)
        if have != (forwards.window, forwards.sink, forwards.chunk):
            raise AotError(f"compiled package '{forwards.path}' is for window {forwards.window} + sink {forwards.sink}, "
                           f"chunk {forwards.chunk}; the engine has {have[0]} + {have[1]}, chunk {have[2]}: run "
                           f"'worldsim compile --window {have[0]} --sink {have[1]} --chunk {have[2]}'")
        forwards.bind(engine.model)
    engine.compiled = forwards

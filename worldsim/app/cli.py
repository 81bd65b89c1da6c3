"""``python play.py``: the player's door. Parses flags, builds session -> player, runs, reports.

Boundary: argument parsing and wiring only; every behaviour lives in the modules it wires
(``worldsim.runtime`` for generation, ``player`` / ``kiosk`` / ``replay`` for the screen).
Settings come from ``configs/play.yaml`` (``configs/kiosk.yaml`` with ``--kiosk``), then
``key=value`` overrides, then the explicit flags. User errors print one line and exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

from worldsim.errors import WorldsimError
from worldsim.paths import repo_file

EPILOG = """keys while playing: arrows/WASD move, space fires, R reset, P pause, 1/2/4 sampling steps,
C frame-wise <-> chunk-wise, H HUD, F12 screenshot, Esc/Q quit.
examples:
  python play.py                                   # the default model in assets/
  python play.py --game pong                       # another game's shipped model (assets/pong.safetensors)
  python play.py --checkpoint runs/student.safetensors --steps 1
  python play.py --record data/human               # record what you play (dataset format)
  python play.py --replay data/human               # watch it again
  python play.py --play-real boxing --record data/human_real   # or ALE/Boxing-v5
  python play.py --kiosk                           # demo booth (configs/kiosk.yaml)
  python play.py --headless --max-seconds 10 --synthetic-input 6 --json out/play.json"""


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="play.py", description="Play a worldsim world model in real time.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", metavar="key=value",
                    help="config overrides, e.g. speed=0.5 hud=false (kiosk: idle_timeout_s=30 play.speed=1)")
    ap.add_argument("--checkpoint", help="model file (default: assets/default.safetensors)")
    ap.add_argument("--game", help="play this game's shipped model: boxing, pong, breakout, mspacman "
                                   "(worldsim.envs.games; the start screen offers every shipped one)")
    ap.add_argument("--config", help="YAML config (default: configs/play.yaml, or configs/kiosk.yaml with --kiosk)")
    ap.add_argument("--headless", action="store_true", help="no window (SDL dummy video driver): tests, benchmarks")
    ap.add_argument("--kiosk", action="store_true", help="demo-booth mode: fullscreen, attract loop, self-healing")
    ap.add_argument("--record", metavar="DIR", help="record the session as episodes in DIR (dataset format)")
    ap.add_argument("--replay", metavar="PATH", help="replay recorded episodes (a directory or one episode)")
    ap.add_argument("--play-real", metavar="GAME",
                    help="play the real game (pong, or any id such as ALE/Boxing-v5) through the same loop")
    ap.add_argument("--steps", type=int, choices=[1, 2, 4], help="sampling steps per chunk (default: the checkpoint's)")
    ap.add_argument("--chunk", type=int, help="frames per chunk, 1 = frame-wise (default: the checkpoint's)")
    ap.add_argument("--speed", type=float,
                    help="pace relative to the game's own speed (the model's frame period): 1 (default), 0.5 slow "
                         "motion, 2 fast-forward, 0 = as fast as the model runs; with --replay, of the recorded pace")
    ap.add_argument("--fps", type=float, help=argparse.SUPPRESS)  # removed: one line naming --speed
    ap.add_argument("--seed", type=int, help="noise seed of the first context")
    ap.add_argument("--context", metavar="NPZ", help="start from the last frames of this plain .npz episode")
    ap.add_argument("--device", help="auto | cpu | cuda")
    ap.add_argument("--dtype", help="auto | fp32 | bf16")
    ap.add_argument("--threads", type=int, help="torch threads (default 0: all cores but one; in a process worker pinned, the display on the other)")
    ap.add_argument("--fullscreen", action="store_true", help="fullscreen window")
    ap.add_argument("--max-seconds", type=float, help="stop after this many seconds")
    ap.add_argument("--json", metavar="PATH", help="write the latency/FPS summary here at exit")
    ap.add_argument("--synthetic-input", type=float, metavar="RATE",
                    help="post random game-key events, RATE per second on average (some sub-frame taps), "
                         "so a --headless run measures input-to-pixel latency as 'worldsim bench latency' does")
    return ap


FPS_REMOVED = ("was removed: play runs at the game's own speed, the model's frame period (worldsim.gametime); "
               "set speed= instead (1 = the game's own speed, 0.5 slow motion, 2 fast-forward, 0 = as fast as "
               "the model runs)")


def check_removed_keys(path, overrides, kiosk: bool) -> None:
    """One line for the generation cap ``fps`` that ``speed`` replaced (YAML, key=value or --fps)."""
    key = "play.fps" if kiosk else "fps"
    for o in overrides:
        if o.split("=")[0] in ("fps", "play.fps"):
            raise WorldsimError(f"config key '{o.split('=')[0]}' {FPS_REMOVED}")
    if path is not None and Path(path).is_file():
        from worldsim.config import load_yaml

        node = load_yaml(path)
        node = node.get("play") if kiosk else node
        if node is not None and hasattr(node, "keys") and "fps" in node.keys():
            raise WorldsimError(f"config key '{key}' in {path} {FPS_REMOVED}")


def load_configs(args):
    """(PlayConfig, KioskConfig or None) from YAML + overrides + flags."""
    from worldsim.app.kiosk import KioskConfig
    from worldsim.app.player import PlayConfig
    from worldsim.config import load_config

    if getattr(args, "fps", None) is not None:
        raise WorldsimError(f"--fps {FPS_REMOVED.replace('set speed=', 'pass --speed')}")
    if args.kiosk:
        path = default_config(args.config or "configs/kiosk.yaml", given=bool(args.config))
        check_removed_keys(path, args.overrides, kiosk=True)
        kcfg = load_config(KioskConfig, path, args.overrides)
        play = kcfg.play
    else:
        path = default_config(args.config or "configs/play.yaml", given=bool(args.config))
        check_removed_keys(path, args.overrides, kiosk=False)
        kcfg, play = None, load_config(PlayConfig, path, args.overrides)
    flags = {"checkpoint": args.checkpoint, "game": args.game, "steps": args.steps, "chunk": args.chunk, "speed": args.speed,
             "seed": args.seed, "context": args.context, "device": args.device, "dtype": args.dtype,
             "threads": args.threads, "record": args.record, "max_seconds": args.max_seconds}
    play = dataclasses.replace(play, **{k: v for k, v in flags.items() if v is not None})
    if args.fullscreen:
        play = dataclasses.replace(play, fullscreen=True)
    if args.headless:
        play = dataclasses.replace(play, start_screen=False)
    from worldsim.config import check_values
    from worldsim.gametime import check_speed

    check_values(play, "the flags and config of play.py")
    play = resolve_game(play, given_checkpoint=args.checkpoint is not None or any(
        o.split("=")[0] in ("checkpoint", "play.checkpoint") for o in args.overrides))
    play = dataclasses.replace(play, checkpoint=str(repo_file(play.checkpoint)))
    check_speed(play.speed)
    # WORLDSIM_COMPILE sets the default of compile= (a key=value override still wins): the test suite
    # sets it to 'off' so that no play it runs starts a background build. YAML reads a bare off/on as a
    # boolean, which the str field keeps as 'False'/'True'.
    given = any(o.split("=")[0] in ("compile", "play.compile") for o in args.overrides)
    play = dataclasses.replace(play, compile=compile_mode(
        play.compile if given else os.environ.get("WORLDSIM_COMPILE") or play.compile))
    if kcfg is not None:
        kcfg = dataclasses.replace(kcfg, play=play)
    return play, kcfg


def default_config(rel: str, given: bool) -> str | None:
    """A config path from here or in the clone (``repo_file``): the one given (a missing one is reported by
    load_config), else the default file, or None (the built-in defaults) where the clone has none."""
    path = repo_file(rel)
    return str(path) if given or path.is_file() else None


def resolve_game(play, given_checkpoint: bool):
    """``game=`` (or --game) -> that game's shipped model as the checkpoint; one line when it does not ship
    (what does, and how to train it) or when a checkpoint is named too."""
    if not play.game:
        return play
    from worldsim.envs.games import shipped_model

    if given_checkpoint:
        raise WorldsimError(f"--game {play.game} and a checkpoint ({play.checkpoint}) name two models; pass one of them")
    game, path = shipped_model(play.game)
    return dataclasses.replace(play, game=game.name, checkpoint=str(path))


def open_first_game(play, booth: bool):
    """(play, the model session, (game, why) or None): the configured model; in a booth (``--kiosk``) whose
    model will not open, the next shipped game that does, with one line saying so, so that one game's
    broken file does not keep the booth dark."""
    try:
        return play, build_model_session(play), None
    except WorldsimError as e:
        from worldsim.envs.games import shipped_games

        others = [g for g in shipped_games() if g.asset_path().resolve() != Path(play.checkpoint).resolve()]
        if not booth or not others:
            raise
        failed = next((g.name for g in shipped_games() if g not in others), Path(play.checkpoint).name)
        for g in others:
            try:
                session = build_model_session(dataclasses.replace(play, checkpoint=str(g.asset_path()), game=g.name))
            except WorldsimError:
                continue
            print(f"play.py: kiosk: {failed} will not open ({e}); playing {g.name}", file=sys.stderr)
            return dataclasses.replace(play, checkpoint=str(g.asset_path()), game=g.name), session, (failed, str(e))
        raise


def build_arcade(play, first_env_id: str):
    """(Arcade of every shipped game, the playing game's name) when more than one ships and the model
    playing is one of them; (None, its game name or '') otherwise (another checkpoint, a recording, a
    context file: one game only)."""
    from worldsim.app.arcade import Arcade
    from worldsim.envs.games import find_game, shipped_games
    from worldsim.runtime import SessionConfig

    g = find_game(first_env_id)
    name = g.name if g is not None else ""
    shipped = shipped_games()
    if (g is None or play.record or play.context or len(shipped) < 2
            or Path(play.checkpoint).resolve() != g.asset_path().resolve()):
        return None, name

    def opener(game):
        def open_game():
            backend, label, meta, pace = build_model_session(dataclasses.replace(play, checkpoint=str(game.asset_path())))
            backend = in_worker_process(backend, play)
            return backend, label, meta, pace
        return open_game

    def session_config(pace):
        return SessionConfig(seed=play.seed, fps=pace.rate, stall_timeout_s=play.stall_timeout_s,
                             start_timeout_s=play.start_timeout_s)

    return Arcade({x.name: opener(x) for x in shipped}, session_config, {x.name: x.title for x in shipped}), name


def compile_mode(value) -> str:
    """play.compile as one of auto | cached | off (a bare YAML off/on arrives as a boolean)."""
    mode = {"false": "off", "true": "auto"}.get(str(value).lower(), str(value))
    if mode not in ("auto", "cached", "off"):
        raise WorldsimError(f"compile must be 'auto', 'cached' or 'off' (got {value!r})")
    return mode


def build_model_session(play):
    """(backend, model label, recording meta, pace) for the world model."""
    from worldsim.runtime import load_playable

    overrides = {k: v for k, v in (("steps", play.steps), ("chunk", play.chunk)) if v}
    if play.window < 0:
        raise WorldsimError(f"window must be >= 1 frame, or 0 for the checkpoint's (got {play.window})")
    if play.window:
        overrides["window"] = play.window
    if play.sink >= 0:
        overrides["sink"] = play.sink
    if play.guidance >= 0:
        overrides["guidance"] = float(play.guidance)
    if not play.palette:
        overrides["palette"] = False
    if play.steps and play.steps not in (1, 2, 4):
        raise WorldsimError(f"steps must be 1, 2 or 4 (got {play.steps})")
    p = load_playable(play.checkpoint, device=None if play.device == "auto" else play.device,
                      dtype=None if play.dtype == "auto" else play.dtype, engine_overrides=overrides,
                      context_path=play.context or None)
    if p.note:
        print(f"play.py: note: {p.note}", file=sys.stderr)
    from worldsim.app.arcade import game_title
    from worldsim.gametime import Pace, checkpoint_period

    period = checkpoint_period(p.meta, Path(p.path).name)
    if period.note:
        print(f"play.py: note: {period.note}", file=sys.stderr)
    pace = Pace(period.period, play.speed, game_title(p.env_id))
    # compiled forwards on the CPU (worldsim.engine.aot); a background build loads the same file and dtype
    from worldsim.device import dtype_name

    p.backend.compiled_mode = play.compile
    p.backend.source = {"checkpoint": str(Path(p.path).resolve()), "dtype": dtype_name(p.weights_dtype)}
    label = f"{Path(p.path).name} ({p.env_id})"
    meta = {"env_id": p.env_id, "action_meanings": p.action_meanings, "source": "play", "policy": "human",
            "checkpoint": p.path, "checkpoint_hash": p.file_hash, "engine": dataclasses.asdict(p.backend.cfg),
            "resolution": p.backend.model.cfg.resolution, "device": str(p.device),
            "frame_period_source": period.source, **pace.to_meta()}
    return p.backend, label, meta, pace


def in_worker_process(backend, play):
    """The model backend in a child process (``play.worker=process``, CPU only), else as it is.

    The parent keeps one torch thread (it only draws); the child takes ``play.threads`` (0: every core
    but one, pinned, with the parent's threads on the remaining one: ``split_cores``).
    On CUDA the model stays in a worker thread: the GPU does the work, and CUDA state does not cross a
    spawn cheaply."""
    from worldsim.runtime import ProcessBackend

    if play.worker != "process" or torch_device_type(backend) != "cpu":
        return backend
    import torch

    torch.set_num_threads(1)
    return ProcessBackend(backend, threads=play.threads, start_timeout_s=play.start_timeout_s)


def torch_device_type(backend) -> str:
    import torch

    return torch.device(getattr(backend, "device", "cpu") or "cpu").type


def build_real_session(env_id: str, play):
    """(backend, label, recording meta, pace) for the real game: one step spans ``frameskip`` emulator
    frames, so the game's own speed is its ``frame_period`` (60/frameskip steps/s on Atari)."""
    from worldsim.app.arcade import game_title
    from worldsim.envs import make_env
    from worldsim.envs.games import find_game
    from worldsim.gametime import Pace
    from worldsim.runtime import EnvBackend

    game = find_game(env_id) if "/" not in env_id else None  # a short name: 'pong'
    env_id = game.env_id if game is not None else env_id
    backend = EnvBackend(lambda: make_env(env_id))
    env = backend.env
    pace = Pace(env.frame_period, play.speed, game_title(env_id))
    meta = {**env.describe(), "source": "play-real", "policy": "human", **pace.to_meta()}
    return backend, env_id, meta, pace


def check_flags(args) -> None:
    """Flags outside the config: refused with one line when they mean nothing or would be ignored."""
    if args.synthetic_input is not None and args.kiosk:
        raise WorldsimError("--synthetic-input does not apply to --kiosk (a booth takes real keys; its attract loop "
                            "plays itself); drop one of them")
    if args.synthetic_input is not None and args.synthetic_input < 0:
        raise WorldsimError(f"--synthetic-input must be a rate >= 0 in events per second (got {args.synthetic_input:g})")
    if args.max_seconds is not None and not args.max_seconds >= 0:
        raise WorldsimError(f"--max-seconds must be >= 0 (0: until quit), got {args.max_seconds:g}")


def run(args) -> int:
    from worldsim.app.display import init_pygame

    check_flags(args)
    from worldsim.app.display import Screen

    if args.replay:
        init_pygame(headless=args.headless)
        from worldsim.app.replay import replay

        if args.fps is not None:
            raise WorldsimError(f"--fps {FPS_REMOVED.replace('set speed=', 'pass --speed')}")
        from worldsim.gametime import check_speed

        speed = check_speed(1.0 if args.speed is None else args.speed, "--speed")
        screen = Screen((64, 64), scale=10, title="worldsim replay")
        out = replay(args.replay, screen, speed=speed, max_seconds=args.max_seconds or 0.0,
                     announce=lambda line: print(f"play.py: {line}", file=sys.stderr))
        print(f"replayed {out['frames']} frames from {out['episodes']} episode(s)")
        return 0

    from worldsim.app.keymap import Keymap
    from worldsim.app.latency import format_summary
    from worldsim.app.recorder import Recorder
    from worldsim.runtime import ProcessBackend, Session, SessionConfig
    from worldsim.runtime.loading import set_generation_threads
    from worldsim.stats import json_safe

    play, kcfg = load_configs(args)
    if play.worker not in ("process", "thread"):
        raise WorldsimError(f"worker must be 'process' or 'thread' (got {play.worker!r})")
    init_pygame(headless=args.headless)  # after the config: a bad key or game is refused before a window opens
    set_generation_threads(play.threads)
    arcade, game = None, ""
    if args.play_real:
        backend, label, meta, pace = build_real_session(args.play_real, play)
    else:
        play, (backend, label, meta, pace), broken = open_first_game(play, booth=kcfg is not None)
        backend = in_worker_process(backend, play)
        meta["worker"] = "process" if isinstance(backend, ProcessBackend) else "thread"
        arcade, game = build_arcade(play, meta["env_id"])
        if game:
            meta["game"] = game
        if arcade is not None and broken:
            arcade.mark_broken(*broken)
    print(f"play.py: {pace.announce()}", file=sys.stderr)
    # The session starts one generation per tick of game time (0: uncapped): frames per second = rate.
    session = Session(backend, SessionConfig(seed=play.seed, fps=pace.rate, stall_timeout_s=play.stall_timeout_s,
                                             start_timeout_s=play.start_timeout_s))
    keymap = Keymap(backend.action_meanings)
    from worldsim.app.arcade import game_bindings, game_title

    bindings = game_bindings(meta["env_id"])  # Pong's UP arrow is its RIGHT action
    recorder = Recorder(play.record, meta) if play.record else None
    frame_hw = _frame_hw(backend)
    screen = Screen(frame_hw, scale=play.scale if frame_hw[0] <= 96 else max(1, play.scale // 3),
                    fullscreen=play.fullscreen, title=f"worldsim - {game_title(meta['env_id'])} ({label})",
                    hide_cursor=bool(kcfg and kcfg.hide_cursor))
    if kcfg is not None:
        from worldsim.app.kiosk import Kiosk

        stream = open(kcfg.log, "a") if kcfg.log else None
        try:
            player = Kiosk(session, keymap, screen, kcfg, env_id=meta["env_id"], model_label=label,
                           recorder=recorder, log_stream=stream, pace=pace, bindings=bindings, arcade=arcade,
                           game=game)
            summary = player.run()
        finally:
            if stream is not None:
                stream.close()
    else:
        from worldsim.app.player import Player

        player = Player(session, keymap, screen, play, recorder=recorder, model_label=label, pace=pace,
                        bindings=bindings, arcade=arcade, game=game)
        injector = _start_injector(args.synthetic_input, args.seed or 0)
        try:
            summary = player.run()
        finally:
            if injector is not None:
                injector.stop()
        print(format_summary(summary))
        gen, c = summary["chunk_ms"]["generation"]["p50"], summary["settings"].get("chunk", 1)
        spare = pace.spare_ms(gen, c) if gen == gen else None  # NaN: nothing generated
        summary["spare_ms"] = spare
        per = "per tick" if c == 1 else f"per chunk of {c} ticks"
        print(f"pace: {pace.label()}" + ("" if spare is None else
                                         f", tick {pace.tick_ms:.1f} ms: {spare:.1f} ms to spare {per} (p50 generation)"))
    if recorder is not None and recorder.episodes:
        print(f"recorded {recorder.steps} steps in {len(recorder.episodes)} episode(s) under {play.record}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_safe(summary), indent=2, default=str))
    screen.close()
    return player.exit_code


def _start_injector(rate: float | None, seed: int):
    """The synthetic key poster of ``worldsim bench latency`` (arrows and space: moves, diagonals, fire)."""
    if not rate:
        return None
    import pygame

    from worldsim.app.synthetic import InputInjector

    if rate < 0:
        raise WorldsimError(f"--synthetic-input must be a positive rate in events per second (got {rate:g})")
    keys = [pygame.K_UP, pygame.K_DOWN, pygame.K_LEFT, pygame.K_RIGHT, pygame.K_SPACE]
    injector = InputInjector(keys, rate=rate, seed=seed)
    injector.start()
    return injector


def _frame_hw(backend) -> tuple[int, int]:
    if getattr(backend, "kind", "") == "model":
        r = backend.model.cfg.resolution
        return r, r
    frame = backend.env.reset(0)  # probe the native size; the session resets the game again anyway
    return tuple(frame.shape[:2])


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except WorldsimError as e:
        print(f"play.py: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("play.py: interrupted", file=sys.stderr)
        return 130

"""``worldsim <command>``: the one command-line entry. Thin: each command lives in its layer.

Commands map to ``module:function`` taking ``argv`` (list of strings) and returning an exit code.
User errors (``WorldsimError``) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import importlib
import sys

from worldsim.errors import WorldsimError

COMMANDS = {
    "collect": ("worldsim.data.collect:main", "collect episodes from a real game or the built-in game"),
    "data": ("worldsim.data.cli:main", "dataset tools: validate, info, export, import, preview"),
    "train": ("worldsim.train.cli:main", "train a stage or the whole pipeline from a config"),
    "eval": ("worldsim.eval.cli:main", "judge a model against real episodes: realism, control, stability"),
    "bench": ("worldsim.bench.cli:main", "benchmarks: engine speed, input-to-pixel latency"),
    "compile": ("worldsim.runtime.compile_cli:main", "compile a model's frame-wise forwards for this CPU (faster play)"),
}


def usage() -> str:
    lines = ["usage: worldsim <command> [args]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'worldsim <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        import difflib

        near = difflib.get_close_matches(name, list(COMMANDS), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        print(f"worldsim: unknown command '{name}'{hint} (commands: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    mod_name, fn_name = COMMANDS[name][0].split(":")
    try:
        fn = getattr(importlib.import_module(mod_name), fn_name)
        return int(fn(rest) or 0)
    except WorldsimError as e:
        print(f"worldsim {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"worldsim {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

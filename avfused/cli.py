"""The ``avfused`` command line. Each subcommand lives in ``avfused.commands.<name>`` and defines
``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int`` (the exit status)."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = ("synth", "prepare", "splits", "train", "eval", "detect", "export", "bench", "info")


def _command_modules() -> dict:
    modules = {}
    for name in COMMANDS:
        try:
            modules[name] = importlib.import_module(f"avfused.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"avfused.commands.{name}":
                raise
    return modules


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    parser = argparse.ArgumentParser(
        prog="avfused", description="Audio-visual deepfake detection with a single-stream network."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = _command_modules()
    for name, module in modules.items():
        command = sub.add_parser(
            name, help=module.HELP, description=module.HELP, formatter_class=argparse.ArgumentDefaultsHelpFormatter
        )
        module.add_arguments(command)
    return parser, modules


def _quiet_ffmpeg(verbose: bool) -> None:
    """FFmpeg's own lines stay off (PyAV's default level, None): avfused reports bad files itself. Any
    other level installs PyAV's log callback, which takes the GIL from FFmpeg's decoder threads and can
    deadlock (seen: an h264 frame thread logging during a seek while the main thread waited on it), so
    only --verbose asks for it."""
    try:
        import av
    except ImportError:
        return
    av.logging.set_level(av.logging.VERBOSE if verbose else None)


def main(argv: list[str] | None = None) -> int:
    from avfused.errors import AvfusedError

    parser, modules = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    _quiet_ffmpeg(args.verbose)
    try:
        return int(modules[args.command].run(args) or 0)
    except AvfusedError as error:  # a named, explained error: one line and exit status 2, not a traceback
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what was saved has been logged (train: the step to --resume from)
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

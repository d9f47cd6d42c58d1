"""The `colm` command: `colm train`, `colm compare`, `colm demo`, `colm evaluate`.

Importing this package is cheap (no torch, transformers or datasets): each command module is
imported only when that command runs, so `colm --help` answers at once.
"""
from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

COMMANDS = {
    "train": ("colm.cli.train", "fine-tune a model on a data mixture with CoLM selection"),
    "compare": ("colm.cli.compare", "train several arms x seeds on your data; both losses with paired intervals"),
    "demo": ("colm.cli.demo", "random b, random 2b, colm's default and the paper's CoLM on the shipped mixture"),
    "evaluate": ("colm.cli.evaluate", "per-source validation loss (and exact match) of a checkpoint"),
}
USAGE = (
    "usage: colm [--debug] [--version] <command> [options]\n\n"
    "Mini-batch coresets for language-model training on data mixtures (CoLM, ICLR 2025).\n\n"
    "commands:\n"
    + "".join(f"  {name:<9} {help_}\n" for name, (_, help_) in COMMANDS.items())
    + "\n`colm <command> --help` lists a command's options. --debug shows Python tracebacks.\n"
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `colm` command line; returns the exit status (0 ok, 2 bad input, 1 failure).

    User errors print one line `colm <command>: error: ...` on stderr; anything else one line
    `failed: ...` (the machine: disk, memory) or `internal error ...` (a bug), with no traceback
    unless --debug, which re-raises.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("COLM_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    if args[0] == "--version":
        from colm import __version__

        print(f"colm {__version__}")
        return 0
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        sys.stderr.write(f"colm: error: unknown command {command!r}; commands are {', '.join(COMMANDS)}\n")
        return 2
    prog = f"colm {command}"
    from colm.cli.errors import FAILURE_EXIT, USAGE_EXIT, failure_line, one_line, user_error_types

    try:
        _quiet_libraries()
        module = importlib.import_module(COMMANDS[command][0])
        return int(module.run(rest) or 0)
    except SystemExit as exit_:  # argparse --help
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:
        if debug:
            raise
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130
    except user_error_types() as err:
        if debug:
            raise
        sys.stderr.write(f"{prog}: error: {one_line(err)}\n")
        return USAGE_EXIT
    except Exception as err:  # noqa: BLE001 - a bug or an environment failure: say which, briefly
        if debug:
            raise
        sys.stderr.write(failure_line(prog, err) + "\n")
        return FAILURE_EXIT


def _quiet_libraries() -> None:
    """Keep the terminal for colm's own output: library warnings and datasets' map bars off."""
    import warnings

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Spinning OpenMP workers slow small models up to ~7x when the cores are shared (measured on
    # a busy 2-core machine: 7.2 s vs 0.97 s per step); passive waiting costs little when idle.
    # Only effective before torch is first imported, which is the case for the console script.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    from colm.errors import RenamedWarning

    warnings.filterwarnings("default", category=RenamedWarning)  # colm's own renamed options: shown
    try:
        import datasets
        import transformers

        datasets.disable_progress_bars()
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # "Writing model shards" bars on every save
    except ImportError:  # pragma: no cover - both are dependencies
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The ``wnb`` command: batch runs of the paper's analyses, results in a folder and in the cache.

    wnb score  --model EleutherAI/pythia-1.4b-deduped --corpus wikitext2 --seq-len 2048 --windows 128 -o runs/pythia
    wnb prune  --method sparsegpt --sparsity 0.5 -o runs/prune
    wnb expand --experts 16 --sparsity 0.5 -o runs/expand
    wnb sweep  --methods magnitude wanda sparsegpt --sparsities 0.5 0.7 2:4 -o runs/sweep
    wnb claims --budget small -o runs/claims

Every sub-command takes the same model / corpus / windows / device options as the Python API
(:mod:`wnb.cli.options`), checks its input and the memory it will need before any long work
(:mod:`wnb.cli.setup`), shows progress in the terminal, writes tidy CSV and JSON tables and PNG figures
into the output folder (:class:`wnb.cli.run_folder.RunFolder`), and ends with a one-line summary. Each
sub-command is one module (its options, its checks, its run). Results also land in the on-disk cache
the notebooks and the app use, and are copied into ``<output>/cache``: copying that folder's contents
into another machine's cache (``~/.cache/wnb`` or ``$WNB_CACHE``) lets the app there open them with the
same model, corpus, budget and seed.

May import: every package except wnb.widgets.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from wnb.cli import claims, expand, negative, neuron, prune, score, sweep
from wnb.cli.options import common_options
from wnb.cli.run_folder import MANIFEST, RunFolder
from wnb.cli.setup import open_session
from wnb.core import cache
from wnb.core.version import VERSION
from wnb.errors import WnbError

COMMANDS = {"score": score, "neuron": neuron, "prune": prune, "expand": expand, "sweep": sweep,
            "negative": negative, "claims": claims}


def build_parser() -> argparse.ArgumentParser:
    """``wnb`` with one sub-command per module of :data:`COMMANDS`, each with the common options."""
    parser = argparse.ArgumentParser(prog="wnb", description="Wasserstein neurons: entanglement scores, pruning and "
                                     "Sparse Expansion of language models, as batch runs.",
                                     epilog="Each sub-command has its own --help. Results: <output>/manifest.json lists "
                                     "every file; status 'complete' only once the run finished.")
    parser.add_argument("--version", action="version", version=f"wnb {VERSION}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    parents = [common_options()]
    for command in COMMANDS.values():
        command.add_parser(sub, parents)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs one ``wnb`` command; returns the exit status (0 done, 1 failed, 2 bad input, 130 interrupted)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    path = Path(args.output or f"wnb-{args.command}").expanduser()
    run = RunFolder(path, args.command, argv)
    started = False
    begin = time.perf_counter()
    try:
        command.validate(args)
        RunFolder.check(path, args.overwrite)
        run.start({k: v for k, v in vars(args).items()})
        started = True
        with cache.recording() as used:
            session = open_session(args, run)
            summary = command.run(args, run, session)
        run.copy_cache(used)
        seconds = time.perf_counter() - begin
        line = f"wnb {args.command}: {summary} ({seconds:.1f} s; results in {path})"
        run.finish(line, seconds=seconds)
        print(line)
        return 0
    except WnbError as exc:
        print(f"wnb {args.command}: error: {exc}", file=sys.stderr)
        if started:
            run.fail(str(exc))
        return 1 if started else 2
    except KeyboardInterrupt:
        print(f"wnb {args.command}: interrupted{'; ' + str(path / MANIFEST) + ' says incomplete' if started else ''}",
              file=sys.stderr)
        if started:
            run.fail("interrupted")
        return 130
    except BaseException as exc:
        if started:
            run.fail(f"{type(exc).__name__}: {exc}")
        raise


def entry() -> None:
    """The ``wnb`` command. An interrupted run, once its manifest says incomplete, ends by SIGINT as the shell
    convention asks (the shell shows 130), so a calling script stops too; always so, as CPython may otherwise
    end a run that handled its interrupt with either 130 or the signal."""
    status = main()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    sys.exit(status)


if __name__ == "__main__":  # pragma: no cover
    entry()

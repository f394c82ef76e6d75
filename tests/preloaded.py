"""`python train.py ...` and `tl-lightning ...` run as their own processes, without paying for the imports each time.

A process per command keeps each run's state its own (signals, exit status, Hydra's globals, Lightning's seeds),
but torch, Lightning and timm take about 6 s to import on a 2-core machine, paid again by each of the suite's many
command-line runs. Python's `forkserver` start method preloads them once in a server process, and each command runs
in a fresh fork of it: its own pid, environment, working folder, signal handlers, exit status (negative when a
signal killed it), stdout and stderr, as with `subprocess.run`. Only the interpreter's start-up and those imports
are shared; the tests of start-up itself (a fresh interpreter, the installed console script, `python -m` warnings)
keep real subprocesses.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

PRELOAD = ["torch", "torchvision", "timm", "lightning.pytorch", "tl_lightning.app.train", "tl_lightning.app.cli"]
CONSOLE_SCRIPT = Path(sys.executable).with_name("tl-lightning")

_server: multiprocessing.context.ForkServerContext | None = None


def _context() -> multiprocessing.context.ForkServerContext:
    global _server
    if _server is None:
        _server = multiprocessing.get_context("forkserver")
        _server.set_forkserver_preload(PRELOAD)
    return _server


def run(command: list[str], cwd: str | Path, env: dict[str, str] | None = None, timeout: float = 300):
    """`subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)`, for a command
    `[sys.executable, "script.py", *args]`, `[sys.executable, "-m", module, *args]` or `[tl-lightning, *args]`, in
    a fork of the preloaded server."""
    command = [str(part) for part in command]
    if command[0] == str(CONSOLE_SCRIPT):
        target, argv = ("module", "tl_lightning.app.cli"), command  # argv[0]: the console script, as Python sets it
    elif command[0] == sys.executable and command[1].endswith(".py"):
        target, argv = ("script", str(Path(cwd, command[1]))), command[1:]
    elif command[0] == sys.executable and command[1] == "-m":
        target, argv = ("run_module", command[2]), [command[2], *command[3:]]
    else:
        raise ValueError(f"Not a script, a module or the console script: {command[:3]}")
    with tempfile.TemporaryDirectory() as scratch:
        out, err = Path(scratch, "stdout"), Path(scratch, "stderr")
        process = _context().Process(
            target=_main, args=(target, argv, str(cwd), dict(env or os.environ), str(out), str(err))
        )
        process.start()
        process.join(timeout)
        if process.exitcode is None:
            process.kill()
            process.join()
            raise subprocess.TimeoutExpired(command, timeout, out.read_text(), err.read_text())
        # The command's own exit status, which the child writes last; multiprocessing's report of it travels
        # through the fork server and, rarely, arrives as 255 ("the forkserver process itself got killed"). A
        # child killed by a signal wrote nothing: its negative exit code is the signal's.
        status = Path(scratch, "status")
        code = int(status.read_text()) if status.is_file() else process.exitcode
        return subprocess.CompletedProcess(command, code, out.read_text(), err.read_text())


def _main(target: tuple[str, str], argv: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str) -> None:
    """What the interpreter does for `python script.py argv` (or the console script), minus its start-up."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(handle, fd)
        os.close(handle)
    kind, name = target
    sys.path[:0] = [
        *([str(Path(name).parent)] if kind == "script" else []),
        *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p),
    ]
    sys.argv = argv
    code = 0
    try:
        if kind == "script":
            runpy.run_path(name, run_name="__main__")
        elif kind == "run_module":
            runpy.run_module(name, run_name="__main__", alter_sys=True)
        else:  # what the console script's wrapper does
            sys.exit(importlib.import_module(name).main())
    except SystemExit as exit:
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    logging.shutdown()  # what the interpreter's exit runs: log files flushed and closed
    sys.stdout.flush()
    sys.stderr.flush()
    Path(stdout).with_name("status").write_text(str(code))
    os._exit(code)

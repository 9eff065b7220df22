"""Write a folder atomically: build it under a temporary name, rename it into place when complete.

A process killed at any moment leaves either the old folder or the new one, never a torn one.
What a killed process leaves behind is a hidden temporary (`.NAME.tmp-PID`, `.NAME.old-PID`,
`.NAME.trash-PID`); `remove_stale_temporaries` clears those of dead processes at the next start.
This is the project's one atomic writer: folders, text files and deletions all go through here.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

# `.NAME.KIND-PID`: the hidden siblings this module creates (KIND says what the PID was doing).
TEMPORARY_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|trash)-(?P<pid>\d+)$")


@contextmanager
def atomic_directory(final: str | Path):
    """Yield a temporary sibling folder; on success replace `final` with it, on error remove it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        _fsync_tree(tmp)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync_directory(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def _fsync_directory(folder: Path) -> None:
    """Make a rename inside `folder` durable (a power cut after it cannot undo it)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass  # some file systems do not sync directories; the rename itself is still atomic
    finally:
        os.close(descriptor)


@contextmanager
def atomic_text_file(path: str | Path, newline: str | None = None):
    """Yield a UTF-8 text handle on a temporary sibling; on success it replaces `path`, on error it goes.

    For writers that stream (a JSONL file of many records): a reader sees the old file or the whole
    new one, never half of it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline=newline) as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file through a temporary file and a rename; returns `path`."""
    with atomic_text_file(path) as handle:
        handle.write(text)
    return Path(path)


def remove_directory(folder: str | Path) -> None:
    """Delete a folder by renaming it away first, so that a kill mid-delete never leaves a half-deleted
    folder under its real name (one that looks complete to whoever lists the parent)."""
    folder = Path(folder)
    trash = folder.parent / f".{folder.name}.trash-{os.getpid()}"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_stale_temporaries(folder: str | Path) -> list[str]:
    """Remove the temporaries that killed processes left in `folder`; returns their names.

    Only those whose PID is not a running process count as stale (our own PID counts too: call
    this at start, when nothing of ours is in flight). A PID reused by an unrelated live process
    keeps its temporary until a later start: safe rather than clean. An `.old` copy whose folder is
    missing (killed between the two renames of `atomic_directory`) is renamed back, not deleted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = TEMPORARY_PATTERN.match(path.name)
        if not match or _pid_alive(int(match["pid"])):
            continue
        original = folder / match["name"]
        if match["kind"] == "old" and not original.exists() and not original.is_symlink():
            os.replace(path, original)
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    except OSError:
        return False
    return True


def is_disk_full(error: BaseException) -> bool:
    """Whether a failed write ran out of space (or quota); torch and safetensors wrap the OSError."""
    for cause in _chain(error):
        if getattr(cause, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(cause) for text in ("No space left on device", "os error 28", "Disk quota exceeded")):
            return True
    return False


def describe_device(path: str | Path) -> str:
    """'the file system at MOUNT (N MB free)': which device filled up, in words a user can act on."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    mount = path
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return f"the file system at {mount}"
    return f"the file system at {mount} ({free / 1e6:.1f} MB free)" if free >= 1e6 else \
        f"the file system at {mount} ({free / 1e3:.0f} kB free)"


def disk_full_message(error: BaseException) -> str | None:
    """One line for a full disk met anywhere (None for other errors): which file, which device."""
    if not is_disk_full(error):
        return None
    filename = next((e.filename for e in _chain(error) if getattr(e, "filename", None)), None)
    advice = "free some space and run the command again (a training run continues from its last checkpoint with --resume)"
    if filename is None:
        return f"no space left on device; {advice}"
    return f"no space left on {describe_device(Path(filename).parent)} while writing {filename}; {advice}"


def _chain(error: BaseException):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__

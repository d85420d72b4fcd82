"""Atomic outputs: a reader never sees a half-written file or folder, a failure leaves none behind.

* `atomic_open` / `atomic_write`: one file (a temp file beside it, fsync, one rename).
* `atomic_dir`: a whole output folder (a staging folder beside it, one atomic swap); what killed
  writers leave is finished or removed by `clean_stale_staging` on the next call.
* `require_output_path`: an output location is given and writable, checked before any work.
"""

import contextlib
import ctypes
import errno
import hashlib
import os
import pathlib
import shutil
import socket
import uuid
from typing import BinaryIO, Iterator, Union

PathLike = Union[str, os.PathLike]


@contextlib.contextmanager
def atomic_open(path: PathLike) -> Iterator[BinaryIO]:
  """Opens a temp file beside `path` for binary writing; on success it replaces `path`.

  The temp file lives in the destination folder (so `os.replace` is atomic), is fsynced before the
  rename and gets mode 0644 (not tempfile's 0600). On any exception it is removed and `path` is
  left untouched. Parent folders are created.

  Args:
    path: the destination file.

  Yields:
    A binary file object to write to.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
  try:
    with open(tmp, "xb") as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    _fsync_dir(path.parent)  # Makes the rename itself durable.
  finally:
    if tmp.exists():
      tmp.unlink()


def atomic_write(path: PathLike, data: bytes) -> pathlib.Path:
  """Writes `data` to `path` atomically (see `atomic_open`). Returns the path."""
  with atomic_open(path) as f:
    f.write(data)
  return pathlib.Path(path)


class OutputPathError(ValueError):
  """An output location (`--out`, `--out_dir`, `--workdir`) is empty or not writable."""


def require_output_path(path: PathLike, flag: str, *, is_dir: bool = True) -> pathlib.Path:
  """Checks an output location before any work starts; returns it as an absolute path.

  Refuses an empty path (`--workdir=` would otherwise write into the current folder), creates the
  folder (or the file's parent) and proves it writable with a probe file that is removed again.

  Args:
    path: the folder (`is_dir`) or file to be written later.
    flag: the command-line flag or config field named in the error (e.g. `"--out_dir"`).
    is_dir: whether `path` is a folder (else a file, whose parent is checked).

  Raises:
    OutputPathError: naming `flag` and the path.
  """
  if path is None or not str(path).strip():
    raise OutputPathError(f"{flag}: an output path is required, got {path!r}")
  path = pathlib.Path(path).expanduser().absolute()
  folder = path if is_dir else path.parent
  if is_dir and path.exists() and not path.is_dir():
    raise OutputPathError(f"{flag}: {path} exists and is not a folder")
  if not is_dir and path.is_dir():
    raise OutputPathError(f"{flag}: {path} is a folder, expected a file path")
  try:
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-probe.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as e:
    raise OutputPathError(f"{flag}: cannot write to {folder} ({e.strerror or e})") from e
  return path


STAGING_PREFIX = ".staging-"
# Staging folders this process is writing now: `clean_stale_staging` must not remove them even
# though their PID is ours (two `atomic_dir`s open at once in one folder, e.g. nested or threads).
_LIVE_STAGING = set()


def _host_tag() -> str:
  """A short, filename-safe tag of this host (hostnames may hold dots and dashes)."""
  return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _staging_name(pid: int, tag: str, kind: str, name: str) -> str:
  """`.staging-<pid>-<host>.<tag>.<new|old>.<name>`: whose it is, which swap, which role."""
  return f"{STAGING_PREFIX}{pid}-{_host_tag()}.{tag}.{kind}.{name}"


def _parse_staging(name: str):
  """`(pid, host, tag, kind, target name)` of a staging folder's name, or None if not one."""
  if not name.startswith(STAGING_PREFIX):
    return None
  parts = name[len(STAGING_PREFIX):].split(".", 3)
  if len(parts) != 4 or parts[2] not in ("new", "old"):
    return None
  owner, tag, kind, target = parts
  pid, _, host = owner.partition("-")
  if not pid.isdigit() or not host:
    return None
  return int(pid), host, tag, kind, target


def pid_alive(pid: int) -> bool:
  """Whether process `pid` exists on this host (it may belong to another user)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def clean_stale_staging(parent: PathLike) -> list:
  """Finishes or removes what killed `atomic_dir` writers left in `parent`; returns what it removed.

  A staging folder is stale when it was made on this host by a process that is no longer alive
  (or by an earlier process with our PID: it is not one of ours). Staging folders of other hosts
  are left alone: their PIDs mean nothing here. A writer killed between the two renames of the
  fallback swap (see `atomic_dir`) left `path` missing, its old copy (`old`) and its complete new
  copy (`new`): the swap is rolled forward, so `path` holds the finished output.
  """
  removed = []
  parent = pathlib.Path(parent).absolute()  # `_LIVE_STAGING` holds absolute paths.
  if not parent.is_dir():
    return removed
  stale = []
  for entry in parent.iterdir():
    parsed = _parse_staging(entry.name)
    if parsed is None or not entry.is_dir() or str(entry) in _LIVE_STAGING:
      continue
    pid, host, tag, kind, target = parsed
    if host != _host_tag() or (pid != os.getpid() and pid_alive(pid)):
      continue
    stale.append((kind, entry, pid, tag, target))
  # "old" first: rolling a swap forward consumes its "new" partner.
  for kind, entry, pid, tag, target in sorted(stale, key=lambda s: (s[0] != "old", s[1].name)):
    if not entry.exists():  # The partner of a swap rolled forward above.
      continue
    dest = parent / target
    if kind == "old" and not os.path.lexists(dest):
      new = parent / _staging_name(pid, tag, "new", target)
      # A complete new copy rolls the swap forward; without one (not `atomic_dir`'s order) keep
      # the only copy there is. Another process cleaning at once may have done it first.
      try:
        os.replace(new if new.is_dir() else entry, dest)
      except OSError:
        continue
      _fsync_dir(parent)
      if not entry.exists():
        continue
    _remove(entry)
    removed.append(entry)
  return removed


def _remove(folder: pathlib.Path) -> None:
  """Removes a staging folder; one that is a symlink (an old `path` that was one) is unlinked."""
  if folder.is_symlink():
    folder.unlink()
  else:
    shutil.rmtree(folder, ignore_errors=True)


def _fsync_dir(path: PathLike) -> None:
  """Makes a folder's entries (creates, renames) durable; a no-op where folders can't be opened."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _fsync_tree(folder: pathlib.Path) -> None:
  """fsyncs every file and folder under `folder` (before the rename that publishes them)."""
  for root, _, files in os.walk(folder):
    for name in files:
      with open(os.path.join(root, name), "rb") as fh:
        os.fsync(fh.fileno())
    _fsync_dir(root)


def _exchange(a: PathLike, b: PathLike) -> bool:
  """Atomically swaps paths `a` and `b` (Linux `renameat2(RENAME_EXCHANGE)`).

  Returns False where unsupported (not Linux, old glibc, a filesystem without it such as NFS);
  raises OSError on any other failure.
  """
  try:
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = libc.renameat2
  except (OSError, AttributeError):
    return False
  renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                        ctypes.c_uint]
  at_fdcwd, rename_exchange = -100, 2
  if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
    return True
  err = ctypes.get_errno()
  if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
    return False
  raise OSError(err, os.strerror(err), str(a))


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[pathlib.Path]:
  """Writes a whole output folder all-or-nothing: yields a staging folder, swaps it in on success.

  The staging folder lives beside `path` (same filesystem). On success its contents are fsynced
  and it replaces `path`; a reader sees the old folder or the new one, never a mix, and a crash at
  any moment leaves one of the two in place:
  * Linux local filesystems: one `renameat2(RENAME_EXCHANGE)` swaps the folders atomically (the
    old copy, now under the staging name, is then removed; a crash before that leaves it to
    `clean_stale_staging`).
  * Elsewhere (e.g. NFS): `path` is renamed aside (`.old.`), then the staging folder onto `path`.
    A failure of the second rename moves the old copy back; a crash between the two leaves `path`
    missing for an instant, and the next `atomic_dir`/`clean_stale_staging` in that folder rolls
    the swap forward (the staging folder was complete before the first rename).
  On an exception in the body the staging folder is removed and `path` is untouched. A symlink
  at `path` is replaced by the new folder; its target is left alone.

  Args:
    path: the final output folder (not an existing file).

  Yields:
    The staging folder to write every output file into.

  Raises:
    OutputPathError: `path` exists and is not a folder (before the body runs).
  """
  path = pathlib.Path(path).absolute()
  if os.path.lexists(path) and not path.is_dir():
    raise OutputPathError(f"{path} exists and is not a folder; cannot replace it with one")
  path.parent.mkdir(parents=True, exist_ok=True)
  clean_stale_staging(path.parent)
  tag = uuid.uuid4().hex[:8]
  staging = path.parent / _staging_name(os.getpid(), tag, "new", path.name)
  old = path.parent / _staging_name(os.getpid(), tag, "old", path.name)
  live = {str(staging), str(old)}
  _LIVE_STAGING.update(live)
  staging.mkdir()
  leftover = staging  # What to remove at the end: the unfinished new copy, or the old one.
  try:
    yield staging
    _fsync_tree(staging)
    if not path.exists():
      os.replace(staging, path)
    elif not _exchange(staging, path):
      os.replace(path, old)
      leftover = old
      try:
        os.replace(staging, path)
      except BaseException:
        os.replace(old, path)
        leftover = staging
        raise
    _fsync_dir(path.parent)
  finally:
    # After an exchange `staging` holds the old copy, so it is removed in every case.
    for folder in {leftover, staging}:
      if os.path.lexists(folder):
        _remove(folder)
    _LIVE_STAGING.difference_update(live)

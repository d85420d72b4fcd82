"""Atomic file writing: a reader never sees a half-written file, a failure leaves none behind."""

import contextlib
import os
import pathlib
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


def clean_stale_staging(parent: PathLike) -> list:
  """Removes staging folders left in `parent` by killed `atomic_dir` writers; returns their paths.

  A staging folder belongs to a dead writer when the PID in its name is not alive on this host.
  """
  import shutil  # pylint: disable=g-import-not-at-top
  removed = []
  parent = pathlib.Path(parent)
  if not parent.is_dir():
    return removed
  for entry in parent.iterdir():
    if not (entry.is_dir() and entry.name.startswith(STAGING_PREFIX)):
      continue
    try:
      pid = int(entry.name[len(STAGING_PREFIX):].split(".")[0])
    except ValueError:
      continue
    if pid != os.getpid() and _pid_alive(pid):
      continue
    shutil.rmtree(entry, ignore_errors=True)
    removed.append(entry)
  return removed


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[pathlib.Path]:
  """Writes a whole output folder all-or-nothing: yields a staging folder, swaps it in on success.

  The staging folder lives beside `path` (same filesystem). On success an existing `path` is moved
  aside and the staging folder renamed onto `path` (one rename each), then the old copy is removed;
  a reader sees the old folder or the new one, never a mix. On an exception the staging folder is
  removed and `path` is untouched. Staging folders of killed writers are cleaned on the next call.

  Args:
    path: the final output folder.

  Yields:
    The staging folder to write every output file into.
  """
  import shutil  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(path).absolute()
  path.parent.mkdir(parents=True, exist_ok=True)
  clean_stale_staging(path.parent)
  tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
  staging = path.parent / f"{STAGING_PREFIX}{tag}.{path.name}"
  staging.mkdir()
  try:
    yield staging
    for f in staging.rglob("*"):
      if f.is_file():
        with open(f, "rb") as fh:
          os.fsync(fh.fileno())
    old = None
    if path.exists():
      old = path.parent / f"{STAGING_PREFIX}{tag}.old.{path.name}"
      os.replace(path, old)
    os.replace(staging, path)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  finally:
    if staging.exists():
      shutil.rmtree(staging, ignore_errors=True)

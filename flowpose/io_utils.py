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

"""One run per workdir, and a resumed run continues with the config it started with.

* `WorkdirLock(workdir)`: held for a run's life. `workdir/.lock` holds the holder's PID, host,
  start time and command line; it is created whole, atomically (`os.link` of a complete file
  made with `O_EXCL`), so a second run fails at once with `WorkdirLockedError` naming the holder,
  never reading a half-written lock. A lock whose holder is dead on this host (no such PID, or
  the PID now names another process: other start time, or the host rebooted) is taken over with
  a warning; locks of other hosts are never presumed dead (their PIDs mean nothing here).
* `check_resume_config(workdir, config, override=False)`: compares the config of a new run with
  the `workdir/config.json` of the run it would resume and raises `ConfigMismatchError` listing
  every field that differs, unless `override`. Allowed, because they do not change the trained
  parameters: `RESULT_NEUTRAL_FIELDS` (log/eval/checkpoint intervals, how many checkpoints are
  kept, the eval batch size: it changes the eval mean only by summation order), a larger
  `num_train_steps` (extends a run; the learning-rate schedule is stretched from the resumed step
  on, so the result differs from a run trained that long from the start), and path fields
  (`*_dir`, `*_path`, `*_file`) spelled differently that resolve to the same folder.
"""

import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys
import uuid
from typing import Optional, Sequence

from absl import logging
import ml_collections

from flowpose import io_utils

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"  # Written by `write_config` (the trainer) and by `flowpose.prior.io`.
RESULT_NEUTRAL_FIELDS = ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                         "eval_batch_size")
EXTENSIBLE_FIELDS = ("num_train_steps",)  # May grow on resume, not shrink.
PATH_SUFFIXES = ("_dir", "_path", "_file")


class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir (the message names its PID and host, and the lock file)."""


class ConfigMismatchError(ValueError):
  """A resumed run's config differs from the stored one (the message lists each field)."""


# ---------------------------------------------------------------------------
# The lock.
# ---------------------------------------------------------------------------


def _process_identity(pid: int) -> Optional[str]:
  """`boot id:start time` of process `pid` (Linux), telling a PID's reuse apart; None elsewhere."""
  try:
    boot = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except OSError:
    return None
  fields = stat[stat.rindex(")") + 2:].split()  # The command name may hold spaces.
  return f"{boot}:{fields[19]}"  # Field 22 of proc(5), counted from field 3 after the name.


class WorkdirLock:
  """Context manager holding `workdir/.lock` for a run's life (released on any exit).

  Example:
    with WorkdirLock(workdir):
      ...  # Train; a second run on `workdir` raises WorkdirLockedError meanwhile.

  In a multi-process (multi-host) run only process 0 takes it: the others share its workdir.
  """

  def __init__(self, workdir: io_utils.PathLike):
    self.workdir = pathlib.Path(workdir).absolute()
    self.path = self.workdir / LOCK_FILE
    self._info = None  # What we wrote, while we hold the lock.

  def __enter__(self) -> "WorkdirLock":
    self.acquire()
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()

  def acquire(self) -> None:
    """Takes the lock (or a stale one); raises WorkdirLockedError if a live run holds it."""
    if self._info is not None:
      raise WorkdirLockedError(f"{self.path} is already held by this WorkdirLock")
    self.workdir.mkdir(parents=True, exist_ok=True)
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "process": _process_identity(os.getpid()), "token": uuid.uuid4().hex,
            "command": " ".join(sys.argv)[:500]}
    for _ in range(20):  # Each retry follows a takeover or a lock that vanished meanwhile.
      if self._create(json.dumps(info, indent=1).encode()):
        self._info = info
        return
      raw = self._read()
      if raw is None:
        continue
      holder = _parse(raw)
      if holder is None or not self._stale(holder):
        raise WorkdirLockedError(self._held_message(holder))
      self._take_over(raw, holder)
    raise WorkdirLockedError(f"could not take {self.path}: other runs keep taking it over")

  def release(self) -> None:
    """Removes the lock if we still hold it (idempotent; a forked child never releases it)."""
    info, self._info = self._info, None
    if info is None or info["pid"] != os.getpid():
      return
    raw = self._read()
    holder = _parse(raw) if raw is not None else None
    if holder is None or holder.get("token") != info["token"]:
      logging.warning("%s was removed or replaced while this run held it; leaving it alone.",
                      self.path)
      return
    os.unlink(self.path)

  def _create(self, content: bytes) -> bool:
    """Publishes a complete lock file if there is none; False if one exists."""
    tmp = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
      os.write(fd, content)
      os.fsync(fd)
      os.close(fd)
      fd = None
      try:
        os.link(tmp, self.path)  # Atomic and exclusive, on NFS too.
        return True
      except FileExistsError:
        return False
      except OSError:  # A filesystem without hard links: O_EXCL on the lock itself.
        try:
          fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
          return False
        os.write(fd, content)
        os.fsync(fd)
        return True
    finally:
      if fd is not None:
        os.close(fd)
      tmp.unlink(missing_ok=True)

  def _read(self) -> Optional[bytes]:
    try:
      return self.path.read_bytes()
    except FileNotFoundError:
      return None

  def _stale(self, holder: dict) -> bool:
    """Whether the holder is a process of this host that no longer runs."""
    if holder.get("host") != socket.gethostname():
      return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or not io_utils.pid_alive(pid):
      return True
    recorded, now = holder.get("process"), _process_identity(pid)
    return recorded is not None and now is not None and recorded != now

  def _take_over(self, raw: bytes, holder: dict) -> None:
    """Removes the stale lock `raw`, unless another process replaced it meanwhile."""
    try:
      fd = os.open(self.path, os.O_RDONLY)
    except FileNotFoundError:
      return
    try:
      # Takeovers of one stale lock are made by processes of its host: a flock on it serialises
      # them, and the checks below make the second one see the first one's fresh lock.
      fcntl.flock(fd, fcntl.LOCK_EX)
      try:
        same_file = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        return
      if not same_file or os.pread(fd, len(raw) + 1, 0) != raw:
        return
      os.unlink(self.path)
    finally:
      os.close(fd)
    logging.warning("Took over the stale lock %s of PID %s on %s (started %s), which is no "
                    "longer running.", self.path, holder.get("pid"), holder.get("host"),
                    holder.get("started"))

  def _held_message(self, holder: Optional[dict]) -> str:
    if holder is None:
      return (f"{self.workdir} is locked by {self.path}, which is unreadable (being written, or "
              "damaged). If no run is using this workdir, delete that file.")
    ours = holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()
    who = "this process (a nested WorkdirLock)" if ours else (
        f"PID {holder.get('pid')} on host {holder.get('host')}")
    return (f"{self.workdir} is in use by another run: {who}, started {holder.get('started')} "
            f"({holder.get('command')!r}). Wait for it to finish or use another --workdir; if "
            f"that run is gone (e.g. its host crashed), delete {self.path}.")


def _parse(raw: bytes) -> Optional[dict]:
  try:
    holder = json.loads(raw)
  except ValueError:
    return None
  return holder if isinstance(holder, dict) else None


# ---------------------------------------------------------------------------
# The resume check.
# ---------------------------------------------------------------------------

_MISSING = object()  # A field only one of the configs has.


def _differences(stored, new, prefix: str = "") -> list:
  """`(field, stored, new)` for every leaf that differs; lists and tuples compare whole."""
  if isinstance(stored, dict) and isinstance(new, dict):
    diffs = []
    for key in sorted(set(stored) | set(new)):
      field = f"{prefix}{key}"
      if key not in stored or key not in new:
        diffs.append((field, stored.get(key, _MISSING), new.get(key, _MISSING)))
      else:
        diffs.extend(_differences(stored[key], new[key], field + "."))
    return diffs
  # bool is an int in Python: True == 1 must still count as a change.
  if stored != new or isinstance(stored, bool) != isinstance(new, bool):
    return [(prefix.rstrip("."), stored, new)]
  return []


def _show(value) -> str:
  return "<missing>" if value is _MISSING else json.dumps(value)


def _same_folder(a, b) -> bool:
  if not (isinstance(a, str) and isinstance(b, str) and a and b):
    return False
  return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def _allowed(field: str, stored, new, neutral_fields: Sequence[str]) -> bool:
  if field in neutral_fields:
    return True
  if field in EXTENSIBLE_FIELDS:
    return (isinstance(stored, int) and isinstance(new, int) and not isinstance(new, bool)
            and new > stored)
  return field.endswith(PATH_SUFFIXES) and _same_folder(stored, new)


def check_resume_config(workdir: io_utils.PathLike, config: ml_collections.ConfigDict,
                        override: bool = False, *,
                        neutral_fields: Sequence[str] = RESULT_NEUTRAL_FIELDS) -> list:
  """Refuses to resume the run in `workdir` with a config that would change its result.

  Call it holding the `WorkdirLock`, before anything in `workdir` is written. Without a stored
  `config.json` (a fresh workdir) there is nothing to compare.

  Args:
    workdir: the run's folder.
    config: the new run's config.
    override: continue despite differences (each is logged as a warning).
    neutral_fields: top-level or dotted fields that may change freely.

  Returns:
    The differences let through, one line each (`a.b: stored X, new Y`).

  Raises:
    ConfigMismatchError: fields differ (each listed), or `config.json` is unreadable; not with
      `override`.
  """
  path = pathlib.Path(workdir).absolute() / CONFIG_FILE
  try:
    stored = json.loads(path.read_bytes())
  except FileNotFoundError:
    return []
  except (OSError, ValueError) as e:
    message = (f"{path} is unreadable ({e}): it should hold the config of the run in this "
               "workdir. Train into a fresh --workdir, or delete the file to resume unchecked.")
    if not override:
      raise ConfigMismatchError(message) from e
    logging.warning("%s (continuing: override)", message)
    return []
  new = json.loads(config.to_json_best_effort())  # Same encoding as the stored file.
  blocking, allowed = [], []
  for field, old_value, new_value in _differences(stored, new):
    line = f"{field}: stored {_show(old_value)}, new {_show(new_value)}"
    (allowed if _allowed(field, old_value, new_value, neutral_fields) else blocking).append(line)
  if blocking and not override:
    raise ConfigMismatchError(
        f"{workdir} holds a run with another config ({path}); resuming it would continue that "
        "run under these changes:\n  " + "\n  ".join(blocking) + "\nResume with the stored "
        "values, train into a fresh --workdir, or pass --override to continue with the new ones.")
  for line in blocking:
    logging.warning("Resuming %s with a changed config (override): %s", workdir, line)
  for line in allowed:
    logging.info("Resuming %s with %s", workdir, line)
  return allowed + blocking


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes `workdir/config.json` (atomically), the record `check_resume_config` compares with."""
  io_utils.atomic_write(os.path.join(workdir, CONFIG_FILE),
                        config.to_json_best_effort(indent=2).encode())

"""Checkpoints of the train state (orbax), each verified by checksums before it is restored.

* `checkpoints/<step>/`: orbax `CheckpointManager` checkpoints of the whole `TrainState` (step,
  params, optimizer state), written every `config.checkpoint_every` steps, at the end and on
  preemption; the newest `config.keep_checkpoints` are kept. The data iterator needs no state
  (the batch of step `s` is a function of `(seed, s)`, see `flowpose.data.poses`).
* `checkpoints/<step>/flowpose_checksums.json`: the size and sha256 of every file orbax wrote for
  the step. Saves are asynchronous, so the manifest is written by orbax's own commit: orbax 0.12
  runs `AsyncOptions.post_finalization_callback` after every file of the step is written into
  `<step>.orbax-checkpoint-tmp` and before the one rename that publishes it as `<step>`, so a
  step folder never exists without its manifest, whenever the process is killed. Orbax rewrites
  two files after that callback, `_CHECKPOINT_METADATA` (commit time) and `commit_success.txt`;
  they are not covered, and restoring does not depend on them (tested). The manifest is a plain file inside
  the step folder: orbax lists steps by folder name and deletes whole folders (`max_to_keep`).
* `restore_latest` verifies the newest step. One that fails its checksums (truncated or changed
  file, 0-byte `_METADATA`, missing or unreadable manifest, a stray folder named like a step) is
  logged with a warning naming its folder, and the next older one is tried; once an intact one
  is restored the bad newer ones are moved to `corrupt_checkpoints/` beside `checkpoints/` (the
  resumed run will save those step numbers again). No intact step raises `CheckpointError`.
The trained prior exported for downstream use lives beside them (`flowpose.prior.io`).
"""

import hashlib
import json
import os
import pathlib
import shutil
import time
from typing import Any, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp

from flowpose import io_utils

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
MANIFEST_FILE = "flowpose_checksums.json"
_MANIFEST_FORMAT = "flowpose-checkpoint-sha256/1"
# Written by orbax after the manifest (see the module docstring), so not covered by it.
_UNCOVERED = frozenset({MANIFEST_FILE, "_CHECKPOINT_METADATA", "commit_success.txt"})
_TMP_SUFFIX = ".orbax-checkpoint-tmp"


class CheckpointError(ValueError):
  """No checkpoint in a workdir can be restored (the message names the folders and the fix)."""


# ---------------------------------------------------------------------------
# Checksum manifests.
# ---------------------------------------------------------------------------


def _covered_files(step_dir: pathlib.Path) -> list:
  """Relative POSIX paths of the files the manifest covers, sorted."""
  files = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = (pathlib.Path(root) / name).relative_to(step_dir).as_posix()
      if rel not in _UNCOVERED:
        files.append(rel)
  return sorted(files)


def _sha256(path: pathlib.Path) -> str:
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def write_manifest(step_dir: str) -> pathlib.Path:
  """Writes `step_dir/flowpose_checksums.json` for the files now in `step_dir`; returns its path.

  Called for every save (inside orbax's commit). Call it yourself only to vouch for a checkpoint
  written without one (by flowpose before checksums existed) that you know to be intact.
  """
  step_dir = pathlib.Path(step_dir)
  files = {rel: {"bytes": (step_dir / rel).stat().st_size, "sha256": _sha256(step_dir / rel)}
           for rel in _covered_files(step_dir)}
  manifest = {"format": _MANIFEST_FORMAT, "files": files}
  return io_utils.atomic_write(step_dir / MANIFEST_FILE,
                               json.dumps(manifest, indent=1, sort_keys=True).encode())


def verify_step(step_dir: str) -> Optional[str]:
  """Checks a step folder against its manifest; None if intact, else what is wrong (one line)."""
  step_dir = pathlib.Path(step_dir)
  try:
    manifest = json.loads((step_dir / MANIFEST_FILE).read_bytes())
  except FileNotFoundError:
    return (f"no {MANIFEST_FILE} (a stray or half-copied folder, or a checkpoint written before "
            "flowpose checksummed them)")
  except (OSError, ValueError) as e:
    return f"unreadable {MANIFEST_FILE} ({e})"
  if not isinstance(manifest, dict) or manifest.get("format") != _MANIFEST_FORMAT:
    return f"{MANIFEST_FILE} is not a flowpose checksum manifest"
  files = manifest.get("files")
  if not isinstance(files, dict) or not files:
    return f"{MANIFEST_FILE} lists no files"
  for rel, expected in sorted(files.items()):
    path = step_dir / rel
    try:
      size = path.stat().st_size
    except OSError:
      return f"missing file {rel}"
    if size != expected.get("bytes"):
      return f"{rel} is {size} bytes, expected {expected.get('bytes')} (truncated or overwritten)"
    if _sha256(path) != expected.get("sha256"):
      return f"{rel} does not match its sha256 (bytes changed on disk)"
  return None


class _ManifestWriter:
  """orbax's post-finalization callback: writes the manifest of the step being committed."""

  def __init__(self, directory: pathlib.Path):
    self.directory = directory
    self.step = None  # Set by `_VerifiedManager.save` once the previous save has committed.

  def __call__(self) -> None:
    pending = sorted(self.directory.glob(f"{self.step}{_TMP_SUFFIX}*"))
    if len(pending) == 1:
      write_manifest(pending[0])
    elif (self.directory / str(self.step)).is_dir():
      # An orbax that publishes before this callback: write it just after (a kill in between
      # leaves a step without a manifest, which `restore_latest` passes over with a warning).
      write_manifest(self.directory / str(self.step))
    else:
      raise RuntimeError(f"checkpoint step {self.step}: found {pending or 'no'} temporary "
                         f"folders in {self.directory} to write {MANIFEST_FILE} into")


class _VerifiedManager(ocp.CheckpointManager):
  """An orbax CheckpointManager whose every save gets a checksum manifest (same API)."""

  def __init__(self, directory: pathlib.Path, keep: int):
    self._manifest_writer = _ManifestWriter(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True,
        # Tmp folders of killed saves would otherwise stay forever (the workdir lock keeps a
        # second run from deleting ours).
        cleanup_tmp_directories=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._manifest_writer))
    super().__init__(directory, options=options)

  def save(self, step: int, *args, **kwargs) -> bool:
    # One save commits at a time: wait for the previous one before naming the next step.
    self.wait_until_finished()
    self._manifest_writer.step = step
    return super().save(step, *args, **kwargs)


def create_manager(workdir: str, keep: int) -> ocp.CheckpointManager:
  """A CheckpointManager over `workdir/checkpoints` keeping `keep` steps, writing manifests."""
  return _VerifiedManager(
      pathlib.Path(os.path.abspath(workdir)) / CHECKPOINT_DIR, keep)


# ---------------------------------------------------------------------------
# Save and restore.
# ---------------------------------------------------------------------------


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f"{type(error).__name__}: {text[0][:300] if text else ''}"


def _set_aside(manager: ocp.CheckpointManager, folders: list) -> None:
  """Moves bad step folders to `corrupt_checkpoints/` (kept for inspection) and re-lists."""
  if jax.process_index() == 0:
    target = pathlib.Path(manager.directory).parent / CORRUPT_DIR
    target.mkdir(exist_ok=True)
    for folder in folders:
      dest = target / folder.name
      if dest.exists():
        dest = target / f"{folder.name}.{time.strftime('%Y%m%d-%H%M%S')}.{os.getpid()}"
      shutil.move(str(folder), str(dest))
      logging.warning("Moved the unusable checkpoint %s to %s (delete it when no longer needed).",
                      folder, dest)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("flowpose_checkpoints_set_aside")
  manager.reload()


def restore_latest(manager: ocp.CheckpointManager,
                   abstract_state: Any) -> Optional[Any]:
  """The newest intact checkpoint restored onto `abstract_state`'s shardings, or None if none.

  Args:
    manager: from `create_manager`.
    abstract_state: pytree of `jax.ShapeDtypeStruct` (with shardings) shaped like the train state.

  Raises:
    CheckpointError: there are step folders but none passes its checksums, or the newest intact
      one does not fit `abstract_state` (its bytes are as saved: the config differs).
  """
  directory = pathlib.Path(manager.directory)
  bad = []
  for step in sorted(manager.all_steps(), reverse=True):
    folder = directory / str(step)
    reason = verify_step(folder)
    if reason is not None:
      logging.warning("Checkpoint %s is corrupt: %s. Trying the previous one.", folder, reason)
      bad.append((folder, reason))
      continue
    try:
      state = manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(
          f"checkpoint {folder} passed its checksums but could not be restored onto the train "
          f"state ({_first_line(e)}); it was written by a run with another model or optimizer "
          f"config (compare {directory.parent / 'config.json'}): resume with that config, or "
          "train into a fresh --workdir") from e
    if bad:
      logging.warning("Resuming from checkpoint %s instead of the newer, corrupt %s.", folder,
                      ", ".join(str(f) for f, _ in bad))
      _set_aside(manager, [f for f, _ in bad])
    return state
  if bad:
    listing = "\n".join(f"  {folder}: {reason}" for folder, reason in bad)
    raise CheckpointError(
        f"no intact checkpoint in {directory}:\n{listing}\nDelete {directory} to train from "
        "scratch in this workdir (or delete the folders above and keep any others); to vouch "
        "for a checkpoint you know is intact, flowpose.train.checkpointing.write_manifest(FOLDER).")
  return None


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         wait: bool = False) -> None:
  """Saves `state` as checkpoint `step` (async unless `wait`), with its checksum manifest."""
  manager.save(step, args=ocp.args.StandardSave(state), force=True)
  if wait:
    manager.wait_until_finished()

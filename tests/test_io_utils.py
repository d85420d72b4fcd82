"""Atomic outputs (`flowpose.io_utils`): a failure or a kill never leaves a partial or mixed one."""

import contextlib
import os
import pathlib
import signal
import stat
import subprocess
import sys
import tempfile

import pytest

from flowpose import io_utils

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


class Boom(Exception):
  pass


def listing(folder: pathlib.Path) -> dict:
  """{relative path: bytes (files) or None (folders)} of everything under `folder`."""
  return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
          for p in sorted(folder.rglob("*"))}


def dead_pid() -> int:
  """The PID of a process that has exited (and been reaped)."""
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


# ---------------------------------------------------------------------------
# atomic_open / atomic_write
# ---------------------------------------------------------------------------


def test_atomic_open_failure_keeps_the_old_file_byte_for_byte(tmp_path):
  path = tmp_path / "params.json"
  old = b'{"version": 1, "weights": [1, 2, 3]}\n'
  path.write_bytes(old)
  with pytest.raises(Boom):
    with io_utils.atomic_open(path) as f:
      f.write(b'{"version": 2, "wei')
      f.flush()
      # Mid-write, readers still see the old file (an in-place write would have truncated it).
      assert path.read_bytes() == old
      raise Boom()
  assert path.read_bytes() == old
  assert listing(tmp_path) == {"params.json": old}  # No partial or temp file left.


def test_atomic_open_failure_on_a_new_path_leaves_nothing(tmp_path):
  with pytest.raises(Boom):
    with io_utils.atomic_open(tmp_path / "sub" / "new.bin") as f:
      f.write(b"partial")
      raise Boom()
  assert listing(tmp_path) == {"sub": None}


def test_atomic_open_success_replaces_and_leaves_no_temp(tmp_path):
  path = tmp_path / "out.bin"
  path.write_bytes(b"old")
  with io_utils.atomic_open(path) as f:
    f.write(b"new contents")
  assert listing(tmp_path) == {"out.bin": b"new contents"}


def test_atomic_write_mode_is_0644_whatever_the_umask(tmp_path):
  previous = os.umask(0o077)  # tempfile-style files would come out 0600.
  try:
    path = io_utils.atomic_write(tmp_path / "a.txt", b"x")
    (tmp_path / "b.txt").write_bytes(b"old")
    os.chmod(tmp_path / "b.txt", 0o600)
    io_utils.atomic_write(tmp_path / "b.txt", b"y")
  finally:
    os.umask(previous)
  assert path == tmp_path / "a.txt"
  assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == 0o644
  assert stat.S_IMODE(os.stat(tmp_path / "b.txt").st_mode) == 0o644
  assert (tmp_path / "b.txt").read_bytes() == b"y"


# ---------------------------------------------------------------------------
# atomic_dir
# ---------------------------------------------------------------------------


def make_old_output(tmp_path) -> tuple:
  out = tmp_path / "fit"
  (out / "sub").mkdir(parents=True)
  (out / "mesh.obj").write_bytes(b"old mesh")
  (out / "sub" / "params.json").write_bytes(b"old params")
  return out, listing(out)


def write_new(folder: pathlib.Path) -> None:
  (folder / "mesh.obj").write_bytes(b"new mesh")
  (folder / "params.json").write_bytes(b"new params")


@pytest.fixture(params=["exchange", "two_renames"])
def swap(request, monkeypatch):
  """Runs a test with the one-call exchange and with the two-rename fallback (e.g. NFS)."""
  if request.param == "two_renames":
    monkeypatch.setattr(io_utils, "_exchange", lambda a, b: False)
  return request.param


def test_atomic_dir_swaps_the_whole_folder(tmp_path, swap):
  out, _ = make_old_output(tmp_path)
  with io_utils.atomic_dir(out) as staging:
    assert staging.parent == tmp_path and staging != out
    write_new(staging)
    assert (out / "mesh.obj").read_bytes() == b"old mesh"  # Not visible before the end.
  assert listing(out) == {"mesh.obj": b"new mesh", "params.json": b"new params"}
  assert [p.name for p in tmp_path.iterdir()] == ["fit"]  # No staging or old copy left.


def test_atomic_dir_creates_a_new_folder(tmp_path, swap):
  with io_utils.atomic_dir(tmp_path / "a" / "out") as staging:
    write_new(staging)
  assert listing(tmp_path / "a") == {"out": None, "out/mesh.obj": b"new mesh",
                                     "out/params.json": b"new params"}


def test_atomic_dir_exception_leaves_the_old_folder_intact(tmp_path, swap):
  out, before = make_old_output(tmp_path)
  with pytest.raises(Boom):
    with io_utils.atomic_dir(out) as staging:
      write_new(staging)
      raise Boom()
  assert listing(out) == before
  assert [p.name for p in tmp_path.iterdir()] == ["fit"]


def test_failed_second_rename_puts_the_old_folder_back(tmp_path, monkeypatch):
  monkeypatch.setattr(io_utils, "_exchange", lambda a, b: False)
  out, before = make_old_output(tmp_path)
  real_replace = os.replace

  def replace(src, dst):
    if ".new." in pathlib.Path(src).name:
      raise OSError(28, "No space left on device")
    real_replace(src, dst)
  monkeypatch.setattr(os, "replace", replace)
  with pytest.raises(OSError, match="No space"):
    with io_utils.atomic_dir(out) as staging:
      write_new(staging)
  assert listing(out) == before
  assert [p.name for p in tmp_path.iterdir()] == ["fit"]


def test_atomic_dir_refuses_to_replace_a_file(tmp_path):
  (tmp_path / "out").write_bytes(b"a file")
  with pytest.raises(io_utils.OutputPathError, match="not a folder"):
    with io_utils.atomic_dir(tmp_path / "out"):
      pytest.fail("the body must not run")
  assert (tmp_path / "out").read_bytes() == b"a file"


def staging_folder(parent, pid, kind, target, tag="0badf00d", host=None):
  name = io_utils._staging_name(pid, tag, kind, target)
  if host is not None:
    name = name.replace(io_utils._host_tag(), host)
  folder = parent / name
  folder.mkdir()
  (folder / "half.bin").write_bytes(b"half")
  return folder


def test_stale_staging_of_a_dead_pid_is_cleaned_a_live_one_kept(tmp_path):
  dead = staging_folder(tmp_path, dead_pid(), "new", "fit")
  live = staging_folder(tmp_path, os.getppid(), "new", "fit")  # Our parent is alive.
  other_host = staging_folder(tmp_path, dead_pid(), "new", "fit", host="ffffffff")
  ours_from_before = staging_folder(tmp_path, os.getpid(), "new", "fit")  # Not in this process.
  (tmp_path / ".staging-notes").mkdir()  # Not a staging name: left alone.
  with io_utils.atomic_dir(tmp_path / "other") as staging:
    write_new(staging)
  assert not dead.exists() and not ours_from_before.exists()
  assert live.exists() and other_host.exists()
  assert (tmp_path / ".staging-notes").exists()
  assert (tmp_path / "other" / "mesh.obj").exists()


def test_nested_atomic_dirs_in_one_folder_do_not_clean_each_other(tmp_path):
  with io_utils.atomic_dir(tmp_path / "a") as a:
    write_new(a)
    with io_utils.atomic_dir(tmp_path / "b") as b:
      write_new(b)
    assert (a / "mesh.obj").exists()
  assert listing(tmp_path / "a") == listing(tmp_path / "b") != {}


def test_crash_between_the_two_renames_is_rolled_forward(tmp_path):
  # What a writer killed after `path -> old`, before `new -> path` leaves behind.
  pid = dead_pid()
  old = staging_folder(tmp_path, pid, "old", "fit")
  (old / "mesh.obj").write_bytes(b"old mesh")
  new = staging_folder(tmp_path, pid, "new", "fit")
  write_new(new)
  io_utils.clean_stale_staging(tmp_path)
  assert listing(tmp_path / "fit") == {"half.bin": b"half", "mesh.obj": b"new mesh",
                                       "params.json": b"new params"}
  assert [p.name for p in tmp_path.iterdir()] == ["fit"]


def test_crash_after_the_swap_removes_the_old_copy(tmp_path):
  out, _ = make_old_output(tmp_path)
  old = staging_folder(tmp_path, dead_pid(), "old", "fit")
  io_utils.clean_stale_staging(tmp_path)
  assert not old.exists() and (out / "mesh.obj").read_bytes() == b"old mesh"


def test_kill_9_inside_atomic_dir_keeps_the_old_folder(tmp_path):
  out, before = make_old_output(tmp_path)
  script = (
      "import os, signal, sys\n"
      "from flowpose import io_utils\n"
      "with io_utils.atomic_dir(sys.argv[1]) as d:\n"
      "  (d / 'mesh.obj').write_bytes(b'new mesh')\n"
      "  os.kill(os.getpid(), signal.SIGKILL)\n")
  proc = subprocess.run([sys.executable, "-c", script, str(out)], cwd=REPO_ROOT, check=False)
  assert proc.returncode == -signal.SIGKILL
  assert listing(out) == before
  assert len(list(tmp_path.iterdir())) == 2  # The dead writer's staging folder...
  with io_utils.atomic_dir(tmp_path / "next") as staging:
    write_new(staging)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["fit", "next"]  # ...cleaned next time.
  assert listing(out) == before


# ---------------------------------------------------------------------------
# require_output_path
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["", "   ", None])
def test_require_output_path_refuses_empty(path):
  with pytest.raises(io_utils.OutputPathError, match="--workdir: an output path is required"):
    io_utils.require_output_path(path, "--workdir")


def test_require_output_path_creates_and_returns_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = io_utils.require_output_path("runs/a", "--workdir")
  assert path == tmp_path / "runs" / "a" and path.is_dir()
  assert list(path.iterdir()) == []  # The write probe is gone.
  file_path = io_utils.require_output_path("out/b.json", "--out", is_dir=False)
  assert file_path == tmp_path / "out" / "b.json" and not file_path.exists()


def test_require_output_path_a_file_where_a_folder_is_expected(tmp_path):
  (tmp_path / "f").write_bytes(b"x")
  with pytest.raises(io_utils.OutputPathError, match=r"--out_dir: .*f exists and is not a folder"):
    io_utils.require_output_path(tmp_path / "f", "--out_dir")
  with pytest.raises(io_utils.OutputPathError, match="--out_dir: cannot write to"):
    io_utils.require_output_path(tmp_path / "f" / "sub", "--out_dir")
  with pytest.raises(io_utils.OutputPathError, match="--out: .* is a folder, expected a file"):
    io_utils.require_output_path(tmp_path, "--out", is_dir=False)
  assert (tmp_path / "f").read_bytes() == b"x"


@contextlib.contextmanager
def unprivileged():
  """Runs the block without root's right to write anywhere (seteuid nobody), if we are root."""
  if os.geteuid() != 0:
    yield
    return
  os.seteuid(65534)
  try:
    yield
  finally:
    os.seteuid(0)


def test_require_output_path_unwritable_folder():
  # Not under tmp_path: pytest's base folder is 0700 root, so nobody could not even reach it and
  # the test would pass for the wrong reason. This folder is reachable but not writable.
  base = pathlib.Path(tempfile.mkdtemp())
  try:
    os.chmod(base, 0o755)
    locked = base / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500 if os.geteuid() else 0o555)  # Read-only to whoever runs the check.
    (base / "open").mkdir(mode=0o777)
    os.chmod(base / "open", 0o777)
    with unprivileged():
      assert os.access(locked, os.X_OK, effective_ids=True)
      assert not os.access(locked, os.W_OK, effective_ids=True)
      io_utils.require_output_path(base / "open" / "run", "--workdir")  # Control: writable.
      with pytest.raises(io_utils.OutputPathError,
                         match=r"--workdir: cannot write to .*locked.*Permission denied"):
        io_utils.require_output_path(locked, "--workdir")
      with pytest.raises(io_utils.OutputPathError, match="--out: cannot write to"):
        io_utils.require_output_path(locked / "a" / "b.json", "--out", is_dir=False)
    assert list(locked.iterdir()) == []
  finally:
    os.chmod(base / "locked", 0o700)
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(base)


def test_atomic_dir_replaces_a_symlink_not_its_target(tmp_path, swap):
  target, _ = make_old_output(tmp_path)
  (tmp_path / "latest").symlink_to(target)
  with io_utils.atomic_dir(tmp_path / "latest") as staging:
    write_new(staging)
  assert not (tmp_path / "latest").is_symlink()
  assert listing(tmp_path / "latest") == {"mesh.obj": b"new mesh", "params.json": b"new params"}
  assert (target / "mesh.obj").read_bytes() == b"old mesh"  # The link's target is untouched.
  assert sorted(p.name for p in tmp_path.iterdir()) == ["fit", "latest"]

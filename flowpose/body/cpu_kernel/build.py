"""Builds, caches and loads the CPU kernels (`csrc/*.cc`: skinning, its backward, FK, z-buffer,
the part term's nearest pairs).

    python -m flowpose.body.cpu_kernel.build [--force]

The shared library is compiled into `$FLOWPOSE_CACHE/kernels/` (default
`~/.cache/flowpose/kernels/`), keyed by a hash of the sources, jaxlib's FFI
headers, the compiler and its flags, written atomically (temp file + rename).
`launch/setup.sh` runs the CLI, which exits non-zero when the kernel cannot be
built or loaded, so a broken compiler fails set-up (and CI) instead of
silently leaving the slower XLA path in use. `FLOWPOSE_LBS_KERNEL=0` is the
explicit opt-out for platforms without a C++ compiler: set-up then skips the
build, posing uses the XLA path and the kernel tests skip.

At run time `available()` builds lazily on first use; there a failure logs a
warning and posing falls back to XLA (`impl="auto"`), while `impl="kernel"`
raises.

The build targets the best level this CPU runs (`cpu_level()`: x86-64-v4 with
AVX-512 holds 16 bodies per register, x86-64-v3 with AVX2 + FMA, else
generic); `FLOWPOSE_LBS_CPU_LEVEL=x86-64-v3|generic` caps it (a cache shared by
machines of different levels keeps one build per level).
"""

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from typing import Dict, List, Optional

from absl import app
from absl import flags
from absl import logging
import jax

from flowpose import cache as cache_lib

ENV_VAR = "FLOWPOSE_LBS_KERNEL"  # "0": never build or use the kernel.
_CSRC = pathlib.Path(__file__).resolve().parent / "csrc"
_SOURCES = tuple(_CSRC / name for name in ("lbs_kernel.cc", "lbs_backward.cc",
                                            "fk_kernel.cc", "zbuffer.cc",
                                            "nearest_pairs.cc"))
_HEADERS = (_CSRC / "lbs_common.h",)  # hashed with the sources, not compiled
# FFI target name -> the library's exported handler symbol.
LBS_TARGET, LBS_BWD_TARGET, FK_TARGET = ("flowpose_lbs", "flowpose_lbs_bwd",
                                         "flowpose_fk")
FK_BWD_TARGET, NEAREST_TARGET = "flowpose_fk_bwd", "flowpose_nearest_pairs"
_SYMBOLS = {LBS_TARGET: "FlowposeLbs", LBS_BWD_TARGET: "FlowposeLbsBackward",
            FK_TARGET: "FlowposeFk", FK_BWD_TARGET: "FlowposeFkBackward",
            NEAREST_TARGET: "FlowposeNearestPairs"}
# x86-64-v3 (AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE) as /proc/cpuinfo spells it.
_X86_64_V3_FLAGS = {"avx", "avx2", "fma", "bmi1", "bmi2", "f16c", "abm",
                    "movbe", "xsave"}
# x86-64-v4 adds AVX-512 F/BW/CD/DQ/VL: the kernels then hold 16 bodies per register.
_X86_64_V4_FLAGS = _X86_64_V3_FLAGS | {"avx512f", "avx512bw", "avx512cd",
                                       "avx512dq", "avx512vl"}
LEVELS = ("x86-64-v4", "x86-64-v3", "generic")
LEVEL_VAR = "FLOWPOSE_LBS_CPU_LEVEL"  # caps the level (e.g. x86-64-v3 to test the AVX2 build)


class KernelBuildError(RuntimeError):
  """The CPU skinning kernel could not be compiled or loaded."""


def disabled() -> bool:
  """Whether `FLOWPOSE_LBS_KERNEL=0` opts out of the kernel.

  Raises:
    ValueError: the variable holds something other than `0` or `1`.
  """
  value = os.environ.get(ENV_VAR, "1")
  if value not in ("0", "1"):
    raise ValueError(f"{ENV_VAR} must be 0 (use the XLA path) or 1 (build "
                     f"and use the CPU kernel), got {value!r}")
  return value == "0"


def kernel_dir() -> pathlib.Path:
  """`$FLOWPOSE_CACHE/kernels` (default `~/.cache/flowpose/kernels`)."""
  return cache_lib.cache_dir() / "kernels"


def cpu_level() -> str:
  """`"x86-64-v4"` (AVX-512), `"x86-64-v3"` (AVX2 + FMA) or `"generic"`: the
  best this CPU runs (Linux, x86-64), capped by `$FLOWPOSE_LBS_CPU_LEVEL`.

  Raises:
    ValueError: `$FLOWPOSE_LBS_CPU_LEVEL` is not one of `LEVELS`.
  """
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu_flags = next((set(line.split(":", 1)[1].split()) for line in f
                        if line.startswith("flags")), set())
  except OSError:
    cpu_flags = set()
  x86 = platform.machine().lower() in ("x86_64", "amd64")
  best = ("x86-64-v4" if x86 and _X86_64_V4_FLAGS <= cpu_flags else
          "x86-64-v3" if x86 and _X86_64_V3_FLAGS <= cpu_flags else "generic")
  cap = os.environ.get(LEVEL_VAR, LEVELS[0])
  if cap not in LEVELS:
    raise ValueError(f"{LEVEL_VAR} must be one of {LEVELS}, got {cap!r}")
  return LEVELS[max(LEVELS.index(best), LEVELS.index(cap))]


def _compiler() -> Optional[str]:
  names = (os.environ.get("CXX"), "g++", "c++", "clang++")
  return next((shutil.which(n) for n in names if n and shutil.which(n)), None)


def _compile_flags() -> List[str]:
  compile_flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno",
                   "-isystem", jax.ffi.include_dir()]
  if cpu_level() != "generic":
    compile_flags.append(f"-march={cpu_level()}")
  return compile_flags


def library_path() -> pathlib.Path:
  """Where this machine's build of the kernel lives (it may not exist yet)."""
  digest = hashlib.sha256()
  for source in _SOURCES + _HEADERS:
    digest.update(source.read_bytes())
  api = pathlib.Path(jax.ffi.include_dir()) / "xla" / "ffi" / "api"
  for header in ("api.h", "c_api.h", "ffi.h"):
    path = api / header
    digest.update(path.read_bytes() if path.exists() else header.encode())
  digest.update(" ".join([str(_compiler())] + _compile_flags()).encode())
  return kernel_dir() / f"lbs_kernel-{cpu_level()}-{digest.hexdigest()[:16]}.so"


def build(force: bool = False) -> pathlib.Path:
  """Compiles the kernel (if missing) atomically into `library_path()`.

  Raises:
    KernelBuildError: no C++ compiler, or the compilation failed.
  """
  out = library_path()
  if out.exists() and not force:
    return out
  compiler = _compiler()
  if compiler is None:
    raise KernelBuildError("no C++ compiler (set CXX or install g++)")
  logging.info("flowpose: compiling the CPU skinning kernel into %s", out)
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".tmp", prefix=f".{out.name}.",
                             dir=out.parent)
  os.close(fd)
  try:
    cmd = [compiler] + _compile_flags() + [*map(str, _SOURCES), "-o", tmp]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
      raise KernelBuildError(f"{' '.join(cmd)} failed (exit {proc.returncode})"
                             f":\n{proc.stderr[-4000:]}")
    os.chmod(tmp, 0o755)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return out


_LOCK = threading.Lock()
_STATE: Dict[str, object] = {}  # available, path | error, lib: once a process


def _load(path: pathlib.Path):
  """Loads the library and registers its FFI targets with XLA (CPU)."""
  lib = ctypes.CDLL(str(path))
  for target, symbol in _SYMBOLS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform="cpu")
  return lib


def available() -> bool:
  """Whether the CPU kernel is built, loaded and registered (builds lazily).

  Decided once per process; a failure is logged (and kept in `info()`).
  """
  with _LOCK:
    if "available" not in _STATE:
      _STATE["available"] = False
      if disabled():
        _STATE["error"] = f"disabled by {ENV_VAR}=0"
        return False
      try:
        path = build()
        _STATE.update(lib=_load(path), available=True, path=str(path))
      except Exception as e:  # pylint: disable=broad-except
        # Any failure (no compiler, bad build, registration) falls back.
        _STATE["error"] = f"{type(e).__name__}: {e}"
        logging.warning("flowpose: CPU skinning kernel unavailable, using the "
                        "XLA path (%s)", _STATE["error"])
    return bool(_STATE["available"])


def library():
  """The loaded kernel library (`ctypes.CDLL`), or None where unavailable.

  For its plain C functions (`csrc/zbuffer.cc`); the FFI targets are reached
  through XLA."""
  return _STATE.get("lib") if available() else None


def info() -> dict:
  """`{"available", "path" or "error", "cpu_level"}` for logs and benchmarks."""
  available()
  return {"available": _STATE["available"], "cpu_level": cpu_level(),
          **{k: _STATE[k] for k in ("path", "error") if k in _STATE}}


def main(argv):
  """`python -m flowpose.body.cpu_kernel.build`: exit 1 if unavailable."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    if disabled():
      print(f"[cpu_kernel] not built: {ENV_VAR}=0 (posing uses the XLA path)")
      return 0
    build(force=flags.FLAGS.force)
  except ValueError as e:  # a bad FLOWPOSE_LBS_KERNEL value
    print(f"[cpu_kernel] error: {e}", file=sys.stderr)
    return 1
  except KernelBuildError as e:
    print(f"[cpu_kernel] error: {e}\n[cpu_kernel] set {ENV_VAR}=0 to use the "
          "XLA path on a platform without a C++ compiler", file=sys.stderr)
    return 1
  result = info()
  if not result["available"]:
    print(f"[cpu_kernel] error: built but not loadable: {result['error']}",
          file=sys.stderr)
    return 1
  print(f"[cpu_kernel] {result}")
  return 0


if __name__ == "__main__":
  # Defined here, not at import: model.py imports this module, and a library
  # must not claim flag names in every program that poses a body.
  flags.DEFINE_bool("force", False, "recompile even if a build exists")
  app.run(main)

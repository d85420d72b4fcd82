"""Fuzzing of the mocap readers: garbage and mutated ASF/AMC/BVH input either parses or raises
MocapFormatError, never any other exception."""

import functools
import gzip
import pathlib
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowpose.data import asf_amc, bvh
from flowpose.data.motion import MocapFormatError, Motion

SMALL_ASF = """\
:version 1.10
:name fuzz
:units
  length 0.45
  angle deg
:root
   order TX TY TZ RX RY RZ
   axis XYZ
   position 0 0 0
   orientation 0 0 0
:bonedata
  begin
     id 1
     name upper
     direction 0 1 0
     length 2
     axis 0 0 20 XYZ
    dof rx ry rz
    limits (-180.0 180.0)
           (-90 90)
           (-inf inf)
  end
  begin
     id 2
     name lower
     direction 1 0 0
     length 1
     axis -90 0 90 XYZ
    dof rx rz
    limits (-10 170)
           (-5 5)
  end
:hierarchy
  begin
    root upper
    upper lower
  end
"""

SMALL_AMC = """\
#!OML:ASF fuzz.asf
:FULLY-SPECIFIED
:DEGREES
1
root 1 2 3 0 0 0
upper 90 0 0
lower 0 1.5e-01
2
root 0 0 0 0 0 90
upper 0 -3 4
lower 90 2
3
root 0.5 1 -2 10 20 30
upper 1 2 3
lower 4 5
"""

SMALL_BVH = """\
HIERARCHY
ROOT Hips
{
  OFFSET 0 0.9 0
  CHANNELS 6 Xposition Yposition Zposition Zrotation Yrotation Xrotation
  JOINT Spine
  {
    OFFSET 0 0.1 0
    CHANNELS 5 Xposition Yposition Xrotation Yrotation Zrotation
    End Site
    {
      OFFSET 0 0.5 0
    }
  }
  JOINT Leg
  {
    OFFSET 0.1 -0.1 0
    CHANNELS 2 Zrotation Xrotation
    End Site
    {
      OFFSET 0 -0.8 0
    }
  }
}
MOTION
Frames: 2
Frame Time: 0.0083333
0.1 0.9 0.2 90 0 0 0 0.1 0 0 1 30 -60
0 0.95 0 10 20 30 0.05 0.01 -40 15 89.9 5 -7
"""

# Tokens that probe the parsers: keywords of all three formats, bone names, bad numbers.
_TOKENS = ["nan", "inf", "-inf", "1e999", "-0", "0", "7", "1.5", "1e-300", "abc", "{", "}",
           "(", ")", "(-1", "1)", "root", "upper", "lower", "begin", "end", ":bonedata", ":root",
           ":hierarchy", ":units", ":DEGREES", ":RADIANS", "dof", "rx", "tz", "l", "limits",
           "axis", "XYZ", "XXY", "length", "direction", "HIERARCHY", "ROOT", "JOINT", "End",
           "Site", "OFFSET", "CHANNELS", "6", "99", "Xrotation", "Qrotation", "Xposition",
           "MOTION", "Frames:", "Frame", "Time:", "#", "\x00", "\u00e9", "\ufffd", "9" * 5000,
           "-", "1_0", "1e308", "5e-324", ""]

_MUTATION = st.tuples(
    st.sampled_from(["delete_line", "duplicate_line", "swap_lines", "replace_token",
                     "insert_token", "delete_token", "truncate"]),
    st.integers(0, 10**6), st.integers(0, 10**6), st.sampled_from(_TOKENS))

_FUZZ = settings(max_examples=150, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture])


def _mutate(text: str, mutations) -> str:
  lines = text.split("\n")
  for op, a, b, token in mutations:
    if not lines:
      break
    i, j = a % len(lines), b % len(lines)
    words = lines[i].split()
    if op == "delete_line":
      del lines[i]
    elif op == "duplicate_line":
      lines.insert(i, lines[i])
    elif op == "swap_lines":
      lines[i], lines[j] = lines[j], lines[i]
    elif op == "truncate":
      cut = "\n".join(lines)
      lines = cut[:b % (len(cut) + 1)].split("\n")
    elif op == "replace_token" and words:
      words[b % len(words)] = token
      lines[i] = " ".join(words)
    elif op == "insert_token":
      words.insert(b % (len(words) + 1), token)
      lines[i] = " ".join(words)
    elif op == "delete_token" and words:
      del words[b % len(words)]
      lines[i] = " ".join(words)
  return "\n".join(lines)


def _encode(text: str, crlf: bool, compress: bool) -> bytes:
  data = (text.replace("\n", "\r\n") if crlf else text).encode("utf-8")
  return gzip.compress(data) if compress else data


@functools.lru_cache(maxsize=None)
def _small_skeleton():
  with tempfile.TemporaryDirectory() as folder:
    path = pathlib.Path(folder) / "fuzz.asf"
    path.write_text(SMALL_ASF)
    return asf_amc.read_asf(path)


def _check(reader, path, data: bytes):
  """Runs `reader(path)` on `data`: success must give a finite Motion (>= 1 frame)/skeleton."""
  path.write_bytes(data)
  try:
    result = reader(path)
  except MocapFormatError as e:
    assert path.name in str(e)
    return
  if isinstance(result, Motion):
    assert result.num_frames >= 1
    assert np.all(np.isfinite(result.local_rotations))


def _readers(tmp_path):
  return {
      "asf": (tmp_path / "fuzz.asf", asf_amc.read_asf),
      "amc": (tmp_path / "fuzz_01.amc", lambda p: asf_amc.read_amc(p, _small_skeleton())),
      "bvh": (tmp_path / "fuzz.bvh", bvh.read_bvh),
  }


def test_small_files_are_valid(tmp_path):
  for kind, text in (("asf", SMALL_ASF), ("amc", SMALL_AMC), ("bvh", SMALL_BVH)):
    path, reader = _readers(tmp_path)[kind]
    path.write_text(text)
    reader(path)  # Must not raise: the mutations below start from valid input.


@_FUZZ
@given(kind=st.sampled_from(["asf", "amc", "bvh"]), data=st.binary(max_size=400),
       compress=st.booleans())
def test_garbage_bytes(tmp_path, kind, data, compress):
  path, reader = _readers(tmp_path)[kind]
  _check(reader, path, gzip.compress(data) if compress else data)


@_FUZZ
@given(kind=st.sampled_from(["asf", "amc", "bvh"]),
       mutations=st.lists(_MUTATION, min_size=1, max_size=4), crlf=st.booleans(),
       compress=st.booleans(), cut_gzip=st.integers(0, 60))
def test_mutated_files(tmp_path, kind, mutations, crlf, compress, cut_gzip):
  path, reader = _readers(tmp_path)[kind]
  text = {"asf": SMALL_ASF, "amc": SMALL_AMC, "bvh": SMALL_BVH}[kind]
  data = _encode(_mutate(text, mutations), crlf, compress)
  if compress and cut_gzip:
    data = data[:-cut_gzip]  # Truncated gzip stream.
  _check(reader, path, data)


@pytest.fixture(scope="module")
def cmu_excerpt(cmu_dir):
  """Subject 02's skeleton and the first 4 frames of 02_01 (exercises the bulk AMC path)."""
  skeleton = asf_amc.read_asf(cmu_dir / "02.asf.gz")
  lines = gzip.decompress((cmu_dir / "02_01.amc.gz").read_bytes()).decode().split("\n")
  return skeleton, "\n".join(lines[:3 + 30 * 4]) + "\n"


@_FUZZ
@given(mutations=st.lists(_MUTATION, min_size=1, max_size=3))
def test_mutated_cmu_amc(tmp_path, cmu_excerpt, mutations):
  skeleton, text = cmu_excerpt
  _check(lambda p: asf_amc.read_amc(p, skeleton), tmp_path / "02_01.amc",
         _mutate(text, mutations).encode())

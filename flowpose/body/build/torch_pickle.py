"""Reads PyTorch zip checkpoints (`torch.save`) into numpy without importing torch.

A `torch.save` file is a zip archive: `<root>/data.pkl` is a pickle whose tensors are stored as
persistent ids `('storage', <StorageClass>, key, location, numel)` and rebuilt with
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`; the raw little-endian
bytes of storage `key` live in `<root>/data/<key>`. We resolve exactly those globals to numpy so
the checkpoint loads with plain `pickle`, and refuse every other global (no arbitrary code runs).
"""

import collections
import io
import pickle
import zipfile
from typing import Any, Dict

import numpy as np

# Storage class name -> numpy dtype (little-endian, as torch writes them).
_STORAGE_DTYPES: Dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class TorchPickleError(ValueError):
  """The bytes are not a torch zip checkpoint this reader understands."""


class _StorageType:
  """Stands in for `torch.<X>Storage` inside the pickle: only its dtype matters."""

  def __init__(self, name: str):
    self.name = name
    self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor(storage, storage_offset, size, stride, *unused_args):
  """numpy version of `torch._utils._rebuild_tensor_v2` (strides are in elements)."""
  itemsize = storage.dtype.itemsize
  if not size:
    return storage[storage_offset].copy()
  return np.lib.stride_tricks.as_strided(
      storage[storage_offset:], shape=tuple(size),
      strides=tuple(s * itemsize for s in stride)).copy()


class _NumpyUnpickler(pickle.Unpickler):
  """Unpickler mapping torch tensors to numpy arrays read from the zip archive."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str, label: str):
    super().__init__(io.BytesIO(data))
    self._archive = archive
    self._root = root
    self._label = label
    self._storages: Dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(name)
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    raise TorchPickleError(
        f"{self._label}: unsupported global {module}.{name} in the pickle "
        "(only plain tensors and dicts are read)")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
      raise TorchPickleError(f"{self._label}: unexpected persistent id {pid!r}")
    storage_type, key = pid[1], str(pid[2])
    if key not in self._storages:
      member = f"{self._root}/data/{key}"
      try:
        raw = self._archive.read(member)
      except KeyError as e:
        raise TorchPickleError(f"{self._label}: missing storage member {member}") from e
      self._storages[key] = np.frombuffer(raw, dtype=storage_type.dtype)
    return self._storages[key]


def load_torch_pickle(data: bytes, label: str = "<torch file>") -> Any:
  """Loads a `torch.save` zip checkpoint, tensors as numpy arrays.

  Args:
    data: the bytes of the `.pth` file.
    label: a name for the file used in error messages.

  Returns:
    The unpickled object with every tensor replaced by a numpy array of the same shape/dtype.

  Raises:
    TorchPickleError: not a zip checkpoint, or it holds objects other than tensors/containers.
  """
  try:
    archive = zipfile.ZipFile(io.BytesIO(data))
  except zipfile.BadZipFile as e:
    raise TorchPickleError(f"{label}: not a torch zip checkpoint ({e})") from e
  with archive:
    pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise TorchPickleError(f"{label}: expected one */data.pkl member, found {pickles}")
    root = pickles[0][:-len("/data.pkl")]
    try:
      return _NumpyUnpickler(archive.read(pickles[0]), archive, root, label).load()
    except (pickle.UnpicklingError, EOFError) as e:
      raise TorchPickleError(f"{label}: corrupt pickle ({e})") from e

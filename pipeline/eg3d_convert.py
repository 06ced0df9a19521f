"""Convert the official EG3D pickle (e.g. `ffhqrebalanced512-128.pkl`) to safetensors + JSON, safely.

The official snapshot is a plain pickle of `dict(G=…, D=…, G_ema=…, …)` whose networks are
"persistent" objects: each is rebuilt by `torch_utils.persistence._reconstruct_persistent_obj(meta)`
where `meta` carries the *Python source* of its module (`module_src`), the class name and the
object's `__dict__` (parameters, buffers, sub-modules, `_init_kwargs`). Loading it normally would
execute that source. Here a restricted unpickler resolves only a short whitelist of names:

- `torch_utils.persistence._reconstruct_persistent_obj` → a `PersistentObject` record holding the
  class name and state; `module_src` is kept as text and never compiled or run;
- tensors and parameters: `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter(_with_state)`;
  storages: `torch.storage._load_from_bytes` → `torch.load(…, weights_only=True)` on the bytes;
- containers and plain data: `collections.OrderedDict`, `dnnlib.util.EasyDict` (→ a dict),
  numpy arrays/scalars/dtypes;
- `torch.nn.modules.*` classes (the decoder's `Sequential`, `Softplus`) → inert records.

Anything else (e.g. `os.system`, `builtins.exec`) and any persistent id raise `UnsafePickleError`
naming the global, before it could be called. The weights are checked against the plain-torch
generator built from the recorded constructor arguments, then written as
`<stem>.safetensors` + `<stem>.json` (`init_kwargs`, class name, source hash).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "r3p-eg3d-1"


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references something the restricted unpickler will not load."""


class PersistentObject:
    """A persistent network from the pickle: its class name and state, never its source executed."""

    def __init__(self, meta: dict):
        if not isinstance(meta, dict) or meta.get("type") != "class":
            kind = meta.get("type") if isinstance(meta, dict) else type(meta).__name__
            raise UnsafePickleError(f"unexpected persistent object metadata (type {kind!r}); "
                                    "only persistent classes are supported")
        self.class_name = str(meta.get("class_name"))
        self.state = meta.get("state") or {}
        self.module_src_chars = len(meta.get("module_src") or "")

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name})"


class ModuleRecord:
    """An inert stand-in for a `torch.nn.modules.*` object: its qualified name and pickled state."""

    qualname = "torch.nn.Module"

    def __init__(self, *args, **kwargs):
        self.state: dict = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"state": state}


def _module_record_class(module: str, name: str) -> type:
    return type(f"ModuleRecord_{name}", (ModuleRecord,), {"qualname": f"{module}.{name}"})


class _EasyDict(dict):
    """dnnlib.util.EasyDict, as a plain dict (attribute access not needed)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, dict):
            self.update(state)


def _storage_from_bytes(data: bytes):
    """A storage serialised inside the pickle (legacy torch.save bytes), loaded with weights_only."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("torch.storage._load_from_bytes expects bytes")
    return torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")


def _numpy_names() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct, scalar  # numpy >= 2
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    out = {}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(mod, "_reconstruct")] = _reconstruct
        out[(mod, "scalar")] = scalar
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    return out


def _allowed() -> dict[tuple[str, str], Any]:
    from torch import _utils as tu
    names = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): tu._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor"): tu._rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): tu._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): PersistentObject,
        ("dnnlib.util", "EasyDict"): _EasyDict,
        ("dnnlib", "EasyDict"): _EasyDict,
    }
    if hasattr(tu, "_rebuild_parameter_with_state"):
        names[("torch._utils", "_rebuild_parameter_with_state")] = tu._rebuild_parameter_with_state
    names.update(_numpy_names())
    return names


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the whitelisted names above and refuses persistent ids."""

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file)
        self._names = _allowed()
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._names:
            return self._names[(module, name)]
        if module.startswith("torch.nn.modules.") and name[:1].isupper() and name.isidentifier():
            return _module_record_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refusing to load global '{module}.{name}' — the EG3D converter only reads "
            "tensors, containers and constructor arguments and never runs code from the file. If this is "
            "an official EG3D checkpoint, report the name; otherwise the file is not what it claims to be.")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: unexpected persistent id {str(pid)[:80]!r}; an EG3D network "
                                "snapshot is a plain pickle (tensors are embedded as bytes)")


def read_pickle(path: str | Path) -> Any:
    """Load a pickle through `RestrictedUnpickler` (nothing from the file is executed)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"EG3D pickle not found: {p}")
    with open(p, "rb") as f:
        return RestrictedUnpickler(f, source=str(p)).load()


def _state_of(obj: Any) -> dict:
    if isinstance(obj, PersistentObject):
        return obj.state
    if isinstance(obj, ModuleRecord):
        return obj.state
    raise ValueError(f"expected a network module in the pickle, found {type(obj).__name__}")


def module_state_dict(obj: Any, prefix: str = "") -> "collections.OrderedDict[str, torch.Tensor]":
    """Parameters and persistent buffers of a pickled module tree, named as `state_dict()` would."""
    state = _state_of(obj)
    out: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
    for name, t in (state.get("_parameters") or {}).items():
        if t is not None:
            out[prefix + name] = t.detach()
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for name, t in (state.get("_buffers") or {}).items():
        if t is not None and name not in skip:
            out[prefix + name] = t.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_state_dict(child, f"{prefix}{name}."))
    return out


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return repr(x)


def convert_eg3d(pkl: str | Path, out: str | Path | None = None, key: str = "G_ema") -> tuple[Path, Path]:
    """Convert an EG3D snapshot's generator to `<out>.safetensors` + `<out>.json` (default: beside the pickle)."""
    from safetensors.torch import save_file

    from preprocessing.eg3d.generator import EG3DConfig, TriPlaneGenerator

    pkl = Path(pkl)
    data = read_pickle(pkl)
    if not isinstance(data, dict) or not ({key, "G"} & set(data)):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{pkl}: not an EG3D network snapshot (expected a dict with '{key}' or 'G', found {found})")
    net = data.get(key, data.get("G"))
    if not isinstance(net, PersistentObject) or net.class_name != "TriPlaneGenerator":
        raise ValueError(f"{pkl}: '{key}' is {net!r}, expected a persistent TriPlaneGenerator")
    init_kwargs = _jsonable(dict(net.state.get("_init_kwargs") or {}))
    state = module_state_dict(net)
    nrr = int(net.state.get("neural_rendering_resolution", 128))
    try:
        cfg = EG3DConfig.from_init_kwargs(init_kwargs, {k: tuple(v.shape) for k, v in state.items()}, nrr)
    except (KeyError, ValueError, TypeError) as exc:
        raise ValueError(f"{pkl}: cannot read the EG3D architecture from the generator ({exc})") from None
    with torch.device("meta"):
        ref = TriPlaneGenerator(cfg).state_dict()
    missing, unexpected = sorted(set(ref) - set(state)), sorted(set(state) - set(ref))
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(ref[k].shape)}" for k in ref
             if k in state and tuple(state[k].shape) != tuple(ref[k].shape)]
    if missing or unexpected or wrong:
        raise ValueError(f"{pkl}: the generator does not match r3p's EG3D architecture: missing {missing[:6]}, "
                         f"unexpected {unexpected[:6]}, wrong shapes {wrong[:6]}")
    base = Path(out) if out else pkl.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    weights, arch = base.with_suffix(".safetensors"), base.with_suffix(".json")
    tensors = {k: v.to(torch.float32).contiguous() for k, v in state.items()}
    save_file(tensors, str(weights), metadata={"format": FORMAT, "source": pkl.name})
    digest = hashlib.sha256(pkl.read_bytes()).hexdigest()
    arch.write_text(json.dumps({
        "format": FORMAT, "class_name": net.class_name, "key": key, "source": pkl.name, "source_sha256": digest,
        "init_args": _jsonable(list(net.state.get("_init_args") or ())), "init_kwargs": init_kwargs,
        "neural_rendering_resolution": nrr, "config": cfg.to_dict(),
        "n_tensors": len(tensors), "n_parameters": int(sum(v.numel() for v in tensors.values())),
    }, indent=2))
    return weights, arch

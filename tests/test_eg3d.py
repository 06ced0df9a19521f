"""EG3D in plain torch: the official architecture's parameter table, the safe pickle converter
(stand-in pickle in the official structure; code-execution payloads refused), determinism, and
the rendered head turning with the camera."""

from __future__ import annotations

import collections
import contextlib
import math
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.eg3d_convert import UnsafePickleError, convert_eg3d, read_pickle
from preprocessing.eg3d.generator import EG3DConfig, TriPlaneGenerator, load_generator

torch.set_num_threads(2)


# ------------------------------------------------------------------------------------------------
# the official architecture, written out from the published networks (not read from a file)
# ------------------------------------------------------------------------------------------------

def _layer(prefix: str, cin: int, cout: int, res: int, w_dim: int = 512) -> dict[str, tuple]:
    return {f"{prefix}.weight": (cout, cin, 3, 3), f"{prefix}.bias": (cout,), f"{prefix}.affine.weight": (cin, w_dim),
            f"{prefix}.affine.bias": (cin,), f"{prefix}.noise_const": (res, res), f"{prefix}.noise_strength": (),
            f"{prefix}.resample_filter": (4, 4)}


def _block(prefix: str, cin: int, cout: int, res: int, img: int, w_dim: int = 512) -> dict[str, tuple]:
    t = {f"{prefix}.resample_filter": (4, 4), f"{prefix}.torgb.weight": (img, cout, 1, 1),
         f"{prefix}.torgb.bias": (img,),
         f"{prefix}.torgb.affine.weight": (cout, w_dim), f"{prefix}.torgb.affine.bias": (cout,)}
    if cin == 0:
        t[f"{prefix}.const"] = (cout, res, res)
    else:
        t.update(_layer(f"{prefix}.conv0", cin, cout, res, w_dim))
    t.update(_layer(f"{prefix}.conv1", cout, cout, res, w_dim))
    return t


def official_table() -> dict[str, tuple]:
    """ffhqrebalanced512-128: z = w = 512, 25-d camera embedding, 2 mapping layers, synthesis 4²…256²
    with channels min(32768/res, 512) and 96 output channels, decoder 32→64→33,
    SR 32→256 (256²)→128 (512²)."""
    t = {"backbone.mapping.embed.weight": (512, 25), "backbone.mapping.embed.bias": (512,),
         "backbone.mapping.fc0.weight": (512, 1024), "backbone.mapping.fc0.bias": (512,),
         "backbone.mapping.fc1.weight": (512, 512), "backbone.mapping.fc1.bias": (512,),
         "backbone.mapping.w_avg": (512,)}
    chans = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128}
    for res, c in chans.items():
        t.update(_block(f"backbone.synthesis.b{res}", chans.get(res // 2, 0), c, res, 96))
    t.update(_block("superresolution.block0", 32, 256, 256, 3))
    t.update(_block("superresolution.block1", 256, 128, 512, 3))
    t.update({"decoder.net.0.weight": (64, 32), "decoder.net.0.bias": (64,),
              "decoder.net.2.weight": (33, 64), "decoder.net.2.bias": (33,)})
    return t


def test_official_config_parameter_names_and_shapes():
    with torch.device("meta"):
        gen = TriPlaneGenerator(EG3DConfig.paper())
    got = {k: tuple(v.shape) for k, v in gen.state_dict().items()}
    want = official_table()
    assert sorted(set(want) - set(got)) == [] and sorted(set(got) - set(want)) == []
    assert {k: got[k] for k in want if got[k] != want[k]} == {}
    assert gen.backbone.num_ws == 14
    n = sum(p.numel() for p in gen.parameters())
    assert 30e6 < n < 31.5e6  # "about 31M" (EG3D teacher, reference facts)


# ------------------------------------------------------------------------------------------------
# a stand-in pickle in the official structure
# ------------------------------------------------------------------------------------------------

EG3D_NAMES = {"TriPlaneGenerator": "TriPlaneGenerator", "StyleGAN2Backbone": "Generator",
              "SuperResolution": "SuperresolutionHybrid8XDC", "TriplaneDecoder": "OSGDecoder"}


def _persistence_modules():
    """Fake `torch_utils.persistence` and `dnnlib.util` so pickle can name their globals (dump only)."""
    tu, pers = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")
    dn, util = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")

    def _reconstruct_persistent_obj(meta):  # what the real one does: exec(module_src) — never called here
        raise AssertionError("the stand-in reconstructor must never be called")
    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    pers._reconstruct_persistent_obj = _reconstruct_persistent_obj
    EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    util.EasyDict = EasyDict
    tu.persistence, dn.util = pers, util
    return {"torch_utils": tu, "torch_utils.persistence": pers, "dnnlib": dn, "dnnlib.util": util}


@contextlib.contextmanager
def _fake_modules():
    mods = _persistence_modules()
    saved = {k: sys.modules.get(k) for k in mods}
    sys.modules.update(mods)
    try:
        yield mods
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


class _Persistent:
    """Pickles as EG3D's persistent objects: _reconstruct_persistent_obj(meta) with the module source."""

    def __init__(self, meta, fn):
        self.meta, self.fn = meta, fn

    def __reduce__(self):
        return self.fn, (self.meta,)


def _wrap(module: torch.nn.Module, fn, marker: Path, init_kwargs=None) -> object:
    if isinstance(module, torch.nn.Sequential):  # a real torch.nn.Sequential holding persistent layers
        seq = torch.nn.Sequential()
        seq._modules = collections.OrderedDict((k, _wrap(m, fn, marker)) for k, m in module._modules.items())
        return seq
    if isinstance(module, torch.nn.Softplus):
        return torch.nn.Softplus()
    name = type(module).__name__
    state = {"training": False, "_parameters": collections.OrderedDict(module._parameters),
             "_buffers": collections.OrderedDict(module._buffers), "_non_persistent_buffers_set": set(),
             "_modules": collections.OrderedDict((k, _wrap(m, fn, marker)) for k, m in module._modules.items()),
             "_init_args": (), "_init_kwargs": init_kwargs or {}}
    if name == "TriPlaneGenerator":
        state["neural_rendering_resolution"] = module.cfg.render.resolution
    src = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('executed')\nclass {name}: pass\n"
    return _Persistent({"type": "class", "version": 6, "module_src": src,
                        "class_name": EG3D_NAMES.get(name, name), "state": state}, fn)


def _tiny_init_kwargs(mods, cfg: EG3DConfig) -> dict:
    easy = mods["dnnlib.util"].EasyDict
    return {"z_dim": cfg.z_dim, "w_dim": cfg.w_dim, "c_dim": 25, "img_resolution": cfg.img_resolution,
            "img_channels": 3, "sr_num_fp16_res": 4, "mapping_kwargs": easy(num_layers=cfg.mapping_layers),
            "rendering_kwargs": {"image_resolution": cfg.img_resolution, "disparity_space_sampling": False,
                                 "clamp_mode": "softplus",
                                 "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
                                 "c_gen_conditioning_zero": False, "c_scale": 1.0, "superresolution_noise_mode": "none",
                                 "decoder_lr_mul": 1.0, "sr_antialias": True,
                                 "depth_resolution": cfg.render.samples_coarse,
                                 "depth_resolution_importance": cfg.render.samples_fine,
                                 "ray_start": 2.25, "ray_end": 3.3,
                                 "box_warp": 1, "avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2]},
            "sr_kwargs": easy(channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                              fused_modconv_default="inference_only"),
            "channel_base": cfg.channel_base, "channel_max": cfg.channel_max, "fused_modconv_default": "inference_only",
            "num_fp16_res": 0, "conv_clamp": None}


def _randomised_tiny(seed: int = 0) -> TriPlaneGenerator:
    torch.manual_seed(seed)
    gen = TriPlaneGenerator(EG3DConfig.tiny()).eval()
    with torch.no_grad():
        for name, p in gen.named_parameters():
            if name.endswith("noise_strength") or name.endswith(".bias"):
                p.normal_(0, 0.1)
        gen.backbone.mapping.w_avg.normal_(0, 0.5)
    return gen


def write_stand_in(path: Path, gen: TriPlaneGenerator, marker: Path, payload=None) -> None:
    with _fake_modules() as mods:
        fn = mods["torch_utils.persistence"]._reconstruct_persistent_obj
        kw = _tiny_init_kwargs(mods, gen.cfg)
        if payload is not None:
            kw["rendering_kwargs"]["payload"] = payload
        g = _wrap(gen, fn, marker, kw)
        snapshot = {"training_set_kwargs": mods["dnnlib.util"].EasyDict(resolution=gen.cfg.img_resolution),
                    "G": g, "D": _wrap(torch.nn.Linear(2, 2), fn, marker), "G_ema": g, "augment_pipe": None}
        path.write_bytes(pickle.dumps(snapshot, protocol=4))


def _cams(yaws_deg, pitch_deg=0.0, radius=2.7) -> torch.Tensor:
    from preprocessing.multiview import look_at_camera
    cams = [look_at_camera(math.radians(pitch_deg), math.radians(y), radius) for y in yaws_deg]
    return torch.as_tensor(np.stack(cams))


def test_stand_in_pickle_converts_and_loads(tmp_path):
    gen = _randomised_tiny()
    marker = tmp_path / "module_src_ran"
    pkl = tmp_path / "ffhq-standin.pkl"
    write_stand_in(pkl, gen, marker)
    weights, arch = convert_eg3d(pkl)
    assert not marker.exists()  # the embedded module source was never executed
    assert weights.name == "ffhq-standin.safetensors" and arch.name == "ffhq-standin.json"
    loaded = load_generator(str(weights))
    assert loaded.cfg == gen.cfg
    for k, v in gen.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    z = torch.randn(2, gen.cfg.z_dim, generator=torch.Generator().manual_seed(3))
    c = _cams([-15.0, 20.0])
    with torch.no_grad():
        a, b = gen(z, c, truncation_psi=0.7), loaded(z, c, truncation_psi=0.7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["image_depth"], b["image_depth"])
    assert a["image"].shape == (2, 3, 64, 64) and torch.isfinite(a["image"]).all()


class _Exec:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import builtins
        return builtins.exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def test_payload_at_top_level_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    pkl = tmp_path / "evil.pkl"
    pkl.write_bytes(pickle.dumps({"G_ema": _Exec(marker)}, protocol=4))
    with pytest.raises(UnsafePickleError, match="builtins.exec"):
        convert_eg3d(pkl)
    assert not marker.exists()
    pickle.loads(pkl.read_bytes())  # the payload is live: a plain unpickler runs it
    assert marker.read_text() == "pwned"


def test_payload_inside_the_generator_state_is_refused(tmp_path):
    marker, src_marker = tmp_path / "pwned", tmp_path / "module_src_ran"
    pkl = tmp_path / "evil-nested.pkl"
    write_stand_in(pkl, _randomised_tiny(), src_marker, payload=_Exec(marker))
    with pytest.raises(UnsafePickleError, match="refusing"):
        read_pickle(pkl)
    assert not marker.exists() and not src_marker.exists()
    assert not (tmp_path / "evil-nested.safetensors").exists()


def test_persistent_ids_and_foreign_files_are_refused(tmp_path):
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return "storage-0" if isinstance(obj, bytes) else None
    import io
    buf = io.BytesIO()
    P(buf, protocol=4).dump({"G_ema": b"x"})
    pkl = tmp_path / "pid.pkl"
    pkl.write_bytes(buf.getvalue())
    with pytest.raises(UnsafePickleError, match="persistent id"):
        read_pickle(pkl)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"weights": [1, 2]}))
    with pytest.raises(ValueError, match="not an EG3D network snapshot"):
        convert_eg3d(other)
    with pytest.raises(FileNotFoundError, match="EG3D pickle not found"):
        convert_eg3d(tmp_path / "missing.pkl")


def test_same_seed_same_image_and_truncation():
    cfg = EG3DConfig.tiny()
    a, b = _randomised_tiny(7), _randomised_tiny(7)
    c = _cams([10.0])
    z = lambda s: torch.randn(1, cfg.z_dim, generator=torch.Generator().manual_seed(s))  # noqa: E731
    with torch.no_grad():
        ia = a(z(1), c, truncation_psi=0.7)["image"]
        ib = b(z(1), c, truncation_psi=0.7)["image"]
        ic = a(z(2), c, truncation_psi=0.7)["image"]
        ws = a.mapping(z(1), c, truncation_psi=0.0)
    assert torch.equal(ia, ib)
    assert (ia - ic).abs().mean() > 1e-3
    assert torch.allclose(ws, a.backbone.mapping.w_avg.expand_as(ws))  # ψ = 0 → the average w


def test_the_head_turns_with_the_camera():
    """A mirror-symmetric head (planes symmetric in x) seen from yaw +θ is the mirror image of yaw −θ,
    and the two views differ: the render follows the camera, the geometry stays put."""
    gen = _randomised_tiny(3)
    cfg = gen.cfg
    z = torch.randn(1, cfg.z_dim, generator=torch.Generator().manual_seed(0))
    c = _cams([-25.0, 25.0, 0.0])
    with torch.no_grad():
        ws = gen.mapping(z, c[2:], truncation_psi=0.7)
        p = gen.planes(ws)
        sym = p.clone()
        sym[:, 0] = (p[:, 0] + p[:, 0].flip(-1)) / 2  # plane (x, y): x along width
        sym[:, 1] = (p[:, 1] + p[:, 1].flip(-1)) / 2  # plane (x, z): x along width
        sym[:, 2] = (p[:, 2] + p[:, 2].flip(-2)) / 2  # plane (z, x): x along height
        out = gen.synthesis(ws.expand(3, -1, -1), c, planes=sym.expand(3, -1, -1, -1, -1))
    left, right = out["image_raw"][0], out["image_raw"][1]
    assert torch.allclose(left, right.flip(-1), atol=1e-4)
    assert torch.allclose(out["image_depth"][0], out["image_depth"][1].flip(-1), atol=1e-4)
    assert (left - right).abs().mean() > 1e-3
    assert out["image"].shape == (3, 3, cfg.img_resolution, cfg.img_resolution)


def test_cli_convert_eg3d(tmp_path, capsys):
    from pipeline.cli import main
    gen = _randomised_tiny(1)
    pkl = tmp_path / "ffhqrebalanced512-128.pkl"
    write_stand_in(pkl, gen, tmp_path / "ran")
    assert main(["assets", "convert-eg3d", str(pkl), "--out", str(tmp_path / "out" / "eg3d")]) == 0
    assert "nothing from the pickle was executed" in capsys.readouterr().out
    assert (tmp_path / "out" / "eg3d.safetensors").is_file() and (tmp_path / "out" / "eg3d.json").is_file()
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"G_ema": _Exec(tmp_path / "pwned")}, protocol=4))
    assert main(["assets", "convert-eg3d", str(evil)]) == 2
    assert "refusing to load global 'builtins.exec'" in capsys.readouterr().err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "ran").exists()


def test_resampling_and_modulated_conv_analytic():
    """×2 FIR upsampling keeps a constant image constant (gain 4 on the zero-inserted grid); the
    upsampling conv doubles the size; demodulation makes each output map's weights unit-norm."""
    from preprocessing.eg3d.layers import modulated_conv2d, setup_filter, upsample2d
    f = setup_filter()
    y = upsample2d(torch.ones(1, 2, 8, 8), f)
    assert y.shape == (1, 2, 16, 16) and torch.allclose(y[..., 2:-2, 2:-2], torch.ones(1, 2, 12, 12))
    torch.manual_seed(0)
    w = torch.randn(3, 4, 3, 3)
    s = torch.rand(2, 4) + 0.5
    x = torch.zeros(2, 4, 6, 6)
    x[:, :, 3, 3] = 1.0  # an impulse: the output is the (modulated, demodulated) kernel itself
    out = modulated_conv2d(x, w, s, padding=1)
    k = out[:, :, 2:5, 2:5]  # (B, out, 3, 3) = flipped kernel · style / norm summed over inputs
    expect = (w[None] * s[:, None, :, None, None])
    expect = expect / expect.square().sum(dim=[2, 3, 4], keepdim=True).sqrt()
    assert torch.allclose(k, expect.sum(2).flip(-1, -2), atol=1e-5)
    up = modulated_conv2d(torch.randn(2, 4, 5, 5), w, s, padding=1, up=2, resample_filter=f)
    assert up.shape == (2, 3, 10, 10)

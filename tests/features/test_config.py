"""FeatureConfig: version-2 fields and the migration of version-1 dictionaries."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from napari_vitseg._validation import VitsegError
from napari_vitseg.features import FeatureConfig
from napari_vitseg.features.config import (
    CLASSICAL_FAMILIES,
    DEFAULT_FAMILIES,
    DEFAULT_SIGMAS,
    FEATURE_CONFIG_VERSION,
    V1_DEFAULTS,
    V3_FEATURE_DEFAULTS,
)
from napari_vitseg.features.stack import Featurizer

RELEASE = Path(__file__).resolve().parents[1] / "data"


def test_new_configs_get_the_reference_defaults():
    cfg = FeatureConfig()
    assert (cfg.intensity, cfg.pos_embed_interp, cfg.vit_autocast) == ("reference", "reference", False)
    d = cfg.to_dict()
    assert d["version"] == FEATURE_CONFIG_VERSION == 6
    assert cfg.pyramid is True
    assert FeatureConfig.from_dict(d) == cfg
    assert FeatureConfig.from_json(cfg.to_json()) == cfg
    assert (cfg.families, cfg.sigmas) == (DEFAULT_FAMILIES, DEFAULT_SIGMAS)
    assert "laplacian" not in cfg.families and cfg.sigmas[0] == 0.5


def test_version3_dict_without_families_or_sigmas_keeps_version3_defaults():
    """A version-3 dictionary that does not name them gets version 3's families and scales,
    so it computes the 43 channels it always did; a version-4 one gets today's 40."""
    cfg3 = FeatureConfig.from_dict({"version": 3})
    assert cfg3.families == CLASSICAL_FAMILIES + ("bilateral",) == V3_FEATURE_DEFAULTS["families"]
    assert cfg3.sigmas == (1.0, 2.0, 4.0, 8.0, 16.0)
    assert Featurizer(cfg3).n_features(1) == 43
    assert FeatureConfig.from_dict(cfg3.to_dict()) == cfg3  # re-saved as version 5, same features
    assert Featurizer(FeatureConfig.from_dict({"version": 4})).n_features(1) == 40
    named = FeatureConfig.from_dict({"version": 3, "families": ["gaussian"], "sigmas": [2.0]})
    assert (named.families, named.sigmas) == (("gaussian",), (2.0,))


def test_version1_dict_migrates_to_what_releases_did():
    v1 = {"backbone": "dinov2_vits14", "sigmas": [1.0, 2.0], "vit_pca": 8}
    for d in (v1, {**v1, "version": 1}):
        cfg = FeatureConfig.from_dict(d)
        assert (cfg.intensity, cfg.pos_embed_interp, cfg.vit_autocast) == ("percentile", "timm", None)
        assert cfg.to_dict()["version"] == FEATURE_CONFIG_VERSION  # re-saved as the current version, same behaviour
        assert FeatureConfig.from_dict(cfg.to_dict()) == cfg
    assert V1_DEFAULTS == {"intensity": "percentile", "pos_embed_interp": "timm", "vit_autocast": None}


def test_version1_dict_may_not_carry_version2_keys():
    with pytest.raises(VitsegError, match="Unknown feature config keys.*intensity"):
        FeatureConfig.from_dict({"version": 1, "intensity": "reference"})
    with pytest.raises(VitsegError, match="version 7 is not supported"):
        FeatureConfig.from_dict({"version": 7})


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_configs_before_version5_compute_every_scale_at_full_resolution(version):
    """Versions 1-4 had no pyramid: their dictionaries load with ``pyramid=False`` and may not
    carry the key (it did not exist); version 5 stores it."""
    cfg = FeatureConfig.from_dict({"version": version, "sigmas": [1.0, 8.0, 16.0]})
    assert cfg.pyramid is False
    assert FeatureConfig.from_dict(cfg.to_dict()) == cfg  # re-saved as version 5, still no pyramid
    with pytest.raises(VitsegError, match="Unknown feature config keys.*pyramid"):
        FeatureConfig.from_dict({"version": version, "pyramid": True})
    assert FeatureConfig.from_dict({"version": 5}).pyramid is True
    with pytest.raises(VitsegError, match="pyramid must be True or False"):
        FeatureConfig(pyramid="yes")


@pytest.mark.parametrize("field, bad", [("intensity", "minmax"), ("pos_embed_interp", "bilinear"),
                                        ("vit_autocast", "bf16")])
def test_bad_values_are_refused(field, bad):
    with pytest.raises(VitsegError, match=field):
        FeatureConfig(**{field: bad})


@pytest.mark.parametrize("member", ["v0.1.0_vit_random.vitseg", "v0.1.0_rf.vitseg"])
def test_release_files_hold_version1_configs(member):
    """The 0.1.0 classifier files store version-1 configs; they load as percentile / timm."""
    with zipfile.ZipFile(RELEASE / member) as zf:
        meta = json.loads(zf.read("metadata.json"))
    d = meta["feature_config"]
    assert d.get("version", 1) == 1 and "intensity" not in d
    cfg = FeatureConfig.from_dict(d)
    assert (cfg.intensity, cfg.pos_embed_interp) == ("percentile", "timm")


def test_featurizer_applies_the_intensity_field():
    """'percentile' is gain-invariant, 'reference' is not; a uint8 plane keeps its dtype's scaling
    even though Featurizer.compute converts it to float32 first."""
    from napari_vitseg.backbones import create_backbone
    from napari_vitseg.features.vit import vit_features, vit_patch_features

    bb = create_backbone("dinov2_vits14_reg", pretrained=False, seed=0, init_values=1.0)
    img = np.random.default_rng(0).integers(40, 181, (42, 56)).astype(np.uint8)
    feats = {}
    for mode in ("reference", "percentile"):
        fz = Featurizer(FeatureConfig(backbone=bb.name, vit_pca=None, classical=False, intensity=mode,
                                      upsample="bilinear"), backbone=bb)
        feats[mode] = fz.vit_tokens(img)
        np.testing.assert_array_equal(feats[mode], vit_patch_features(img, bb, intensity=mode))
        full = fz.compute(img)  # float32 inside; tokens still from uint8 / 255
        np.testing.assert_allclose(full, vit_features(img, bb, upsample="bilinear", intensity=mode), atol=1e-5)
    assert not np.allclose(feats["reference"], feats["percentile"], atol=1e-2)


def test_featurizer_passes_vit_autocast(monkeypatch):
    """vit_autocast reaches vit_patch_features (False for new configs, None = on for CUDA for v1)."""
    import napari_vitseg.features.vit as vit

    seen = []

    def fake(img, backbone, **kw):
        seen.append(kw["autocast"])
        return np.zeros((1, 1, 384), np.float32)

    monkeypatch.setattr(vit, "vit_patch_features", fake)
    for cfg, want in [(FeatureConfig(backbone="dinov2_vits14", vit_pca=None), False),
                      (FeatureConfig.from_dict({"backbone": "dinov2_vits14", "vit_pca": None}), None),
                      (FeatureConfig(backbone="dinov2_vits14", vit_pca=None, vit_autocast=True), True)]:
        Featurizer(cfg, backbone=object.__new__(_Named)).vit_tokens(np.zeros((14, 14), np.uint8))
        assert seen[-1] is want


class _Named:
    name = "dinov2_vits14"

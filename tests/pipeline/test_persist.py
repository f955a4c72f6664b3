"""pipeline._persist: the classifier file of a segmenter (save / load / metadata)."""

from pathlib import Path

import numpy as np
import pytest

from napari_vitseg._validation import VitsegError
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Segmenter


def test_save_load_identical(tmp_path, nanoparticles):
    image, scribbles, _ = nanoparticles
    for kind in ("rf", "xgb"):
        seg = Segmenter(FeatureConfig(sigmas=(1, 4)), kind, {"n_estimators": 10},
                        class_names=["particle", "background"]).fit(image, scribbles)
        seg.save(tmp_path / f"{kind}.vitseg")
        seg2 = Segmenter.load(tmp_path / f"{kind}.vitseg")
        a, b = seg.segment(image), seg2.segment(image)
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.probabilities, b.probabilities)
        assert [c["name"] for c in seg2.class_table()] == ["particle", "background"]
        assert seg2.feature_config == seg.feature_config


def test_load_refuses_other_feature_config(tmp_path, two_region_image):
    image, scribbles = two_region_image
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), "rf", {"n_estimators": 3}).fit(image, scribbles)
    seg.save(tmp_path / "m.vitseg")
    with pytest.raises(VitsegError, match="another feature config.*sigmas"):
        Segmenter.load(tmp_path / "m.vitseg", expected_config=FeatureConfig(sigmas=(1, 2, 4)))


def test_load_refuses_tampered_feature_names(tmp_path, two_region_image):
    import json
    import zipfile

    image, scribbles = two_region_image
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), "rf", {"n_estimators": 3}).fit(image, scribbles)
    seg.save(tmp_path / "m.vitseg")
    with zipfile.ZipFile(tmp_path / "m.vitseg") as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    meta = json.loads(members["metadata.json"])
    meta["feature_config"]["sigmas"] = [1.0, 3.0]  # config no longer produces the stored names
    members["metadata.json"] = json.dumps(meta).encode()
    with zipfile.ZipFile(tmp_path / "t.vitseg", "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    with pytest.raises(VitsegError, match="computes differently"):
        Segmenter.load(tmp_path / "t.vitseg")


def test_load_refuses_a_file_that_claims_spatial_auto(tmp_path, two_region_image):
    """A trained model stores what ``spatial='auto'`` chose; a file saying 'auto' was edited."""
    from _file_helpers import rewrite_metadata

    image, scribbles = two_region_image
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), "rf", {"n_estimators": 3}).fit(image, scribbles)
    assert seg.feature_config.spatial == "2d"  # 'auto' on a single image
    good = seg.save(tmp_path / "m.vitseg")
    bad = rewrite_metadata(good, tmp_path / "bad.vitseg", lambda m: m["feature_config"].update(spatial="auto"))
    with pytest.raises(VitsegError, match="spatial 'auto'.*train and save"):
        Segmenter.load(bad)
    # a 3D model whose z step makes every plane's filters read thousands of planes is refused
    dense = rewrite_metadata(good, tmp_path / "dense.vitseg",
                             lambda m: m["feature_config"].update(spatial="3d", z_anisotropy=0.001))
    with pytest.raises(VitsegError, match="z_anisotropy"):
        Segmenter.load(dense)


RELEASE = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize("name", ["rf", "xgb", "vit_random"])
def test_release_files_load_and_predict_identically(name):
    """Classifier files saved by napari-vitseg 0.1.0 (tests/data/make_release_files.py, commit c797e53)
    load and give exactly the labels and probabilities that release gave."""
    expected = np.load(RELEASE / "v0.1.0_expected.npz")
    seg = Segmenter.load(RELEASE / f"v0.1.0_{name}.vitseg", allow_random_weights=(name == "vit_random"))
    result = seg.segment(expected["image"])
    np.testing.assert_array_equal(result.labels, expected[f"{name}_labels"])
    np.testing.assert_array_equal(result.probabilities, expected[f"{name}_probabilities"])
    if name == "xgb":
        assert seg.config.class_colors == ("#ff0000", "#00ff00")
    assert seg.config.class_names == ("particle", "background") or name == "vit_random"


def test_version4_file_predicts_as_before_the_pyramid():
    """A file saved with feature config version 4 (default features of commit 941ab21, every
    scale at full resolution) computes the same features and predicts exactly as then, although
    new configurations (version 5) compute the large scales on a pyramid."""
    expected = np.load(RELEASE / "v4_expected.npz")
    seg = Segmenter.load(RELEASE / "v4_rf.vitseg", prediction="exact")
    assert seg.feature_config.pyramid is False and seg.featurizer.n_features(1) == 40
    np.testing.assert_array_equal(seg.featurizer.compute(expected["image"])[::8, ::8], expected["features"])
    result = seg.segment(expected["image"])
    np.testing.assert_array_equal(result.labels, expected["labels"])
    np.testing.assert_array_equal(result.probabilities, expected["probabilities"])


def test_random_weights_file_refused_unless_allowed():
    with pytest.raises(VitsegError, match="random weights"):
        Segmenter.load(RELEASE / "v0.1.0_vit_random.vitseg")


def test_config_round_trips_through_the_file(tmp_path, two_region_image):
    """The SegmenterConfig is what the file stores: a loaded segmenter has the same config (the
    feature config's ``spatial='auto'`` as fit chose it: 2D for a single image)."""
    from napari_vitseg.pipeline import SegmenterConfig

    image, scribbles = two_region_image
    cfg = SegmenterConfig(FeatureConfig(sigmas=(1, 2)), "xgb", {"n_estimators": 4, "max_depth": 3},
                          class_names=("a", "b"), class_colors=("#010203", "#040506"))
    seg = Segmenter.from_config(cfg)
    assert seg.config == cfg
    seg.fit(image, scribbles)
    assert seg.config == cfg.replace(features=cfg.features.replace(spatial="2d"))
    seg.save(tmp_path / "m.vitseg")
    loaded = Segmenter.load(tmp_path / "m.vitseg").config
    assert loaded.features == seg.config.features and loaded.classifier == "xgb"
    assert loaded.class_names == cfg.class_names and loaded.class_colors == cfg.class_colors
    assert {k: loaded.classifier_params[k] for k in cfg.classifier_params} == cfg.classifier_params


def test_segmenter_config_validates():
    from napari_vitseg.pipeline import SegmenterConfig

    with pytest.raises(VitsegError, match="'classifier' parameter"):
        SegmenterConfig(classifier="svm")
    with pytest.raises(VitsegError, match="Bad parameter"):
        SegmenterConfig(classifier_params={"n_trees": 3})
    cfg = SegmenterConfig(class_names=["x"])
    assert cfg.class_names == ("x",) and cfg.class_name(1) == "x" and cfg.class_name(2) == "class 2"


def test_shared_featurizer_and_cache(two_region_image):
    """Segmenters built with featurizer= and cache= share them (the widget's way), and a featurizer
    of another feature config is refused."""
    from napari_vitseg.features import FeatureCache, Featurizer

    image, scribbles = two_region_image
    fz, cache = Featurizer(FeatureConfig(sigmas=(1,))), FeatureCache(2**26)
    a = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 3}, featurizer=fz, cache=cache).fit(image, scribbles)
    b = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 5}, featurizer=fz, cache=cache)
    misses = cache.misses
    b.fit(image, scribbles)
    assert a.featurizer is b.featurizer is fz and b.cache is cache and cache.misses == misses
    with pytest.raises(VitsegError, match="another feature config"):
        Segmenter(FeatureConfig(sigmas=(2,)), featurizer=fz)

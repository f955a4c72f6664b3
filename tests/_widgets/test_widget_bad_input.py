"""Bad inputs through the segmentation dock widget in a real napari viewer: each ends in the
project's one-line error in the status line and as a notification, nothing is written and files
that existed are unchanged (bytes compared)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")

from _widget_helpers import dock, wait_idle  # noqa: E402


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every entry under ``folder`` (hidden ones included) with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def assert_one_line_error(widget, errors, n_before: int, *must: str) -> str:
    """Exactly one new notification, one line, containing every string of ``must``, also in the
    status line, shown in red."""
    assert len(errors) == n_before + 1, errors[n_before:]
    msg = errors[-1]
    assert "\n" not in msg.strip() and "Traceback" not in msg, msg
    for m in must:
        assert m in msg, (m, msg)
    assert widget.status.text().strip() == msg.strip() and widget.status.styleSheet(), widget.status.text()
    return msg


@pytest.fixture
def nano(nanoparticles, tmp_path):
    """The real TEM nanoparticles (crop), its scribbles, and a folder holding it as a TIFF."""
    image, scribbles, _ = nanoparticles
    image, scribbles = image[:160, :192].copy(), scribbles[:160, :192].copy()
    assert set(np.unique(scribbles)) == {0, 1, 2}
    tifffile.imwrite(tmp_path / "img.tif", image)
    return image, scribbles


def _trained_widget(qtbot, viewer, image, scribbles, errors):
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    layer.data = scribbles.copy()
    widget.trees_spin.setValue(5)
    widget.sigmas_edit.setText("1, 2")
    widget.sigmas_edit.editingFinished.emit()
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == [] and widget.controller.model is not None
    return widget


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_image(qtbot, make_napari_viewer, nano, tmp_path, errors, monkeypatch, bad):
    image, scribbles = nano
    img = image.astype(np.float32)
    img[10:12, 20:25] = bad
    viewer = make_napari_viewer()
    viewer.add_image(img, name="img")
    widget = dock(viewer)
    layer = widget.new_scribbles_layer()
    layer.data = scribbles.copy()
    before = snapshot(tmp_path)
    widget.train()
    wait_idle(qtbot, widget)
    assert_one_line_error(widget, errors, 0, "NaN or infinite")
    assert widget.controller.model is None
    assert "segmentation" not in viewer.layers or not np.any(viewer.layers["segmentation"].data)
    # a folder holding such a TIFF, through Apply to files with a model trained on a good image
    viewer.layers["img"].data = image.astype(np.float32)
    widget.train()
    wait_idle(qtbot, widget)
    assert widget.controller.model is not None
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "bad.tif", img)
    before = snapshot(tmp_path)
    monkeypatch.setattr(widget, "ask_input_paths", lambda kind: [str(src)])
    monkeypatch.setattr(widget, "ask_output_dir", lambda: str(tmp_path / "out"))
    n = len(errors)
    widget.apply_to_files(kind="folder")
    wait_idle(qtbot, widget)
    assert_one_line_error(widget, errors, n, "NaN or infinite", "bad.tif")
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k != "out"} == before, "something was written"
    assert not any((tmp_path / "out").iterdir()) if (tmp_path / "out").exists() else True


def _classifier_file(tmp_path, image, scribbles, *, rgb=False) -> Path:
    from napari_vitseg.features import FeatureConfig
    from napari_vitseg.pipeline import Segmenter

    seg = Segmenter(FeatureConfig(sigmas=(1.0,)), "rf", {"n_estimators": 3})
    if rgb:
        seg.fit(np.stack([image] * 3, -1), scribbles, channel_axis=-1)
    else:
        seg.fit(image, scribbles)
    path = tmp_path / ("rgb.vitseg" if rgb else "good.vitseg")
    seg.save(path)
    return path


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.mark.parametrize("case, must", [
    ("pickle", "pickle"),
    ("pickle_in_zip", "skops"),
    ("truncated", "damaged or truncated"),
    ("channels", "channel"),
])
def test_bad_classifier_files_on_load(qtbot, make_napari_viewer, nano, tmp_path, errors, monkeypatch, case, must):
    import io
    import zipfile

    image, scribbles = nano
    marker = tmp_path / "pwned"
    good = _classifier_file(tmp_path, image, scribbles)
    path = tmp_path / "bad.vitseg"
    if case == "pickle":
        path.write_bytes(pickle.dumps(_Payload(str(marker))))
    elif case == "pickle_in_zip":
        with zipfile.ZipFile(good) as zf:
            members = {n: zf.read(n) for n in zf.namelist()}
        members["model.skops"] = pickle.dumps(_Payload(str(marker)))
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for n, b in members.items():
                zf.writestr(n, b)
        path.write_bytes(buf.getvalue())
    elif case == "truncated":
        path.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    else:  # a classifier trained on RGB images, loaded with a grey image in the viewer
        path = _classifier_file(tmp_path, image, scribbles, rgb=True)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    widget = dock(viewer)
    before = snapshot(tmp_path)
    monkeypatch.setattr(widget, "ask_open_path", lambda: str(path))
    widget.load_classifier()
    wait_idle(qtbot, widget)
    msg = assert_one_line_error(widget, errors, 0, must)
    if case != "channels":  # the channel message is about the image in the viewer
        assert path.name in msg
    assert not marker.exists(), "the payload ran"
    assert snapshot(tmp_path) == before
    if case != "channels":
        assert widget.controller.model is None
    assert "segmentation" not in viewer.layers or not np.any(viewer.layers["segmentation"].data)


def test_scribbles_of_another_shape(qtbot, make_napari_viewer, nano, tmp_path, errors):
    image, scribbles = nano
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    widget = dock(viewer)
    viewer.add_labels(scribbles[:100, :90].copy(), name="small")
    widget.scribbles_combo.setCurrentIndex(widget.scribbles_combo.findText("small"))
    before = snapshot(tmp_path)
    widget.train()
    wait_idle(qtbot, widget)
    assert_one_line_error(widget, errors, 0, "shape")
    assert widget.controller.model is None and snapshot(tmp_path) == before


@pytest.mark.parametrize("target", ["image_file", "scribbles_file", "folder"])
def test_save_classifier_onto_an_input_or_a_folder(qtbot, make_napari_viewer, nano, tmp_path, errors, monkeypatch,
                                                     target):
    image, scribbles = nano
    tifffile.imwrite(tmp_path / "scribbles.tif", scribbles)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "img.tif"))
    viewer.open(str(tmp_path / "scribbles.tif"), layer_type="labels")
    assert viewer.layers[0].source.path == str(tmp_path / "img.tif")
    widget = dock(viewer)
    widget.scribbles_combo.setCurrentIndex(widget.scribbles_combo.findText(viewer.layers[1].name))
    widget.trees_spin.setValue(5)
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == [] and widget.controller.model is not None
    (tmp_path / "folder.vitseg").mkdir()
    (tmp_path / "folder.vitseg" / "keep.txt").write_text("mine")
    dest = {"image_file": tmp_path / "img.tif", "scribbles_file": tmp_path / "scribbles.tif",
            "folder": tmp_path / "folder.vitseg"}[target]
    before = snapshot(tmp_path)
    monkeypatch.setattr(widget, "ask_save_path", lambda: str(dest))
    widget.save_classifier()
    wait_idle(qtbot, widget)
    assert_one_line_error(widget, errors, 0, dest.name)
    assert snapshot(tmp_path) == before  # the image, the scribbles, the folder: unchanged, no temporary file

"""Several image layers used as the channels of one image (issue 14, item 3).

napari shows a multichannel file as one image layer per channel (``viewer.open(path,
channel_axis=0)`` or ``viewer.add_image(cyx, channel_axis=0)``). The widget's *+ channels…*
control combines such layers; every job then reads the lazy channels-last stack of them
through :meth:`InputSection.job_inputs`.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

pytest.importorskip("napari")

from _widget_helpers import dock, paint_and_train, paint_labels, wait_idle  # noqa: E402

from napari_vitseg._validation import VitsegError  # noqa: E402
from napari_vitseg._widgets._controller import stack_channels  # noqa: E402


@pytest.fixture(scope="module")
def alloy_cyx(shared_data):
    """(CYX uint8, scribbles): the first two colour channels of the real alloy micrograph
    (201 x 234), channels first as a fluorescence file would have them, and its 3-class scribbles."""
    d = shared_data("alloy_optical_rgb")
    rgb = tifffile.imread(d / "image.tif")
    scribbles = tifffile.imread(d / "scribbles.tif")
    cyx = np.ascontiguousarray(np.moveaxis(rgb, -1, 0)[:2])
    return cyx, scribbles


def _open_split(viewer, cyx):
    """The CYX array as napari shows it by default: one layer per channel."""
    layers = viewer.add_image(cyx, channel_axis=0, name=["ch0", "ch1"])
    assert [lay.data.shape for lay in layers] == [cyx.shape[1:]] * 2
    return layers


def _combine_all(widget):
    """Press *+ channels… > All N layers of this shape as channels* (the menu as the user sees it)."""
    inp = widget.input
    assert inp.channels_btn.isVisibleTo(widget)
    inp._fill_channels_menu()  # what the menu's aboutToShow does
    act = next(a for a in inp.channels_menu.actions() if a.text().startswith("All "))
    act.trigger()


def test_stack_channels_is_lazy_and_checks_shapes():
    import dask.array as da

    a = np.arange(2 * 5 * 6, dtype=np.uint16).reshape(2, 5, 6)
    b = a + 1000
    s = stack_channels([a, b])
    assert isinstance(s, da.Array) and s.shape == (2, 5, 6, 2) and s.dtype == np.uint16
    assert s.chunks[:3] == ((1, 1), (5,), (6,))  # one chunk per plane: a job reads the planes it needs
    np.testing.assert_array_equal(np.asarray(s[1]), np.stack([a[1], b[1]], -1))
    with pytest.raises(VitsegError, match="'b'.*shape"):
        stack_channels([a, a[:, :4]], ["a", "b"])
    with pytest.raises(VitsegError, match="two or more"):
        stack_channels([a])


def test_two_channel_layers_combined_match_training_on_the_cyx_array(qtbot, make_napari_viewer, alloy_cyx,
                                                                      errors):
    """Two layers from a CYX array opened with channel_axis=0, combined: Train gives exactly the
    labels that our own path gives on the CYX array with the same scribbles (same features,
    same random_state)."""
    from napari_vitseg.pipeline import Segmenter

    cyx, scribbles = alloy_cyx
    viewer = make_napari_viewer()
    ch0, ch1 = _open_split(viewer, cyx)
    widget = dock(viewer)
    inp = widget.input
    assert inp.image_layer is ch0 and inp.channel_candidates() == [ch1]
    assert inp.channels_btn.isVisibleTo(widget)
    _combine_all(widget)
    assert inp.channel_layers() == [ch0, ch1]
    assert widget.channel_axis() == 2 and inp.spatial_shape() == cyx.shape[1:]
    assert not widget.channel_spin.isEnabled()
    assert "2 layers" in widget.channel_hint.text() and "'ch1'" in widget.channel_hint.text()
    assert "2 channels" in inp.channels_btn.text()

    layer = widget.new_scribbles_layer()
    assert layer.data.shape == cyx.shape[1:]
    for c in (1, 2, 3):
        paint_labels(layer, scribbles == c, c)
    inputs = widget._inputs(need_scribbles=True)  # the job-input path of Train, Live, Apply, Save
    assert inputs.channel_axis == 2 and tuple(inputs.image.shape) == (*cyx.shape[1:], 2)
    assert not isinstance(inputs.image, np.ndarray)  # lazy: the layers are not copied
    widget.trees_spin.setValue(30)
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == []
    got = viewer.layers["segmentation"].data.copy()
    assert widget.controller.model.segmenter.n_channels_ == 2

    c = widget.controller
    ref = Segmenter(c.feature_config, c.classifier, dict(c.classifier_params))
    ref.fit(cyx, scribbles, channel_axis=0)
    want = ref.predict(cyx, channel_axis=0)
    assert len(np.unique(want)) == 3
    np.testing.assert_array_equal(got, want)

    # a single layer is another (1-channel) image: not what was trained
    one = Segmenter(c.feature_config, c.classifier, dict(c.classifier_params)).fit(cyx[0], scribbles)
    assert not np.array_equal(one.predict(cyx[0]), want)

    # Apply to stack and Live read the same combined image
    viewer.layers["segmentation"].data[:] = 0
    widget.apply_to_stack()
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, want)
    widget.live_check.setChecked(True)
    wait_idle(qtbot, widget)
    n = c.n_trainings
    stroke = np.zeros_like(scribbles, bool)
    stroke[np.nonzero(scribbles == 1)[0][0], :5] = True
    paint_labels(layer, stroke, 1)
    qtbot.waitUntil(lambda: c.n_trainings > n and not widget.busy, timeout=60_000)
    assert c.model.live and c.model.segmenter.n_channels_ == 2 and errors == []


def test_layers_of_another_shape_are_not_offered(qtbot, make_napari_viewer, alloy_cyx, errors):
    cyx, _ = alloy_cyx
    viewer = make_napari_viewer()
    viewer.add_image(cyx[0], name="ch0")
    widget = dock(viewer)
    inp = widget.input
    assert inp.channel_candidates() == [] and not inp.channels_btn.isVisibleTo(widget)
    viewer.add_image(cyx[1, :100, :100], name="crop")
    viewer.add_image(np.zeros((*cyx.shape[1:], 3), np.uint8), name="rgb", rgb=True)
    viewer.add_image(np.zeros((3, *cyx.shape[1:]), np.uint8), name="stack")
    inp.image_combo.setCurrentIndex(inp.image_combo.findText("ch0"))
    assert inp.channel_candidates() == []
    assert not inp.channels_btn.isVisibleTo(widget)
    inp._fill_channels_menu()
    assert [a.text() for a in inp.channels_menu.actions()] == ["No other image layer of this shape"]
    for name in ("crop", "rgb", "stack"):
        with pytest.raises(VitsegError, match=repr(name)):
            inp.set_channel_layers([viewer.layers["ch0"], viewer.layers[name]])
    assert inp.channel_layers() == [viewer.layers["ch0"]] and widget.channel_axis() is None

    same = viewer.add_image(cyx[1], name="ch1")
    assert inp.channel_candidates() == [same] and inp.channels_btn.isVisibleTo(widget)
    inp._fill_channels_menu()
    texts = [a.text() for a in inp.channels_menu.actions()]
    assert "All 2 layers of this shape as channels" in texts and "ch1" in texts
    assert not any(t in texts for t in ("crop", "rgb", "stack"))
    # tick one layer in the menu
    next(a for a in inp.channels_menu.actions() if a.text() == "ch1").trigger()
    assert inp.channel_layers() == [viewer.layers["ch0"], same]


def test_removing_a_channel_layer_falls_back_to_one_layer_and_says_so(qtbot, make_napari_viewer, alloy_cyx,
                                                                     errors):
    cyx, scribbles = alloy_cyx
    viewer = make_napari_viewer()
    ch0, ch1 = _open_split(viewer, cyx)
    ch2 = viewer.add_image(cyx[0] // 2 + cyx[1] // 2, name="mean")
    widget = dock(viewer)
    inp = widget.input
    _combine_all(widget)
    assert inp.channel_layers() == [ch0, ch1, ch2]
    paint_and_train(qtbot, widget, scribbles, 10)
    assert widget.controller.model.segmenter.n_channels_ == 3

    viewer.layers.remove(ch2)  # three -> two channels
    assert inp.channel_layers() == [ch0, ch1] and widget.channel_axis() == 2
    assert "'mean'" in widget.status.text() and "now 2 channels" in widget.status.text()

    viewer.layers.remove(ch1)  # two -> one: the Image layer alone
    assert inp.channel_layers() == [ch0]
    assert widget.channel_axis() is None and widget.channel_spin.isEnabled()
    msg = widget.status.text()
    assert "'ch1'" in msg and "single layer" in msg and "'ch0' alone" in msg, msg
    assert "retrain" in msg
    assert "layers" not in widget.channel_hint.text()
    # the scribbles still fit (same spatial shape) and a job reads the one layer
    inputs = widget._inputs(need_scribbles=True)
    assert inputs.image is ch0.data and inputs.channel_axis is None
    assert inputs.scribbles.n_labelled == int(np.count_nonzero(scribbles))
    # the 3-channel model does not fit one channel: retraining on the one layer works
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == [] and widget.controller.model.segmenter.n_channels_ == 1


def test_removing_the_image_layer_of_the_channels(qtbot, make_napari_viewer, alloy_cyx, errors):
    cyx, _ = alloy_cyx
    viewer = make_napari_viewer()
    ch0, ch1 = _open_split(viewer, cyx)
    widget = dock(viewer)
    _combine_all(widget)
    viewer.layers.remove(ch0)
    assert widget.input.image_layer is ch1 and widget.input.channel_layers() == [ch1]
    assert widget.channel_axis() is None
    assert "'ch0'" in widget.status.text() and "'ch1' alone" in widget.status.text()


def test_lazy_stacks_combined_read_only_the_planes_needed(qtbot, make_napari_viewer, cells_stack, errors):
    """Two dask stacks as channels: Train reads the planes with scribbles and the plane in
    view, never the whole stacks."""
    import dask.array as da

    stack, _ = cells_stack
    stack = stack[:4, :128, :128]
    reads: list[tuple[int, int]] = []

    def counted(channel):
        def read(block, block_info=None):
            reads.append((channel, block_info[0]["chunk-location"][0]))
            return block
        return read

    layers = []
    for ch, data in enumerate((stack, 255 - stack)):
        lazy = da.from_array(np.ascontiguousarray(data), chunks=(1, 128, 128)).map_blocks(
            counted(ch), dtype=data.dtype, meta=np.empty((0, 0, 0), data.dtype))
        layers.append(lazy)
    viewer = make_napari_viewer()
    a = viewer.add_image(layers[0], name="c0")
    b = viewer.add_image(layers[1], name="c1")
    widget = dock(viewer)
    widget.input.set_channel_layers([a, b])
    assert widget.input.spatial_shape() == (4, 128, 128)
    scr = widget.new_scribbles_layer()
    mask = np.zeros(scr.data.shape, bool)
    mask[1, 10:30, 10:30] = True
    paint_labels(scr, mask, 1)
    mask[:] = False
    mask[1, 80:100, 80:100] = True
    paint_labels(scr, mask, 2)
    viewer.dims.set_current_step(0, 2)
    reads.clear()
    widget.trees_spin.setValue(5)
    widget.train()
    wait_idle(qtbot, widget)
    assert errors == []
    planes = {z for _, z in reads}
    assert planes == {1, 2}, reads  # the plane with scribbles, then the plane in view
    assert {c for c, _ in reads} == {0, 1}
    seg = viewer.layers["segmentation"]
    assert seg.data.shape == (4, 128, 128) and seg.data[2].any() and not seg.data[0].any()


def test_save_load_and_apply_to_files_with_layer_channels(qtbot, make_napari_viewer, alloy_cyx, tmp_path, errors,
                                                          monkeypatch):
    """The classifier records 2 channels: it round-trips through Save / Load, Apply to files
    segments a 2-channel CYX TIFF like the layers, and refuses a 1-channel file."""
    from napari_vitseg.classifiers import read_metadata

    cyx, scribbles = alloy_cyx
    viewer = make_napari_viewer()
    _open_split(viewer, cyx)
    widget = dock(viewer)
    _combine_all(widget)
    paint_and_train(qtbot, widget, scribbles, 20)
    seg = viewer.layers["segmentation"].data.copy()
    path = tmp_path / "two.vitseg"
    monkeypatch.setattr(widget, "ask_save_path", lambda: str(path))
    widget.save_classifier()
    wait_idle(qtbot, widget)
    assert errors == [] and read_metadata(path)["n_channels"] == 2

    widget.controller.model = None
    viewer.layers["segmentation"].data[:] = 0
    monkeypatch.setattr(widget, "ask_open_path", lambda: str(path))
    widget.load_classifier()
    wait_idle(qtbot, widget)
    assert errors == []
    np.testing.assert_array_equal(viewer.layers["segmentation"].data, seg)

    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "two.tif", cyx, metadata={"axes": "CYX"})
    monkeypatch.setattr(widget, "ask_input_paths", lambda kind: [str(src / "two.tif")])
    monkeypatch.setattr(widget, "ask_output_dir", lambda: str(tmp_path / "out"))
    widget.open_results_check.setChecked(False)
    widget.apply_to_files()
    wait_idle(qtbot, widget)
    assert errors == []
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "two_seg.tif"), seg)

    tifffile.imwrite(src / "one.tif", cyx[0])
    monkeypatch.setattr(widget, "ask_input_paths", lambda kind: [str(src / "one.tif")])
    widget.apply_to_files()
    wait_idle(qtbot, widget)
    assert errors and "one.tif" in errors[-1] and "2" in errors[-1] and "channel" in errors[-1]
    assert not (tmp_path / "out" / "one_seg.tif").exists()


def test_file_opened_with_channel_axis_can_be_combined(qtbot, make_napari_viewer, alloy_cyx, tmp_path, errors):
    """``viewer.open(path, channel_axis=0)``: one layer per channel of the file, combinable."""
    cyx, _ = alloy_cyx
    path = tmp_path / "cyx.tif"
    tifffile.imwrite(path, cyx)
    viewer = make_napari_viewer()
    layers = viewer.open(str(path), channel_axis=0, plugin="napari")
    assert len(layers) == 2 and all(lay.data.shape == cyx.shape[1:] for lay in layers)
    widget = dock(viewer)
    assert widget.input.channel_candidates() == [layers[1]]
    _combine_all(widget)
    assert widget.input.channel_layers() == list(layers)
    inputs = widget._inputs(need_scribbles=False)
    np.testing.assert_array_equal(np.asarray(inputs.image), np.moveaxis(cyx, 0, -1))
    assert widget.default_save_path() == str(tmp_path / "cyx.vitseg")

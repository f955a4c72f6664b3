"""Issue 14 item 10: the diagnostics widget explains itself: Run only when it can run (and why not),
layer names that stay apart in napari's layer list, plots that fit the dock without overlapping
labels, and a plain-language verdict per backbone."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari")

from napari_vitseg._widgets._diagnostics import (  # noqa: E402
    CONTROL_MARGIN,
    DEFECT_SHARE,
    RANDOM_LABEL,
    STRONG_R2,
    DiagnosticsWidget,
    short_backbone_names,
    thin_tick_labels,
    verdict,
)
from napari_vitseg.backbones import list_backbones  # noqa: E402

TIMEOUT = 180_000
#: napari's layer list shows about this many characters at each end of a long name (it elides the
#: middle) in a default-width window (measured on a 1366 x 768 screenshot: 13 + 13).
VISIBLE_CHARS = 13


def _as_listed(name: str) -> str:
    """A layer name as napari's layer list shows it when it is long (Qt.ElideMiddle)."""
    n = VISIBLE_CHARS
    return name if len(name) <= 2 * n + 1 else f"{name[:n]}…{name[-n:]}"


@pytest.fixture
def notes(monkeypatch):
    from napari_vitseg._widgets import _notify

    seen: dict[str, list[str]] = {"error": [], "warning": []}
    monkeypatch.setattr(_notify, "show_error", lambda msg: seen["error"].append(str(msg)))
    monkeypatch.setattr(_notify, "show_warning", lambda msg: seen["warning"].append(str(msg)))
    monkeypatch.setattr(_notify, "show_info", lambda msg: None)
    return seen


def test_run_is_disabled_without_a_usable_backbone_and_says_why(make_napari_viewer, qtbot, notes, monkeypatch):
    """No weights on this machine and random weights not offered: Run disabled, the reason shown,
    and no word about the (hidden) random-weights checkbox (before: Run enabled, and pressing it
    asked to tick a checkbox that is not there)."""
    monkeypatch.delenv("VITSEG_ALLOW_RANDOM_WEIGHTS", raising=False)
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((40, 40), np.float32), name="img")
    w = DiagnosticsWidget(viewer)
    qtbot.addWidget(w)
    w.show()
    assert not w.random_check.isVisible()
    assert not w.run_btn.isEnabled()
    assert w.run_hint.isVisible() and "No backbone has weights" in w.run_hint.text()
    assert "random" not in w.run_hint.text().lower() and "tick" not in w.run_hint.text().lower()
    assert w.run() is None and notes["error"] and "random" not in notes["error"][0].lower()


def test_run_follows_the_ticks(make_napari_viewer, qtbot, notes, monkeypatch):
    monkeypatch.setenv("VITSEG_ALLOW_RANDOM_WEIGHTS", "1")
    viewer = make_napari_viewer()
    w = DiagnosticsWidget(viewer)
    qtbot.addWidget(w)
    w.show()
    assert not w.run_btn.isEnabled() and RANDOM_LABEL in w.run_hint.text()  # the checkbox is shown: named
    w.set_selection(random_weights=True)
    assert not w.run_btn.isEnabled() and "Tick a backbone" in w.run_hint.text()
    w.set_selection(backbones=["dinov2_vits14"])
    assert not w.run_btn.isEnabled() and "Open an image" in w.run_hint.text()
    viewer.add_image(np.zeros((40, 40), np.float32), name="img")
    assert w.run_btn.isEnabled() and not w.run_hint.isVisible()
    w.set_selection(images=[])
    assert not w.run_btn.isEnabled() and "Tick an image" in w.run_hint.text()
    w.set_selection(images=["img"], backbones=[])
    assert not w.run_btn.isEnabled()


def test_short_backbone_names_are_unique_and_short():
    names = list_backbones()
    short = short_backbone_names(names)
    assert len(set(short.values())) == len(names)
    assert all(len(v) <= 16 for v in short.values()), short
    assert short["dinov2_vits14_reg"] == "dv2-S-reg" and short["alibi_coco_dv2_vits14_reg"] == "alibi-coco-S-reg"
    assert short_backbone_names(["my_custom_net"]) == {"my_custom_net": "my_custom_net"}
    assert short_backbone_names(["a_vits14", "b_dinov2_vits14", "dinov2_vits14"])["dinov2_vits14"] == "dv2-S"


def _bd(r2, ctrl, share=0.0, defects=None, name="dinov2_vits14", pretrained=True):
    probe = SimpleNamespace(mean=lambda t, layer="final": {"lr+ud": r2, "random": ctrl}[t])
    per = [{"defect_counts": None if defects is None else np.array([0, defects])}]
    norms = SimpleNamespace(share=np.array([[0.0, share]]), per_image=per)
    return SimpleNamespace(backbone=name, pretrained=pretrained, probe=probe, norms=norms)


def test_verdict_thresholds():
    v = verdict(_bd(0.83, -0.45))  # DINOv2-S on micrographs (Pawlowsky et al. 2026)
    assert v.level == "bad" and "strongly positional" in v.text and "ALiBi / NoPE / SINDER" in v.text
    assert verdict(_bd(STRONG_R2 - 0.01, -0.4)).level == "caution"
    v = verdict(_bd(-0.23, -0.5, name="alibi_coco_dv2_vits14_reg"))  # ALiBi-DINOv2
    assert v.level == "good" and v.text.startswith("Suits your images")
    # at chance: a high R² that does not beat the backbone's own noise control does not count
    assert verdict(_bd(0.6, 0.6 - CONTROL_MARGIN + 0.05)).level == "good"
    v = verdict(_bd(-0.5, -0.6, share=DEFECT_SHARE * 3))
    assert v.level == "caution" and "high-norm tokens" in v.text and "register" in v.text
    v = verdict(_bd(-0.5, -0.6, defects=5, name="dinov2_vits14_reg"))
    assert v.level == "caution" and "SINDER defect tokens in 1 image" in v.text and "register" not in v.text
    assert verdict(_bd(-0.5, -0.6, pretrained=False)).text.startswith("RANDOM WEIGHTS")


def test_thin_tick_labels_removes_overlaps():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.set_xticks(range(13))
    ax.set_xticklabels([f"block{i}" for i in range(13)])
    fig.canvas.draw()
    assert _overlaps(fig)
    assert thin_tick_labels(fig) > 0
    fig.canvas.draw()
    assert not _overlaps(fig)


def _drawn(axis) -> list:
    """Tick labels matplotlib draws: major ticks inside the view limits."""
    return [t.label1 for t in axis._update_ticks() if t in axis.majorTicks]


def _overlaps(fig) -> list:
    r = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [t.get_window_extent(r) for t in _drawn(axis) if t.get_visible() and t.get_text()]
            bad += [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:] if a.overlaps(b)]
    return bad


def _outside(fig, tol: float = 2.0) -> list[str]:
    """Visible texts that stick out of the figure (cut off in the dock)."""
    from matplotlib.text import Text

    r = fig.canvas.get_renderer()
    W, H = fig.bbox.width, fig.bbox.height
    ticks = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
             for t in (*axis.get_ticklabels(), *axis.get_ticklabels(minor=True))}
    drawn = {id(t) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis) for t in _drawn(axis)}
    out = []
    for t in fig.findobj(Text):
        if not t.get_visible() or not t.get_text() or (t.axes is not None and not t.axes.get_visible()):
            continue
        if id(t) in ticks and id(t) not in drawn:
            continue
        bb = t.get_window_extent(r)
        if bb.x0 < -tol or bb.y0 < -tol or bb.x1 > W + tol or bb.y1 > H + tol:
            out.append(t.get_text())
    return out


def test_results_readable_in_a_narrow_dock(make_napari_viewer, qtbot, notes, monkeypatch):
    """Two backbones in a 360-px dock: names stay apart, plots fit without overlapping labels,
    a verdict per backbone above the plots."""
    monkeypatch.setenv("VITSEG_ALLOW_RANDOM_WEIGHTS", "1")
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(1).random((84, 84)).astype(np.float32), name="noise")
    w = DiagnosticsWidget(viewer)
    qtbot.addWidget(w)
    w.resize(360, 760)
    w.show()
    w.set_selection(backbones=["dinov2_vits14", "dinov2_vits14_reg"], random_weights=True)
    w.repeats_spin.setValue(1)
    w.angles_check.setChecked(False)
    assert w.run() is not None
    qtbot.waitUntil(lambda: not w.busy, timeout=TIMEOUT)
    assert not notes["error"], notes["error"]

    # layer names: what napari's layer list shows of them tells every layer apart
    ours = [layer for layer in viewer.layers if layer.metadata.get("vitseg_diagnostics")]
    assert len(ours) == 6
    shown = [_as_listed(lay.name) for lay in ours]
    assert len(set(shown)) == 6, shown
    long = "a_long_image_name_from_the_microscope"  # even when the image name is long
    assert len({_as_listed(n.name.replace("noise", long)) for n in ours}) == 6

    # nothing is cut off at the dock's width (no sideways scrolling either)
    assert w.scroll.widget().minimumSizeHint().width() <= w.scroll.viewport().width()

    # verdicts: one per backbone, visible, plain words, above the plots
    assert w.verdict_box.isVisible() and [v.backbone for v in w.verdicts] == ["dinov2_vits14", "dinov2_vits14_reg"]
    text = w.verdict_label.text()
    assert text.count("RANDOM WEIGHTS") == 2 and "dv2-S-reg" in text
    assert w.verdict_box.y() < w.tabs.y()

    # plots: as wide as the dock, no overlapping tick labels, nothing cut off
    viewport = w.scroll.viewport().width()
    for i, canvas in enumerate((w.bars_canvas, w.depth_canvas, w.fingerprint_canvas, w.norms_canvas)):
        w.tabs.setCurrentIndex(i)
        qtbot.wait(50)
        canvas.draw()
        assert canvas.canvas.width() <= viewport
        fig = canvas.figure
        assert fig.axes
        assert not _overlaps(fig), (i, _overlaps(fig)[:3])
        assert not _outside(fig), (i, _outside(fig))

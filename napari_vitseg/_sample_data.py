"""npe2 sample data: the bundled real samples, each with its scribbles as a Labels layer.

No Qt is imported here; the functions return plain LayerData tuples. Class names travel in
the Labels layer's ``metadata['class_names']`` and its colours in a direct colormap, which the
segmentation widget reads.
"""

from __future__ import annotations

__all__ = ["tem_nanoparticles", "tem_cells_stack", "class_colormap"]


def class_colormap(n_classes: int, colors=None) -> dict:
    """A napari direct label colormap (plain dict) for classes 1..n.

    Parameters
    ----------
    n_classes : int
    colors : sequence of str, optional
        Hex colours of classes 1..; missing ones get the default colours.

    Returns
    -------
    dict
        ``{0: 'transparent', None: '#808080', 1: colour, ...}`` (``None``: any other label).
    """
    from .pipeline.segmenter import default_class_color

    colors = list(colors or [])
    cmap: dict = {0: "transparent", None: "#808080"}
    for k in range(1, n_classes + 1):
        cmap[k] = colors[k - 1] if k - 1 < len(colors) else default_class_color(k)
    return cmap


def _load(folder: str, name: str, class_names: list[str]) -> list[tuple]:
    from .io import read_image, sample_data_dir

    d = sample_data_dir() / folder
    image = read_image(d / "image.tif")
    scribbles = read_image(d / "scribbles.tif")
    return [
        (image, {"name": name}, "image"),
        (scribbles, {"name": "scribbles", "colormap": class_colormap(len(class_names)),
                     "metadata": {"class_names": list(class_names)}}, "labels"),
    ]


def tem_nanoparticles() -> list[tuple]:
    """Noisy TEM of nanoparticles (518 x 518, uint8) with scribbles: 1 particle, 2 background.

    (Label 1 marks the dark particles, about 20 % of the ground truth; label 2 the bright matrix.)

    From tldr-group/interactive-seg-backend (MIT); see ``sample_data/README.md``.
    """
    return _load("tem_nanoparticles", "tem_nanoparticles", ["particle", "background"])


def tem_cells_stack() -> list[tuple]:
    """TEM stack of cells (6 x 518 x 518, uint8) with scribbles: 1 nucleus, 2 cytoplasm, 3 background.

    (Label 3 marks the bright background around the cell, label 1 the nucleus.)

    From tldr-group/HR-Dv2 (MIT); see ``sample_data/README.md``.
    """
    return _load("tem_cells_stack", "tem_cells_stack", ["nucleus", "cytoplasm", "background"])

"""Method check shown in docs/diagnostics.md: the same random-weight blocks with three position
encodings (a smooth, scaled-up learned embedding; ALiBi; none). Run from the repository root:

    python docs/images/diagnostics/method_check.py docs/images/diagnostics/method_check

The test models come from tests/diagnostics/_diag_helpers.py (random weights, LayerScale 1).
"""
import dataclasses
import os
import sys

import tifffile

sys.path.insert(0, "tests/diagnostics")
from _diag_helpers import noise_image, same_blocks_as_smooth, smooth_pe_backbone  # noqa: E402

from napari_vitseg._progress import run_with_tqdm  # noqa: E402
from napari_vitseg.backbones import ViTBackbone  # noqa: E402
from napari_vitseg.diagnostics import iter_diagnose  # noqa: E402
from napari_vitseg.diagnostics.report import write_report  # noqa: E402


def renamed(bb, name):
    return ViTBackbone(dataclasses.replace(bb.cfg, name=name), bb.model, pretrained=False).eval()


models = [
    renamed(smooth_pe_backbone(), "learned PE, smooth x10"),
    renamed(same_blocks_as_smooth("alibi_dv2_vits14_reg"), "ALiBi (same blocks)"),
    renamed(same_blocks_as_smooth("nope_coco_dv2_vits14_reg"), "NoPE (same blocks)"),
]
shared = os.environ.get("VITSEG_SHARED_DATA", "../shared/data")  # the project's shared test data
images = [noise_image(), tifffile.imread(os.path.join(shared, "sem_phases", "2_phase.tif"))]
res = run_with_tqdm(iter_diagnose(models, images, names=["noise_518", "2_phase"], directions=None))
write_report(res, sys.argv[1], title="Method check: learned PE vs ALiBi vs NoPE (random weights)",
             command="python " + " ".join(sys.argv), image_maps=False)

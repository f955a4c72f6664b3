"""Finding, checking, importing, downloading and loading backbone weights.

Where weights are looked for, in this order (no network access):

1. an explicit file (``weights=`` / ``--weights``);
2. the weights folder :func:`weights_dir`: ``$VITSEG_WEIGHTS_DIR`` if set, else a per-user
   cache folder (Linux ``$XDG_CACHE_HOME/napari-vitseg/weights``, default
   ``~/.cache/napari-vitseg/weights``; macOS ``~/Library/Caches/napari-vitseg/weights``;
   Windows ``%LOCALAPPDATA%\\napari-vitseg\\weights``), under the entry's ``weights_file``
   name or ``<backbone name>.safetensors`` / ``.pth``;
3. the Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``), where timm and ``huggingface_hub`` put downloads, and
   torch hub's ``checkpoints`` folder.

If none has the file, :class:`WeightsNotFoundError` says which file, where it comes from and
where to put it. Downloads happen only in :func:`download_weights` (``vitseg weights
download NAME``). Checkpoints are read with ``torch.load(weights_only=True)`` or safetensors:
no arbitrary Python object is ever unpickled.

Accepted checkpoint layouts: timm names (the Hugging Face ``timm/...`` repos), the original
facebookresearch DINOv2 names (``dinov2_vits14_pretrain.pth``: ``register_tokens``,
``mask_token``, SwiGLU ``w12`` / ``w3``; converted with timm's own ``checkpoint_filter_fn``),
the dino-saw ALiBi / NoPE layouts (``model.`` / ``vit.`` prefixes, zeroed ``pos_embed``, slope
buffers, ``head.*``), and SINDER repair files (see :mod:`.sinder`). After conversion the
weights are loaded strictly; a checkpoint that does not match the architecture is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from .._validation import VitsegError
from ._base import ViTBackbone, build_timm_model
from ._registry import BackboneCfg, get_backbone_cfg, list_backbones

__all__ = [
    "WeightsNotFoundError",
    "LoadReport",
    "WeightsInfo",
    "ENV_WEIGHTS_DIR",
    "NO_WEIGHTS_NOTICE",
    "weights_dir",
    "resolve_weights",
    "find_weights",
    "available_backbones",
    "default_backbone",
    "download_weights",
    "import_weights",
    "list_weights",
    "load_pretrained",
    "read_state_dict",
    "convert_state_dict",
    "check_state_dict",
    "file_sha256",
    "is_repair_entry",
]

logger = logging.getLogger("napari_vitseg")

ENV_WEIGHTS_DIR = "VITSEG_WEIGHTS_DIR"
MANIFEST_NAME = "manifest.json"
DEFAULT_PREFERENCE = ("alibi_dv2_vits14_reg", "dinov2_vits14_reg")
NO_WEIGHTS_NOTICE = (
    "No ViT backbone weights were found (looked for alibi_dv2_vits14_reg and dinov2_vits14_reg); "
    "using classical features only. Run `vitseg weights list` to see where weights are looked "
    "for, and `vitseg weights download dinov2_vits14_reg` (online) or `vitseg weights import FILE "
    "--as NAME` to add them."
)
_ARCH_BY_DIM = {384: "ViT-S", 768: "ViT-B", 1024: "ViT-L", 1536: "ViT-g"}
_ANCHOR = "patch_embed.proj.weight"


class WeightsNotFoundError(VitsegError):
    """The weights file of a backbone is not on this machine (the message says where to put it)."""


# --------------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------------
def weights_dir(create: bool = False) -> Path:
    """The folder where napari-vitseg keeps backbone weights and SINDER repair files.

    ``$VITSEG_WEIGHTS_DIR`` if set; otherwise a per-user cache folder: on Linux
    ``$XDG_CACHE_HOME/napari-vitseg/weights`` (default ``~/.cache/napari-vitseg/weights``),
    on macOS ``~/Library/Caches/napari-vitseg/weights``, on Windows
    ``%LOCALAPPDATA%\\napari-vitseg\\weights``.

    Parameters
    ----------
    create : bool
        Create the folder if it does not exist.

    Returns
    -------
    pathlib.Path
    """
    env = os.environ.get(ENV_WEIGHTS_DIR)
    if env:
        d = Path(env).expanduser()
    elif sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        d = Path(base) / "napari-vitseg" / "weights"
    elif sys.platform == "darwin":
        d = Path.home() / "Library" / "Caches" / "napari-vitseg" / "weights"
    else:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        d = Path(base) / "napari-vitseg" / "weights"
    if create:
        d.mkdir(parents=True, exist_ok=True)
    return d


def _hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "huggingface" / "hub"


def _torch_hub_checkpoints() -> Path:
    if os.environ.get("TORCH_HOME"):
        return Path(os.environ["TORCH_HOME"]).expanduser() / "hub" / "checkpoints"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "torch" / "hub" / "checkpoints"


def _hub_offline() -> bool:
    val = os.environ.get("HF_HUB_OFFLINE", "")
    if val.strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:  # pragma: no cover
        return False


# --------------------------------------------------------------------------------------------
# manifest and hashes
# --------------------------------------------------------------------------------------------
_SHA_CACHE: dict[tuple, str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a file, cached per (path, size, modification time) in this process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    sha = _SHA_CACHE.get(key)
    if sha is None:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        sha = h.hexdigest()
        _SHA_CACHE[key] = sha
    return sha


def _read_manifest(folder: Path | None = None) -> dict:
    f = (folder or weights_dir()) / MANIFEST_NAME
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return {}


def _write_manifest(data: dict, folder: Path | None = None) -> None:
    d = folder or weights_dir(create=True)
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=d)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
    os.replace(tmp, d / MANIFEST_NAME)


# --------------------------------------------------------------------------------------------
# resolution
# --------------------------------------------------------------------------------------------
def is_repair_entry(cfg: BackboneCfg) -> bool:
    """True for ``sinder_<base>`` entries whose file is a SINDER repair applied to a base."""
    return cfg.base is not None and not cfg.extra.get("full_checkpoint", False)


def _hub_files(cfg: BackboneCfg) -> tuple[str, ...]:
    return tuple(cfg.extra.get("hub_files", (cfg.weights_file,)))


def _local_candidates(cfg: BackboneCfg) -> list[Path]:
    d = weights_dir()
    names = [cfg.weights_file, f"{cfg.name}.safetensors", f"{cfg.name}.pth"]
    rec = _read_manifest(d).get(cfg.name)
    if isinstance(rec, dict) and rec.get("file"):
        names.insert(0, rec["file"])
    seen, out = set(), []
    for n in names:
        if n and n not in seen:
            seen.add(n)
            out.append(d / n)
    return out


def find_weights(name: str) -> Path | None:
    """The local weights file of a backbone, or ``None`` (never uses the network).

    For ``sinder_<base>`` repair entries this is the repair file (the base's weights are
    looked up separately).
    """
    cfg = get_backbone_cfg(name)
    for p in _local_candidates(cfg):
        if p.is_file():
            return p
    if cfg.weights_repo:
        from huggingface_hub import try_to_load_from_cache

        cache = _hf_cache_dir()
        for fn in _hub_files(cfg):
            try:
                hit = try_to_load_from_cache(cfg.weights_repo, fn, cache_dir=cache)
            except Exception:  # malformed cache: ignore it
                hit = None
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    if cfg.weights_file:
        p = _torch_hub_checkpoints() / cfg.weights_file
        if p.is_file():
            return p
    return None


def _not_found_message(cfg: BackboneCfg) -> str:
    d = weights_dir()
    if is_repair_entry(cfg):
        return (
            f"The SINDER repair file {cfg.weights_file!r} for backbone {cfg.name!r} was not found in "
            f"{d} (set ${ENV_WEIGHTS_DIR} to use another folder). It is made on this machine from "
            f"the base backbone {cfg.base!r}: run `vitseg repair --backbone {cfg.base} --images DIR` "
            f"(it writes {d / cfg.weights_file}), or `vitseg weights import REPAIR.safetensors --as "
            f"{cfg.name}`. `vitseg weights download {cfg.name}` cannot fetch it (no published file). "
            "Or choose another backbone, or `--backbone none` for classical features only."
        )
    source = cfg.weights_url or (f"https://huggingface.co/{cfg.weights_repo}" if cfg.weights_repo else "?")
    hub = f" (Hugging Face repo {cfg.weights_repo})" if cfg.weights_repo else ""
    return (
        f"The weights file {cfg.weights_file!r} for backbone {cfg.name!r} was not found. Download it "
        f"from {source}{hub} and put it in {d} (set ${ENV_WEIGHTS_DIR} to use another folder), or "
        f"run `vitseg weights import FILE --as {cfg.name}`; when online, `vitseg weights download "
        f"{cfg.name}` fetches it into the Hugging Face cache. Or choose `--backbone none` for "
        "classical features only."
    )


def resolve_weights(name: str, weights: str | os.PathLike | None = None) -> Path:
    """The weights file to load for a backbone, without network access.

    Parameters
    ----------
    name : str
        A registered backbone name.
    weights : str or pathlib.Path, optional
        An explicit file; wins over every other source.

    Returns
    -------
    pathlib.Path
        An existing file: the explicit one, else one in :func:`weights_dir`, else one in the
        Hugging Face (or torch hub) cache. For ``sinder_<base>`` entries, the repair file.

    Raises
    ------
    WeightsNotFoundError
        With one message naming the file, its source and the folder to put it in.
    VitsegError
        Unknown backbone name.
    """
    cfg = get_backbone_cfg(name)
    if weights is not None:
        p = Path(weights).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(
                f"The weights file {str(p)!r} given for backbone {name!r} does not exist; check the "
                f"path, or leave it out to use {cfg.weights_file!r} from {weights_dir()}."
            )
        return p
    p = find_weights(name)
    if p is None:
        raise WeightsNotFoundError(_not_found_message(cfg))
    return p


def available_backbones() -> list[str]:
    """Backbones whose weights are on this machine (for ``sinder_<base>``: repair and base)."""
    out = []
    for n in list_backbones():
        cfg = get_backbone_cfg(n)
        if find_weights(n) is None:
            continue
        if is_repair_entry(cfg) and find_weights(cfg.base) is None:
            continue
        out.append(n)
    return out


_NOTICE_SHOWN = False


def default_backbone() -> str | None:
    """The backbone used when none is chosen.

    ``'alibi_dv2_vits14_reg'`` when its weights are present, else ``'dinov2_vits14_reg'``,
    else ``None`` (classical features only). In the last case the notice
    :data:`NO_WEIGHTS_NOTICE` is logged once per process on the ``napari_vitseg`` logger at
    WARNING level (printed on stderr when logging is not configured); the GUI shows the same
    text.
    """
    global _NOTICE_SHOWN
    for n in DEFAULT_PREFERENCE:
        if find_weights(n) is not None:
            return n
    if not _NOTICE_SHOWN:
        logger.warning(NO_WEIGHTS_NOTICE)
        _NOTICE_SHOWN = True
    return None


@dataclass(frozen=True)
class WeightsInfo:
    """One row of ``vitseg weights list``."""

    name: str
    found: bool
    path: Path | None
    size: int | None
    source: str
    sha256: str | None = None
    base_found: bool | None = None


def list_weights() -> list[WeightsInfo]:
    """Status of every registered backbone's weights (no network, no hashing)."""
    manifest = _read_manifest()
    rows = []
    for n in list_backbones():
        cfg = get_backbone_cfg(n)
        p = find_weights(n)
        if is_repair_entry(cfg):
            source = f"made locally: vitseg repair --backbone {cfg.base}"
        else:
            source = cfg.weights_url or (f"hf:{cfg.weights_repo}" if cfg.weights_repo else "")
        rec = manifest.get(n) if isinstance(manifest.get(n), dict) else {}
        sha = rec.get("sha256") if p is not None and rec.get("file") == p.name else None
        rows.append(WeightsInfo(
            name=n, found=p is not None, path=p, size=p.stat().st_size if p is not None else None,
            source=source, sha256=sha or cfg.sha256,
            base_found=(find_weights(cfg.base) is not None) if is_repair_entry(cfg) else None,
        ))
    return rows


# --------------------------------------------------------------------------------------------
# download
# --------------------------------------------------------------------------------------------
def download_weights(name: str, *, force: bool = False) -> Path:
    """Download a backbone's published weights into the Hugging Face cache.

    The only function of napari-vitseg that uses the network. timm's downloads land in the
    same cache, so a file fetched either way is found by :func:`resolve_weights`.

    Parameters
    ----------
    name : str
        A registered backbone with a published file (not a ``sinder_<base>`` repair entry).
    force : bool
        Download again even if the file is cached.

    Returns
    -------
    pathlib.Path
        The downloaded (or already cached) file.

    Raises
    ------
    VitsegError
        Offline (``HF_HUB_OFFLINE`` set, or the hub unreachable), no published file, or the
        repo / file does not exist. The message says how to install the file by hand.
    """
    cfg = get_backbone_cfg(name)
    if is_repair_entry(cfg) or not cfg.weights_repo:
        raise VitsegError(
            f"Backbone {name!r} has no published weights to download: its file {cfg.weights_file!r} "
            f"is made on this machine with `vitseg repair --backbone {cfg.base}` (or imported with "
            f"`vitseg weights import FILE --as {name}`)."
        )
    source = cfg.weights_url or f"https://huggingface.co/{cfg.weights_repo}"
    manual = (
        f"Download {cfg.weights_file!r} on a machine with internet access from {source} and put it "
        f"in {weights_dir()} (or run `vitseg weights import FILE --as {name}`), or use "
        "`--backbone none` for classical features only."
    )
    if _hub_offline():
        raise VitsegError(f"Cannot download weights for {name!r}: HF_HUB_OFFLINE is set (offline mode). {manual}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError  # also huggingface_hub.errors from 0.24
    last: Exception | None = None
    for fn in _hub_files(cfg):
        try:
            logger.info("downloading %s from hf:%s", fn, cfg.weights_repo)
            p = hf_hub_download(cfg.weights_repo, fn, cache_dir=_hf_cache_dir(), force_download=force)
            return Path(p)
        except EntryNotFoundError as e:  # try the next file name
            last = e
            continue
        except Exception as e:  # connection errors, HTTP errors, missing repo, ...
            raise VitsegError(
                f"Could not download {fn!r} for backbone {name!r} from hf:{cfg.weights_repo} "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'}); the "
                f"machine may be offline. {manual}"
            ) from e
    raise VitsegError(
        f"None of {list(_hub_files(cfg))} exists in hf:{cfg.weights_repo} ({last}). {manual}"
    )


# --------------------------------------------------------------------------------------------
# reading and converting checkpoints
# --------------------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What happened when a checkpoint was read, converted and loaded.

    Attributes
    ----------
    path : pathlib.Path
    sha256 : str or None
    layout : str
        ``'timm'``, ``'facebookresearch'``, ``'dino-saw'`` or ``'sinder-repair'``.
    prefix : str
        Key prefix that was stripped (``'model.'``, ``'vit.model.'``, ...).
    dropped : list of (str, str)
        Keys removed or renamed on purpose, with the reason.
    ignored : list of str
        Keys outside the model's prefix (e.g. optimizer or wrapper buffers).
    missing, unexpected : list of str
        Keys the model needed but did not get / got but does not have (empty after a
        successful strict load).
    """

    path: Path
    sha256: str | None = None
    layout: str = "timm"
    prefix: str = ""
    dropped: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    unexpected: list = field(default_factory=list)
    repair: dict | None = None

    def summary(self) -> str:
        parts = [f"{self.path.name}: layout {self.layout}"]
        if self.prefix:
            parts.append(f"prefix {self.prefix!r} stripped")
        if self.dropped:
            parts.append("dropped/renamed " + ", ".join(k for k, _ in self.dropped[:8])
                         + (f" (+{len(self.dropped) - 8})" if len(self.dropped) > 8 else ""))
        if self.ignored:
            parts.append(f"ignored {len(self.ignored)} key(s) outside the model")
        parts.append(f"missing keys: {len(self.missing)}, unexpected keys: {len(self.unexpected)}")
        return "; ".join(parts)


def _unwrap(obj, path: Path) -> dict:
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for key in ("state_dict", "model", "module", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, Mapping):
        raise VitsegError(
            f"{path} does not hold a state dict (a mapping of names to tensors) but a "
            f"{type(obj).__name__}; save the model with torch.save(model.state_dict(), ...)."
        )
    return dict(obj)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint safely (safetensors, or ``torch.load(weights_only=True)``).

    Parameters
    ----------
    path : str or pathlib.Path
        ``.safetensors``, or a torch file (``.pth``, ``.pt``, ``.bin``, ``.ckpt``); a
        ``{'state_dict': ...}`` or ``{'model': ...}`` wrapper is unwrapped.

    Returns
    -------
    dict of str to torch.Tensor
        Non-tensor entries (epoch counters, config) are left out.

    Raises
    ------
    VitsegError
        Missing, truncated or corrupt file, or one that needs arbitrary unpickling.
    """
    p = Path(path)
    if not p.is_file():
        raise WeightsNotFoundError(f"Checkpoint {str(p)!r} does not exist.")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e).splitlines()[0] if str(e) else ""
        raise VitsegError(
            f"Refused to read {p}: it is not a plain state dict ({msg[:200]}). Loading it would "
            "execute arbitrary pickled code; re-save it with torch.save(model.state_dict(), ...) or "
            "as safetensors."
        ) from e
    except Exception as e:  # RuntimeError (bad zip), EOFError, OSError, SafetensorError, ...
        raise VitsegError(
            f"Could not read checkpoint {p} ({p.stat().st_size} bytes): {type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''}. The file is truncated, corrupt or not "
            "a PyTorch / safetensors checkpoint; download or copy it again."
        ) from e
    sd = _unwrap(obj, p)
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _strip_prefix(sd: dict, source: str) -> tuple[dict, str, list[str]]:
    anchors = sorted((k for k in sd if k == _ANCHOR or k.endswith("." + _ANCHOR)), key=len)
    if not anchors:
        keys = ", ".join(list(sd)[:6])
        raise VitsegError(
            f"{source} does not look like a ViT checkpoint: it has no '{_ANCHOR}' key "
            f"(first keys: {keys or 'none'})."
        )
    prefix = anchors[0][: -len(_ANCHOR)]
    if not prefix:
        return dict(sd), "", []
    out, ignored = {}, []
    for k, v in sd.items():
        if k.startswith(prefix):
            out[k[len(prefix):]] = v
        else:
            ignored.append(k)
    return out, prefix, ignored


def _is_facebookresearch(sd: dict) -> bool:
    return "mask_token" in sd or "register_tokens" in sd or any(".mlp.w12." in k for k in sd)


def convert_state_dict(cfg: BackboneCfg, state_dict: dict, model: torch.nn.Module,
                       source: str = "checkpoint") -> tuple[dict, LoadReport]:
    """Convert a checkpoint in any accepted layout to the timm names of ``model``.

    Parameters
    ----------
    cfg : BackboneCfg
        The registry entry the checkpoint is offered for.
    state_dict : dict of str to torch.Tensor
        As read by :func:`read_state_dict`.
    model : torch.nn.Module
        The timm model (may be on the ``'meta'`` device).
    source : str
        Used in messages.

    Returns
    -------
    converted : dict of str to torch.Tensor
    report : LoadReport
        ``missing`` / ``unexpected`` are filled by :func:`check_state_dict`.

    Raises
    ------
    VitsegError
        Not a ViT checkpoint; an ALiBi checkpoint offered as DINOv2 or the reverse.
    """
    from .alibi import _SLOPE_KEY, POS_EMBED_ZERO_ATOL, convert_dinosaw_state_dict

    sd, prefix, ignored = _strip_prefix(state_dict, source)
    _check_architecture(cfg, sd, source)
    report = LoadReport(path=Path(source), prefix=prefix, ignored=ignored)
    if cfg.position in ("alibi", "none"):
        report.layout = "dino-saw"
        sd, report.dropped = convert_dinosaw_state_dict(sd, cfg)
        return sd, report

    slope_keys = [k for k in sd if _SLOPE_KEY.match(k)]
    if slope_keys:
        raise VitsegError(
            f"{source} has ALiBi slope buffers ({slope_keys[0]}, ...): it is an ALiBi-DINOv2 "
            f"checkpoint, not one for {cfg.name!r} (learned position embedding). Load it as "
            "'alibi_dv2_vits14_reg' or 'alibi_coco_dv2_vits14_reg'."
        )
    pe = sd.get("pos_embed")
    if pe is not None and pe.numel() and not pe.is_meta \
            and float(pe.detach().abs().max()) <= POS_EMBED_ZERO_ATOL:
        raise VitsegError(
            f"{source} has an all-zero position embedding: it is an ALiBi or NoPE checkpoint, not "
            f"one for {cfg.name!r} (learned position embedding). Load it as 'alibi_dv2_vits14_reg', "
            "'alibi_coco_dv2_vits14_reg' or 'nope_coco_dv2_vits14_reg'."
        )
    dropped = []
    for k in [k for k in sd if k.startswith("head.")]:
        sd.pop(k)
        dropped.append((k, "classifier head (not used)"))
    if _is_facebookresearch(sd):
        report.layout = "facebookresearch"
        if "mask_token" in sd:
            dropped.append(("mask_token", "mask token (training only)"))
        if "register_tokens" in sd:
            dropped.append(("register_tokens", "renamed to reg_token"))
            dropped.append(("pos_embed[:, 0]", "CLS position folded into cls_token"))
        if any(".mlp.w12." in k or ".mlp.w3." in k for k in sd):
            dropped.append(("blocks.*.mlp.w12/w3", "renamed to mlp.fc1/fc2"))
        if "mask_token" not in sd:  # make timm's filter take its DINOv2 branch
            sd["mask_token"] = torch.zeros(1)
    if _ANCHOR in sd and model.pos_embed is not None:
        # timm's own conversion: DINOv2 names, and position-embedding resampling
        from timm.models.vision_transformer import checkpoint_filter_fn

        sd = checkpoint_filter_fn(dict(sd), model)
    report.dropped = dropped
    return sd, report


def _block_count(sd: dict) -> int:
    idx = [int(m.group(1)) for k in sd for m in [re.match(r"blocks\.(\d+)\.", k)] if m]
    return max(idx) + 1 if idx else 0


def _check_architecture(cfg: BackboneCfg, sd: dict, src: str) -> None:
    """Embedding dim, patch size, depth and register tokens, before any conversion."""
    pe = sd.get(_ANCHOR)
    if pe is not None and pe.ndim >= 1 and pe.shape[0] != cfg.embed_dim:
        got = _ARCH_BY_DIM.get(int(pe.shape[0]), f"dim {int(pe.shape[0])}")
        want = _ARCH_BY_DIM.get(cfg.embed_dim, f"dim {cfg.embed_dim}")
        raise VitsegError(
            f"{src} is a {got} checkpoint (embedding dim {int(pe.shape[0])}) but backbone {cfg.name!r} "
            f"is a {want} (embedding dim {cfg.embed_dim}); choose the backbone that matches the file."
        )
    if pe is not None and pe.ndim == 4 and tuple(pe.shape[-2:]) != (cfg.patch_size, cfg.patch_size):
        raise VitsegError(
            f"{src} has {pe.shape[-2]} x {pe.shape[-1]} px patches but backbone {cfg.name!r} uses "
            f"{cfg.patch_size} x {cfg.patch_size}; it is a checkpoint of another model."
        )
    nb = _block_count(sd)
    if nb and nb != cfg.depth:
        raise VitsegError(
            f"{src} has {nb} transformer blocks but backbone {cfg.name!r} has {cfg.depth}; "
            "choose the backbone that matches the file."
        )
    n_reg = cfg.num_prefix_tokens - 1
    reg = sd.get("reg_token", sd.get("register_tokens"))
    if n_reg and reg is None:
        raise VitsegError(
            f"{src} has no register tokens but backbone {cfg.name!r} has {n_reg}; it is a checkpoint "
            "without registers (use the entry without '_reg')."
        )
    if reg is not None and (not n_reg or reg.shape[-2] != n_reg):
        raise VitsegError(
            f"{src} has {int(reg.shape[-2])} register tokens but backbone {cfg.name!r} has {n_reg}; "
            f"use the {'_reg variant' if not n_reg else 'entry that matches'} of this backbone."
        )


def check_state_dict(cfg: BackboneCfg, model: torch.nn.Module, sd: dict, report: LoadReport) -> None:
    """Refuse a converted state dict that does not fit ``model`` exactly.

    Checks the architecture (embedding dimension, patch size, number of blocks, register
    tokens), every tensor shape, and then missing / unexpected keys (filled into ``report``).

    Raises
    ------
    VitsegError
        With a message that names the mismatch and suggests the right backbone.
    """
    src = str(report.path)
    _check_architecture(cfg, sd, src)
    msd = model.state_dict()
    bad = [(k, tuple(sd[k].shape), tuple(v.shape)) for k, v in msd.items()
           if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        lines = "; ".join(f"{k}: file {a} vs model {b}" for k, a, b in bad[:5])
        raise VitsegError(
            f"{src} does not match the architecture of backbone {cfg.name!r} ({len(bad)} tensor "
            f"shape mismatch(es): {lines})."
        )
    report.missing = [k for k in msd if k not in sd]
    report.unexpected = [k for k in sd if k not in msd]
    if report.missing or report.unexpected:
        def _fmt(keys):
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")

        raise VitsegError(
            f"{src} does not match backbone {cfg.name!r}: {len(report.missing)} missing key(s)"
            f"{': ' + _fmt(report.missing) if report.missing else ''}; {len(report.unexpected)} "
            f"unexpected key(s){': ' + _fmt(report.unexpected) if report.unexpected else ''}. "
            "It is probably a checkpoint of another model; choose the matching backbone."
        )


def _load_into(model: torch.nn.Module, sd: dict) -> None:
    """Strict load; a model built on the 'meta' device takes the tensors over (no random init)."""
    msd = model.state_dict()
    if any(v.is_meta for v in msd.values()):
        sd = {k: v.to(dtype=msd[k].dtype).contiguous() for k, v in sd.items()}
        model.load_state_dict(sd, strict=True, assign=True)
        left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
        if left:  # pragma: no cover - would be a bug in the conversion
            raise VitsegError(f"internal error: tensors {left[:5]} were not loaded")
    else:
        model.load_state_dict(sd, strict=True)


def _load_full(cfg: BackboneCfg, model: torch.nn.Module, path: Path) -> LoadReport:
    sha = file_sha256(path)
    if cfg.sha256 and sha != cfg.sha256:
        raise VitsegError(
            f"{path} has SHA-256 {sha}, but the published file for {cfg.name!r} has {cfg.sha256}; "
            "the file is corrupt or a different checkpoint. Download it again."
        )
    sd = read_state_dict(path)
    conv, report = convert_state_dict(cfg, sd, model, source=str(path))
    report.path, report.sha256 = path, sha
    check_state_dict(cfg, model, conv, report)
    _load_into(model, conv)
    logger.info("loaded %s for %s (%s)", path, cfg.name, report.summary())
    return report


def load_pretrained(cfg: BackboneCfg, model: torch.nn.Module,
                    weights: str | os.PathLike | None = None) -> ViTBackbone:
    """Load real weights into ``model`` and wrap it (called by ``create_backbone``).

    For ``sinder_<base>`` repair entries the base backbone's weights are loaded first and
    the repair file's singular-value offsets are applied (see :func:`.sinder.apply_repair`);
    an explicit ``weights`` file may be either a repair file or a full repaired checkpoint.

    Parameters
    ----------
    cfg : BackboneCfg
    model : timm VisionTransformer
        Freshly built by :func:`build_timm_model`.
    weights : str or pathlib.Path, optional
        Explicit file.

    Returns
    -------
    ViTBackbone
        With ``weights_path``, ``weights_sha256`` and ``load_report`` set.

    Raises
    ------
    WeightsNotFoundError
        No file found.
    VitsegError
        The file does not match the architecture (the message says why).
    """
    from .sinder import apply_repair, is_repair_file

    path = resolve_weights(cfg.name, weights)
    if is_repair_file(path) and not is_repair_entry(cfg):
        raise VitsegError(
            f"{path} is a SINDER repair file, not a checkpoint for {cfg.name!r}; load it with the "
            f"backbone 'sinder_{cfg.name}' (base weights + this repair)."
        )
    if is_repair_entry(cfg):
        if is_repair_file(path):
            base_name = cfg.base
            base_cfg = get_backbone_cfg(base_name)
            base_path = resolve_weights(base_name)
            report = _load_full(base_cfg, model, base_path)
            rinfo = apply_repair(model, path, base=base_name, base_sha256=report.sha256)
            sha = file_sha256(path)
            report.repair = {"path": str(path), "sha256": sha, **rinfo}
            report.layout = "sinder-repair"
            backbone = ViTBackbone(cfg, model, pretrained=True, weights_path=path, weights_sha256=sha)
            backbone.load_report = report
            return backbone
        # an explicit full (already repaired) checkpoint offered for a repair entry
    report = _load_full(cfg, model, path)
    backbone = ViTBackbone(cfg, model, pretrained=True, weights_path=path, weights_sha256=report.sha256)
    backbone.load_report = report
    return backbone


# --------------------------------------------------------------------------------------------
# import
# --------------------------------------------------------------------------------------------
def import_weights(path: str | os.PathLike, name: str, *, overwrite: bool = False) -> tuple[Path, str]:
    """Check a checkpoint against a backbone and copy it into :func:`weights_dir`.

    Parameters
    ----------
    path : str or pathlib.Path
        The checkpoint (any accepted layout), or a SINDER repair file for ``sinder_<base>``.
    name : str
        The backbone it is for.
    overwrite : bool
        Replace an existing file of that name.

    Returns
    -------
    dest : pathlib.Path
        Where it was copied.
    sha256 : str
        Its SHA-256, also recorded in ``manifest.json`` in the weights folder.

    Raises
    ------
    VitsegError
        Layout does not match the backbone, destination exists, or unreadable file.
    """
    from .sinder import check_repair_file, is_repair_file

    cfg = get_backbone_cfg(name)
    src = Path(path).expanduser()
    if not src.is_file():
        raise WeightsNotFoundError(f"{str(src)!r} does not exist; give the path of a checkpoint file.")
    layout = ""
    if is_repair_file(src):
        base = cfg.base if is_repair_entry(cfg) else None
        if base is None:
            raise VitsegError(
                f"{src} is a SINDER repair file; import it as a 'sinder_<base>' backbone (for "
                f"example sinder_{name}), not as {name!r}."
            )
        meta = check_repair_file(src, base=base)
        layout = f"sinder-repair of {meta['base']}"
        dest_name = cfg.weights_file
    else:
        if is_repair_entry(cfg):
            # a full repaired checkpoint: must fit the base architecture
            pass
        model = build_timm_model(cfg, device="meta")
        sd = read_state_dict(src)
        conv, report = convert_state_dict(cfg, sd, model, source=str(src))
        report.path = src
        check_state_dict(cfg, model, conv, report)
        layout = report.layout
        suffix = src.suffix if src.suffix in (".pth", ".pt", ".bin", ".safetensors") else ".pth"
        dest_name = cfg.weights_file if Path(cfg.weights_file).suffix == suffix else f"{cfg.name}{suffix}"
        if is_repair_entry(cfg):
            dest_name = f"{cfg.name}{suffix}" if suffix != ".safetensors" else f"{cfg.name}-full.safetensors"
    sha = file_sha256(src)
    if cfg.sha256 and not is_repair_entry(cfg) and sha != cfg.sha256:
        raise VitsegError(
            f"{src} has SHA-256 {sha}, but the published file for {name!r} has {cfg.sha256}; it is "
            "a different or corrupt file."
        )
    d = weights_dir(create=True)
    dest = d / dest_name
    if dest.exists() and not overwrite:
        if dest.is_file() and file_sha256(dest) == sha:
            logger.info("%s is already in %s", src, dest)
        else:
            raise VitsegError(f"{dest} already exists; pass --force (overwrite=True) to replace it.")
    else:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest_name}.", suffix=".part", dir=d)
        os.close(fd)
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    manifest = _read_manifest(d)
    manifest[name] = {
        "file": dest.name, "sha256": sha, "size": dest.stat().st_size, "source": str(src.resolve()),
        "layout": layout, "imported": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    _write_manifest(manifest, d)
    return dest, sha

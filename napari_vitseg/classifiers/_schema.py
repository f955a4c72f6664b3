"""The schema of a classifier file's ``metadata.json`` (pydantic), and the file's size limits.

Every value read from a classifier file goes through :func:`validate_metadata` before it is
used: types, ranges and lengths are checked, so a hand-edited or hostile file ends in one
:class:`~napari_vitseg._validation.VitsegError` naming the file and the field, never in a
traceback or a huge allocation. Unknown keys are ignored (a newer napari-vitseg may add some);
``format_version`` guards incompatible changes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._validation import VitsegError

__all__ = ["LIMITS", "ClassifierMetadata", "validate_metadata"]

#: Sizes (bytes, counts) a classifier file may declare; checked on the zip directory before any
#: member is decompressed.
LIMITS = {
    "metadata_bytes": 4 * 2**20,         # metadata.json
    "model_bytes": 2 * 2**30,            # model.skops / model.ubj, uncompressed
    "arrays_bytes": 512 * 2**20,         # arrays.npz, uncompressed
    "members": 8,                        # members of the classifier zip
    "skops_members": 100_000,            # members of the skops zip (arrays of the trees)
    "compression_ratio": 1000,           # uncompressed / compressed size of any large member
    "json_depth": 32,                    # nesting of metadata.json
}

ClassId = Annotated[int, Field(ge=1, le=255)]
ShortText = Annotated[str, Field(max_length=200)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class ClassEntry(_Model):
    """One row of the class table."""

    id: ClassId
    name: ShortText
    color: Annotated[str, Field(pattern=r"^#[0-9a-fA-F]{6}$")]


class BackboneEntry(_Model):
    """The backbone the features were computed with."""

    name: Annotated[str, Field(max_length=100)]
    weights_sha256: Annotated[str, Field(max_length=100)] | None = None
    pretrained: bool = True


Param = bool | int | float | Annotated[str, Field(max_length=100)] | None


class ClassifierSection(_Model):
    """What the classifier is and how it was made."""

    kind: Literal["rf", "xgb"]
    params: Annotated[dict[Annotated[str, Field(max_length=64)], Param], Field(max_length=32)] = {}
    classes: Annotated[list[ClassId], Field(min_length=2, max_length=255)]
    n_features_in: Annotated[int, Field(ge=1, le=1_000_000)]
    model_file: Literal["model.skops", "model.ubj"]

    @model_validator(mode="after")
    def _consistent(self):
        if len(set(self.classes)) != len(self.classes) or self.classes != sorted(self.classes):
            raise ValueError("classes must be distinct and sorted")
        want = {"rf": "model.skops", "xgb": "model.ubj"}[self.kind]
        if self.model_file != want:
            raise ValueError(f"a {self.kind!r} classifier is stored as {want!r}, not {self.model_file!r}")
        return self


#: Member names of the earlier stages of an auto-context classifier (stage 1..3).
STAGE_FILES = tuple(f"stage{i}.{ext}" for i in (1, 2, 3) for ext in ("skops", "ubj"))


class StageSection(_Model):
    """An earlier stage of an auto-context classifier (format 2): as :class:`ClassifierSection`,
    stored as ``stage{i}.skops`` / ``stage{i}.ubj``."""

    kind: Literal["rf", "xgb"]
    params: Annotated[dict[Annotated[str, Field(max_length=64)], Param], Field(max_length=32)] = {}
    classes: Annotated[list[ClassId], Field(min_length=2, max_length=255)]
    n_features_in: Annotated[int, Field(ge=1, le=1_000_000)]
    model_file: Literal[STAGE_FILES]


class BoundarySection(_Model):
    """The boundary-refinement classifier (format 3): as :class:`ClassifierSection`, stored as
    ``boundary.skops`` / ``boundary.ubj``."""

    kind: Literal["rf", "xgb"]
    params: Annotated[dict[Annotated[str, Field(max_length=64)], Param], Field(max_length=32)] = {}
    classes: Annotated[list[ClassId], Field(min_length=2, max_length=255)]
    n_features_in: Annotated[int, Field(ge=1, le=1_000_000)]
    model_file: Literal["boundary.skops", "boundary.ubj"]


class BoundaryEntry(_Model):
    """Boundary refinement (format 3; :mod:`napari_vitseg.pipeline._boundary`): the band's
    half-width, the feature columns of the fine-scale classifier, and that classifier; format 4
    adds the majority window of the first labels."""

    rows: Annotated[int, Field(ge=1, le=16)]
    max_sigma: Annotated[float, Field(gt=0, le=1000)]
    columns: Annotated[list[Annotated[int, Field(ge=0, le=1_000_000)]], Field(min_length=1, max_length=1_000_000)]
    classifier: BoundarySection
    #: odd side (px) of the majority filter of the first labels (format 4; format 3 has none)
    majority: Annotated[int, Field(ge=1, le=33)] | None = None


class AutoContextEntry(_Model):
    """How the auto-context stages were made (format 2; see :mod:`napari_vitseg.pipeline._autocontext`)."""

    stages: Annotated[int, Field(ge=2, le=4)]
    folds: Annotated[int, Field(ge=2, le=100)]
    context_sigmas: Annotated[list[Annotated[float, Field(gt=0, le=1000)]], Field(min_length=1, max_length=16)]
    context_families: Annotated[list[Annotated[str, Field(max_length=32)]], Field(min_length=1, max_length=16)]
    context_names: Annotated[list[Annotated[str, Field(max_length=200)]], Field(min_length=1, max_length=100_000)]


class ClassifierMetadata(_Model):
    """``metadata.json`` of a classifier file (the fields napari-vitseg reads)."""

    format: Literal["napari-vitseg classifier"]
    format_version: Annotated[int, Field(ge=1)]
    package_version: Annotated[str, Field(max_length=64)] = "unknown"
    feature_config: dict[str, Any] | None = None
    feature_names: Annotated[list[Annotated[str, Field(max_length=200)]], Field(max_length=1_000_000)] | None = None
    n_channels: Annotated[int, Field(ge=1, le=64)] = 1
    backbone: BackboneEntry | None = None
    classes: Annotated[list[ClassEntry], Field(max_length=255)] = []
    training: dict[str, Any] = {}
    classifier: ClassifierSection
    stages: Annotated[list[StageSection], Field(max_length=3)] = []
    autocontext: AutoContextEntry | None = None
    boundary: BoundaryEntry | None = None

    @field_validator("classes")
    @classmethod
    def _distinct_ids(cls, v):
        ids = [c.id for c in v]
        if len(set(ids)) != len(ids):
            raise ValueError("class ids must be distinct")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        c = self.classifier
        if self.feature_names is not None and len(self.feature_names) != c.n_features_in:
            raise ValueError(f"{len(self.feature_names)} feature names for a classifier of {c.n_features_in} features")
        table = {e.id for e in self.classes}
        if table and not set(c.classes) <= table:
            raise ValueError(f"the classifier's classes {c.classes} are not all in the class table {sorted(table)}")
        ac = self.autocontext
        if (ac is None) != (not self.stages) or (ac is not None and len(self.stages) != ac.stages - 1):
            raise ValueError("the auto-context section and the earlier stages do not match")
        if ac is not None:
            n_ctx = len(ac.context_names)
            for i, st in enumerate(self.stages, start=1):
                if st.kind != c.kind or st.classes != c.classes:
                    raise ValueError(f"stage {i} is not a {c.kind!r} classifier of classes {c.classes}")
                if st.model_file != f"stage{i}.{'skops' if st.kind == 'rf' else 'ubj'}":
                    raise ValueError(f"stage {i} is stored as {st.model_file!r}")
                want = c.n_features_in - (n_ctx if i == 1 else 0)
                if st.n_features_in != want:
                    raise ValueError(f"stage {i} takes {st.n_features_in} features, not {want}")
            if c.n_features_in <= n_ctx:
                raise ValueError("the last stage takes fewer features than its context features")
        b = self.boundary
        if b is not None:
            n_image = c.n_features_in - (len(ac.context_names) if ac is not None else 0)
            cols = b.columns
            if cols != sorted(set(cols)) or cols[-1] >= n_image:
                raise ValueError(f"the boundary columns must be distinct, sorted and below {n_image}")
            if b.classifier.n_features_in != len(cols):
                raise ValueError(f"the boundary classifier takes {b.classifier.n_features_in} features, not {len(cols)}")
            if b.classifier.kind != c.kind or b.classifier.classes != c.classes:
                raise ValueError(f"the boundary classifier is not a {c.kind!r} classifier of classes {c.classes}")
            want = f"boundary.{'skops' if b.classifier.kind == 'rf' else 'ubj'}"
            if b.classifier.model_file != want:
                raise ValueError(f"the boundary classifier is stored as {b.classifier.model_file!r}")
            if b.majority is None and self.format_version >= 4:
                raise ValueError("the boundary section of a format-4 file must give its majority window")
            if b.majority is not None and b.majority % 2 == 0:
                raise ValueError(f"the boundary majority window must be odd; got {b.majority}")
        return self


def _depth(obj, limit: int) -> int:
    """Nesting depth of a JSON value, stopping early past ``limit``."""
    depth, level = 0, [obj]
    while level:
        depth += 1
        if depth > limit:
            return depth
        nxt = []
        for o in level:
            if isinstance(o, dict):
                nxt.extend(o.values())
            elif isinstance(o, list):
                nxt.extend(o)
        level = nxt
    return depth


def validate_metadata(meta, path) -> dict:
    """Validate a classifier file's metadata.

    Parameters
    ----------
    meta : object
        The parsed ``metadata.json``.
    path : str or pathlib.Path
        The file, for messages.

    Returns
    -------
    dict
        The metadata with every field napari-vitseg reads checked (defaults filled in).

    Raises
    ------
    VitsegError
        Names the file, the first offending field and the problem.
    """
    if not isinstance(meta, dict):
        raise VitsegError(f"{str(path)!r} is not a napari-vitseg classifier (its metadata is not a JSON object).")
    if meta.get("format") != "napari-vitseg classifier":
        raise VitsegError(f"{str(path)!r} is not a napari-vitseg classifier (format {str(meta.get('format'))[:80]!r}).")
    if _depth(meta, LIMITS["json_depth"]) > LIMITS["json_depth"]:
        raise VitsegError(f"The metadata of {str(path)!r} is nested deeper than {LIMITS['json_depth']} levels; "
                          "it was not written by napari-vitseg.")
    try:
        model = ClassifierMetadata.model_validate(meta)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "metadata"
        raise VitsegError(
            f"{str(path)!r} has invalid metadata at {where!r}: {err.get('msg', 'invalid')}; the file is damaged or "
            "was not written by napari-vitseg (save the classifier again)."
        ) from None
    out = dict(meta)
    out.update(model.model_dump())
    return out

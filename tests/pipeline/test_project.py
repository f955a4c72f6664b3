"""pipeline.project: the project file (image path, scribbles, classes, classifier) of a session."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_vitseg._validation import VitsegError
from napari_vitseg.features import FeatureConfig
from napari_vitseg.pipeline import Project, Segmenter, load_project, save_project
from napari_vitseg.pipeline.project import PROJECT_LIMITS, extracted_classifier

NAMES, COLORS = ["cell", "background"], ["#ff0000", "#00aaff"]


@pytest.fixture
def session(tmp_path, two_region_image):
    """An image on disk, its scribbles, a trained segmenter, and the project saved beside the image."""
    image, scribbles = two_region_image
    d = tmp_path / "data"
    d.mkdir()
    tifffile.imwrite(d / "img.tif", image)
    seg = Segmenter(FeatureConfig(sigmas=(1, 2)), "rf", {"n_estimators": 10}).fit(image, scribbles)
    proj = Project(d / "img.tif", scribbles, NAMES, COLORS, channel_axis=None, segmenter=seg,
                   image_reader="napari", image_name="img", scribbles_name="my strokes")
    path = save_project(d / "img.vitseg-project", proj)
    return image, scribbles, seg, path


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def members_of(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def write_members(path, members: dict[str, bytes], *, fix_sha: bool = True) -> Path:
    """Write a project zip from members; with ``fix_sha`` the sizes and hashes in project.json
    follow the members (a forged file that passes the checksum checks)."""
    if fix_sha and "project.json" in members:
        meta = json.loads(members["project.json"])
        meta["members"] = {n: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                           for n, b in members.items() if n != "project.json"}
        members = {**members, "project.json": json.dumps(meta).encode()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return Path(path)


def with_meta(members, **changes) -> dict[str, bytes]:
    meta = json.loads(members["project.json"])
    for k, v in changes.items():
        meta[k] = v
    return {**members, "project.json": json.dumps(meta).encode()}


def npy(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


# ----------------------------------------------------------------------------- round trips
def test_round_trip_restores_everything_and_predicts_identically(session):
    image, scribbles, seg, path = session
    back = load_project(path)
    assert back.image_path == str(path.parent / "img.tif") and back.image_found
    np.testing.assert_array_equal(back.scribbles, scribbles)
    assert back.scribbles.dtype == np.uint8
    assert back.class_names == NAMES and back.class_colors == COLORS
    assert back.channel_axis is None and back.image_reader == "napari"
    assert back.image_name == "img" and back.scribbles_name == "my strokes"
    assert back.has_classifier and back.segmenter is not None
    assert back.segmenter.class_names == NAMES and back.segmenter.class_colors == COLORS
    a, b = seg.segment(image), back.segmenter.segment(image)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.probabilities, b.probabilities)


def test_stack_scribbles_without_classifier_are_small_and_exact(tmp_path):
    """A (Z, Y, X) stack of mostly-zero int32 scribbles (napari's Labels default dtype) comes back
    as the same uint8 labels, and deflate keeps the file small."""
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 8, 8), np.uint8), photometric="minisblack")
    scr = np.zeros((12, 300, 400), np.int32)
    scr[2, 10:60, 20:25] = 1
    scr[9, 100:140, 300:380] = 3
    p = save_project(tmp_path / "s.vitseg-project",
                     Project(tmp_path / "stack.tif", scr, ["a", "b", "c"], ["red", "green", "blue"], channel_axis=0))
    assert p.stat().st_size < 50_000  # 1.4 MB of labels
    back = load_project(p)
    assert back.scribbles.dtype == np.uint8 and back.scribbles.shape == scr.shape
    np.testing.assert_array_equal(back.scribbles, scr)
    assert back.class_colors == ["#ff0000", "#008000", "#0000ff"] and back.channel_axis == 0
    assert back.segmenter is None and not back.has_classifier


def test_project_without_scribbles(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint8))
    p = save_project(tmp_path / "a.vitseg-project", Project(tmp_path / "a.tif", None, ["x"], ["#123456"]))
    back = load_project(p)
    assert back.scribbles is None and back.class_names == ["x"]


def test_extracted_classifier_is_the_saved_classifier(session):
    image, _, seg, path = session
    with extracted_classifier(path) as clf:
        assert clf.name == "img.vitseg"
        loaded = Segmenter.load(clf)
        np.testing.assert_array_equal(loaded.segment(image).labels, seg.segment(image).labels)
    assert not clf.exists()
    back = load_project(path, classifier=False)
    assert back.has_classifier and back.segmenter is None


def test_relative_path_follows_a_moved_folder(session, tmp_path):
    _, _, _, path = session
    # the project alone copied away: the absolute path still finds the image
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(path, lone / path.name)
    assert load_project(lone / path.name).image_path == str(path.parent / "img.tif")
    # the project and its image moved together: found relative to the project
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    shutil.move(str(path.parent), moved)
    back = load_project(moved / path.name)
    assert back.image_path == str(moved / "img.tif") and back.image_found
    assert back.image_candidates == (str(moved / "img.tif"), str(path.parent / "img.tif"))


def test_missing_image_is_reported_with_both_paths(session, tmp_path):
    _, _, _, path = session
    (path.parent / "img.tif").unlink()
    back = load_project(path)
    assert not back.image_found
    msg = back.missing_image_message(path)
    assert str(path.parent / "img.tif") in msg and "beside the image" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- refusals on load
def _truncated(src, d):
    data = src.read_bytes()
    (d / "t.vitseg-project").write_bytes(data[: len(data) // 2])
    return d / "t.vitseg-project"


def _tampered_scribbles(src, d):
    m = members_of(src)
    b = bytearray(m["scribbles.npy"])
    b[-1] ^= 1
    return write_members(d / "t.vitseg-project", {**m, "scribbles.npy": bytes(b)}, fix_sha=False)


def _tampered_classifier(src, d):
    m = members_of(src)
    b = bytearray(m["classifier.vitseg"])
    b[len(b) // 2] ^= 1
    return write_members(d / "t.vitseg-project", {**m, "classifier.vitseg": bytes(b)}, fix_sha=False)


def _huge_declared_shape(src, d):
    m = with_meta(members_of(src), scribbles={"shape": [100_000, 100_000], "dtype": "uint8"})
    return write_members(d / "t.vitseg-project", m)


def _deflate_bomb(src, d):
    """256 MiB of zeros in scribbles.npy (~256 kB compressed), its size declared honestly, behind a
    project.json whose scribbles shape is 64 x 64."""
    m = members_of(src)
    size = 128 + 16 * 2**24
    meta = json.loads(m["project.json"])
    meta["members"] = {"scribbles.npy": {"size": size, "sha256": "0" * 64}}
    p = d / "t.vitseg-project"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project.json", json.dumps(meta))
        with zf.open("scribbles.npy", "w", force_zip64=True) as f:
            f.write(m["scribbles.npy"][:128])
            zero = bytes(2**24)
            for _ in range(16):
                f.write(zero)
    return p


def _lying_directory(src, d):
    """The central directory says scribbles.npy has the size project.json expects, the data is bigger."""
    m = members_of(src)
    p = d / "t.vitseg-project"
    big = m["scribbles.npy"] + bytes(2**20)
    write_members(p, {**m, "scribbles.npy": big}, fix_sha=False)
    data = bytearray(p.read_bytes())
    pos = 0
    while (pos := data.find(b"PK\x01\x02", pos)) >= 0:
        n = struct.unpack_from("<H", data, pos + 28)[0]
        if data[pos + 46: pos + 46 + n] == b"scribbles.npy":
            struct.pack_into("<I", data, pos + 24, len(m["scribbles.npy"]))
        pos += 4
    p.write_bytes(bytes(data))
    return p


def _newer_version(src, d):
    return write_members(d / "t.vitseg-project", with_meta(members_of(src), format_version=99))


def _pickle_in_npy(src, d):
    obj = np.empty((64, 64), dtype=object)
    return write_members(d / "t.vitseg-project", {**members_of(src), "scribbles.npy": npy(obj, allow_pickle=True)})


def _other_dtype(src, d):
    return write_members(d / "t.vitseg-project",
                         {**members_of(src), "scribbles.npy": npy(np.zeros((64, 64), np.int64))})


def _damaged_npy_header(src, d):
    """One byte of the .npy header's dict flipped (found by the project fuzzer: numpy's header parser
    raised tokenize.TokenError, not a ValueError)."""
    m = members_of(src)
    b = bytearray(m["scribbles.npy"])
    b[70] ^= 1
    return write_members(d / "t.vitseg-project", {**m, "scribbles.npy": bytes(b)}, fix_sha=False)


def _extra_member(src, d):
    return write_members(d / "t.vitseg-project", {**members_of(src), "run.py": b"import os"})


def _pickle_file(src, d):
    (d / "t.vitseg-project").write_bytes(pickle.dumps({"a": 1}))
    return d / "t.vitseg-project"


def _not_a_zip(src, d):
    (d / "t.vitseg-project").write_bytes(b"hello world")
    return d / "t.vitseg-project"


def _bad_json(src, d):
    return write_members(d / "t.vitseg-project", {**members_of(src), "project.json": b"{not json"}, fix_sha=False)


def _bad_class_table(src, d):
    return write_members(d / "t.vitseg-project", with_meta(members_of(src), classes=[{"id": 3, "name": "x",
                                                                                      "color": "#000000"}]))


def _classifier_is_a_pickle(src, d):
    return write_members(d / "t.vitseg-project", {**members_of(src), "classifier.vitseg": pickle.dumps([1, 2])})


def _a_folder(src, d):
    (d / "t.vitseg-project").mkdir()
    return d / "t.vitseg-project"


def _missing(src, d):
    return d / "nothing.vitseg-project"


@pytest.mark.parametrize("make, match", [
    (_truncated, "damaged or truncated"),
    (_tampered_scribbles, "SHA-256|damaged"),
    (_tampered_classifier, "SHA-256|damaged"),
    (_huge_declared_shape, "more than a project may hold"),
    (_deflate_bomb, r"take 268435584 bytes, not what shape \(64, 64\) needs"),
    (_lying_directory, "longer than declared|damaged"),
    (_newer_version, "project format 99, newer .* upgrade napari-vitseg"),
    (_pickle_in_npy, "never unpickled"),
    (_other_dtype, "never unpickled"),
    (_damaged_npy_header, "damaged .scribbles.npy"),
    (_extra_member, "not a napari-vitseg project"),
    (_pickle_file, "pickle"),
    (_not_a_zip, "not a zip"),
    (_bad_json, "not valid JSON"),
    (_bad_class_table, "classes must be numbered 1..K"),
    (_classifier_is_a_pickle, r"img.vitseg-project:classifier.vitseg|t.vitseg-project:classifier.vitseg"),
    (_a_folder, "is a folder"),
    (_missing, "does not exist"),
], ids=lambda x: getattr(x, "__name__", "")[1:] if callable(x) else None)
def test_bad_projects_are_refused_in_one_line_and_write_nothing(session, tmp_path, make, match):
    _, _, _, src = session
    d = tmp_path / "bad"
    d.mkdir()
    bad = make(src, d)
    before, tmp_before = listing(tmp_path), set(os.listdir(_tempdir()))
    with pytest.raises(VitsegError, match=match) as e:
        load_project(bad)
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)
    assert listing(tmp_path) == before
    assert not {n for n in set(os.listdir(_tempdir())) - tmp_before if n.startswith("vitseg-project-")}


def _tempdir():
    import tempfile

    return tempfile.gettempdir()


def test_bomb_limit_is_checked_before_reading(session, tmp_path, monkeypatch):
    """A project whose scribbles need more than the limit is refused from its declarations alone."""
    _, scribbles, _, src = session
    monkeypatch.setitem(PROJECT_LIMITS, "scribbles_bytes", scribbles.size - 1)
    with pytest.raises(VitsegError, match="more than a project may hold"):
        load_project(src)


# ----------------------------------------------------------------------------- refusals on save
def test_save_refuses_to_overwrite_the_image_and_writes_nothing(session):
    image, scribbles, seg, path = session
    img = path.parent / "img.tif"
    before = img.read_bytes()
    with pytest.raises(VitsegError, match="one of this command's inputs"):
        save_project(img, Project(img, scribbles, NAMES, COLORS, segmenter=seg))
    assert img.read_bytes() == before
    assert not [p for p in path.parent.iterdir() if p.suffix == ".part"]


@pytest.mark.parametrize("change, match", [
    (dict(scribbles=np.full((64, 64), 0.5)), "integer labels"),
    (dict(scribbles=np.full((64, 64), 300, np.int32)), "outside 0..255"),
    (dict(scribbles=np.zeros((2, 2, 4, 4), np.uint8)), r"2D plane or a \(Z, Y, X\) stack"),
    (dict(class_colors=["#ff0000"]), "one colour each"),
    (dict(class_colors=["nocolour", "#ffffff"]), "colour names"),
    (dict(channel_axis=-1), "channel_axis"),
    (dict(image_path="nowhere.tif"), "does not exist"),
    (dict(segmenter=Segmenter()), "not trained"),
])
def test_save_refusals_leave_an_existing_project_untouched(session, change, match):
    _, scribbles, seg, path = session
    before = path.read_bytes()
    fields = dict(image_path=path.parent / "img.tif", scribbles=scribbles, class_names=NAMES, class_colors=COLORS,
                  segmenter=seg)
    with pytest.raises(VitsegError, match=match):
        save_project(path, Project(**{**fields, **change}))
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["img.tif", "img.vitseg-project"]


def test_save_onto_a_folder_or_into_a_missing_folder(session, tmp_path):
    _, scribbles, _, path = session
    p = Project(path.parent / "img.tif", scribbles, NAMES, COLORS)
    with pytest.raises(VitsegError, match="is a folder"):
        save_project(tmp_path, p)
    with pytest.raises(VitsegError, match="does not exist; create it"):
        save_project(tmp_path / "no" / "x.vitseg-project", p)


# ----------------------------------------------------------------------------- channel layers (format 2)
@pytest.fixture
def channel_session(tmp_path, two_region_image):
    """Two grey files used as the two channels of one image (the second in a sub-folder), with 2-channel
    scribbles and a segmenter trained on their stack, saved as a project."""
    from napari_vitseg.pipeline.project import ProjectChannel, image_fingerprint

    image, scribbles = two_region_image
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    a, b = image, (image[::-1] * 2).astype(np.float32)
    tifffile.imwrite(d / "a.tif", a)
    tifffile.imwrite(d / "sub" / "b.tif", b)
    stack = np.stack([a, b], -1)
    seg = Segmenter(FeatureConfig(sigmas=(1,)), "rf", {"n_estimators": 5}).fit(stack, scribbles, channel_axis=-1)
    channels = [ProjectChannel(d / "a.tif", "a", "napari", a.shape, image_fingerprint(a)),
                ProjectChannel(d / "sub" / "b.tif", "b layer", None, b.shape, image_fingerprint(b))]
    proj = Project(d / "a.tif", scribbles, NAMES, COLORS, segmenter=seg, image_name="a", channels=channels)
    path = save_project(d / "two.vitseg-project", proj)
    return stack, scribbles, seg, channels, path


def test_channel_layers_round_trip_as_format_2(channel_session):
    stack, scribbles, seg, channels, path = channel_session
    meta = json.loads(members_of(path)["project.json"])
    assert meta["format_version"] == 2
    assert [c["relative"] for c in meta["channels"]] == ["a.tif", "sub/b.tif"]
    back = load_project(path)
    assert back.image_path == str(path.parent / "a.tif") and back.image_found and back.channel_axis is None
    assert [(c.path, c.name, c.reader, c.shape, c.fingerprint) for c in back.channels] == [
        (str(ch.path), ch.name, ch.reader, tuple(ch.shape), ch.fingerprint) for ch in channels]
    np.testing.assert_array_equal(back.scribbles, scribbles)
    np.testing.assert_array_equal(back.segmenter.segment(stack, channel_axis=-1).labels,
                                  seg.segment(stack, channel_axis=-1).labels)


def test_channel_layers_follow_a_moved_folder_and_a_missing_one_is_named(channel_session, tmp_path):
    *_, path = channel_session
    moved = tmp_path / "moved"
    shutil.move(str(path.parent), moved)
    back = load_project(moved / path.name)
    assert [c.path for c in back.channels] == [str(moved / "a.tif"), str(moved / "sub" / "b.tif")]
    assert back.image_found
    (moved / "sub" / "b.tif").unlink()
    back = load_project(moved / path.name)
    assert not back.image_found and back.channels[0].found and not back.channels[1].found
    msg = back.missing_image_message(moved / path.name)
    assert "channel layer 'b layer'" in msg and str(moved / "sub" / "b.tif") in msg and "\n" not in msg


def test_single_image_projects_are_format_1_and_a_format_1_reader_refuses_channels(session, channel_session,
                                                                                   monkeypatch):
    """Format 1 files (one image) are still written and read; a reader of format 1 only (the check
    of napari-vitseg before channel layers, run here by lowering the supported version) opens
    them and refuses a project of channel layers instead of restoring one channel."""
    from napari_vitseg.pipeline import project as project_module

    one, two = session[-1], channel_session[-1]
    assert json.loads(members_of(one)["project.json"])["format_version"] == 1
    assert load_project(one).channels == []
    monkeypatch.setattr(project_module, "PROJECT_FORMAT_VERSION", 1)
    assert load_project(one, classifier=False).image_found
    with pytest.raises(VitsegError, match="project format 2, newer than .* upgrade napari-vitseg"):
        load_project(two)


def _edit_channels(src, d, **meta_changes):
    m = members_of(src)
    meta = json.loads(m["project.json"])
    for k, v in meta_changes.items():
        if callable(v):
            v(meta)
        else:
            meta[k] = v
    return write_members(d / "t.vitseg-project", {**m, "project.json": json.dumps(meta).encode()})


@pytest.mark.parametrize("change, match", [
    (dict(format_version=1), "channel layers need project format 2"),
    (dict(x=lambda m: m["channels"].pop()), "channels"),
    (dict(x=lambda m: m["channels"][1].update(shape=[64, 63])), "one shape"),
    (dict(x=lambda m: m["channels"][0].update(shape=[32, 32]) or m["channels"][1].update(shape=[32, 32])),
     "scribbles and the channel layers"),
    (dict(x=lambda m: m["image"].update(channel_axis=0)), "has no channel axis"),
    (dict(x=lambda m: m["channels"][0].update(fingerprint="x")), "fingerprint"),
    (dict(x=lambda m: m["channels"][0].update(shape=[64])), "shape"),
    (dict(x=lambda m: m.update(channels=m["channels"] * 40)), "channels"),
])
def test_bad_channel_metadata_is_refused(channel_session, tmp_path, change, match):
    *_, src = channel_session
    d = tmp_path / "bad"
    d.mkdir()
    with pytest.raises(VitsegError, match=match) as e:
        load_project(_edit_channels(src, d, **change))
    assert "\n" not in str(e.value)


def test_save_refuses_bad_channel_layers(channel_session):
    import dataclasses

    stack, scribbles, seg, channels, path = channel_session
    before = path.read_bytes()
    base = Project(path.parent / "a.tif", scribbles, NAMES, COLORS, channels=channels)
    for change, match in [
        (dict(channels=channels[:1]), "2..64 channel layers"),
        (dict(channel_axis=0), "no channel axis"),
        (dict(channels=[channels[0], dataclasses.replace(channels[1], fingerprint=None)]), "needs its fingerprint"),
        (dict(channels=[channels[0], dataclasses.replace(channels[1], shape=(64, 65))]), "one shape"),
        (dict(channels=[channels[0], dataclasses.replace(channels[1], path=path.parent / "no.tif")]),
         "does not exist"),
        (dict(channels=[channels[0], ("b.tif",)]), "must be a ProjectChannel"),
        (dict(scribbles=scribbles[:32]), "do not fit the channel layers"),
    ]:
        with pytest.raises(VitsegError, match=match):
            save_project(path, dataclasses.replace(base, **change))
    assert path.read_bytes() == before


def test_image_fingerprint_reads_one_strided_plane():
    import dask.array as da

    from napari_vitseg.pipeline.project import image_fingerprint

    rng = np.random.default_rng(1)
    stack = rng.integers(0, 60000, (5, 300, 260), dtype=np.uint16)
    fp = image_fingerprint(stack)
    assert len(fp) == 64 and fp == image_fingerprint(da.from_array(stack, chunks=(1, 100, 100)))
    assert image_fingerprint(stack.astype(">u2")) == fp  # byte order does not matter, values do
    other = stack.copy()
    other[0] += 1  # not the middle plane: not read
    assert image_fingerprint(other) == fp
    other[2, 0, 0] += 1  # a sampled pixel of the middle plane
    assert image_fingerprint(other) != fp
    assert image_fingerprint(stack[2]) != fp and image_fingerprint(stack.astype(np.int32)) != fp
    with pytest.raises(VitsegError, match="shape"):
        image_fingerprint(stack[None])

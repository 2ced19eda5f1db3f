"""Every input format fuzzed (docs/reliability.md, "Malformed input"): proposal pickles, the SoCo proposal JSON,
COCO json, image folders, config YAML with _BASE_, and checkpoints.

Each case gets a clear error (an exception whose message names the file and what is wrong) or a counted, logged
skip: never a hang, a silent wrong result, or a crash after training has started. Hypothesis draws the structures
and the bytes (few examples and no deadline: the suite shares two cores); the named cases are written out.
"""
import itertools
import json
import logging
import os
import pickle

import numpy as np
import pytest
import torch
from detectron2.structures import BoxMode
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from objpretrain.checkpoint import CheckpointError, load_state_dict
from objpretrain.config import ConfigFileError, get_pretrain_cfg
from objpretrain.data.build import MissingProposalsError, get_pretrain_dataset_dicts
from objpretrain.data.datasets import list_images, load_image_folder, register_image_folder
from objpretrain.data.datasets.coco_json import load_checked_coco_json
from objpretrain.data.oac_mapper import OACMapper
from objpretrain.data.proposals import export_soco_json, load_proposal_file, save_proposal_file
from objpretrain.engine.checkpoint import AtomicDetectionCheckpointer, CheckpointReadError
from objpretrain.engine.defaults import build_config
from objpretrain.engine.preflight import exit_on_config_error
from objpretrain.utils.safe_pickle import UnsafePickleError

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_PRETRAIN = os.path.join(REPO, "configs", "demo", "soco_r18_fpn_demo.yaml")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder for the files of Hypothesis examples (each example overwrites the last one's)."""
    return tmp_path_factory.mktemp("fuzz")


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def _fails_naming(path, call, errors=(ValueError,)):
    """Runs ``call()``; returns its result, or None when it raised one of ``errors`` naming ``path``. The share of
    each outcome is in ``pytest --hypothesis-show-statistics``."""
    try:
        result = call()
    except errors as error:
        assert str(path) in str(error), error
        event(f"refused: {type(error).__name__}")
        return None
    event("loaded")
    return result


# ---------------------------------------------------------------------------------------------- proposal pickles

_NUMBERS = st.floats(allow_nan=True, allow_infinity=True, width=32)
_ARRAYS = hnp.arrays(np.float32, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5), elements=_NUMBERS)
_ARRAY_LIKE = st.one_of(_ARRAYS, st.lists(st.lists(_NUMBERS, max_size=5), max_size=3), st.text(max_size=3), st.none())
_IDS = st.one_of(st.text(max_size=3), st.integers(-3, 3), st.booleans(), st.none(), st.floats(width=32))


@st.composite
def _proposal_dicts(draw):
    """Proposal pickles' dicts: as many entries per list or not, any id types, any box / logit shapes and values."""
    sizes = draw(st.one_of(st.integers(0, 4).map(lambda n: (n, n, n)), st.tuples(*[st.integers(0, 4)] * 3)))
    proposals = {"ids": draw(st.lists(_IDS, min_size=sizes[0], max_size=sizes[0])),
                 "boxes": draw(st.lists(_ARRAY_LIKE, min_size=sizes[1], max_size=sizes[1])),
                 "objectness_logits": draw(st.lists(_ARRAY_LIKE, min_size=sizes[2], max_size=sizes[2]))}
    mode = draw(st.one_of(st.none(), st.sampled_from(list(BoxMode)), st.integers(-1, 6), st.text(max_size=2)))
    if mode is not None:
        proposals["bbox_mode"] = mode
    return proposals


@st.composite
def _well_formed_proposal_dicts(draw):
    """Entries that fit together, with any box values (NaN, Inf, negative, empty, huge), ids of either type."""
    ids = draw(st.lists(st.text(max_size=3) | st.integers(-3, 3), max_size=4, unique_by=str))
    counts = [draw(st.integers(0, 3)) for _ in ids]
    return {"ids": ids,
            "boxes": [draw(hnp.arrays(np.float32, (n, 4), elements=_NUMBERS)) for n in counts],
            "objectness_logits": [draw(hnp.arrays(np.float32, (n,), elements=st.floats(width=32))) for n in counts],
            "bbox_mode": draw(st.sampled_from([BoxMode.XYXY_ABS, BoxMode.XYWH_ABS, 0, 1]))}


@FUZZ
@given(proposals=_proposal_dicts() | _well_formed_proposal_dicts())
def test_any_proposal_pickle_loads_exactly_as_written_or_fails_naming_the_file(scratch, proposals):
    path = _write(scratch / "proposals.pkl", pickle.dumps(proposals))
    loaded = _fails_naming(path, lambda: load_proposal_file(path))
    if loaded is None:
        return
    assert loaded["ids"] == [str(i) for i in proposals["ids"]] and len(set(loaded["ids"])) == len(loaded["ids"])
    mode = BoxMode(proposals.get("bbox_mode", BoxMode.XYXY_ABS))
    for written, boxes, logits in zip(proposals["boxes"], loaded["boxes"], loaded["objectness_logits"]):
        written = np.asarray(written, np.float32)
        # N x 4 as written (a 4 x 5 array is not read as 5 boxes), converted to XYXY_ABS, one logit per box.
        assert boxes.dtype == np.float32 and boxes.shape == (written.shape if written.size else (0, 4))
        np.testing.assert_array_equal(boxes, BoxMode.convert(written.reshape(-1, 4), mode, BoxMode.XYXY_ABS))
        assert logits.shape == (len(boxes),) and not np.isnan(logits).any()


@FUZZ
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=3))
def test_truncated_or_corrupted_proposal_files_fail_naming_the_file(scratch, cut, flips):
    save_proposal_file(str(scratch / "good.pkl"), ["a", "b/c"], [np.ones((2, 4), np.float32), np.zeros((0, 4))],
                       [np.zeros(2, np.float32), np.zeros(0, np.float32)], {"recipe": {"method": "random"}})
    data = bytearray((scratch / "good.pkl").read_bytes())
    truncated = _write(scratch / "truncated.pkl", data[: cut % len(data)])
    assert _fails_naming(truncated, lambda: load_proposal_file(truncated), (ValueError, UnsafePickleError)) is None
    for offset, change in flips:  # a flipped byte of a box value cannot be told from another value; the rest fails
        data[offset % len(data)] ^= change
    flipped = _write(scratch / "flipped.pkl", bytes(data))
    _fails_naming(flipped, lambda: load_proposal_file(flipped), (ValueError, UnsafePickleError))


def test_huge_proposal_files_load_in_linear_time(tmp_path):
    """100 000 images (ImageNet has 1.28 M) and one image with 100 000 boxes, each read in about a second."""
    import time

    n = 100_000
    save_proposal_file(str(tmp_path / "many.pkl"), [str(i) for i in range(n)], [np.zeros((0, 4), np.float32)] * n,
                       [np.zeros(0, np.float32)] * n)
    boxes = np.random.default_rng(0).uniform(0, 100, size=(n, 4)).astype(np.float32)
    boxes[:, 2:] += boxes[:, :2]
    save_proposal_file(str(tmp_path / "dense.pkl"), ["x"], [boxes], [np.zeros(n, np.float32)])
    for name, images in (("many.pkl", n), ("dense.pkl", 1)):
        start = time.perf_counter()
        assert len(load_proposal_file(str(tmp_path / name))["ids"]) == images
        assert time.perf_counter() - start < 15  # 1.2 s for many.pkl on a 2-core machine


@pytest.mark.parametrize("edit, message", [
    (lambda p: p.update(ids=["a", "a"]), "image ids have more than one entry"),
    (lambda p: p.update(ids=["a", 3.0]), "image id 3.0 is a float"),
    (lambda p: p["boxes"].pop(), "2 ids, 1 box arrays and 2 logit arrays"),
    (lambda p: p["boxes"].__setitem__(0, np.ones((4, 5), np.float32)), "boxes must be N x 4, got shape \\(4, 5\\)"),
    (lambda p: p["objectness_logits"].__setitem__(0, np.array([np.nan])), "NaN objectness logits"),
    (lambda p: p.update(bbox_mode=BoxMode.XYXY_REL), "is not XYXY_ABS or XYWH_ABS"),
    (lambda p: p.update(boxes="x"), "'boxes' must be a list"),
    (lambda p: p.pop("ids"), "lacks \\['ids'\\]"),
])
def test_named_proposal_pickle_cases_fail_naming_the_file_and_entry(tmp_path, edit, message):
    proposals = {"ids": ["a", "b"], "boxes": [np.array([[1, 2, 3, 4]], np.float32)] * 2,
                 "objectness_logits": [np.zeros(1, np.float32)] * 2}
    edit(proposals)
    path = _write(tmp_path / "case.pkl", pickle.dumps(proposals))
    with pytest.raises(ValueError, match=f"{path}: .*{message}"):
        load_proposal_file(path)
    path = _write(tmp_path / "list.pkl", pickle.dumps([1, 2]))
    with pytest.raises(ValueError, match=f"{path}: a proposal pickle holds a dict"):
        load_proposal_file(path)


def test_nonfinite_negative_and_outside_boxes_are_kept_and_counted_for_the_mappers(tmp_path, caplog):
    boxes = np.array([[np.nan, 0, 5, 5], [0, 0, np.inf, 5], [-20, -20, -5, -5], [500, 500, 900, 900], [9, 9, 3, 3],
                      [1, 2, 30, 40]], np.float32)
    save_proposal_file(str(tmp_path / "p.pkl"), ["a"], [boxes], [-np.arange(6, dtype=np.float32)])
    with caplog.at_level(logging.WARNING):
        loaded = load_proposal_file(str(tmp_path / "p.pkl"))
    np.testing.assert_array_equal(loaded["boxes"][0], boxes)  # the mappers, which know the image size, drop them
    assert "3 boxes of 1 images are NaN/Inf or empty" in caplog.text


@FUZZ
@given(boxes=hnp.arrays(np.float64, st.tuples(st.integers(0, 6), st.just(4)),
                        elements=st.floats(-1e6, 1e6) | st.sampled_from([np.nan, np.inf, -np.inf])))
def test_the_oac_mapper_keeps_only_finite_boxes_inside_the_image(boxes):
    """Boxes NaN, infinite, negative or outside the image never reach OAC's crops (too few: scene crops, counted in
    tests/test_oac_crops.py; the SoCo mapper's counts: tests/test_reliability.py)."""
    kept = OACMapper._valid_boxes(boxes.astype(np.float32), 40, 60)
    assert np.isfinite(kept).all() and (kept >= 0).all() and (kept[:, [0, 2]] <= 60).all()
    assert (kept[:, [1, 3]] <= 40).all() and (kept[:, 2] - kept[:, 0] >= 1).all() and len(kept) <= len(boxes)


def test_proposal_ids_that_match_no_image_are_counted_and_missing_ones_named(tmp_path, caplog):
    (tmp_path / "images").mkdir()
    for name in ("a", "b"):
        _write(tmp_path / "images" / f"{name}.png", b"")
    register_image_folder("fuzz_ids", str(tmp_path / "images"))
    cfg = get_pretrain_cfg(None, ["DATASETS.TRAIN", "('fuzz_ids',)"])
    path = str(tmp_path / "p.pkl")
    cfg.DATASETS.PROPOSAL_FILES_TRAIN = (path,)

    def save(ids):
        save_proposal_file(path, ids, [np.zeros((0, 4))] * len(ids), [np.zeros(0)] * len(ids))

    save(["a", "b", "c", "d"])
    with caplog.at_level(logging.INFO):
        assert len(get_pretrain_dataset_dicts(cfg)) == 2
    assert "2 of its entries match no image of the dataset and are ignored" in caplog.text
    one_missing = "1 of the 2 images of dataset 'fuzz_ids' \\(e.g. image_id \\['b'\\]"
    for ids, missing in (([], "2 of the 2 images"), (["a"], one_missing)):
        save(ids)
        with pytest.raises(MissingProposalsError, match=f"{path} has no entry for {missing}"):
            get_pretrain_dataset_dicts(cfg)


# ---------------------------------------------------------------------------------------------- SoCo JSON

_JSON_LEAVES = st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=3)
_JSON = st.recursive(_JSON_LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=3), inner, max_size=3), max_leaves=10)
_BOX_LISTS = st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 100), min_size=4,
                               max_size=5), max_size=3)


@FUZZ
@given(data=st.one_of(st.dictionaries(st.text(max_size=4), _BOX_LISTS | _JSON, max_size=4), _JSON))
def test_any_soco_json_loads_exactly_as_written_or_fails_naming_the_file(scratch, data):
    path = _write(scratch / "soco.json", json.dumps(data).encode())
    loaded = _fails_naming(path, lambda: load_proposal_file(path))
    if loaded is None:
        return
    assert loaded["ids"] == list(data) and loaded["scores_are_ranks"]
    for rects, boxes in zip(data.values(), loaded["boxes"]):
        rects = np.asarray(rects, np.float64)
        xywh = rects[:, :4] if rects.size else np.zeros((0, 4))
        with np.errstate(over="ignore"):
            expected = BoxMode.convert(xywh, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS).astype(np.float32)
        np.testing.assert_array_equal(boxes, expected)


def test_soco_json_in_any_json_encoding_loads_and_repeated_keys_or_latin1_fail(tmp_path):
    text = '{"caf\u00e9": [[1, 2, 3, 4]], "b": []}'
    results = []
    for encoding in ("utf-8", "utf-8-sig", "utf-16", "utf-32"):
        path = _write(tmp_path / f"{encoding}.json", text.encode(encoding))
        results.append(load_proposal_file(path))
    assert all(r["ids"] == ["caf\u00e9", "b"] for r in results)
    path = _write(tmp_path / "latin1.json", text.encode("latin-1"))
    with pytest.raises(ValueError, match=f"{path}: not a SoCo proposal JSON \\(UnicodeDecodeError"):
        load_proposal_file(path)
    path = _write(tmp_path / "repeated.json", b'{"a": [[1, 2, 3, 4]], "a": []}')
    with pytest.raises(ValueError, match=f"{path}: .*key 'a' occurs 2 times"):
        load_proposal_file(path)
    path = _write(tmp_path / "ragged.json", b'{"a": [[1, 2, 3, 4], [1, 2]]}')
    with pytest.raises(ValueError, match=f"{path}: entry 'a' is not a list of \\[x, y, w, h\\] boxes"):
        load_proposal_file(path)


# ---------------------------------------------------------------------------------------------- COCO json

_COCO_NAMES = (f"fuzz_coco_{i}" for i in itertools.count())
_BAD_NUMBERS = st.sampled_from([0, -1, 2.5, float("nan"), float("inf"), "7", None, True])


@st.composite
def _coco_files(draw):
    """A two-image COCO file whose fields Hypothesis may replace with wrong types and values."""
    def maybe(value, bad):
        return draw(st.one_of(st.just(value), bad)) if draw(st.integers(0, 5)) == 0 else value

    images = [{"id": maybe(i, st.sampled_from([None, "x", 1.5, True, 1])), "file_name": maybe(f"{i}.png", st.none()),
               "height": maybe(30, _BAD_NUMBERS), "width": maybe(40, _BAD_NUMBERS)} for i in (1, 2)]
    annotations = []
    for k in range(draw(st.integers(0, 4))):
        box = [maybe(v, _BAD_NUMBERS) for v in (5.0, 5.0, 10.0, 10.0)]
        annotations.append({"id": maybe(k + 1, st.just(1)), "image_id": maybe(1 + k % 2, st.sampled_from([3, "1"])),
                            "category_id": maybe(1, st.just(9)), "bbox": maybe(box, st.sampled_from([[], [1, 2], "b"])),
                            "area": 100.0, "iscrowd": 0})
    data = {"images": maybe(images, st.sampled_from([[], {}, None])), "annotations": annotations,
            "categories": [{"id": 1, "name": "thing"}]}
    return maybe(data, st.sampled_from([[], "text", 3]))


@FUZZ
@given(data=_coco_files(), cut=st.none() | st.integers(0, 400))
def test_any_coco_json_loads_with_finite_boxes_or_fails_naming_the_file(scratch, data, cut):
    encoded = json.dumps(data).encode()
    path = _write(scratch / "coco.json", encoded[:cut] if cut is not None else encoded)
    dicts = _fails_naming(path, lambda: load_checked_coco_json(path, str(scratch), next(_COCO_NAMES)))
    if dicts is None:
        return
    assert cut is None or cut >= len(encoded)
    assert len(dicts) == len(data["images"]) == len({image["id"] for image in data["images"]})
    for record in dicts:
        for annotation in record["annotations"]:
            assert len(annotation["bbox"]) == 4 and np.isfinite(annotation["bbox"]).all()


def test_coco_json_boxes_without_area_or_outside_the_image_and_orphans_are_counted(tmp_path, caplog):
    data = {"images": [{"id": 1, "file_name": "1.png", "height": 30, "width": 40}],
            "categories": [{"id": 1, "name": "thing"}],
            "annotations": [{"id": k, "image_id": image_id, "category_id": 1, "bbox": box, "area": 1.0, "iscrowd": 0}
                            for k, (image_id, box) in enumerate([(1, [5, 5, 0, 10]), (1, [30, 20, 20, 20]),
                                                                  (1, [1, 1, 5, 5]), (8, [1, 1, 5, 5])])]}
    path = _write(tmp_path / "c.json", json.dumps(data).encode())
    with caplog.at_level(logging.INFO):
        dicts = load_checked_coco_json(path, str(tmp_path), "fuzz_coco_counts")
    assert len(dicts) == 1 and len(dicts[0]["annotations"]) == 3
    assert "1 boxes with no area (dropped), 1 boxes reaching outside their image" in caplog.text
    assert "contains 4 annotations, but only 3 of them match to images in the file" in caplog.text
    data["images"].append(dict(data["images"][0]))
    path = _write(tmp_path / "twice.json", json.dumps(data).encode())
    with pytest.raises(ValueError, match=f"{path}: image id 1 is given twice"):
        load_checked_coco_json(path, str(tmp_path), "fuzz_coco_twice")


# ---------------------------------------------------------------------------------------------- image folders

def test_image_folders_list_each_folder_once_and_refuse_shared_ids(tmp_path, caplog):
    root = tmp_path / "images"
    (root / "x").mkdir(parents=True)
    for rel in ("a.png", "x/b.png"):
        _write(root / rel, b"")
    os.symlink("..", root / "x" / "loop")  # would list every image again, about 40 levels deep
    os.symlink("x", root / "alias")  # the same folder twice
    os.symlink("..", root / "x" / "loop2")  # two loops: 2 ** 40 folders, a hang
    (tmp_path / "elsewhere" / "c").mkdir(parents=True)
    _write(tmp_path / "elsewhere" / "c" / "c.png", b"")
    os.symlink(tmp_path / "elsewhere", root / "linked")  # a folder outside: followed
    os.symlink(root, tmp_path / "elsewhere" / "c" / "back")  # and a link from there back in: not followed again
    with caplog.at_level(logging.WARNING):
        listed = [os.path.relpath(p, root) for p in list_images(str(root))]
    assert listed == ["a.png", "linked/c/c.png", "x/b.png"]
    assert "skipped 4 links to folders listed under another path" in caplog.text
    _write(root / "a.jpg", b"")
    with pytest.raises(ValueError, match="image id 'a' is used by both .*a.jpg and .*a.png"):
        load_image_folder(str(root))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no images"):
        load_image_folder(str(tmp_path / "empty"))


def test_file_names_in_other_encodings_keep_their_ids_through_proposal_files(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    _write(os.path.join(os.fsencode(root), b"caf\xe9.png"), b"")  # Latin-1 bytes: not UTF-8
    (image_id,) = [d["image_id"] for d in load_image_folder(str(root))]
    assert image_id == "caf\udce9"  # Python's surrogate escape, as os.listdir gives it
    save_proposal_file(str(tmp_path / "p.pkl"), [image_id], [np.ones((1, 4))], [np.zeros(1)])
    export_soco_json(load_proposal_file(str(tmp_path / "p.pkl")), str(tmp_path / "p.json"))
    assert load_proposal_file(str(tmp_path / "p.json"))["ids"] == [image_id]


def test_many_images_list_quickly(tmp_path):
    for k in range(3000):
        _write(tmp_path / f"{k:05d}.jpg", b"")
    assert len(load_image_folder(str(tmp_path))) == 3000


# ---------------------------------------------------------------------------------------------- config YAML

@pytest.mark.parametrize("files, message", [
    ({"top.yaml": "_BASE_: mid.yaml\n", "mid.yaml": "_BASE_: top.yaml\n"}, "its _BASE_ chain never ends"),
    ({"top.yaml": "_BASE_: top.yaml\n"}, "its _BASE_ chain never ends"),
    ({"top.yaml": "_BASE_: absent.yaml\n"}, "FileNotFoundError: .*absent.yaml"),
    ({"top.yaml": "_BASE_: 5\n"}, "AttributeError: .*_BASE_ is a file name"),
    ({"top.yaml": ""}, "TypeError: .*must be a YAML mapping"),
    ({"top.yaml": "- a list\n"}, "must be a YAML mapping"),
    ({"top.yaml": "SOLVER:\n  BASE_LR: [0.1,\n"}, "ParserError|ScannerError"),
    ({"top.yaml": "SOLVER:\n  MAX_ITER: ten\n"}, "Type mismatch .* SOLVER.MAX_ITER"),
    ({"top.yaml": "SOLVER:\n  MAX_ITERS: 10\n"}, "Non-existent config key: SOLVER.MAX_ITERS"),
    ({"top.yaml": "SOLVER:\n  MAX_ITER: 10\n".encode("utf-16")}, "UnicodeDecodeError"),
    ({"top.yaml": "_BASE_: evil.yaml\n", "evil.yaml": "SOLVER:\n  BASE_LR: !!python/object/apply:builtins.open "
                                                     "['MARKER', 'w']\n"}, "ConstructorError: .*python/object"),
])
def test_bad_config_files_fail_naming_the_file_and_run_no_code(tmp_path, files, message, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the YAML payload would write its MARKER
    for name, content in files.items():
        _write(tmp_path / name, content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ConfigFileError, match=f"config {tmp_path / 'top.yaml'}: .*({message})") as error:
        get_pretrain_cfg(str(tmp_path / "top.yaml"))
    assert "\n" not in str(error.value) and not (tmp_path / "MARKER").exists()


def test_the_tools_config_path_reads_yaml_safely_and_prints_one_line(tmp_path, monkeypatch, capsys):
    """pretrain_net and train_net build their config with ``objpretrain.engine.defaults.build_config``: the same safe
    merge, and preflight prints its ConfigFileError as one line and exits 2, before any process starts."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "evil.yaml", b"SOLVER:\n  BASE_LR: !!python/object/apply:builtins.open ['MARKER', 'w']\n")
    _write(tmp_path / "top.yaml", b"_BASE_: evil.yaml\n")
    with pytest.raises(SystemExit) as stop:
        exit_on_config_error("train_net.py", lambda: build_config(str(tmp_path / "top.yaml"), []))
    assert stop.value.code == 2 and not (tmp_path / "MARKER").exists()
    error = capsys.readouterr().err
    assert error.startswith(f"train_net.py: error: config {tmp_path / 'top.yaml'}: ConstructorError")
    assert error.count("\n") == 1


@FUZZ
@given(content=st.one_of(st.text(max_size=60), st.binary(max_size=60)))
def test_any_config_file_merges_or_fails_naming_the_file(scratch, content):
    path = _write(scratch / "config.yaml", content.encode() if isinstance(content, str) else content)
    _fails_naming(path, lambda: get_pretrain_cfg(path), ConfigFileError)


# ---------------------------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
    """A small model's checkpoint as the Detectron2 checkpointer writes it, and a bare torchvision-style .pth."""
    root = tmp_path_factory.mktemp("fuzz_checkpoints")
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 4, 3))
    AtomicDetectionCheckpointer(model, str(root)).save("model_0000001", iteration=1)
    torch.save({"conv1.weight": torch.randn(4, 3, 7, 7)}, root / "torchvision.pth")
    return {"pth": str(root / "model_0000001.pth"), "model": model, "tv": str(root / "torchvision.pth")}


@FUZZ
@given(cut=st.integers(0, 10**6), kind=st.sampled_from(["pth", "tv"]))
def test_truncated_checkpoints_fail_naming_the_file(scratch, checkpoint_files, cut, kind):
    with open(checkpoint_files[kind], "rb") as f:
        data = f.read()
    path = _write(scratch / "truncated.pth", data[: cut % len(data)])
    with pytest.raises(CheckpointError, match=path):
        load_state_dict(path)
    with pytest.raises(CheckpointReadError, match=path):
        AtomicDetectionCheckpointer(checkpoint_files["model"])._load_file(path)


@pytest.mark.parametrize("model_entry, message", [
    (torch.full((4, 3, 3, 3), float("nan")), "its entry 'conv.weight' holds NaN or Inf"),
    (np.full((4, 3, 3, 3), np.inf, np.float32), "its entry 'conv.weight' holds NaN or Inf"),
    ("weights", "its entry 'conv.weight' is a str, not a tensor"),
    (np.array([None, 1], dtype=object), "its entry 'conv.weight' is a numpy array of Python objects"),
])
def test_model_weights_with_nonfinite_or_non_tensor_values_stop_before_training(tmp_path, model_entry, message):
    checkpoint = {"model": {"conv.weight": model_entry}, "__author__": "fuzz"}
    if isinstance(model_entry, torch.Tensor):  # a .pkl holds numpy arrays only (torch's rebuild would be refused)
        path = str(tmp_path / "weights.pth")
        torch.save(checkpoint, path)
    else:
        path = _write(tmp_path / "weights.pkl", pickle.dumps(checkpoint))
    model = nn.Sequential()
    model.add_module("conv", nn.Conv2d(3, 4, 3))
    with pytest.raises(CheckpointReadError, match=f"{path}'?: {message}"):
        AtomicDetectionCheckpointer(model).resume_or_load(path, resume=False)
    path = _write(tmp_path / "list.pkl", pickle.dumps([1, 2]))
    with pytest.raises(CheckpointReadError, match=f"{path}' .*it holds a list, not a dict of weights"):
        AtomicDetectionCheckpointer(model).resume_or_load(path, resume=False)


def test_resume_falls_back_past_a_checkpoint_with_nan_weights(tmp_path, caplog):
    model = nn.Linear(2, 2)
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    with torch.no_grad():
        model.weight.fill_(float("nan"))
    checkpointer.save("model_0000002")
    restored = nn.Linear(2, 2)
    with caplog.at_level(logging.WARNING):
        AtomicDetectionCheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.isfinite(restored.weight).all()
    assert "model_0000002.pth': its entry 'weight' holds NaN or Inf" in caplog.text


def test_converting_checkpoints_refuses_non_tensor_entries_and_empty_files(tmp_path):
    path = _write(tmp_path / "empty.pkl", b"")
    with pytest.raises(CheckpointError, match=f"{path}: cannot be read as a checkpoint"):
        load_state_dict(path)
    path = str(tmp_path / "strings.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {"conv1.weight": "x"}}, f)
    with pytest.raises(CheckpointError, match=f"{path}: holds no state dict"):
        load_state_dict(path)

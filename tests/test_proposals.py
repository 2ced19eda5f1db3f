"""Proposal filters, backends and proposal files (Detectron2 pickle, SoCo JSON)."""
import json
import os
import pickle

import numpy as np
import pytest
from detectron2.data import load_proposals_into_dataset
from detectron2.structures import BoxMode
from PIL import Image

from objpretrain.data.proposals import (
    FilterSettings,
    build_proposal_backend,
    export_soco_json,
    filter_proposals,
    get_recipe,
    import_soco_json,
    load_proposal_file,
    pairwise_iou,
    process_image,
    resolve_inputs,
    save_proposal_file,
)

NO_FILTERS = FilterSettings(None, None, None, None, None, None, None)


def _filter(boxes, settings, image_size=(100, 100), scores=None):
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = -np.arange(len(boxes), dtype=np.float32) if scores is None else np.asarray(scores, dtype=np.float32)
    return filter_proposals(boxes, scores, image_size, settings)


def test_aspect_ratio_filter_keeps_exactly_one_third_to_three():
    boxes = [[0, 0, 10, 30], [0, 0, 30, 10], [0, 0, 9, 30], [0, 0, 31, 10], [0, 0, 20, 20]]
    settings = FilterSettings(min_size_ratio=None, max_size_ratio=None, dedup_iou=None)
    kept, _, removed = _filter(boxes, settings)
    assert kept.tolist() == [[0, 0, 10, 30], [0, 0, 30, 10], [0, 0, 20, 20]]
    assert removed == {"aspect_ratio": 2}


def test_size_filter_uses_sqrt_area_ratio_to_the_image():
    # Image 200 x 50: sqrt(WH) = 100, so sqrt(wh) must lie in [30, 80].
    boxes = [[0, 0, 30, 30], [0, 0, 29, 29], [0, 0, 80, 80], [0, 0, 81, 81], [0, 0, 40, 40]]
    settings = FilterSettings(min_aspect_ratio=None, max_aspect_ratio=None, dedup_iou=None)
    kept, _, removed = _filter(boxes, settings, image_size=(50, 200))
    assert kept.tolist() == [[0, 0, 30, 30], [0, 0, 80, 80], [0, 0, 40, 40]]
    assert removed == {"size": 2}


def test_dedup_keeps_the_better_ranked_box_and_top_n_cuts_the_tail():
    boxes = [[0, 0, 50, 50], [0, 0, 50, 51], [10, 10, 60, 60], [0, 0, 50, 50], [60, 60, 90, 90]]
    scores = [0.5, 0.9, 0.1, 0.2, 0.3]
    settings = FilterSettings(None, None, None, None, dedup_iou=0.95, top_n=2)
    kept, kept_scores, removed = _filter(boxes, settings, scores=scores)
    # Ranked: [0,0,50,51] (0.9), [0,0,50,50] (0.5, IoU 0.98 -> duplicate), [60..] (0.3), [0,0,50,50] (0.2,
    # duplicate), [10..] (0.1); top-2 then drops [10..].
    assert kept.tolist() == [[0, 0, 50, 51], [60, 60, 90, 90]]
    assert kept_scores.tolist() == pytest.approx([0.9, 0.3])
    assert removed == {"duplicate": 2, "top_n": 1}


def test_degenerate_and_min_side_filters():
    boxes = [[5, 5, 5, 20], [0, 0, 31, 40], [0, 0, 32, 40], [0, 0, np.nan, 3]]
    kept, _, removed = _filter(boxes, FilterSettings(None, None, None, None, min_side=32, dedup_iou=None))
    assert kept.tolist() == [[0, 0, 32, 40]]
    assert removed == {"degenerate": 2, "min_side": 1}


def test_pairwise_iou():
    iou = pairwise_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    assert iou[0].tolist() == pytest.approx([1.0, 1 / 3, 0.0])


def _square_image(tmp_path, name="square.png"):
    """400 x 400 with a dark 160 x 200 rectangle at x 120-280, y 100-300."""
    image = np.full((400, 400, 3), 230, dtype=np.uint8)
    image[100:300, 120:280] = (20, 40, 160)
    path = str(tmp_path / name)
    Image.fromarray(image).save(path)
    return path


@pytest.mark.parametrize("method", ["soco_paper", "opencv_fast", "opencv_single", "opencv_tuned"])
def test_backends_return_boxes_in_original_pixels_from_a_reduced_image(tmp_path, method):
    path = _square_image(tmp_path)
    recipe = get_recipe(method).replace(max_input_size=100)
    record = process_image(recipe.build_backend(), recipe, 0, "square", path)
    assert record["status"] == "ok" and record["size"] == [400, 400]
    boxes = np.asarray(record["boxes"])
    assert len(boxes) > 0 and boxes.min() >= 0 and boxes.max() <= 400
    assert pairwise_iou([[120, 100, 280, 300]], boxes).max() > 0.85


def test_random_backend_is_seeded_by_image_id_and_respects_ranges():
    backend = build_proposal_backend("random", num_boxes=8)
    a, _ = backend.propose(None, (300, 400), "img/1")
    b, _ = backend.propose(None, (300, 400), "img/1")
    c, _ = backend.propose(None, (300, 400), "img/2")
    assert a.shape == (8, 4) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    w, h = a[:, 2] - a[:, 0], a[:, 3] - a[:, 1]
    assert (a[:, :2] >= 0).all() and (a[:, 2] <= 400).all() and (a[:, 3] <= 300).all()
    assert ((w / h >= 1 / 3 - 1e-4) & (w / h <= 3 + 1e-4)).all()


def _proposals(ids=("a", "b/c", "d")):
    rng = np.random.default_rng(0)
    boxes, logits = [], []
    for k, _ in enumerate(ids):
        xy = rng.uniform(0, 50, size=(k * 2, 2)).astype(np.float32)
        wh = rng.uniform(1, 50, size=(k * 2, 2)).astype(np.float32)
        boxes.append(np.concatenate([xy, xy + wh], axis=1))
        logits.append((-np.arange(k * 2)).astype(np.float32))
    return list(ids), boxes, logits


def test_detectron2_pickle_soco_json_round_trip(tmp_path):
    ids, boxes, logits = _proposals()
    pkl, js, pkl2 = (str(tmp_path / n) for n in ("p.pkl", "p.json", "p2.pkl"))
    save_proposal_file(pkl, ids, boxes, logits)
    export_soco_json(load_proposal_file(pkl), js)
    with open(js) as f:
        raw = json.load(f)
    assert list(raw) == ids and len(raw["b/c"]) == 2 and len(raw["b/c"][0]) == 4
    np.testing.assert_allclose(raw["b/c"][0], [boxes[1][0][0], boxes[1][0][1],
                                               boxes[1][0][2] - boxes[1][0][0], boxes[1][0][3] - boxes[1][0][1]],
                               rtol=1e-6)
    back = import_soco_json(js)
    save_proposal_file(pkl2, back["ids"], back["boxes"], back["objectness_logits"])
    with open(pkl, "rb") as f1, open(pkl2, "rb") as f2:
        assert f1.read() == f2.read()


def test_official_soco_json_is_read_as_xywh(tmp_path):
    path = str(tmp_path / "official.json")
    with open(path, "w") as f:
        json.dump({"n01440764_10026": [[10, 20, 30, 40], [0, 0, 5, 5]], "empty": []}, f)
    proposals = load_proposal_file(path)
    assert proposals["ids"] == ["n01440764_10026", "empty"]
    np.testing.assert_array_equal(proposals["boxes"][0], [[10, 20, 40, 60], [0, 0, 5, 5]])
    assert proposals["boxes"][1].shape == (0, 4)
    assert proposals["objectness_logits"][0].tolist() == [0, -1]


def test_file_backend_matches_official_basenames_and_reports_missing_ids(tmp_path):
    path = str(tmp_path / "official.json")
    with open(path, "w") as f:
        json.dump({"img1": [[10, 20, 30, 40]]}, f)
    backend = build_proposal_backend("file", proposal_file=path)
    boxes, scores = backend.propose(None, (100, 100), "class_a/img1")
    np.testing.assert_array_equal(boxes, [[10, 20, 40, 60]])
    assert scores is None
    with pytest.raises(KeyError, match="img2"):
        backend.propose(None, (100, 100), "class_a/img2")


def test_load_proposals_into_dataset_accepts_our_file(tmp_path, synthetic_coco):
    items = resolve_inputs(synthetic_coco["name"])
    out = str(tmp_path / "synthetic.pkl")
    from objpretrain.data.proposals import run_proposal_job

    recipe = get_recipe("opencv_fast").replace(filters={"min_size_ratio": None})
    run_proposal_job(items, out, recipe, workers=1, progress=False)
    from detectron2.data import DatasetCatalog

    dicts = load_proposals_into_dataset(DatasetCatalog.get(synthetic_coco["name"]), out)
    assert len(dicts) == len(items)
    for d in dicts:
        assert d["proposal_boxes"].dtype == np.float32 and d["proposal_boxes"].shape[1] == 4
        assert d["proposal_bbox_mode"] == BoxMode.XYXY_ABS
        assert len(d["proposal_objectness_logits"]) == len(d["proposal_boxes"])
        assert (d["proposal_boxes"][:, 2] <= d["width"]).all() and (d["proposal_boxes"][:, 3] <= d["height"]).all()
    assert sum(len(d["proposal_boxes"]) for d in dicts) > 0
    with open(out, "rb") as f:
        raw = pickle.load(f)
    assert raw["ids"] == [str(d["image_id"]) for d in DatasetCatalog.get(synthetic_coco["name"])]
    assert raw["bbox_mode"] == BoxMode.XYXY_ABS and raw["boxes"][0].dtype == np.float32


def test_list_file_and_folder_give_the_same_ids(tmp_path):
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    for rel in ("x.png", "sub/y.jpg"):
        Image.new("RGB", (40, 40)).save(str(tmp_path / "imgs" / rel))
    list_path = tmp_path / "imgs" / "list.txt"
    list_path.write_text("# comment\nsub/y.jpg\n\nx.png\n")
    assert resolve_inputs(str(tmp_path / "imgs")) == [
        ("sub/y", str(tmp_path / "imgs" / "sub" / "y.jpg")),
        ("x", str(tmp_path / "imgs" / "x.png")),
    ]
    assert [i for i, _ in resolve_inputs(str(list_path))] == ["sub/y", "x"]
    with pytest.raises(FileNotFoundError, match="neither a folder"):
        resolve_inputs(str(tmp_path / "nope"))
    assert os.path.exists(resolve_inputs(str(list_path))[0][1])


def test_the_proposal_file_format_imports_nothing_that_runs_jobs():
    """files.py (the format) and summary.py (counts) must not import job.py (the runner), which imports them."""
    import ast

    from objpretrain.data import proposals

    folder = os.path.dirname(proposals.__file__)
    for module in ("files.py", "summary.py"):
        with open(os.path.join(folder, module)) as f:
            tree = ast.parse(f.read())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not {name for name in imported if name.split(".")[-1] in ("job", "cli")}, (module, imported)

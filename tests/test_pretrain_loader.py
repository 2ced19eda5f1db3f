"""The pretraining loader (objpretrain.data.build): dataset dicts with proposals, mapper lookup, batches."""
import itertools
import logging
import pickle

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng

from objpretrain.config import ConfigError, get_pretrain_cfg
from objpretrain.data.build import (
    MAPPER_REGISTRY,
    build_mapper,
    build_pretrain_loader,
    get_pretrain_dataset_dicts,
)


def _write_proposals(path, ids, boxes_per_image=6, image_size=128, seed=0):
    """A Detectron2 precomputed-proposal pickle with random boxes for ``ids``."""
    rng = np.random.default_rng(seed)
    boxes = []
    for _ in ids:
        xy = rng.uniform(0, image_size * 0.6, size=(boxes_per_image, 2))
        wh = rng.uniform(image_size * 0.2, image_size * 0.4, size=(boxes_per_image, 2))
        boxes.append(np.concatenate([xy, xy + wh], axis=1).astype(np.float32))
    proposals = {
        "ids": [str(i) for i in ids],
        "boxes": boxes,
        "objectness_logits": [np.zeros(boxes_per_image, np.float32) for _ in ids],
        "bbox_mode": BoxMode.XYXY_ABS,
    }
    with open(path, "wb") as f:
        pickle.dump(proposals, f)
    return str(path)


@pytest.fixture
def loader_cfg(synthetic_coco, tmp_path):
    ids = [d["image_id"] for d in DatasetCatalog.get(synthetic_coco["name"])]
    cfg = get_pretrain_cfg(None, ["MODEL.META_ARCHITECTURE", "SoCo"])
    cfg.DATASETS.TRAIN = (synthetic_coco["name"],)
    cfg.DATASETS.PROPOSAL_FILES_TRAIN = (_write_proposals(tmp_path / "proposals.pkl", ids),)
    cfg.SOLVER.IMS_PER_BATCH = 3
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SEED = 5
    return cfg


def test_dataset_dicts_keep_every_image_and_carry_proposals(loader_cfg, synthetic_coco):
    dicts = get_pretrain_dataset_dicts(loader_cfg)
    assert len(dicts) == 8
    for d in dicts:
        assert d["proposal_boxes"].shape == (6, 4) and d["proposal_bbox_mode"] == BoxMode.XYXY_ABS


def test_a_proposal_file_from_another_preset_is_named_in_a_warning(loader_cfg, caplog):
    """OBJPRETRAIN.PROPOSAL_PRESET: the file's recorded recipe is compared with the preset's."""
    from objpretrain.data.proposals import get_recipe

    path = loader_cfg.DATASETS.PROPOSAL_FILES_TRAIN[0]
    loader_cfg.OBJPRETRAIN.PROPOSAL_PRESET = "soco_official"
    with caplog.at_level("WARNING", logger="objpretrain"):
        get_pretrain_dataset_dicts(loader_cfg)  # a plain pickle: no recipe recorded
    assert "records no recipe" in caplog.text and "soco_official" in caplog.text
    with open(path, "rb") as f:
        proposals = pickle.load(f)
    for made_with, warned in (("soco_paper", True), ("soco_official", False)):
        proposals["metadata"] = {"recipe": get_recipe(made_with).to_dict()}
        with open(path, "wb") as f:
            pickle.dump(proposals, f)
        caplog.clear()
        with caplog.at_level("WARNING", logger="objpretrain"):
            assert len(get_pretrain_dataset_dicts(loader_cfg)) == 8
        assert ("not made with preset 'soco_official'" in caplog.text) == warned, made_with
        if warned:  # names the fields that differ: the segmentation's scale and min_size, the 32 px side filter
            assert "backend_args" in caplog.text and "filters" in caplog.text


def test_loader_yields_batches_of_the_configured_size(loader_cfg):
    loader = build_pretrain_loader(loader_cfg)
    for batch in itertools.islice(loader, 3):
        assert len(batch) == 3
        for sample in batch:
            assert sample["view_names"] == ["v1", "v2", "v3"]
            assert [tuple(v.shape) for v in sample["views"]] == [(3, 224, 224), (3, 224, 224), (3, 112, 112)]
            assert all(tuple(b.shape) == (4, 4) for b in sample["boxes"])


def test_loader_with_workers_is_reproducible_from_cfg_seed(loader_cfg):
    loader_cfg.DATALOADER.NUM_WORKERS = 2

    def first_samples(cfg_seed, process_seed):
        # The process RNGs differ between runs: only cfg.SEED may fix the shuffle and the augmentations.
        seed_all_rng(process_seed)
        loader_cfg.SEED = cfg_seed
        batches = itertools.islice(build_pretrain_loader(loader_cfg), 2)
        return [(s["image_id"], s["views"] + s["boxes"]) for batch in batches for s in batch]

    first, again, other = first_samples(5, 0), first_samples(5, 1), first_samples(6, 0)
    assert [image_id for image_id, _ in first] == [image_id for image_id, _ in again]
    for (_, tensors_a), (_, tensors_b) in zip(first, again):
        assert all(torch.equal(a, b) for a, b in zip(tensors_a, tensors_b))
    assert any(
        id_a != id_b or not torch.equal(a, b)
        for (id_a, tensors_a), (id_b, tensors_b) in zip(first, other)
        for a, b in zip(tensors_a, tensors_b)
    )


def test_proposal_file_missing_dataset_ids_names_the_file(loader_cfg, synthetic_coco, tmp_path):
    ids = [d["image_id"] for d in DatasetCatalog.get(synthetic_coco["name"])]
    wrong = _write_proposals(tmp_path / "other_dataset.pkl", [f"img_{i}" for i in ids])
    loader_cfg.DATASETS.PROPOSAL_FILES_TRAIN = (wrong,)
    with pytest.raises(ValueError, match="other_dataset.pkl.*no entry for 8 of the 8 images"):
        get_pretrain_dataset_dicts(loader_cfg)
    partial = _write_proposals(tmp_path / "partial.pkl", ids[:-1])
    loader_cfg.DATASETS.PROPOSAL_FILES_TRAIN = (partial,)
    with pytest.raises(ValueError, match=f"partial.pkl.*no entry for 1 of the 8.*'{ids[-1]}'"):
        build_pretrain_loader(loader_cfg)


def test_one_proposal_file_per_dataset_is_required(loader_cfg):
    loader_cfg.DATASETS.PROPOSAL_FILES_TRAIN = loader_cfg.DATASETS.PROPOSAL_FILES_TRAIN * 2
    with pytest.raises(ValueError, match="PROPOSAL_FILES_TRAIN has 2 files for 1 datasets"):
        get_pretrain_dataset_dicts(loader_cfg)


def test_the_oac_loader_loads_the_dataset_once_and_reads_each_proposal_file_once(loader_cfg, monkeypatch):
    """The OAC mapper derives s_min from the loader's dataset dicts (no second load), and the proposal file is read
    once for both its proposals and the recipe check of OBJPRETRAIN.PROPOSAL_PRESET."""
    import builtins

    from objpretrain.data.oac_mapper import estimate_crop_scale_min

    loader_cfg.MODEL.META_ARCHITECTURE = "OACMoCo"
    loader_cfg.INPUT.OAC.CROP_SCALE_MIN = 0.0  # estimated from the proposals
    loader_cfg.OBJPRETRAIN.PROPOSAL_PRESET = "soco_official"
    path = loader_cfg.DATASETS.PROPOSAL_FILES_TRAIN[0]
    dataset_loads, reads, real_open = [], [], builtins.open
    real_get = DatasetCatalog.get

    def counting_open(file, *args, **kwargs):
        if str(file) == path:
            reads.append(file)
        return real_open(file, *args, **kwargs)

    def counting_get(name):
        dataset_loads.append(name)
        return real_get(name)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(DatasetCatalog, "get", counting_get)
    loader = build_pretrain_loader(loader_cfg)
    assert len(reads) == 1 and dataset_loads == list(loader_cfg.DATASETS.TRAIN)
    monkeypatch.undo()
    mapper = loader.dataset.dataset._mapper
    expected = estimate_crop_scale_min(get_pretrain_dataset_dicts(loader_cfg), 0.2, 10)
    assert mapper.object_scale == (pytest.approx(expected), 1.0)


def test_loader_without_proposal_files_uses_the_fallback(loader_cfg, caplog):
    loader_cfg.DATASETS.PROPOSAL_FILES_TRAIN = ()
    loader_cfg.INPUT.SOCO.FALLBACK = "random"
    with caplog.at_level(logging.WARNING, logger="objpretrain"):
        batch = next(iter(build_pretrain_loader(loader_cfg)))
    assert len(batch) == 3 and all(tuple(b.shape) == (4, 4) for s in batch for b in s["boxes"])
    assert any("pads every image per INPUT.SOCO.FALLBACK='random'" in r.getMessage() for r in caplog.records)


def test_the_mapper_is_the_one_the_model_names_and_a_config_may_only_repeat_it(loader_cfg):
    soco, oac = MAPPER_REGISTRY.get("SoCoMapper"), MAPPER_REGISTRY.get("OACMapper")
    for name in ("", "soco", "SoCoMapper"):  # the model's, or the names configs used before models declared it
        loader_cfg.OBJPRETRAIN.MAPPER = name
        assert isinstance(build_mapper(loader_cfg), soco)
    loader_cfg.OBJPRETRAIN.MAPPER = ""
    loader_cfg.MODEL.META_ARCHITECTURE = "OACDenseCL"
    loader_cfg.INPUT.OAC.CROP_SCALE_MIN = 0.5
    assert isinstance(build_mapper(loader_cfg), oac)
    loader_cfg.OBJPRETRAIN.MAPPER = "soco"
    with pytest.raises(ConfigError, match="^OBJPRETRAIN.MAPPER is 'soco' but MODEL.META_ARCHITECTURE 'OACDenseCL' "
                                          "takes the OACMapper; drop"):
        build_mapper(loader_cfg)
    loader_cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    with pytest.raises(ConfigError, match="'GeneralizedRCNN' is not a pretraining model; .*'SoCo', 'SoCoC4'"):
        build_mapper(loader_cfg)


def test_visualize_views_draws_every_view_with_numbered_boxes(loader_cfg, repo_root, tmp_path):
    import runpy

    from matplotlib.patches import Rectangle
    from PIL import Image

    tool = runpy.run_path(f"{repo_root}/tools/visualize_views.py")
    output = tmp_path / "views.png"
    opts = ["DATASETS.TRAIN", str(tuple(loader_cfg.DATASETS.TRAIN)),
            "DATASETS.PROPOSAL_FILES_TRAIN", str(tuple(loader_cfg.DATASETS.PROPOSAL_FILES_TRAIN)),
            "INPUT.SOCO.V4_SIZE", "192"]
    assert tool["main"](["--index", "2", "--output", str(output), *opts]) == 0
    assert Image.open(output).size[0] > Image.open(output).size[1] > 100

    sample = build_mapper(loader_cfg)(get_pretrain_dataset_dicts(loader_cfg)[0])
    figure = tool["draw_views"](sample)
    assert len(figure.axes) == 3
    for axis in figure.axes:
        assert sum(isinstance(p, Rectangle) for p in axis.patches) == 4
        assert sorted(t.get_text() for t in axis.texts) == ["0", "1", "2", "3"]
    loader_cfg.INPUT.SOCO.OWN_PROPOSAL_VIEWS = ("v3",)  # the official recipe: V1's boxes for V3 get a panel
    figure = tool["draw_views"](build_mapper(loader_cfg)(get_pretrain_dataset_dicts(loader_cfg)[0]))
    assert [axis.get_title().split(" (")[0] for axis in figure.axes] == ["v1", "v1 for v3", "v2", "v3"]


def test_aspect_ratio_grouping_names_a_dataset_dict_without_its_size():
    from objpretrain.data.build import build_resumable_loader

    cfg = get_pretrain_cfg()
    dataset = [{"file_name": "a.jpg", "width": 40, "height": 30}, {"file_name": "b.jpg"}]
    with pytest.raises(ValueError, match="b.jpg has none"):
        build_resumable_loader(cfg, dataset, mapper=lambda d: d, aspect_ratio_grouping=True)
    loader = build_resumable_loader(cfg, dataset, mapper=lambda d: d, aspect_ratio_grouping=False)
    assert loader.resumable_sampler is not None

"""The reproduction study's data and its CI-sized smoke run (tools/run_study.py --smoke)."""
import filecmp
import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from objpretrain.data.datasets.scenes import CATEGORIES, make_scene_coco

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The study lives with the tools (tools/study); its unit tests import it from there.
sys.path.insert(0, os.path.join(REPO, "tools"))


def test_scenes_are_deterministic_multi_object_and_masks_match_boxes(tmp_path):
    from pycocotools.coco import COCO

    json_a, root_a = make_scene_coco(str(tmp_path / "a"), num_images=6, image_size=96, seed=5)
    json_b, root_b = make_scene_coco(str(tmp_path / "b"), num_images=6, image_size=96, seed=5)
    assert filecmp.cmp(json_a, json_b, shallow=False)
    assert all(filecmp.cmp(os.path.join(root_a, n), os.path.join(root_b, n), shallow=False) for n in os.listdir(root_a))

    coco = COCO(json_a)
    assert {c["id"] for c in CATEGORIES} == set(coco.getCatIds()) and len(CATEGORIES) == 6
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) >= 3, "every scene holds several objects"
        for ann in anns:
            x, y, w, h = ann["bbox"]
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            # the mask lies in its box and spans it (up to a rasterised triangle tip)
            assert x - 1 <= xs.min() <= x + 3 and x + w - 3 <= xs.max() <= x + w + 1
            assert y - 1 <= ys.min() <= y + 3 and y + h - 3 <= ys.max() <= y + h + 1
            assert mask.sum() >= 0.4 * w * h


def test_scene_texture_not_colour_carries_the_class(tmp_path):
    """Objects of one class come in many colours, so colour statistics alone cannot name the class."""
    from PIL import Image
    from pycocotools.coco import COCO

    json_path, root = make_scene_coco(str(tmp_path), num_images=20, image_size=96, seed=1)
    coco = COCO(json_path)
    colours = {}
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = np.asarray(Image.open(os.path.join(root, coco.loadImgs(ann["image_id"])[0]["file_name"])))
        mean = image[coco.annToMask(ann).astype(bool)].mean(axis=0)
        colours.setdefault(ann["category_id"], []).append(mean)
    spreads = [np.std(np.array(v), axis=0).mean() for v in colours.values() if len(v) >= 3]
    assert spreads and min(spreads) > 20


def test_gray_scenes_have_no_colour_and_the_same_layout(tmp_path):
    """gray=True (the study's scenes): every pixel is gray, every object is drawn in the same two levels, and the
    boxes and classes are those of the colour scenes of the same seed."""
    from PIL import Image
    from pycocotools.coco import COCO

    from objpretrain.data.datasets.scenes import GRAY_OBJECT_COLORS

    colour_json, _ = make_scene_coco(str(tmp_path / "colour"), num_images=4, image_size=96, seed=3,
                                     class_textures=True)
    json_path, root = make_scene_coco(str(tmp_path / "gray"), num_images=4, image_size=96, seed=3,
                                      class_textures=True, gray=True)
    with open(colour_json) as f, open(json_path) as g:
        assert json.load(f)["annotations"] == json.load(g)["annotations"]
    coco = COCO(json_path)
    for image_id in coco.getImgIds():
        image = np.asarray(Image.open(os.path.join(root, coco.loadImgs(image_id)[0]["file_name"])))
        assert (image == image[..., :1]).all()
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id])):
            pixels = image[coco.annToMask(ann).astype(bool), 0]
            # pycocotools rasterizes the polygon's edge a little wider than PIL drew it: background there
            assert np.isin(pixels, GRAY_OBJECT_COLORS[:, 0]).mean() > 0.8


def test_datasets_register_from_the_config(tmp_path):
    from detectron2.data import DatasetCatalog

    from objpretrain.config import get_pretrain_cfg
    from objpretrain.data.datasets import register_datasets_from_cfg

    json_path, root = make_scene_coco(str(tmp_path), num_images=3, image_size=64, seed=0)
    cfg = get_pretrain_cfg(opts=[
        "DATASETS.IMAGE_FOLDER_REGISTER", f"('cfg_folder_test:{root}',)",
        "DATASETS.COCO_JSON_REGISTER", f"('cfg_coco_test:{json_path}:{root}',)",
    ])
    assert register_datasets_from_cfg(cfg) == ["cfg_coco_test", "cfg_folder_test"]
    assert register_datasets_from_cfg(cfg) == ["cfg_coco_test", "cfg_folder_test"]  # idempotent
    assert [d["image_id"] for d in DatasetCatalog.get("cfg_folder_test")] == ["000001", "000002", "000003"]
    assert len(DatasetCatalog.get("cfg_coco_test")) == 3

    other = get_pretrain_cfg(opts=["DATASETS.IMAGE_FOLDER_REGISTER", f"('cfg_folder_test:{tmp_path}',)"])
    with pytest.raises(ValueError, match="already registered"):
        register_datasets_from_cfg(other)
    missing = get_pretrain_cfg(opts=["DATASETS.IMAGE_FOLDER_REGISTER", f"('cfg_missing:{tmp_path / 'nope'}',)"])
    with pytest.raises(FileNotFoundError, match="nope"):
        register_datasets_from_cfg(missing)
    malformed = get_pretrain_cfg(opts=["DATASETS.IMAGE_FOLDER_REGISTER", "('no_colon',)"])
    with pytest.raises(ValueError, match="name:root"):
        register_datasets_from_cfg(malformed)


def _smoke_arms():
    """The smoke run's arms: random init, the first arm of every pretraining kind other than SSL (the supervised
    control, and any kind added later) and SoCo, the SSL arm transferred several ways, so that every kind of stage
    runs (SSL pretraining with health, supervised pretraining, probes, conversion with --drop and with
    --keep-weight-scale, fine-tuning). BYOL and the MoCo arms run SoCo's stages with other configs: every learning
    config builds and trains a step in tests/test_pretrain_configs.py, the OAC demo configs train end to end and
    convert in tests/test_oac_train.py."""
    from study.pipeline import ARMS

    first_of_kind = {}
    for arm, spec in ARMS.items():
        if spec is None or spec.kind != "ssl":
            first_of_kind.setdefault(None if spec is None else spec.kind, arm)
    return (*first_of_kind.values(), "soco")


SMOKE_ARMS = _smoke_arms()


def _run_smoke_study(out, *args):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "run_study.py"), "--smoke", "--output",
                             str(out), "--arms", *SMOKE_ARMS, *args], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, (f"run_study.py exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                                    f"{result.stderr[-5000:]}")


@pytest.mark.slow
def test_study_smoke_run_by_the_gpu_script_reports_every_arm_and_resumes(tmp_path):
    """The smoke-scale study of SMOKE_ARMS, run by tools/run_study_gpu.sh as the GPU session would run it, with
    DEVICE=cpu: every arm in its own process at once, then the summary and the archive; then tools/run_study.py
    itself over the same folder, which resumes (every arm in one process and its own summary)."""
    import convert_ckpt  # tools/, on the path above
    from study.pipeline import SCALES, TRANSFERS, arm_transfers

    from objpretrain.checkpoint import load_state_dict
    from objpretrain.checkpoint.weight_scale import initializer_norm

    smoke = SCALES["smoke"]
    out, copies = tmp_path / "study", tmp_path / "out"
    env = dict(os.environ, STUDY=str(out), OUT=str(copies), DEVICE="cpu", SMOKE="1", WORKERS="0",
               PYTHON=sys.executable, ARMS=" ".join(SMOKE_ARMS))
    result = subprocess.run(["bash", os.path.join(REPO, "tools", "run_study_gpu.sh"), "600"], cwd=REPO, env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # the script: one process per arm, with its device and workers passed through to every stage
    for arm in SMOKE_ARMS:
        printed = (out / f"{arm}_seed0.out").read_text()
        assert "MODEL.DEVICE cpu" in printed and "DATALOADER.NUM_WORKERS 0" in printed, arm
    # ... and at once: the stages, each timed in its own arm's process, add up to more than the time from the
    # proposals (made before any arm starts) to the last arm's result (run one after another, they would add up
    # to less)
    results = {arm: json.loads((out / f"{arm}_seed0" / "result.json").read_text()) for arm in SMOKE_ARMS}
    stage_seconds = sum(sum(r["seconds"].values()) + sum(record["seconds"] for per_n in r.get("transfer", {}).values()
                                                         for record in per_n.values()) for r in results.values())
    arms_wall = (max((out / f"{arm}_seed0" / "result.json").stat().st_mtime for arm in SMOKE_ARMS)
                 - (out / "data" / "proposals.pkl").stat().st_mtime)
    assert stage_seconds > arms_wall > 0, (stage_seconds, arms_wall)
    # its copies: the summary, plots and the archive of every arm's results and logs
    assert (copies / "study_gpu_runs.tgz").stat().st_size > 0
    assert (copies / "summary.json").read_bytes() == (out / "summary.json").read_bytes()

    with open(out / "summary.json") as f:
        summary = json.load(f)
    rows = {r["arm"]: r for r in summary["arms"]}
    assert set(rows) == set(SMOKE_ARMS)
    for arm, row in rows.items():
        assert row["seeds"] == [0], arm
        for metric in ("view_retrieval", "linear_probe_map", "object_probe_top1", "object_probe_128_top1"):
            assert np.isfinite(row[f"{metric}_mean"]), (arm, metric)  # random init too
        assert 0 < row["linear_probe_map_chance"] < 100 and 0 < row["object_probe_top1_chance"] < 100, arm
        assert row["view_retrieval_chance"] == pytest.approx(100 / smoke["val_images"]), arm
    for name in ("cosine_to_mean", "spread", "res5_moved", "retrieval_monitor", "retrieval_monitor_initial"):
        assert np.isfinite(rows["soco"][f"health_{name}_mean"]), name  # an SSL arm reports its health
    # every transfer arm of the smoke arms but those the smoke scale skips, fine-tuned on its labelled subset, with
    # its AP curve
    skipped = set(smoke["skip_transfers"])
    assert skipped and skipped < set(arm_transfers("soco"))
    transfer = {(r["transfer"], r["scenes"]): r for r in summary["transfer"]}
    assert set(transfer) == {(name, n) for arm in SMOKE_ARMS for name in arm_transfers(arm) if name not in skipped
                             for n in smoke["transfer_scenes"]}
    # (after 4 iterations a detector may detect nothing, and COCO AP is then NaN: the record is what is checked)
    assert all(r["seeds"] == [0] and len(r["AP_per_seed"]) == 1 for r in transfer.values())
    soco = results["soco"]
    assert [len(soco["transfer"]["soco_backbone"]["4"]["curve"]["AP"][0])] == [2]  # evaluated at iterations 2 and 4
    # the study converted what it fine-tuned, no more; the skipped transfers are the same command with their own
    # arguments, run here on the study's conversion at the pretrained scale. The three SoCo transfers load what
    # their names say.
    soco_dir = out / "soco_seed0"
    weights = {}
    for name in arm_transfers("soco"):
        weights[name] = soco_dir / f"converted_{name}.pkl"
        assert weights[name].exists() == (name not in skipped), name
        if name in skipped:
            weights[name] = tmp_path / f"converted_{name}.pkl"
            assert convert_ckpt.main([str(soco_dir / "converted.pkl"), str(weights[name]), *TRANSFERS[name][1]]) == 0
    scopes = {name: {k.split(".")[1] for k in load_state_dict(str(weights[name]))}
              for name in ("soco_backbone", "soco_backbone_fpn", "soco_full")}
    assert "box_head" in scopes["soco_full"] and "box_head" not in scopes["soco_backbone_fpn"]
    assert any(s.startswith("fpn_") for s in scopes["soco_backbone_fpn"])
    assert not any(s.startswith("fpn_") for s in scopes["soco_backbone"])
    # the weight-scale control keeps the pretrained stem; the study's conversions restore the initializer's norm
    stem = "backbone.bottom_up.stem.conv1.weight"
    stems = {name: np.asarray(load_state_dict(str(weights[name]))[stem])
             for name in ("soco_backbone", "soco_backbone_pretrained_scale")}
    assert np.linalg.norm(stems["soco_backbone"]) == pytest.approx(initializer_norm(stem, stems["soco_backbone"]),
                                                                   rel=1e-4)
    assert not np.array_equal(stems["soco_backbone"], stems["soco_backbone_pretrained_scale"])
    # SoCo and the control against random init, the transfers against random init and the weight-scale control:
    # with one seed every verdict is "too few seeds"
    claims = {(c["claim"], c["metric"]) for c in summary["claims"]}
    assert ("soco_backbone > soco_backbone_pretrained_scale", "box AP, 4 labelled scenes") in claims
    assert ("supervised > random_init", "box AP50, 4 labelled scenes") in claims
    assert {c["verdict"] for c in summary["claims"]} == {"too few seeds"}
    for name in ("loss_curves.png", "ap_per_arm.png", "health_curves.png", "results_table.md", "transfer_curves.png",
                 "transfer_ap.png"):
        assert (out / name).stat().st_size > 0 and (copies / name).stat().st_size > 0, name
    table = (out / "results_table.md").read_text()
    assert "final cosine to mean" in table and "Detection transfer, 4 labelled scenes" in table
    # finished arms keep their converted weights but not the training checkpoints
    assert not list(out.rglob("*.pth")) and all((out / f"{arm}_seed0" / "converted.pkl").exists()
                                                for arm in rows if arm != "random_init")
    # a second run reuses every finished arm instead of recomputing it, and restarts an unfinished one from
    # scratch (no stale files, no metrics appended to an old run's)
    untouched = [arm for arm in SMOKE_ARMS if arm not in ("random_init", "supervised")]
    before = {arm: (out / f"{arm}_seed0" / "result.json").stat().st_mtime for arm in untouched}
    # an arm finished before a probe or a transfer existed gets that probe or transfer only
    with open(out / "supervised_seed0" / "result.json") as f:
        old_result = json.load(f)
    old_result.pop("object_probe_top1_chance")
    del old_result["transfer"]["supervised"]
    (out / "supervised_seed0" / "result.json").write_text(json.dumps(old_result))
    retrieval_probed = (out / "supervised_seed0" / "view_retrieval.json").stat().st_mtime
    (out / "random_init_seed0" / "result.json").unlink()
    (out / "random_init_seed0" / "transfer_random_init_n4" / "stale_marker").write_text("from a killed run")
    _run_smoke_study(out, "--jobs", "2")  # the two unfinished arms side by side, as make study runs them
    assert {arm: (out / f"{arm}_seed0" / "result.json").stat().st_mtime for arm in untouched} == before
    with open(out / "supervised_seed0" / "result.json") as f:
        resumed = json.load(f)
    assert "object_probe_top1_chance" in resumed and "4" in resumed["transfer"]["supervised"]
    assert (out / "supervised_seed0" / "view_retrieval.json").stat().st_mtime == retrieval_probed
    assert (out / "random_init_seed0" / "result.json").exists()
    assert not (out / "random_init_seed0" / "transfer_random_init_n4" / "stale_marker").exists()
    with open(out / "random_init_seed0" / "transfer_random_init_n4" / "metrics.json") as f:
        assert sum('"bbox/AP"' in line for line in f) == 2



def test_study_runs_arms_side_by_side_longest_first_and_starts_none_after_a_failure(tmp_path, monkeypatch):
    """run_study(jobs=2): two arms at a time, each stage with cores // 2 threads, a seed's arms with the most stages
    first; after an arm fails, the running arm finishes and no other starts, and the failure is raised."""
    from study import pipeline

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "proposals.pkl").write_bytes(b"")  # made: run_study runs no stage for it
    monkeypatch.setattr(pipeline, "make_data", lambda out, scale: {})
    started, lock, failing = [], threading.Lock(), set()

    def fake_run_arm(arm, seed, out, data, scale, py, keep_checkpoints, device, workers, pretrain_opts, threads):
        with lock:
            started.append((seed, arm, threads))
        if (seed, arm) in failing:
            time.sleep(0.05)
            raise pipeline.StudyStageError(f"{arm} failed")
        time.sleep(0.3)
        return {"arm": arm, "seed": seed}

    monkeypatch.setattr(pipeline, "run_arm", fake_run_arm)
    scale = dict(pipeline.SCALES["full"], seeds=(0, 1))
    arms = ["random_init", "soco", "byol_whole_image"]  # 2, 7 and 3 stages
    results = pipeline.run_study(str(tmp_path), scale, arms, jobs=2)
    assert sorted((r["seed"], r["arm"]) for r in results) == sorted((s, a) for s in (0, 1) for a in arms)
    assert {threads for _, _, threads in started} == {max(1, os.cpu_count() // 2)}
    order = [(seed, arm) for seed, arm, _ in started]
    assert set(order[:2]) == {(0, "soco"), (0, "byol_whole_image")}
    assert order.index((0, "random_init")) < order.index((1, "random_init"))

    started.clear()
    failing.add((0, "soco"))
    with pytest.raises(pipeline.StudyStageError, match="soco failed"):
        pipeline.run_study(str(tmp_path), scale, arms, jobs=2)
    assert sorted(arm for _, arm, _ in started) == ["byol_whole_image", "soco"]


def test_study_scale_leaves_out_the_recorded_controls_unless_asked():
    """The full scale fine-tunes every transfer arm but the two controls whose answer docs/results.md records;
    --transfers picks the arms instead; --jobs needs at least one."""
    import run_study
    from study.pipeline import TRANSFERS

    assert set(run_study.study_scale(run_study.parse_args([]))["skip_transfers"]) == {
        "supervised", "soco_backbone_pretrained_scale"}
    asked = run_study.study_scale(run_study.parse_args(["--transfers", "random_init",
                                                        "soco_backbone_pretrained_scale"]))
    assert set(TRANSFERS) - set(asked["skip_transfers"]) == {"random_init", "soco_backbone_pretrained_scale"}
    with pytest.raises(SystemExit):
        run_study.parse_args(["--jobs", "0"])


def test_summary_tests_each_claimed_ordering(tmp_path):
    from study.summary import summarize

    def result(arm, seed, ap, probe):
        transfers = {"soco": "soco_full", "byol_whole_image": "byol_whole_image", "random_init": "random_init"}
        record = {m: ap for m in ("AP", "AP50", "AP75", "APs", "APm")}
        record["curve"] = {"AP": [[99, 199], [ap / 2, ap]], "AP50": [[99, 199], [ap, ap]]}
        return {"arm": arm, "seed": seed, "linear_probe_map": probe, "linear_probe_map_chance": 60.0,
                "object_probe_top1": probe / 2, "object_probe_top1_chance": 20.0,
                "transfer": {transfers[arm]: {"8": record}}}

    results = [result("soco", s, 3.0 + 0.1 * s, 70.0 + s) for s in range(3)]
    results += [result("byol_whole_image", s, 1.0 + 0.1 * s, 72.0 - s) for s in range(3)]
    results += [result("random_init", s, 5.0 - 0.1 * s, 65.0 + 0.01 * s) for s in range(3)]
    rows, table = summarize(results, str(tmp_path))
    with open(tmp_path / "summary.json") as f:
        claims = {(c["claim"], c["metric"]): c for c in json.load(f)["claims"]}
    ap = "box AP, 8 labelled scenes"
    assert claims[("soco_full > byol_whole_image", ap)]["verdict"] == "holds"
    assert claims[("soco_full > byol_whole_image", ap)]["difference"] == pytest.approx(2.0)
    assert claims[("soco > byol_whole_image", "linear_probe_map")]["verdict"] == "not separated"
    assert claims[("byol_whole_image > random_init", ap)]["verdict"] == "reversed"
    assert ("soco_full > soco_backbone", ap) not in claims  # a transfer that did not run is not compared
    assert claims[("soco > random_init", "object_probe_top1")]["verdict"] == "holds"
    assert not any("moco" in claim for claim, _ in claims)  # arms that did not run are not compared
    assert "image probe mAP (chance 60.0)" in table and "| soco | 3 | 35.5 ± 0.5 |" in table
    assert "view retrieval" not in table  # a metric no arm has is left out
    assert "| soco_full | 3 | 3.1 ± 0.1 |" in table
    for name in ("ap_per_arm.png", "transfer_curves.png", "transfer_ap.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_feature_ranks_reads_every_stage_and_level_and_sees_a_collapsed_fpn(tmp_path):
    """tools/study/feature_ranks.py on a few scenes: one effective rank per ResNet stage and FPN level, within
    [1, number of images]; an FPN whose output convs are made rank one (every output channel the same filter) is
    read as collapsed there, and the ResNet stages below it are unchanged."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model
    from study.feature_ranks import CONFIG, feature_ranks, read_images

    from objpretrain.engine.defaults import build_config

    _, root = make_scene_coco(str(tmp_path / "scenes"), num_images=12, image_size=64, seed=2)
    images = read_images(root, limit=12)
    cfg = build_config(CONFIG, ["MODEL.DEVICE", "cpu"])
    random = feature_ranks(cfg, "random", images)
    assert set(random) == {"res2", "res3", "res4", "res5", "p2", "p3", "p4", "p5", "p6"}
    assert all(1.0 <= r <= 12.0 for r in random.values())
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for name, module in model.backbone.named_modules():
            if name.startswith("fpn_output"):
                module.weight.copy_(module.weight[:1].expand_as(module.weight))
    collapsed_path = str(tmp_path / "collapsed.pth")
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("collapsed")
    collapsed = feature_ranks(cfg, collapsed_path, images)
    assert all(collapsed[k] == pytest.approx(random[k], rel=1e-5) for k in ("res2", "res3", "res4", "res5"))
    assert all(collapsed[f"p{i}"] < 1.5 < random[f"p{i}"] for i in (2, 3, 4, 5))

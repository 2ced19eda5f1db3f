"""No code runs from a proposal file or a checkpoint (objpretrain/utils/safe_pickle.py, docs/reliability.md).

Every entry point that reads a pickle gets a real payload: a file whose unpickling calls ``open(MARKER, "w")``.
It is refused, naming the file and the class, and the marker never appears; where a flag exists
(``--unsafe-full-unpickle``) the same file loads with it and the marker appears, so the flag is the only way in.
The formats the allow-list is for (the project's proposal files and converted checkpoints, Detectron2's model zoo
``.pkl``, Caffe2 / Python 2 files, NumPy 1 files, the official SoCo JSON, resume checkpoints) keep loading.
"""
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import build_resnet_backbone
from detectron2.structures import BoxMode
from PIL import Image
from torch import nn

from objpretrain.checkpoint import convert_state_dict, load_state_dict, save_conversion
from objpretrain.config import get_pretrain_cfg
from objpretrain.data.build import get_detection_dataset_dicts_with_proposals, get_pretrain_dataset_dicts
from objpretrain.data.datasets import make_synthetic_coco, register_image_folder
from objpretrain.data.proposals import load_proposal_file, save_proposal_file
from objpretrain.engine.checkpoint import AtomicDetectionCheckpointer
from objpretrain.engine.finetune import FinetuneTrainer
from objpretrain.engine.resumable import _rng_state
from objpretrain.utils.safe_pickle import ALLOWED_GLOBALS, UnsafePickleError, load_pickle
from test_convert import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_PRETRAIN = os.path.join(REPO, "configs", "demo", "soco_r18_fpn_demo.yaml")
DEMO_FINETUNE = os.path.join(REPO, "configs", "demo", "finetune_trees_r18_fpn.yaml")


class CreatesMarker:
    """Unpickling this calls ``open(path, "w")``: the file exists afterwards exactly when the unpickler ran code
    from the pickle (it pickles as ``io.open``)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _pickle(path, obj, protocol=pickle.HIGHEST_PROTOCOL):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return str(path)


def _proposals(ids, **extra):
    return {"ids": list(ids), "boxes": [np.array([[1, 2, 30, 40]], np.float32) for _ in ids],
            "objectness_logits": [np.zeros(1, np.float32) for _ in ids], "bbox_mode": BoxMode.XYXY_ABS, **extra}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Two 48x40 images registered as ``untrusted_images`` (ids ``a`` and ``b``)."""
    root = tmp_path_factory.mktemp("untrusted_images")
    for name in ("a", "b"):
        Image.new("RGB", (48, 40), (90, 120, 30)).save(root / f"{name}.png")
    register_image_folder("untrusted_images", str(root))
    return str(root)


@pytest.fixture(scope="module")
def tiny_resnet():
    """A Detectron2 ResNet-50 a few channels wide (kilobytes, not 100 MB): its Detectron2 state dict."""
    cfg = get_pretrain_cfg(None, ["MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.STEM_OUT_CHANNELS", "8",
                                  "MODEL.RESNETS.RES2_OUT_CHANNELS", "16", "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
                                  "MODEL.RESNETS.NORM", "BN", "MODEL.RESNETS.OUT_FEATURES", "['res5']"])
    torch.manual_seed(0)
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).state_dict()


@pytest.fixture
def evil_checkpoints(tmp_path, tiny_resnet):
    """A converted Detectron2 .pkl and a MoCo-style .pth.tar, each a valid checkpoint plus one payload, and the
    marker path the payload creates."""
    marker = tmp_path / "MARKER"
    save_conversion(convert_state_dict(tiny_resnet, "d2-backbone"), str(tmp_path / "converted.pkl"))
    payload = {**load_pickle(str(tmp_path / "converted.pkl")), "notes": CreatesMarker(marker)}
    torchvision_names = convert_state_dict(tiny_resnet, "torchvision").state_dict
    torch.save({"state_dict": {"module.encoder_q." + k: v for k, v in torchvision_names.items()},
                "args": CreatesMarker(marker)}, tmp_path / "moco.pth.tar")
    return {"pkl": _pickle(tmp_path / "evil.pkl", payload), "pth": str(tmp_path / "moco.pth.tar"), "marker": marker}


# ---------------------------------------------------------------------------------------------- the allow-list

class _RecordingUnpickler(pickle.Unpickler):
    """The full unpickler (for files written here), recording each (module, name) the file asks for."""

    def __init__(self, file, asked):
        super().__init__(file, encoding="latin1")
        self.asked = asked

    def find_class(self, module, name):
        self.asked.add((module, name))
        return super().find_class(module, name)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_the_allow_list_holds_what_our_proposal_files_and_converted_checkpoints_ask_for(tmp_path, protocol,
                                                                                         tiny_resnet):
    metadata = {"recipe": {"method": "opencv_fast", "max_side": 500}, "summary": {"mean_boxes": np.float32(3.5)},
                "bad_images": {"x": "unreadable"}, "shard": [0, 1]}
    proposals = _proposals(["a", "b"], metadata=metadata)
    written = [_pickle(tmp_path / "proposals.pkl", proposals, protocol)]
    save_proposal_file(str(tmp_path / "ours.pkl"), proposals["ids"], proposals["boxes"],
                       proposals["objectness_logits"], metadata)
    save_conversion(convert_state_dict(tiny_resnet, "d2-fpn"), str(tmp_path / "converted.pkl"))
    written += [str(tmp_path / "ours.pkl"), str(tmp_path / "converted.pkl")]
    for path in written:
        asked = set()
        with open(path, "rb") as f:
            _RecordingUnpickler(f, asked).load()
        # Protocol 2 names builtins as Python 2 did (__builtin__); the restricted unpickler maps them back.
        assert asked and {(m.replace("__builtin__", "builtins"), n) for m, n in asked} <= ALLOWED_GLOBALS.keys()
    loaded = load_proposal_file(str(tmp_path / "ours.pkl"))
    assert loaded["metadata"] == {**metadata, "summary": {"mean_boxes": 3.5}}
    np.testing.assert_array_equal(loaded["boxes"][1], proposals["boxes"][1])
    assert load_pickle(written[0])["bbox_mode"] is BoxMode.XYXY_ABS


def test_detectron2_model_zoo_numpy1_and_python2_caffe2_pkl_files_load_as_weights(tmp_path):
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3)))
    weights = {"conv.weight": np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32),
               "conv.bias": np.arange(4, dtype=np.float32)}
    zoo = {"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": False}
    # NumPy 1 names its reconstructor numpy.core.multiarray._reconstruct (NumPy 2: numpy._core); protocol 2 writes
    # the name as text, so the older file can be made by renaming it.
    numpy1 = pickle.dumps(zoo, protocol=2).replace(b"cnumpy._core.multiarray", b"cnumpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in numpy1
    (tmp_path / "numpy1.pkl").write_bytes(numpy1)
    for path in (_pickle(tmp_path / "zoo.pkl", zoo), str(tmp_path / "numpy1.pkl")):
        restored = nn.Sequential(OrderedDict(conv=nn.Conv2d(3, 4, 3)))
        AtomicDetectionCheckpointer(restored).load(path)
        torch.testing.assert_close(restored.conv.weight, torch.from_numpy(weights["conv.weight"]))
        assert load_state_dict(path)["conv.bias"].tolist() == [0, 1, 2, 3]

    # A Python 2 (Detectron1 / Caffe2) file: protocol 2, latin1 str for names and numpy's raw data, __builtin__.
    def string(data):
        return b"U" + bytes([len(data)]) + data
    raw = np.arange(4, dtype="<f4").tobytes()
    python2 = (b"\x80\x02}q\x00(" + string(b"blobs") + b"}q\x01" + string(b"conv1_w")
               + b"cnumpy.core.multiarray\n_reconstruct\nq\x02cnumpy\nndarray\nq\x03K\x00\x85" + string(b"b")
               + b"\x87Rq\x04(K\x01K\x02K\x02\x86cnumpy\ndtype\nq\x05" + string(b"f4") + b"K\x00K\x01\x87Rq\x06(K\x03"
               + string(b"<") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + string(raw) + b"tbs"
               + string(b"ids") + b"c__builtin__\nset\n]q\x07K\x01a\x85Rq\x08" + string(b"cfg")
               + string(b"caf\xe9") + b"u.")
    (tmp_path / "caffe2.pkl").write_bytes(python2)
    assert load_pickle(str(tmp_path / "caffe2.pkl"))["ids"] == {1}
    loaded = AtomicDetectionCheckpointer(model)._load_file(str(tmp_path / "caffe2.pkl"))
    assert loaded["__author__"] == "Caffe2" and loaded["matching_heuristics"]
    np.testing.assert_array_equal(loaded["model"]["conv1_w"], [[0, 1], [2, 3]])


def test_resume_checkpoints_hold_only_what_torch_weights_only_loading_reads(tmp_path):
    """What a trainer saves (model, optimizer, scheduler, iteration, data stream, per-rank RNG states) loads
    with weights_only=True; the resume tests (tests/test_reliability.py) check that the resume is exact."""
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2])
    checkpointer = AtomicDetectionCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler)
    checkpointer.save("model_0000004", iteration=4, data_stream={"seed": 3, "ims_per_batch": 4},
                      rng_states=[_rng_state()])
    restored = AtomicDetectionCheckpointer(nn.Linear(3, 2), str(tmp_path), optimizer=optimizer)
    extra = restored.resume_or_load("", resume=True)
    assert extra["iteration"] == 4 and extra["data_stream"]["seed"] == 3 and "rng_states" in extra


# ---------------------------------------------------------------------------------------------- refusals

def test_a_refusal_is_one_line_naming_the_file_and_the_class_and_imports_nothing(tmp_path):
    import os as os_module  # os.system pickles as posix.system

    path = _pickle(tmp_path / "system.pkl", {"boxes": [], "x": os_module.system}, protocol=0)
    with pytest.raises(UnsafePickleError) as refused:
        load_pickle(path)
    assert f"{path}: refused to unpickle posix.system" in str(refused.value) and "\n" not in str(refused.value)
    # A module the file names is never imported, only looked up in the allow-list.
    (tmp_path / "module.pkl").write_bytes(b"\x80\x02cobjpretrain_no_such_module\nrun\n)R.")
    with pytest.raises(UnsafePickleError, match="objpretrain_no_such_module.run"):
        load_pickle(str(tmp_path / "module.pkl"))
    assert "objpretrain_no_such_module" not in sys.modules
    # BoxMode arrives as a factory, so a BUILD on it cannot rebind the class for the whole process.
    (tmp_path / "rebind.pkl").write_bytes(b"\x80\x02cdetectron2.structures.boxes\nBoxMode\nN}X\x07\x00\x00\x00convert"
                                          b"K\x01s\x86b.")
    factory = load_pickle(str(tmp_path / "rebind.pkl"))
    assert callable(BoxMode.convert) and factory(0) is BoxMode.XYXY_ABS
    del factory.convert
    # _codecs.encode serves protocol-2 bytes only: no other codec.
    (tmp_path / "codec.pkl").write_bytes(b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R.")
    with pytest.raises(pickle.UnpicklingError, match="only latin1"):
        load_pickle(str(tmp_path / "codec.pkl"))


@pytest.mark.parametrize("preset", ["", "soco_official"])
def test_the_pretraining_proposal_file_runs_no_code(tmp_path, image_folder, preset):
    marker = tmp_path / "MARKER"
    evil = _pickle(tmp_path / "evil.pkl", _proposals(["a", "b"], metadata={"recipe": CreatesMarker(marker)}))
    cfg = get_pretrain_cfg(None, ["DATASETS.TRAIN", "('untrusted_images',)", "DATASETS.PROPOSAL_FILES_TRAIN",
                                  f"('{evil}',)", "OBJPRETRAIN.PROPOSAL_PRESET", preset])
    with pytest.raises(UnsafePickleError, match=f"{evil}: refused to unpickle io.open"):
        get_pretrain_dataset_dicts(cfg)
    assert not marker.exists()
    # The same proposals without the payload (also as the official SoCo JSON) load.
    good = _pickle(tmp_path / "good.pkl", _proposals(["a", "b"]))
    cfg.DATASETS.PROPOSAL_FILES_TRAIN = (good,)
    cfg.OBJPRETRAIN.PROPOSAL_PRESET = ""
    assert [d["proposal_boxes"].tolist() for d in get_pretrain_dataset_dicts(cfg)] == [[[1, 2, 30, 40]]] * 2
    (tmp_path / "soco.json").write_text('{"a": [[1, 2, 29, 38]], "b": []}')
    cfg.DATASETS.PROPOSAL_FILES_TRAIN = (str(tmp_path / "soco.json"),)
    assert [len(d["proposal_boxes"]) for d in get_pretrain_dataset_dicts(cfg)] == [1, 0]


def test_finetuning_proposal_files_run_no_code(tmp_path, image_folder):
    """MODEL.LOAD_PROPOSALS: FinetuneTrainer's train loader (the resumable detection loader) and test loader read
    DATASETS.PROPOSAL_FILES_TRAIN / _TEST through the safe loader, called explicitly (Detectron2 is not patched)."""
    marker = tmp_path / "MARKER"
    evil = _pickle(tmp_path / "evil.pkl", _proposals(["a", "b"], metadata={"recipe": CreatesMarker(marker)}))
    good = _pickle(tmp_path / "good.pkl", _proposals(["a", "b"]))

    def config(path):
        return get_pretrain_cfg(DEMO_FINETUNE, [
            "MODEL.DEVICE", "cpu", "MODEL.LOAD_PROPOSALS", "True",
            "DATASETS.TRAIN", "('untrusted_images',)", "DATASETS.PROPOSAL_FILES_TRAIN", f"('{path}',)",
            "DATASETS.TEST", "('untrusted_images',)", "DATASETS.PROPOSAL_FILES_TEST", f"('{path}',)",
            "DATALOADER.NUM_WORKERS", "0", "DATALOADER.ASPECT_RATIO_GROUPING", "False"])

    cfg = config(evil)
    with pytest.raises(UnsafePickleError, match=f"{evil}: refused to unpickle io.open"):
        FinetuneTrainer.build_train_loader(cfg)
    with pytest.raises(UnsafePickleError, match=f"{evil}: refused to unpickle io.open"):
        FinetuneTrainer.build_test_loader(cfg, "untrusted_images")
    with pytest.raises(UnsafePickleError, match=f"{evil}: refused to unpickle io.open"):
        get_detection_dataset_dicts_with_proposals(["untrusted_images"], proposal_files=[evil])
    assert not marker.exists()
    # The file without the payload: its proposals reach the model's inputs.
    cfg = config(good)
    assert FinetuneTrainer.build_train_loader(cfg).num_items == 2
    inputs = [batch[0] for batch in FinetuneTrainer.build_test_loader(cfg, "untrusted_images")]
    assert [len(item["proposals"]) for item in inputs] == [1, 1]


def test_importing_objpretrain_replaces_nothing_in_detectron2():
    """No global patch of Detectron2 (issue 25): after importing every objpretrain module, Detectron2's proposal
    loader and DDP builder are its own, and no attribute of any loaded detectron2 module is an objpretrain object."""
    script = """if True:
        import importlib, pkgutil, sys, types
        import objpretrain
        for module in pkgutil.walk_packages(objpretrain.__path__, "objpretrain."):
            importlib.import_module(module.name)
        import detectron2.data, detectron2.data.build, detectron2.engine.defaults
        assert detectron2.data.build.load_proposals_into_dataset.__module__ == "detectron2.data.build"
        assert detectron2.data.load_proposals_into_dataset is detectron2.data.build.load_proposals_into_dataset
        assert detectron2.engine.defaults.create_ddp_model.__module__ == "detectron2.engine.defaults"
        ours = [f"{name}.{attr}" for name, module in list(sys.modules.items()) if name.startswith("detectron2")
                for attr, value in vars(module).items()
                if not isinstance(value, types.ModuleType)
                and str(getattr(value, "__module__", None) or "").startswith("objpretrain")]
        assert not ours, ours
        print("checked", sum(name.startswith("detectron2") for name in sys.modules), "detectron2 modules")
    """
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=REPO), timeout=300)
    assert result.returncode == 0 and "checked" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("kind", ["pkl", "pth"])
def test_convert_ckpt_runs_code_only_with_unsafe_full_unpickle(tmp_path, evil_checkpoints, kind, capsys):
    convert_ckpt = load_tool("convert_ckpt")
    source, marker, output = evil_checkpoints[kind], evil_checkpoints["marker"], tmp_path / "out.pkl"
    assert convert_ckpt.main([source, str(output), "--to", "d2-c4"]) == 1
    error = capsys.readouterr().err
    assert f"{source}: refused to unpickle io.open" in error and "--unsafe-full-unpickle" in error
    assert not marker.exists() and not output.exists()
    assert convert_ckpt.main([source, str(output), "--to", "d2-c4", "--unsafe-full-unpickle"]) == 0
    assert marker.exists() and output.exists()


def test_convert_ckpt_cli_refuses_a_pth_that_would_run_code(tmp_path, evil_checkpoints):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_ckpt.py"), evil_checkpoints["pth"],
                             str(tmp_path / "out.pkl"), "--to", "d2-c4"], check=False, capture_output=True,
                            text=True, env=dict(os.environ, PYTHONPATH=REPO))
    assert result.returncode == 1 and "refused to unpickle io.open" in result.stderr, result.stderr[-2000:]
    assert not evil_checkpoints["marker"].exists()


@pytest.mark.parametrize("kind", ["pkl", "pth"])
def test_model_weights_run_no_code(evil_checkpoints, kind):
    """MODEL.WEIGHTS of train_net (and of pretraining) goes through AtomicDetectionCheckpointer; it has no flag."""
    checkpointer = AtomicDetectionCheckpointer(nn.Linear(2, 2))
    with pytest.raises(UnsafePickleError, match="refused to unpickle io.open.*tools/convert_ckpt.py"):
        checkpointer.resume_or_load(evil_checkpoints[kind], resume=False)
    assert not evil_checkpoints["marker"].exists()


def test_resume_runs_no_code_and_does_not_fall_back_past_the_file(tmp_path):
    model = nn.Linear(2, 2)
    AtomicDetectionCheckpointer(model, str(tmp_path)).save("model_0000001")
    torch.save({"model": model.state_dict(), "trainer": {"hooks": CreatesMarker(tmp_path / "MARKER")}},
               tmp_path / "model_0000002.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000002.pth")
    with pytest.raises(UnsafePickleError, match="model_0000002.pth: refused to unpickle io.open"):
        AtomicDetectionCheckpointer(nn.Linear(2, 2), str(tmp_path)).resume_or_load("", resume=True)
    assert not (tmp_path / "MARKER").exists()


def test_linear_eval_weights_run_code_only_with_unsafe_full_unpickle(tmp_path, image_folder):
    linear_eval = load_tool("linear_eval")
    marker = tmp_path / "MARKER"
    weights = tmp_path / "moco.pth.tar"  # loads, then does not fit a ResNet: the tool stops right after loading
    torch.save({"state_dict": {"module.encoder_q.conv1.weight": torch.zeros(2)}, "args": CreatesMarker(marker)},
               weights)
    argv = ["--config-file", DEMO_PRETRAIN, "--weights", str(weights), "--train-dataset", "untrusted_images",
            "--test-dataset", "untrusted_images", "--device", "cpu", "MODEL.DEVICE", "cpu"]
    with pytest.raises(UnsafePickleError, match=f"{weights}: refused to unpickle io.open"):
        linear_eval.main(argv)
    assert not marker.exists()
    with pytest.raises(ValueError, match="unrecognized parameter names"):
        linear_eval.main(argv[:4] + ["--unsafe-full-unpickle"] + argv[4:])
    assert marker.exists()


def test_train_net_cli_refuses_model_weights_that_would_run_code(tmp_path, evil_checkpoints):
    json_path, image_root = make_synthetic_coco(str(tmp_path / "set"), num_images=2, image_size=64, seed=0)
    command = [sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", DEMO_FINETUNE,
               "--register-coco", f"untrusted_ft:{json_path}:{image_root}", "DATASETS.TRAIN", "('untrusted_ft',)",
               "DATASETS.TEST", "()", "MODEL.ROI_HEADS.NUM_CLASSES", "3", "DATALOADER.NUM_WORKERS", "0",
               "MODEL.WEIGHTS", evil_checkpoints["pkl"], "OUTPUT_DIR", str(tmp_path / "run")]
    result = subprocess.run(command, check=False, cwd=str(tmp_path), capture_output=True, text=True, timeout=240,
                            env=dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1"))
    assert result.returncode != 0, result.stdout[-2000:]
    assert f"{evil_checkpoints['pkl']}: refused to unpickle io.open" in result.stderr, result.stderr[-2000:]
    assert not evil_checkpoints["marker"].exists()
    assert not (tmp_path / "run" / "last_checkpoint").exists()  # stopped before the first iteration

"""Config problems a newcomer hits become one line that says what to do, before anything is launched."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from objpretrain.config import get_pretrain_cfg
from objpretrain.engine.preflight import ConfigError, check_runnable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "soco_r18_fpn_demo.yaml")


@pytest.fixture
def demo_root(tmp_path, monkeypatch):
    """A demo root with one unlabelled image, so the demo datasets exist without datasets/prepare_demo.py."""
    root = tmp_path / "demo"
    (root / "unlabeled").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "unlabeled" / "a.png")
    monkeypatch.setenv("OBJPRETRAIN_DEMO_ROOT", str(root))
    return root


def _run(tool, *args, env=None):
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *args], cwd=REPO, capture_output=True,
                          text=True, env=env, timeout=300)


def _assert_one_line(result, *fragments):
    assert result.returncode == 2, result.stderr[-3000:]
    error = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert all(fragment in error[0] for fragment in fragments), error[0]


def test_missing_proposal_file_names_it_and_the_command_that_makes_it(demo_root, tmp_path):
    missing = str(tmp_path / "nope.pkl")
    result = _run("pretrain_net.py", "--config-file", DEMO_CONFIG, "DATASETS.PROPOSAL_FILES_TRAIN", f"('{missing}',)",
                  env=dict(os.environ))
    _assert_one_line(result, missing, "tools/generate_proposals.py --images demo_unlabeled")


def test_missing_demo_data_says_to_run_prepare_demo(tmp_path):
    env = dict(os.environ, OBJPRETRAIN_DEMO_ROOT=str(tmp_path / "empty"))
    _assert_one_line(_run("pretrain_net.py", "--config-file", DEMO_CONFIG, env=env), "datasets/prepare_demo.py",
                     "demo_unlabeled")


def test_unregistered_dataset_names_it_and_the_override_that_registers_it(tmp_path):
    result = _run("train_net.py", "--config-file", os.path.join(REPO, "configs", "demo", "finetune_trees_r18_fpn.yaml"),
                  "DATASETS.TRAIN", "('no_such_set',)", "DATASETS.TEST", "()", env=dict(os.environ))
    _assert_one_line(result, "DATASETS.TRAIN", "'no_such_set'", "DATASETS.COCO_JSON_REGISTER")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_config_on_a_cpu_machine(demo_root):
    cfg = get_pretrain_cfg(DEMO_CONFIG, ["MODEL.DEVICE", "cuda", "DATASETS.PROPOSAL_FILES_TRAIN", "()"])
    with pytest.raises(ConfigError, match="`MODEL.DEVICE cpu`"):
        check_runnable(cfg)
    cfg = get_pretrain_cfg(DEMO_CONFIG, ["SOLVER.AMP.ENABLED", "True", "DATASETS.PROPOSAL_FILES_TRAIN", "()"])
    with pytest.raises(ConfigError, match="`SOLVER.AMP.ENABLED False`"):
        check_runnable(cfg)


def test_syncbn_in_several_cpu_processes_names_the_key_and_the_replacement(demo_root):
    """torch's SyncBatchNorm refuses CPU tensors once it has to synchronize (several gloo processes); one process
    uses it as plain BN, so only a multi-process CPU launch is stopped."""
    opts = ["MODEL.RESNETS.NORM", "SyncBN", "DATASETS.PROPOSAL_FILES_TRAIN", "()"]
    with pytest.raises(ConfigError, match="MODEL.RESNETS.NORM.*2 processes.*`naiveSyncBN`"):
        check_runnable(get_pretrain_cfg(DEMO_CONFIG, opts), num_processes=2)
    check_runnable(get_pretrain_cfg(DEMO_CONFIG, opts), num_processes=1)
    heads = ["MODEL.SOCO.HEAD_NORM", "SyncBN", "DATASETS.PROPOSAL_FILES_TRAIN", "()"]
    expected = "MODEL.SOCO.HEAD_NORM.*the override `MODEL.SOCO.HEAD_NORM` `naiveSyncBN`.*`BN`"
    with pytest.raises(ConfigError, match=expected):
        check_runnable(get_pretrain_cfg(DEMO_CONFIG, heads), num_processes=4)
    check_runnable(get_pretrain_cfg(DEMO_CONFIG, ["DATASETS.PROPOSAL_FILES_TRAIN", "()"]), num_processes=2)


def test_a_runnable_config_passes(demo_root, tmp_path):
    proposals = tmp_path / "proposals.pkl"
    proposals.write_bytes(b"")
    assert check_runnable(get_pretrain_cfg(DEMO_CONFIG, ["DATASETS.PROPOSAL_FILES_TRAIN", f"('{proposals}',)"])) is None


@pytest.mark.parametrize("override, fragments", [
    (("MODEL.SOCO.VIEW_BATCHING", "per_viw"),
     ("MODEL.SOCO.VIEW_BATCHING is 'per_viw'; allowed: 'per_view', 'per_size'",)),
    (("OBJPRETRAIN.MAPPER", "oac"),
     ("OBJPRETRAIN.MAPPER is 'oac'", "MODEL.META_ARCHITECTURE 'SoCo' takes the SoCoMapper")),
])
def test_a_bad_value_stops_before_launch_in_one_line_and_writes_nothing(demo_root, tmp_path, override, fragments):
    """The two failures of issue 25: a typo in a choice key (was: a traceback from the model's constructor, after the
    output folder and log were written) and a mapper the model does not take (was: KeyError in the training step)."""
    output = tmp_path / "output"
    result = _run("pretrain_net.py", "--config-file", DEMO_CONFIG, *override, "OUTPUT_DIR", str(output),
                  env=dict(os.environ))
    _assert_one_line(result, *fragments)
    assert not output.exists()

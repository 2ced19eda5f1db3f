import fcntl
import os
import subprocess
import sys

import pytest

# The suite runs on 2 cores with DataLoader workers and tool subprocesses beside the main process; one
# intra-op thread per process avoids OpenMP threads spinning against each other (measured: up to 10x slower).
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402

torch.set_num_threads(1)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture(scope="session")
def demo_data():
    """datasets/demo/, built once by datasets/prepare_demo.py (a no-op when already built). The suite runs in two
    pytest-xdist workers (pytest.ini), each with its own session: a lock keeps the second from building beside the
    first."""
    with open(os.path.join(REPO, "datasets", ".prepare_demo.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([sys.executable, os.path.join(REPO, "datasets", "prepare_demo.py")], check=True)
    from objpretrain.data.datasets import demo_root

    return demo_root()


@pytest.fixture(scope="session")
def synthetic_coco(tmp_path_factory):
    """A registered 8-image synthetic COCO set ``synthetic_test`` (3 shape categories, boxes and masks)."""
    from objpretrain.data.datasets import register_synthetic_coco

    out = tmp_path_factory.mktemp("synthetic_coco")
    json_path, image_root = register_synthetic_coco("synthetic_test", str(out), num_images=8, image_size=128, seed=0)
    return {"name": "synthetic_test", "json": json_path, "image_root": image_root}

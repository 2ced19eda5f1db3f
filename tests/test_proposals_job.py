"""The proposal job: determinism across worker counts, resume after a kill, shard + merge, the CLI tools."""
import json
import os
import runpy
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from objpretrain.data.proposals import (
    JournalMismatchError,
    ProposalJournal,
    get_recipe,
    merge_proposal_files,
    process_image,
    resolve_inputs,
    run_proposal_job,
)
from objpretrain.data.proposals.inputs import inputs_digest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = get_recipe("opencv_fast").replace(max_input_size=96, filters={"min_size_ratio": 0.2})


def _make_images(folder, count, size=96):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for k in range(count):
        image = np.full((size, size + 16, 3), rng.integers(0, 256, size=3), dtype=np.uint8)
        for _ in range(3):
            x, y = rng.integers(0, size - 30, size=2)
            w, h = rng.integers(15, 40, size=2)
            image[y : y + h, x : x + w] = rng.integers(0, 256, size=3)
        Image.fromarray(image).save(folder / f"img_{k:02d}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG broken")
    return resolve_inputs(str(folder))


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("proposal_job")
    items = _make_images(root / "imgs", 9)
    reference = str(root / "reference.pkl")
    run_proposal_job(items, reference, RECIPE, workers=1, progress=False)
    return {"root": root, "items": items, "reference": reference}


def test_two_workers_give_the_same_file_as_one(job, tmp_path):
    out = str(tmp_path / "two.pkl")
    run_proposal_job(job["items"], out, RECIPE, workers=2, progress=False)
    assert _read(out) == _read(job["reference"])
    assert not os.path.exists(out + ".journal")


def test_shards_merged_equal_a_single_run(job, tmp_path):
    parts = []
    for index in (2, 0, 1):
        part = str(tmp_path / f"part{index}.pkl")
        run_proposal_job(job["items"], part, RECIPE, workers=1, shard=(index, 3), progress=False)
        parts.append(part)
    merged = str(tmp_path / "merged.pkl")
    merge_proposal_files(parts, merged)
    assert _read(merged) == _read(job["reference"])
    with pytest.raises(ValueError, match="exactly once"):
        merge_proposal_files(parts[:2], str(tmp_path / "bad.pkl"))


def test_resume_after_a_torn_journal_equals_an_uninterrupted_run(job, tmp_path):
    out = str(tmp_path / "resumed.pkl")
    items = job["items"]
    fingerprint = {"recipe": RECIPE.to_dict(), "num_inputs": len(items), "inputs_digest": inputs_digest(items),
                   "shard": [0, 1]}
    journal = ProposalJournal(out + ".journal", fingerprint, resume=False)
    backend = RECIPE.build_backend()
    for index in range(4):
        journal.append(process_image(backend, RECIPE, index, *items[index]))
    journal.close()
    torn = json.dumps(process_image(backend, RECIPE, 4, *items[4]))
    with open(out + ".journal", "ab") as f:
        f.write(torn[: len(torn) // 2].encode())  # killed while writing image 4

    with pytest.raises(FileExistsError, match="--resume"):
        run_proposal_job(items, out, RECIPE, workers=1, progress=False)
    other = RECIPE.replace(filters={"top_n": 3})
    with pytest.raises(JournalMismatchError):
        run_proposal_job(items, out, other, workers=1, progress=False, resume=True)
    run_proposal_job(items, out, RECIPE, workers=2, progress=False, resume=True)
    assert _read(out) == _read(job["reference"])
    # A finished job resumes to a no-op.
    before = os.stat(out).st_mtime_ns
    run_proposal_job(items, out, RECIPE, workers=1, progress=False, resume=True)
    assert os.stat(out).st_mtime_ns == before


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_file(tmp_path):
    items_dir = tmp_path / "imgs"
    _make_images(items_dir, 24, size=128)
    command = [sys.executable, os.path.join(REPO, "tools", "generate_proposals.py"), "--images", str(items_dir),
               "--method", "soco_paper", "--max-input-size", "128", "--workers", "1", "--sync-every", "1",
               "--no-progress"]
    reference = str(tmp_path / "reference.pkl")
    subprocess.run(command + ["--output", reference], check=True, cwd=REPO, capture_output=True)

    out = str(tmp_path / "killed.pkl")
    process = subprocess.Popen(command + ["--output", out], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    journal = out + ".journal"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if os.path.exists(journal) and open(journal, "rb").read().count(b"\n") >= 6:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(out), "the job finished before it could be killed"
    done = open(journal, "rb").read().count(b"\n") - 1
    assert 5 <= done < 25

    subprocess.run(command + ["--output", out, "--resume", "--workers", "2"], check=True, cwd=REPO,
                   capture_output=True)
    assert _read(out) == _read(reference)


def _tool(name):
    """A tools/ script's main(), run in-process (no interpreter start-up per call)."""
    return runpy.run_path(os.path.join(REPO, "tools", name))["main"]


def test_generate_and_merge_tools_with_shards_and_soco_json(job, tmp_path, capsys):
    generate, merge = _tool("generate_proposals.py"), _tool("merge_proposals.py")
    base = ["--images", str(job["root"] / "imgs"), "--method", "opencv_fast", "--max-input-size", "96",
            "--min-size-ratio", "0.2", "--workers", "1", "--no-progress"]
    for index in range(2):
        assert generate(base + ["--output", str(tmp_path / f"s{index}.pkl"), "--shard", f"{index}/2"]) == 0
    capsys.readouterr()
    merge([str(tmp_path / "s1.pkl"), str(tmp_path / "s0.pkl"), "--output", str(tmp_path / "m.pkl"),
           "--soco-json", str(tmp_path / "m.json")])
    assert "unreadable" in capsys.readouterr().out
    assert _read(str(tmp_path / "m.pkl")) == _read(job["reference"])
    with open(tmp_path / "m.json") as f:
        assert list(json.load(f)) == [i for i, _ in job["items"]]
    with pytest.raises(ValueError, match="does not apply"):
        generate(base + ["--output", str(tmp_path / "x.pkl"), "--num-random-boxes", "3"])


def test_visualize_tool_writes_before_and_after_panels(job, tmp_path):
    _tool("visualize_proposals.py")(["--images", str(job["root"] / "imgs"), "--output-dir", str(tmp_path),
                                     "--num-images", "4", "--method", "opencv_fast", "--display-size", "96"])
    pngs = sorted(p for p in os.listdir(tmp_path) if p.endswith(".png"))
    assert pngs == ["img_00.png", "img_01.png", "img_02.png"]  # broken.png comes first and is skipped
    panel = np.asarray(Image.open(tmp_path / pngs[0]))
    assert panel.shape[:2] == (82, 2 * 96 + 8)  # two 112 x 96 images shrunk to 96 px, side by side

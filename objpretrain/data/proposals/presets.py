"""Named proposal recipes: a backend with its settings, the decode size, and the filter thresholds.

``--method`` takes a preset name or a backend name (which selects that backend's preset, e.g.
``selectivesearch`` -> ``soco_paper``). Every field can then be overridden from the command line.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .backends import PROPOSAL_BACKENDS, build_proposal_backend
from .files import load_proposal_file
from .filters import FilterSettings

__all__ = ["ProposalRecipe", "PRESETS", "BACKEND_DEFAULT_PRESET", "DEFAULT_METHOD", "get_recipe", "recipe_mismatch"]


@dataclass(frozen=True)
class ProposalRecipe:
    backend: str
    backend_args: dict = field(default_factory=dict)
    # The image is decoded with its longer side at most this (None: full size); boxes are mapped back to
    # original pixels. Backends that only need the image size decode a thumbnail.
    max_input_size: Optional[int] = 500
    filters: FilterSettings = FilterSettings()
    # Images whose shorter side (original pixels) is below this get zero proposals and count as "tiny".
    min_image_side: int = 32

    def build_backend(self):
        return build_proposal_backend(self.backend, max_input_size=self.max_input_size, **self.backend_args)

    def to_dict(self):
        return {
            "backend": self.backend,
            "backend_args": dict(sorted(self.backend_args.items())),
            "max_input_size": self.max_input_size,
            "filters": self.filters.to_dict(),
            "min_image_side": self.min_image_side,
        }

    @classmethod
    def from_dict(cls, d):
        return cls(
            backend=d["backend"],
            backend_args=dict(d["backend_args"]),
            max_input_size=d["max_input_size"],
            filters=FilterSettings(**d["filters"]),
            min_image_side=d["min_image_side"],
        )

    def replace(self, backend_args=None, filters=None, **changes):
        """A copy with ``changes``; ``backend_args`` / ``filters`` are dicts merged into the current ones."""
        if backend_args:
            changes["backend_args"] = {**self.backend_args, **backend_args}
        if filters:
            changes["filters"] = dataclasses.replace(self.filters, **filters)
        return dataclasses.replace(self, **changes)


PRESETS = {
    # SoCo Appendix A: "scale = 500, sigma = 0.9 and min_size = 10", the selectivesearch package's
    # segmentation, filters of §3.2.
    "soco_paper": ProposalRecipe("selectivesearch", {"scale": 500.0, "sigma": 0.9, "min_size": 10}),
    # What the official SoCo code ran (selective_search/generate_imagenet_ss_proposals.py: scale=300,
    # min_size=100; filters.py also drops boxes with a side under 32 px).
    "soco_official": ProposalRecipe(
        "selectivesearch",
        {"scale": 300.0, "sigma": 0.9, "min_size": 100},
        filters=FilterSettings(min_side=32.0),
    ),
    "opencv_fast": ProposalRecipe("opencv", {"mode": "fast"}),
    "opencv_quality": ProposalRecipe("opencv", {"mode": "quality"}),
    # OpenCV's C++ implementation with the paper's single graph segmentation (k=500, sigma=0.9, min_size=10).
    "opencv_single": ProposalRecipe("opencv", {"mode": "single", "scale": 500.0, "sigma": 0.9, "min_size": 10}),
    # The default: the single strategy with a finer segmentation (k=200, min_size=30) on a 384 px image. On
    # the bench (docs/proposals.md) it is ~10-100x faster per core than the reference (the package at paper
    # settings on the full image) on photographs and tree tiles, with higher ground-truth recall (only ~2.6x
    # on 256 px images, where shrinking gains nothing); k=500 at this size merges small objects away.
    "opencv_tuned": ProposalRecipe(
        "opencv", {"mode": "single", "scale": 200.0, "sigma": 0.9, "min_size": 30}, max_input_size=384
    ),
    # SoCo Table 5(c) "Random": K random boxes, drawn inside the filter ranges.
    "random": ProposalRecipe("random", {"num_boxes": 4}, max_input_size=64),
    # Imported boxes (e.g. LOD proposals for OAC); needs backend_args["proposal_file"] (--proposal-file).
    "file": ProposalRecipe("file", {}, max_input_size=64),
}

BACKEND_DEFAULT_PRESET = {
    "selectivesearch": "soco_paper",
    "opencv": "opencv_fast",
    "random": "random",
    "file": "file",
}

# Chosen from the measurements in docs/proposals.md (bench/proposals.py).
DEFAULT_METHOD = "opencv_tuned"


def get_recipe(method=DEFAULT_METHOD):
    """The preset named ``method`` (a preset or backend name)."""
    name = BACKEND_DEFAULT_PRESET.get(method, method)
    if name not in PRESETS:
        raise KeyError(
            f"unknown proposal method {method!r}; presets: {sorted(PRESETS)}, backends: {sorted(PROPOSAL_BACKENDS)}"
        )
    return PRESETS[name]


def recipe_mismatch(path, preset, proposals=None):
    """None when the proposal file ``path`` records the recipe of ``preset``; else a sentence that names the fields
    that differ, or says that the file records no recipe (not written by tools/generate_proposals.py).
    ``proposals``: the file's content (``load_proposal_file``), when the caller has read it already."""
    expected = get_recipe(preset).to_dict()
    if proposals is None:
        proposals = load_proposal_file(path)
    recorded = (proposals.get("metadata") or {}).get("recipe")
    if recorded is None:
        return f"proposal file {path} records no recipe, so it cannot be checked against preset {preset!r}"
    differences = [f"{key} {recorded.get(key)!r} (preset: {value!r})" for key, value in expected.items()
                   if recorded.get(key) != value]
    if not differences:
        return None
    return f"proposal file {path} was not made with preset {preset!r}: " + "; ".join(differences)

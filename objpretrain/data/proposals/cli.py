"""Command-line options that choose a proposal recipe, shared by tools/generate_proposals.py and
tools/visualize_proposals.py: ``--method`` picks a preset, the other options override its fields."""
import inspect

from .backends import PROPOSAL_BACKENDS
from .presets import DEFAULT_METHOD, PRESETS, get_recipe

__all__ = ["add_recipe_arguments", "recipe_from_args"]

# Command-line option -> backend keyword argument.
BACKEND_OPTIONS = {
    "ss_scale": "scale",
    "ss_sigma": "sigma",
    "ss_min_size": "min_size",
    "opencv_mode": "mode",
    "num_random_boxes": "num_boxes",
    "proposal_file": "proposal_file",
}
FILTER_OPTIONS = (
    "min_aspect_ratio",
    "max_aspect_ratio",
    "min_size_ratio",
    "max_size_ratio",
    "min_side",
    "dedup_iou",
    "top_n",
)


def add_recipe_arguments(parser):
    parser.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        help=f"preset {sorted(PRESETS)} or backend {sorted(PROPOSAL_BACKENDS)} (default: %(default)s)",
    )
    group = parser.add_argument_group("backend (defaults come from the preset)")
    group.add_argument("--max-input-size", type=int, help="longer image side the backend sees; 0: full size")
    group.add_argument("--min-image-side", type=int, help="images with a shorter side get no proposals")
    group.add_argument("--ss-scale", type=float, help="graph segmentation scale (Felzenszwalb k)")
    group.add_argument("--ss-sigma", type=float, help="graph segmentation Gaussian sigma")
    group.add_argument("--ss-min-size", type=int, help="graph segmentation minimum component size")
    group.add_argument("--opencv-mode", choices=("fast", "quality", "single"))
    group.add_argument("--num-random-boxes", type=int, help="K for the random backend")
    group.add_argument("--proposal-file", help="for the file backend: Detectron2 pickle or SoCo JSON to import")

    group = parser.add_argument_group("filters (SoCo §3.2; defaults come from the preset)")
    group.add_argument("--min-aspect-ratio", type=float)
    group.add_argument("--max-aspect-ratio", type=float)
    group.add_argument("--min-size-ratio", type=float, help="minimum sqrt(wh)/sqrt(WH)")
    group.add_argument("--max-size-ratio", type=float, help="maximum sqrt(wh)/sqrt(WH)")
    group.add_argument("--min-side", type=float, help="minimum box side in original pixels")
    group.add_argument("--dedup-iou", type=float, help="drop a box with IoU >= this with a better-ranked one")
    group.add_argument("--top-n", type=int, help="keep at most N proposals per image")
    group.add_argument("--no-aspect-filter", action="store_true")
    group.add_argument("--no-size-filter", action="store_true")
    group.add_argument("--no-dedup", action="store_true")


def recipe_from_args(args):
    recipe = get_recipe(args.method)
    accepted = inspect.signature(PROPOSAL_BACKENDS[recipe.backend]).parameters
    backend_args = {}
    for option, name in BACKEND_OPTIONS.items():
        value = getattr(args, option)
        if value is None:
            continue
        if name not in accepted:
            raise ValueError(f"--{option.replace('_', '-')} does not apply to the {recipe.backend!r} backend")
        backend_args[name] = value
    filters = {name: getattr(args, name) for name in FILTER_OPTIONS if getattr(args, name) is not None}
    if args.no_aspect_filter:
        filters.update(min_aspect_ratio=None, max_aspect_ratio=None)
    if args.no_size_filter:
        filters.update(min_size_ratio=None, max_size_ratio=None)
    if args.no_dedup:
        filters["dedup_iou"] = None
    changes = {}
    if args.max_input_size is not None:
        changes["max_input_size"] = args.max_input_size or None
    if args.min_image_side is not None:
        changes["min_image_side"] = args.min_image_side
    return recipe.replace(backend_args=backend_args, filters=filters, **changes)

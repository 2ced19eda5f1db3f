"""Object proposals for object-level pretraining: backends, SoCo filters, proposal files, the batch job.

See docs/proposals.md. The command-line entry points are tools/generate_proposals.py,
tools/merge_proposals.py and tools/visualize_proposals.py.
"""
from .backends import (
    PROPOSAL_BACKENDS,
    FileProposalsBackend,
    OpenCVSelectiveSearchBackend,
    ProposalBackend,
    RandomBoxesBackend,
    SelectiveSearchBackend,
    build_proposal_backend,
    register_proposal_backend,
    seed_for_image,
)
from .files import (
    export_soco_json,
    import_soco_json,
    load_proposal_file,
    merge_proposal_files,
    save_proposal_file,
)
from .filters import FILTER_NAMES, FilterSettings, filter_proposals, pairwise_iou
from .inputs import parse_shard, resolve_inputs, shard_slice
from .job import process_image, run_proposal_job
from .journal import JournalMismatchError, ProposalJournal
from .presets import BACKEND_DEFAULT_PRESET, DEFAULT_METHOD, PRESETS, ProposalRecipe, get_recipe, recipe_mismatch
from .summary import format_summary, merge_summaries

__all__ = [
    "BACKEND_DEFAULT_PRESET",
    "DEFAULT_METHOD",
    "FILTER_NAMES",
    "FileProposalsBackend",
    "FilterSettings",
    "JournalMismatchError",
    "OpenCVSelectiveSearchBackend",
    "PRESETS",
    "PROPOSAL_BACKENDS",
    "ProposalBackend",
    "ProposalJournal",
    "ProposalRecipe",
    "RandomBoxesBackend",
    "SelectiveSearchBackend",
    "build_proposal_backend",
    "export_soco_json",
    "filter_proposals",
    "format_summary",
    "get_recipe",
    "recipe_mismatch",
    "import_soco_json",
    "load_proposal_file",
    "merge_proposal_files",
    "merge_summaries",
    "pairwise_iou",
    "parse_shard",
    "process_image",
    "register_proposal_backend",
    "resolve_inputs",
    "run_proposal_job",
    "save_proposal_file",
    "seed_for_image",
    "shard_slice",
]

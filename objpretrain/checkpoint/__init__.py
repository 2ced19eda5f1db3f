"""Conversion of pretraining checkpoints to Detectron2 and torchvision formats (docs/transfer.md)."""
from .convert import (  # noqa: F401
    DROPPABLE_PARTS,
    TARGETS,
    CheckpointError,
    Conversion,
    check_against_model,
    convert_checkpoint,
    convert_state_dict,
    format_report,
    load_state_dict,
    parse_state_dict,
    save_conversion,
)
from .torchvision_names import d2_to_torchvision, torchvision_to_d2  # noqa: F401
from .weight_scale import initializer_norm, restore_initializer_scale  # noqa: F401

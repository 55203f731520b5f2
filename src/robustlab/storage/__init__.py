"""Storage: atomic file writes and validated readers, model checkpoints (safetensors + JSON),
training state, and the run directory's file names."""

from .atomic import (
    CheckpointError,
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
    read_json_record,
    read_safetensors,
    remove_stale_temp_files,
)
from .checkpoint import check_state_dict, environment_info, load_model, model_config, read_model_metadata, save_model
from .layout import MODEL_META, MODEL_WEIGHTS
from .state import flatten_state, load_state, save_state, unflatten_state

__all__ = [
    "MODEL_META", "MODEL_WEIGHTS", "CheckpointError", "atomic_save_safetensors", "atomic_write_bytes",
    "atomic_write_json", "atomic_write_text", "check_state_dict", "ensure_writable_dir", "environment_info",
    "flatten_state", "load_model", "load_state", "model_config", "read_json_record", "read_model_metadata",
    "read_safetensors", "remove_stale_temp_files", "save_model", "save_state", "unflatten_state",
]

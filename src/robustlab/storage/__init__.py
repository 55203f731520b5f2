"""Storage: atomic file writes, model checkpoints (safetensors + JSON) and training state."""

from .checkpoint import (
    MODEL_META, MODEL_WEIGHTS, CheckpointError, atomic_save_safetensors, atomic_write_bytes, atomic_write_json,
    atomic_write_text, ensure_writable_dir, environment_info, load_model, load_state, read_model_metadata,
    remove_stale_temp_files, save_model, save_state,
)

__all__ = [
    "MODEL_META", "MODEL_WEIGHTS", "CheckpointError", "atomic_save_safetensors", "atomic_write_bytes",
    "atomic_write_json", "atomic_write_text", "ensure_writable_dir", "environment_info", "load_model", "load_state",
    "read_model_metadata", "remove_stale_temp_files", "save_model", "save_state",
]

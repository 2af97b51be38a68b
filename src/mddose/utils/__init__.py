"""Small shared utilities (atomic file writing, logging helpers)."""

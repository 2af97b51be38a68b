"""`mddose demo` — not yet implemented (placeholder registering nothing)."""


def register(sub) -> None:
    """Add this module's sub-command(s) to sub."""

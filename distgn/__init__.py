"""distgn."""

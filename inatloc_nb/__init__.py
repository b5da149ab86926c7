"""inatloc-nb."""

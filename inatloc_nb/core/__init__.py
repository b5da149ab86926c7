"""Foundations every layer uses: errors, range checks, atomic file writes, the shipped folders and
tables, progress display."""

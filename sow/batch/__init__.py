"""Batch generation: many jobs, one kill-safe manifest, resumable (`runner`).

May import everything in the library except the CLI.
"""

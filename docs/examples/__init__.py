"""Helpers the code blocks of README.md and docs/*.md import.

Python targets are named ``"docs.examples.app:fetch"`` and so on: run the
blocks from the repository's root (``tests/test_docs.py`` does), or copy these
modules into your own package.
"""

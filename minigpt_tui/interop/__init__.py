"""Interop: a run to and from other tools' formats (a Hugging Face GPT-2 folder), with NumPy alone.

May import: ``training`` and the foundation modules; never ``inspection``, ``experiments`` or a shell.
"""

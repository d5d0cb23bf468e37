"""Inspection: why a trained model predicts what it does.

Owns surprisal per token, the next-token distribution at a position, every head's attention, what each head
attends to over a split (head roles), and their terminal text and PNG figures.
May import: ``training``, ``plots`` and the foundation modules; never ``experiments``, ``interop`` or a shell.
"""

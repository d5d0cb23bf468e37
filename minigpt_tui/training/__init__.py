"""Training: everything that makes a run and reads it back.

Owns the run folder and its contract: config (TOML, flags, presets), corpora and their splits, tokenizers,
the memory check, the training loop and its events, checkpoints, the lr schedule, and loading a run's model
to sample from it or score it on a whole split.
May import: ``backends`` and the foundation modules (``errors``, ``storage``, ``typed``). Nothing else of
``minigpt_tui``.
"""

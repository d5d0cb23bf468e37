"""Experiments and reports: runs compared with runs, samples compared with samples, written up.

Owns the temperature ablation and its text metrics, training ablations (tokenizer, context, positional
encoding, sweeps and the speedrun ladder), probes of a trained model (exposure bias, length generalisation),
the throughput benchmark, and the Markdown/PNG reports and keepsakes they write.
May import: ``training``, ``inspection``, ``plots`` and the foundation modules; never ``interop`` or a shell.
"""

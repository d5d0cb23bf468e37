"""``minigpt-tui``: the Textual shell over the core (new run, live curves, sampling, temperature ablation)."""

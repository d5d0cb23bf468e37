"""minigpt: train, watch and sample a small GPT in the terminal."""

__version__ = "0.1.0"

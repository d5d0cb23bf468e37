"""The help screen: what each view shows and every key."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# minigpt-tui

Train a small GPT and watch it learn. Every view is also reachable with the mouse.

| key | does |
|-----|------|
| `t` `g` `a` | show the **T**raining, **G**enerate, **A**blation view |
| `i` | show the **I**nspect view; there ←→↑↓ or a click move the cursor |
| `n` | new run: the form (Enter starts training) |
| `p` | pause / resume training |
| `s` | stop training (the latest checkpoint is saved) |
| `c` | continue the run on screen for N more steps (a dialog asks how many) |
| `l` | log / linear y axis |
| `b` | bits per character / perplexity in the lower plot |
| `o` | the lower plot cycles: quality (bits/char or perplexity), learning rate, gradient norm |
| `Ctrl+S` | in the Generate view: save the sample; in the Ablation view: save the table (into the run folder) |
| `Enter` | in the Generate view: sample; in the Ablation view: run it |
| `[` `]` | in the Ablation view: the previous / next sample, through every sample of every temperature |
| `Escape` | stop sampling or the ablation; leave any field (every view, the form) so the keys above work again |
| `?` / `F1` | this help |
| `q` / `Ctrl+Q` | quit (a running training saves a checkpoint first) |

**Training** plots the per-step training loss and the evaluated train/val losses, and below them
bits per character (loss in bits, per character, comparable across tokenizers) or perplexity.
The status panel shows throughput, learning rate, elapsed time, ETA and the best validation loss.

*What is a good loss?* The grey line is **guessing**: a model that gives each of the V tokens the
same probability scores ln V nats per token (ln 65 = 4.17 for tiny Shakespeare's characters). Any
learning shows as a drop below it. Knowing only how often each character occurs gets a character
model to 3.35 on tiny Shakespeare's val split; everything further down comes from context. The `baby`
preset (the default) ends near 1.9 after its 2000 steps; the val loss rising while the train loss
falls is overfitting.

**Generate** samples from the latest weights: a live copy while training, else the run's
latest checkpoint. A `\\n` in the prompt is a newline. Empty top-k/top-p/seed mean off / random.

**Ablation** samples at each temperature with the same seeds and reports coherence (mean NLL
per token under the model) next to diversity (distinct-n, the share of word bigrams repeated
within a sample) and the share of words that occur in the training text.

**Inspect** reads a text (default: from the validation split) with the latest weights: each
character coloured by its surprisal (green expected, red surprising); at the cursor, the next-token
chart (T=1 beside what the temperature/top-k/top-p fields make of it) and, as background colours,
where the chosen layer/head looks from there; below, every head of that layer.

`minigpt-tui RUN_DIR` opens a run; while `minigpt train --headless` trains it in another
terminal, the curves follow its `metrics.jsonl`. `minigpt-tui RUN1 RUN2 ...` draws the other runs'
curves over the first's, one colour per run, named in the legend, with a table of every run (best
val, bits/char, tokens seen, steps, wall time); when their tokenizers differ (char against BPE) the
upper plot shows bits per character, the one measure they share. `--log-file F` keeps the
notifications and any error's traceback.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "dismiss", "Close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(HELP)

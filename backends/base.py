"""The one interface every model backend implements.

A backend owns the model math only: forward, backward, the optimizer update and a KV-cached
generation session. Everything else (data, schedules, checkpoints, sampling policy) lives in
``minigpt_tui`` and talks to a backend through this ABC with plain NumPy arrays, so backends are
interchangeable and can be checked against each other.

Weights cross the interface under canonical names (see ``canonical_shapes``). Linear weights use
the ``(out_features, in_features)`` layout of ``torch.nn.Linear``; a layer computes ``x @ W.T + b``.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass

import numpy as np

POS_ENCODINGS = ("learned", "sinusoidal", "rope")
ACTIVATIONS = ("gelu_tanh", "gelu", "relu2")
OPTIMIZERS = ("adamw", "muon")
ROPE_BASE = 10000.0
QK_NORM_EPS = 1e-6
FLOAT32_MAX = float(np.finfo(np.float32).max)  # hyperparameters reach float32 kernels: larger ones overflow
MUON_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)  # torch.optim.Muon's defaults (Keller Jordan's quintic)
MUON_NS_STEPS = 5
MUON_MAX_NS_STEPS = 99  # torch.optim.Muon refuses 100 or more
MUON_EPS = 1e-7
# Polar Express (Amsel et al. 2025, arXiv:2505.16932) as modded-nanogpt runs it: iteration i uses tuple i. Each
# tuple is the best quintic for the singular values the ones before it leave (greedy per step), so k steps are
# the first k tuples.
POLAR_EXPRESS_COEFFICIENTS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_MARGIN = 2e-2  # modded-nanogpt: X / (||X||_F (1 + 2e-2) + 1e-6), a safety margin below norm 1
POLAR_EXPRESS_EPS = 1e-6
MUON_COEFFICIENTS = ("jordan", "polar_express")
SMEAR_GATE_INPUTS = 12  # modded-nanogpt's gate reads the first 12 channels of the embedding
SINUSOID_SCALE = 0.02 * math.sqrt(2)  # sin/cos have RMS 1/sqrt(2); this gives RMS 0.02


class OutOfMemory(Exception):
    """The device or the host ran out of memory in the middle of a computation. Backends raise this
    instead of their library's own error (torch's OutOfMemoryError, a failed CPU allocation) so that
    the core can say so in one line without knowing the library."""


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the network; everything a backend needs to build it."""

    vocab_size: int
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    pos_encoding: str = "learned"  # rope rotates queries and keys instead of adding a table
    tie_weights: bool = True
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (no gain) before attention
    activation: str = "gelu_tanh"
    zero_init_proj: bool = False  # output projections start at 0: each block starts as the identity
    # modded-nanogpt's value embeddings: a second token table whose row for each input token is added,
    # times a learned per-layer gain, to the attention values of every layer
    value_embedding: bool = False
    logit_softcap: float = 0.0  # 0: off; else logits <- cap * tanh(logits / cap) (Gemma 2, modded-nanogpt)
    # modded-nanogpt's bigram embedding, exact for a small vocabulary: a (V * V, C) table whose row for the pair
    # (previous token, token) is added to the embedding of every position but the first of a window
    bigram_embedding: bool = False
    # modded-nanogpt's smear gate: each position's embedding takes in the previous one's, times
    # smear_lambda * sigmoid(a gate read from its own first SMEAR_GATE_INPUTS channels)
    smear_gate: bool = False

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.pos_encoding not in POS_ENCODINGS:
            raise ValueError(f"pos_encoding must be one of {POS_ENCODINGS}, got {self.pos_encoding!r}")
        if self.pos_encoding == "sinusoidal" and self.n_embd % 2:
            raise ValueError(f"sinusoidal positions need an even n_embd, got {self.n_embd}")
        if self.pos_encoding == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(f"rope needs an even head size (n_embd / n_head), got {self.n_embd // self.n_head}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if not 0.0 <= self.logit_softcap <= FLOAT32_MAX:  # also refuses NaN
            raise ValueError(f"logit_softcap must be a finite number >= 0 (0: off), got {self.logit_softcap}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class OptimConfig:
    """Optimizer and clipping settings; the learning rate is passed per step (it follows a schedule).

    With ``optimizer="muon"`` the hidden matrices (``is_hidden_matrix``) follow Muon at
    ``muon_lr_scale`` times the step's learning rate; everything else follows AdamW at the step's rate.
    """

    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # 0 disables clipping
    optimizer: str = "adamw"
    muon_lr_scale: float = 1.0
    muon_momentum: float = 0.95
    muon_ns_steps: int = MUON_NS_STEPS  # Newton-Schulz iterations per update
    muon_coefficients: str = "jordan"  # or polar_express: a tuned (a, b, c) per iteration
    muon_momentum_warmup: int = 0  # steps from muon_momentum_start up to muon_momentum (0: none)
    muon_momentum_start: float = 0.85
    muon_bf16: bool = False  # Newton-Schulz in bfloat16 on the CPU too (other devices always use it)

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not (self.muon_lr_scale > 0 and math.isfinite(self.muon_lr_scale)):
            raise ValueError(f"muon_lr_scale must be a finite number > 0, got {self.muon_lr_scale}")
        for name in ("muon_momentum", "muon_momentum_start"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.muon_coefficients not in MUON_COEFFICIENTS:
            raise ValueError(f"muon_coefficients must be one of {MUON_COEFFICIENTS}, got {self.muon_coefficients!r}")
        most = len(POLAR_EXPRESS_COEFFICIENTS) if self.muon_coefficients == "polar_express" else MUON_MAX_NS_STEPS
        if not 1 <= self.muon_ns_steps <= most:
            raise ValueError(f"muon_ns_steps must be in [1, {most}] with {self.muon_coefficients} coefficients, "
                             f"got {self.muon_ns_steps}")
        if self.muon_momentum_warmup < 0:
            raise ValueError(f"muon_momentum_warmup must be >= 0, got {self.muon_momentum_warmup}")
        for name in ("weight_decay", "grad_clip"):
            value = getattr(self, name)
            if not 0 <= value <= FLOAT32_MAX:
                raise ValueError(f"{name} must be a number in [0, {FLOAT32_MAX:.3g}], got {value}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.eps <= FLOAT32_MAX:
            raise ValueError(f"eps must be a number in (0, {FLOAT32_MAX:.3g}], got {self.eps}")


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean loss over the micro-batches of this step
    grad_norm: float  # global L2 norm of the gradient before clipping


def canonical_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every parameter, in the order backends should iterate them."""
    C, V = config.n_embd, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"wte.weight": (V, C)}
    if config.pos_encoding == "learned":
        shapes["wpe.weight"] = (config.block_size, C)
    if config.value_embedding:
        shapes["value_embed.weight"] = (V, C)
    if config.bigram_embedding:
        shapes["bigram.weight"] = (V * V, C)
    if config.smear_gate:
        shapes["smear_gate.weight"] = (1, smear_gate_inputs(config))
        shapes["smear_lambda"] = (1,)

    def add_linear(name: str, n_out: int, n_in: int) -> None:
        shapes[f"{name}.weight"] = (n_out, n_in)
        if config.bias:
            shapes[f"{name}.bias"] = (n_out,)

    def add_layernorm(name: str) -> None:
        shapes[f"{name}.weight"] = (C,)
        if config.bias:
            shapes[f"{name}.bias"] = (C,)

    for i in range(config.n_layer):
        add_layernorm(f"h.{i}.ln_1")
        add_linear(f"h.{i}.attn.c_attn", 3 * C, C)
        add_linear(f"h.{i}.attn.c_proj", C, C)
        if config.value_embedding:
            shapes[f"h.{i}.attn.ve_gain"] = (1,)
        add_layernorm(f"h.{i}.ln_2")
        add_linear(f"h.{i}.mlp.c_fc", 4 * C, C)
        add_linear(f"h.{i}.mlp.c_proj", C, 4 * C)
    add_layernorm("ln_f")
    if not config.tie_weights:
        shapes["lm_head.weight"] = (V, C)
    return shapes


def smear_gate_inputs(config: ModelConfig) -> int:
    """How many leading embedding channels the smear gate reads."""
    return min(SMEAR_GATE_INPUTS, config.n_embd)


def bigram_pairs(idx, vocab_size: int):
    """(B, T) ids -> (B, T - 1) rows of the bigram table, previous * V + current, for positions 1.. (the first
    position of a window has no previous token in it). The table's row layout, so both backends (NumPy arrays
    and torch tensors alike) and every checkpoint share it."""
    return idx[:, :-1] * vocab_size + idx[:, 1:]


def embedding_lookback(config: ModelConfig) -> int:
    """How many tokens before a position its embedding reads (bigram and smear gate: the previous one). A
    generation session passes that token along when it decodes past the start of its cache."""
    return 1 if config.bigram_embedding or config.smear_gate else 0


ZERO_INIT = ("value_embed.weight", "bigram.weight", "smear_gate.weight", "smear_lambda")


def count_parameters(config: ModelConfig) -> int:
    """Trainable parameters (a tied output head counts once)."""
    return sum(math.prod(shape) for shape in canonical_shapes(config).values())


def init_weights(config: ModelConfig, seed: int) -> dict[str, np.ndarray]:
    """GPT-2 initialisation drawn in NumPy so every backend can start from identical weights.

    Matrices ~ N(0, 0.02); residual projections (``c_proj``) are scaled by 1/sqrt(2 * n_layer)
    because each block adds two of them to the residual stream; LayerNorm gains 1, biases 0.
    With ``zero_init_proj`` the projections start at 0 (modded-nanogpt): every block is then the
    identity at step 0 and the first updates shape the residual stream from a clean slate. The
    random draws are the same either way, so only the projections differ between the two inits.
    The value-embedding table starts at 0 and draws nothing (modded-nanogpt's current init): the model
    starts as the one without it, with every other draw unchanged; its per-layer gains start at 1 like
    the other gains, so the table's first gradients reach it at full strength. The bigram table, the smear
    gate and its lambda start at 0 the same way (``ZERO_INIT``): each option starts as the model without it.
    """
    rng = np.random.default_rng(seed)
    residual_std = 0.02 / math.sqrt(2 * config.n_layer)
    weights = {}
    for name, shape in canonical_shapes(config).items():
        if name.endswith(".bias") or name in ZERO_INIT:
            weights[name] = np.zeros(shape, np.float32)
        elif len(shape) == 1:
            weights[name] = np.ones(shape, np.float32)
        else:
            is_proj = name.endswith("c_proj.weight")
            weights[name] = rng.normal(0.0, residual_std if is_proj else 0.02, size=shape).astype(np.float32)
            if is_proj and config.zero_init_proj:
                weights[name][...] = 0.0
    return weights


def sinusoidal_positions(n_positions: int, n_embd: int) -> np.ndarray:
    """Fixed encodings of "Attention is all you need": sin on even channels, cos on odd ones.

    Scaled to the RMS of a learned table at initialisation (0.02): unscaled, the unit-amplitude
    sinusoids are ~35x louder than N(0, 0.02) token embeddings and drown them (measured: the model
    stalls at unigram level, 4.83 bits/char, against 3.30 with this scale; experiments_log.md).
    """
    position = np.arange(n_positions, dtype=np.float64)[:, None]
    inv_freq = np.exp(-math.log(10000.0) * np.arange(0, n_embd, 2, dtype=np.float64) / n_embd)
    table = np.zeros((n_positions, n_embd), np.float64)
    table[:, 0::2] = np.sin(position * inv_freq)
    table[:, 1::2] = np.cos(position * inv_freq[: n_embd // 2])
    return (SINUSOID_SCALE * table).astype(np.float32)


def rope_tables(n_positions: int, head_size: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, each (n_positions, head_size // 2), of the rotary angles pos * base^(-2i/hs).

    Channel pair (i, i + hs/2) of a query or key at position pos is rotated by angle pos * freq_i, so
    a query-key dot product depends on the positions only through their difference.
    """
    inv_freq = ROPE_BASE ** (-np.arange(0, head_size, 2, dtype=np.float64) / head_size)
    angles = np.arange(n_positions, dtype=np.float64)[:, None] * inv_freq
    return np.cos(angles), np.sin(angles)


def is_decayed(name: str, shape: tuple[int, ...]) -> bool:
    """Weight decay applies to matrices (embeddings and linear weights), not to gains, biases and the smear
    gate (a (1, k) row, but a gate like the gains)."""
    return len(shape) >= 2 and name != "smear_gate.weight"


def is_hidden_matrix(name: str, shape: tuple[int, ...]) -> bool:
    """The block Linear weights: what Muon drives. Embeddings and the head stay with AdamW (their
    rows are looked up one token at a time, not mixed as a whole matrix), as do gains and biases."""
    return name.startswith("h.") and len(shape) == 2


def muon_lr(lr: float, shape: tuple[int, ...]) -> float:
    """torch.optim.Muon's default ("original") adjustment for a (rows, cols) matrix: sqrt(max(1, rows /
    cols)) keeps the RMS of an update comparable between tall and wide matrices."""
    return lr * math.sqrt(max(1.0, shape[-2] / shape[-1]))


def muon_momentum(optim: OptimConfig, step: int) -> float:
    """Muon's momentum at optimizer step ``step`` (0 for the first): muon_momentum_start rising linearly to
    muon_momentum over muon_momentum_warmup steps (modded-nanogpt's warmup: early gradients change fast, and
    a long memory of them slows the first steps), then muon_momentum."""
    if not optim.muon_momentum_warmup:
        return optim.muon_momentum
    start = optim.muon_momentum_start
    return start + (optim.muon_momentum - start) * min(1.0, step / optim.muon_momentum_warmup)


@dataclass(frozen=True)
class NewtonSchulzPlan:
    """How Muon orthogonalises an update G: X <- a_i X + (b_i A + c_i A^2) X with A = X X^T, for each (a_i,
    b_i, c_i) of ``coefficients`` in turn, from X = G / d. With ``margin`` None (Jordan, as torch.optim.Muon)
    d = max(||G||_F, eps); otherwise (Polar Express, as modded-nanogpt) d = ||G||_F (1 + margin) + eps."""

    coefficients: tuple[tuple[float, float, float], ...]
    margin: float | None
    eps: float


def newton_schulz_plan(optim: OptimConfig) -> NewtonSchulzPlan:
    """The iteration ``optim`` asks for (both backends run exactly this)."""
    if optim.muon_coefficients == "polar_express":
        return NewtonSchulzPlan(POLAR_EXPRESS_COEFFICIENTS[: optim.muon_ns_steps], POLAR_EXPRESS_MARGIN,
                                POLAR_EXPRESS_EPS)
    return NewtonSchulzPlan((MUON_NS_COEFFICIENTS,) * optim.muon_ns_steps, None, MUON_EPS)


JORDAN_PLAN = newton_schulz_plan(OptimConfig())  # torch.optim.Muon's: 5 steps of Keller Jordan's quintic


@dataclass(frozen=True)
class ForwardTrace:
    """One sequence through the model, kept whole for inspection (in the backend's compute dtype)."""

    logits: np.ndarray  # (T, vocab_size): the next-token logits at every position
    attention: np.ndarray  # (n_layer, n_head, T, T): softmax rows, query i over keys 0..i (zero above)
    # (n_layer + 1, T, n_embd): the stream after the embedding and after each block; the final LayerNorm
    # and the head (and any logit soft-cap) applied to entry l give what the model would predict if it stopped
    # there (logit lens)
    residual: np.ndarray
    head_outputs: np.ndarray  # (n_layer, n_head, T, head_size): each head's output before c_proj (after ablation)


@dataclass(frozen=True)
class HeadAblation:
    """Heads a trace knocks out: each marked head's output (its slice of the attention output, before
    ``c_proj``) is replaced by ``values`` (mean-ablation: the head's mean output over some text) or zeros."""

    heads: np.ndarray  # (n_layer, n_head) bool: True where the head is ablated
    values: np.ndarray | None = None  # (n_layer, n_head, head_size); None: zero-ablation

    def __post_init__(self) -> None:
        if self.heads.ndim != 2 or self.heads.dtype != bool:
            raise ValueError(f"heads must be a (n_layer, n_head) bool array, got {self.heads.dtype} {self.heads.shape}")
        if self.values is not None and self.values.shape[:2] != self.heads.shape:
            raise ValueError(f"values must be (n_layer, n_head, head_size), got {self.values.shape}")

    def check(self, config: ModelConfig) -> None:
        """ValueError unless it fits a model of ``config``."""
        if self.heads.shape != (config.n_layer, config.n_head):
            raise ValueError(f"the ablation is for {self.heads.shape} heads, the model has "
                             f"({config.n_layer}, {config.n_head})")
        if self.values is not None and self.values.shape[2] != config.n_embd // config.n_head:
            raise ValueError(f"ablation values have head size {self.values.shape[2]}, the model "
                             f"{config.n_embd // config.n_head}")

    def replacement(self, layer: int, head: int) -> np.ndarray | float:
        return 0.0 if self.values is None else self.values[layer, head]


class GenerationSession(ABC):
    """Incremental decoding with a KV cache, over ``batch`` sequences decoded side by side.

    ``feed_rows`` appends a (batch, T) block of tokens, the same number to every row, and returns the
    logits for the token after each row's last one; ``feed`` is the one-sequence form. The session
    keeps at most ``block_size`` positions: when the context would overflow, it keeps the most recent
    half of the tokens and rebuilds the cache from them (absolute positions make shifting a cache
    impossible), so the amortised cost per token stays O(block_size). Rows never see each other: row i
    of a batch gets the logits a batch-1 session fed row i alone would (up to float rounding).
    """

    batch: int = 1
    block_size: int

    @abstractmethod
    def feed_rows(self, tokens: np.ndarray) -> np.ndarray:
        """Append (batch, T) int ``tokens`` (T >= 1) and return float32 logits of shape (batch, vocab_size)."""

    def feed(self, tokens: list[int]) -> np.ndarray:
        """Append ``tokens`` (at least one) to a batch-1 session and return float32 logits (vocab_size,)."""
        if not tokens:
            raise ValueError("feed needs at least one token")
        return self.feed_rows(np.asarray([tokens], dtype=np.int64))[0]

    @abstractmethod
    def reset(self) -> None:
        """Forget the context."""

    def _previous(self, history: np.ndarray, rebuild: bool, lookback: int) -> np.ndarray | None:
        """The token before the ones about to run, per row, for a model whose embedding reads it
        (``embedding_lookback``); None when it does not, or when the run starts a fresh cache."""
        if not lookback or rebuild or history.shape[1] == 0:
            return None
        return history[:, -1]

    def _extend(self, history: np.ndarray, tokens) -> tuple[np.ndarray, np.ndarray, bool]:
        """The context after appending ``tokens`` to ``history`` (which the cache holds), the tokens to run
        through the model, and whether the cache must be emptied first (the context overflowed)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[0] != self.batch or tokens.shape[1] < 1:
            raise ValueError(f"feed_rows takes ({self.batch}, T >= 1) tokens, got shape {tokens.shape}")
        block_size, n_new = self.block_size, tokens.shape[1]
        overflow = history.shape[1] + n_new > block_size
        history = np.concatenate([history, tokens], axis=1)
        if overflow:  # keep the recent half (or the whole block when one feed overflows it) and rebuild
            history = history[:, -max(block_size // 2, min(n_new, block_size)) :]
            return history, history, True
        return history, tokens, False


class Backend(ABC):
    """A trainable GPT. Subclasses register under the ``minigpt.backends`` entry-point group."""

    name: str = "abstract"

    @abstractmethod
    def __init__(
        self,
        config: ModelConfig,
        weights: dict[str, np.ndarray],
        optim: OptimConfig,
        *,
        device: str | None = None,
        seed: int = 0,
        compile: bool = False,
        dtype: str = "float32",
    ) -> None:
        """Build the model from ``config`` and canonical ``weights``; ``seed`` seeds dropout."""

    @property
    @abstractmethod
    def device(self) -> str:
        """Where the math runs, e.g. ``cpu``, ``cuda:0``, ``numpy``."""

    @abstractmethod
    def train_step(self, micro_batches: list[tuple[np.ndarray, np.ndarray]], lr: float) -> StepResult:
        """One optimizer step: accumulate gradients over ``micro_batches`` of (inputs, targets), int64
        arrays of shape (B, T), averaged; clip the global norm; AdamW update with learning rate ``lr``."""

    # The two halves of train_step, for timing the optimizer alone (``minigpt bench --optimizer-step``): a
    # backend that has them implements train_step as accumulate_gradients followed by optimizer_update.
    def accumulate_gradients(self, micro_batches: list[tuple[np.ndarray, np.ndarray]]) -> StepResult:
        """The first half of ``train_step``: the clipped, averaged gradient of ``micro_batches``, kept."""
        raise NotImplementedError(f"backend {self.name!r} cannot split a training step")

    def optimizer_update(self, lr: float) -> None:
        """The second half: one optimizer update from the gradient ``accumulate_gradients`` kept; it leaves
        that gradient in place, so calling it again repeats the update from the same gradient."""
        raise NotImplementedError(f"backend {self.name!r} cannot split a training step")

    @abstractmethod
    def eval_loss(self, inputs: np.ndarray, targets: np.ndarray) -> float:
        """Mean next-token cross-entropy (nats) of (B, T) targets, without dropout or gradients."""

    @abstractmethod
    def logits(self, inputs: np.ndarray) -> np.ndarray:
        """Float32 logits of shape (B, T, vocab_size), without dropout."""

    @abstractmethod
    def trace(self, tokens: np.ndarray, ablation: HeadAblation | None = None) -> ForwardTrace:
        """Logits, every layer's attention probabilities, the residual stream and each head's output for
        one (1, T) sequence, without dropout, with the heads of ``ablation`` knocked out. For inspection
        only: the training path never materialises the probabilities nor takes an ablation."""

    @abstractmethod
    def generation_session(self, batch: int = 1) -> GenerationSession:
        """A fresh KV-cached decoding session of ``batch`` sequences over the current weights."""

    @abstractmethod
    def get_weights(self) -> dict[str, np.ndarray]:
        """Current parameters as float32 arrays under canonical names."""

    @abstractmethod
    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Replace all parameters; names and shapes must match ``canonical_shapes``."""

    @abstractmethod
    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        """AdamW moments as ``exp_avg.<name>`` / ``exp_avg_sq.<name>`` arrays plus ``step`` (shape ());
        with Muon, its momentum as ``momentum_buffer.<name>`` for the hidden matrices instead."""

    @abstractmethod
    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore what ``get_optimizer_state`` returned (possibly from another backend)."""

    @abstractmethod
    def get_rng_state(self) -> dict[str, np.ndarray]:
        """State of the dropout random generator, as arrays (saved in checkpoints)."""

    @abstractmethod
    def set_rng_state(self, state: dict[str, np.ndarray]) -> None:
        """Restore a state from ``get_rng_state`` of the same backend; ignore another backend's."""

    def num_parameters(self) -> int:
        return count_parameters(self.config)

    def synchronize(self) -> None:  # noqa: B027 (a CPU backend has nothing to wait for: the default is a no-op)
        """Wait until the work queued so far has run (for timing: a GPU's launches return at once)."""

    # Data parallelism over processes (torchrun). A backend that supports it overrides all three; the
    # core sees only a rank, a size and these collectives.
    @classmethod
    def join_process_group(cls, device: str | None) -> None:
        """Join the group torchrun's environment describes; ValueError when this backend or device cannot."""
        raise ValueError(f"multi-process training needs the torch backend, not {cls.name!r}")

    @classmethod
    def all_reduce_mean(cls, values: list[float]) -> list[float]:
        """Each value averaged over the ranks (a collective: every rank calls it, in the same order)."""
        raise NotImplementedError(f"backend {cls.name!r} has no process group")

    @classmethod
    def leave_process_group(cls, wait_for_peers: bool) -> None:
        """Leave the group; without ``wait_for_peers`` after an error only this rank may have hit."""
        raise NotImplementedError(f"backend {cls.name!r} has no process group")

    @staticmethod
    def set_threads(n: int) -> None:
        """Limit the threads this backend computes with, for the whole process. The default limits the
        BLAS and OpenMP pools already loaded (NumPy's OpenBLAS, say) through threadpoolctl."""
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)

    @staticmethod
    def get_threads() -> int:
        """The threads this backend computes with now, on the calling thread."""
        from threadpoolctl import threadpool_info

        return max((pool["num_threads"] for pool in threadpool_info()), default=1)

    def matmul_peak_flops(self, seconds: float = 0.5) -> float:
        """Measured FLOP/s of float32 1024x1024 matrix products, the yardstick of model FLOPs utilisation.
        The default times NumPy; a backend that computes elsewhere (a GPU) times its own products."""
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal((1024, 1024), np.float32) for _ in range(2))
        return time_matmuls(lambda: np.matmul(a, b), 1024, seconds)

    config: ModelConfig


def time_matmuls(product, size: int, seconds: float, synchronize=lambda: None) -> float:
    """FLOP/s of repeating ``product`` (a size x size x size matmul) for about ``seconds``."""
    product()
    synchronize()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        product()
        runs += 1
    synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start)


def check_weights(config: ModelConfig, weights: dict[str, np.ndarray]) -> None:
    """Raise ValueError naming the first missing, unexpected, misshapen or non-finite parameter (a NaN
    weight computes NaN everywhere: it is named here rather than found as a NaN loss later)."""
    expected = canonical_shapes(config)
    missing = expected.keys() - weights.keys()
    extra = weights.keys() - expected.keys()
    if missing or extra:
        raise ValueError(
            f"weights do not match the config: missing {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}"
        )
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"weight {name} has shape {tuple(weights[name].shape)}, expected {shape}")
    for name in expected:
        if not np.all(np.isfinite(weights[name])):
            raise ValueError(f"weight {name} holds non-finite values (NaN or infinity)")

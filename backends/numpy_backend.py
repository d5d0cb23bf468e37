"""Pure-NumPy backend: the GPT of ``numpy_model`` with AdamW and gradient clipping written to match
``torch.optim.AdamW`` and ``torch.nn.utils.clip_grad_norm_`` step for step. It never imports torch.

Parameters, gradients and both AdamW moments each live in one flat buffer, and every parameter is
a view into it: the optimizer is a dozen whole-buffer operations instead of a loop over tensors,
and nothing is allocated per step. Matrices come first in the flat layout, so weight decay (which
applies to matrices only) is one slice.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from backends.base import (
    Backend,
    ForwardTrace,
    GenerationSession,
    ModelConfig,
    OptimConfig,
    StepResult,
    canonical_shapes,
    check_weights,
    is_decayed,
)
from backends.numpy_model import NumpyGPT, Workspace

DTYPES = ("float32", "float64")
DEVICES = (None, "auto", "cpu", "numpy")
RNG_KEY = "numpy_pcg64"
MAX_WORKSPACES = 4  # batch shapes kept allocated: train, eval, and a few for no-cache sampling
MASK64 = (1 << 64) - 1


def clip_grad_norm(grad: np.ndarray, max_norm: float) -> float:
    """Scale ``grad`` (flat) in place to a global L2 norm of at most ``max_norm`` (0: never) and return
    the norm before clipping; like torch, the coefficient is max_norm / (norm + 1e-6)."""
    norm = math.sqrt(float(np.dot(grad, grad)))
    if max_norm > 0:
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            grad *= coef
    return norm


def adamw_update(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
                 scratch: np.ndarray, n_decayed: int, step: int, lr: float, optim: OptimConfig) -> None:
    """One AdamW step on flat buffers, in the order of torch's single-tensor AdamW:
        p *= 1 - lr * wd (first n_decayed entries); m = lerp(m, g, 1 - b1); v = b2 v + (1 - b2) g^2
        p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""
    b1, b2 = optim.beta1, optim.beta2
    if optim.weight_decay:
        param[:n_decayed] *= 1.0 - lr * optim.weight_decay
    np.subtract(grad, exp_avg, out=scratch)
    scratch *= 1.0 - b1
    exp_avg += scratch
    exp_avg_sq *= b2
    np.multiply(grad, grad, out=scratch)
    scratch *= 1.0 - b2
    exp_avg_sq += scratch
    np.sqrt(exp_avg_sq, out=scratch)
    scratch /= math.sqrt(1.0 - b2**step)
    scratch += optim.eps
    np.divide(exp_avg, scratch, out=scratch)
    scratch *= -lr / (1.0 - b1**step)
    param += scratch


class NumpyBackend(Backend):
    name = "numpy"

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
        check_weights(config, weights)
        if dtype not in DTYPES:
            raise ValueError(f"the numpy backend computes in float32 or float64, not {dtype!r}")
        if device not in DEVICES:
            raise ValueError(f"the numpy backend runs on the CPU; device {device!r} is not available to it")
        self.config = config
        self.optim_config = optim
        self.dtype = np.dtype(dtype)
        shapes = canonical_shapes(config)
        layout = sorted(shapes, key=lambda name: not is_decayed(name, shapes[name]))  # stable: matrices first
        self.n_decayed = sum(math.prod(shapes[n]) for n in layout if is_decayed(n, shapes[n]))
        self._offsets, offset = {}, 0
        for name in layout:
            self._offsets[name] = offset
            offset += math.prod(shapes[name])
        self._shapes = shapes
        self.flat_params, self.flat_grads = np.zeros(offset, self.dtype), np.zeros(offset, self.dtype)
        self.exp_avg, self.exp_avg_sq = np.zeros(offset, self.dtype), np.zeros(offset, self.dtype)
        self._scratch = np.zeros(offset, self.dtype)
        self._micro_grads: np.ndarray | None = None  # a second gradient buffer, for micro-batches 2..n
        self._micro_grad_views: dict[str, np.ndarray] = {}
        self.params = self.views(self.flat_params)
        self.grads = self.views(self.flat_grads)
        self.step = 0
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.model = NumpyGPT(config, self.params, self.dtype)
        self._workspaces: OrderedDict[tuple[int, int], Workspace] = OrderedDict()
        self.set_weights(weights)

    @property
    def device(self) -> str:
        return "cpu"

    def views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Canonical name -> the parameter's view into ``flat``, in canonical order."""
        return {
            name: flat[self._offsets[name] : self._offsets[name] + math.prod(shape)].reshape(shape)
            for name, shape in self._shapes.items()
        }

    def workspace(self, shape: tuple[int, int]) -> Workspace:
        if shape not in self._workspaces:
            self._workspaces[shape] = Workspace(self.config, *shape, self.dtype)
            if len(self._workspaces) > MAX_WORKSPACES:
                self._workspaces.popitem(last=False)
        self._workspaces.move_to_end(shape)
        return self._workspaces[shape]

    def _ids(self, array: np.ndarray) -> np.ndarray:
        ids = np.ascontiguousarray(array, dtype=np.int64)
        self.model.check_inputs(ids)
        return ids

    def loss_and_grads(self, inputs: np.ndarray, targets: np.ndarray, grads: dict[str, np.ndarray] | None = None,
                       scale: float = 1.0, rng: np.random.Generator | None = None) -> float:
        """Mean loss of one batch; writes ``scale`` times its gradient into ``grads`` (default: the
        backend's own gradient buffer). ``rng`` draws dropout; None trains without it."""
        idx, tgt = self._ids(inputs), self._ids(targets)
        ws = self.workspace(idx.shape)
        self.model.forward(ws, idx, rng)
        loss = self.model.loss(ws, tgt)
        self.model.backward(ws, idx, tgt, self.grads if grads is None else grads, scale)
        return loss

    def train_step(self, micro_batches: list[tuple[np.ndarray, np.ndarray]], lr: float) -> StepResult:
        n = len(micro_batches)
        total = 0.0
        for i, (inputs, targets) in enumerate(micro_batches):
            # the first micro-batch writes the gradient buffer, later ones write a second buffer that is added
            if i == 1 and self._micro_grads is None:
                self._micro_grads = np.zeros_like(self.flat_grads)
                self._micro_grad_views = self.views(self._micro_grads)
            grads = self.grads if i == 0 else self._micro_grad_views
            total += self.loss_and_grads(inputs, targets, grads, 1.0 / (np.size(targets) * n), self.rng) / n
            if i > 0:
                self.flat_grads += self._micro_grads
        norm = clip_grad_norm(self.flat_grads, self.optim_config.grad_clip)
        self.step += 1
        adamw_update(self.flat_params, self.flat_grads, self.exp_avg, self.exp_avg_sq, self._scratch,
                     self.n_decayed, self.step, float(lr), self.optim_config)  # a NumPy scalar lr would upcast
        return StepResult(loss=total, grad_norm=norm)

    def eval_loss(self, inputs: np.ndarray, targets: np.ndarray) -> float:
        idx, tgt = self._ids(inputs), self._ids(targets)
        ws = self.workspace(idx.shape)
        self.model.forward(ws, idx)
        return self.model.loss(ws, tgt)

    def logits(self, inputs: np.ndarray) -> np.ndarray:
        idx = self._ids(inputs)
        ws = self.workspace(idx.shape)
        self.model.forward(ws, idx)
        return ws.logits.astype(np.float32)  # a copy: the workspace is reused

    def trace(self, tokens: np.ndarray) -> ForwardTrace:
        idx = self._ids(tokens)
        if idx.shape[0] != 1:
            raise ValueError(f"trace takes one sequence, shape (1, T), got {idx.shape}")
        ws = self.workspace(idx.shape)
        self.model.forward(ws, idx)  # the training forward keeps the probabilities for its backward
        return ForwardTrace(ws.logits[0].copy(), ws.att[:, 0].copy())  # copies: the workspace is reused

    def generation_session(self) -> GenerationSession:
        return NumpyGenerationSession(self.model)

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: param.astype(np.float32) for name, param in self.params.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        check_weights(self.config, weights)
        for name, param in self.params.items():
            param[...] = weights[name]

    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        state = {"step": np.array(float(self.step), np.float64)}
        if self.step:
            for kind, flat in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
                state.update({f"{kind}.{name}": view.astype(np.float32) for name, view in self.views(flat).items()})
        return state

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        self.step = int(float(state["step"]))
        for kind, flat in (("exp_avg", self.exp_avg), ("exp_avg_sq", self.exp_avg_sq)):
            if not self.step:
                flat.fill(0.0)
                continue
            for name, view in self.views(flat).items():
                view[...] = state[f"{kind}.{name}"]

    def get_rng_state(self) -> dict[str, np.ndarray]:
        """The PCG64 state (two 128-bit integers and a buffered half-word) as six uint64 words."""
        s = self.rng.bit_generator.state
        state, inc = s["state"]["state"], s["state"]["inc"]
        words = [state >> 64, state & MASK64, inc >> 64, inc & MASK64, s["has_uint32"], s["uinteger"]]
        return {RNG_KEY: np.array(words, dtype=np.uint64)}

    def set_rng_state(self, state: dict[str, np.ndarray]) -> None:
        if RNG_KEY not in state:
            return
        w = [int(word) for word in np.asarray(state[RNG_KEY], dtype=np.uint64)]
        self.rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
            "has_uint32": w[4],
            "uinteger": w[5],
        }


class NumpyGenerationSession(GenerationSession):
    def __init__(self, model: NumpyGPT) -> None:
        c = model.config
        self.model = model
        self.block_size = c.block_size
        shape = (c.n_layer, 1, c.n_head, c.block_size, c.n_embd // c.n_head)
        self.keys, self.values = np.zeros(shape, model.dtype), np.zeros(shape, model.dtype)
        self.reset()

    def reset(self) -> None:
        self.tokens: list[int] = []
        self.length = 0  # positions held in the cache

    def feed(self, tokens: list[int]) -> np.ndarray:
        if not tokens:
            raise ValueError("feed needs at least one token")
        self.tokens.extend(tokens)
        if self.length + len(tokens) > self.block_size:
            # keep the recent half (or the whole block when one feed overflows it) and rebuild
            self.tokens = self.tokens[-max(self.block_size // 2, min(len(tokens), self.block_size)) :]
            self.length = 0
            tokens = self.tokens
        logits = self.model.decode(self.keys, self.values, list(tokens), self.length)
        self.length += len(tokens)
        return logits.astype(np.float32)

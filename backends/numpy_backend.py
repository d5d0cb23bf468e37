"""Pure-NumPy backend: the GPT of ``numpy_model`` with AdamW, Muon and gradient clipping written to
match ``torch.optim.AdamW``, ``torch.optim.Muon`` and ``torch.nn.utils.clip_grad_norm_`` step for step.
It never imports torch.

Parameters, gradients and both AdamW moments each live in one flat buffer, and every parameter is
a view into it: the optimizer is a dozen whole-buffer operations instead of a loop over tensors,
and nothing is allocated per step. The flat layout puts Muon's matrices first (with Muon), then the
other matrices, then gains and biases: AdamW is one slice, and weight decay one slice of that. Muon's
momentum lives in the (otherwise unused) first-moment slice of its matrices.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from backends.base import (
    JORDAN_PLAN,
    Backend,
    ForwardTrace,
    GenerationSession,
    HeadAblation,
    ModelConfig,
    NewtonSchulzPlan,
    OptimConfig,
    StepResult,
    canonical_shapes,
    check_weights,
    embedding_lookback,
    is_decayed,
    is_hidden_matrix,
    muon_lr,
    muon_momentum,
    newton_schulz_plan,
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


def round_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """``x`` rounded to the nearest bfloat16 (ties to even) and returned as float32, which holds every
    bfloat16 exactly: a bfloat16 is the top half of a float32, so rounding is integer arithmetic on the bits."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & np.uint32(0xFFFF0000)
    return bits.view(np.float32)


def newton_schulz(update: np.ndarray, plan: NewtonSchulzPlan = JORDAN_PLAN, bf16: bool = False) -> np.ndarray:
    """Approximately orthogonal matrices with the singular vectors of ``update`` (k, rows, cols), each of
    the k on its own: the quintic Newton-Schulz iteration of torch.optim.Muon, X <- a X + (b A + c A^2) X
    with A = X X^T, after scaling X to Frobenius norm (about) 1 so every singular value starts in (0, 1].
    It pushes each singular value towards ~1 (0.7..1.2 after 5 Jordan steps): the update keeps its
    directions and loses its scale. ``plan`` gives the (a, b, c) of each step and the scaling.

    This runs in the backend's dtype on a stack of same-shape matrices per matmul call. With ``bf16`` it
    rounds what torch's bfloat16 tensors would hold (the scaled input and every product, each accumulated
    in float32 first) to bfloat16, so it follows the torch backend's bfloat16 iteration to rounding."""
    rounded = round_to_bfloat16 if bf16 else (lambda array: array)
    tall = update.shape[1] > update.shape[2]
    x = update.swapaxes(1, 2) if tall else update  # iterate on the wide orientation: A is the smaller square
    norms = np.sqrt(np.einsum("kij,kij->k", x, x))
    divisor = np.maximum(norms, plan.eps) if plan.margin is None else norms * (1 + plan.margin) + plan.eps
    x = rounded(x / divisor[:, None, None].astype(x.dtype))
    for a, b, c in plan.coefficients:
        gram = rounded(x @ x.swapaxes(1, 2))
        poly = gram @ gram
        poly *= c
        poly += b * gram
        x = rounded(rounded(poly) @ x + a * x)
    x = x.astype(update.dtype, copy=False)
    return x.swapaxes(1, 2) if tall else x


def muon_update(param: np.ndarray, grad: np.ndarray, momentum: np.ndarray, lr: float, optim: OptimConfig,
                step: int = 0) -> None:
    """One Muon step (``step`` counting from 0) on a stack of same-shape matrices (k, rows, cols), in the
    order of torch.optim.Muon (Nesterov momentum, decoupled weight decay):
        m = lerp(m, g, 1 - mu); u = lerp(g, m, mu); p *= 1 - lr wd; p -= adjusted lr * NS(u)."""
    mu = muon_momentum(optim, step)
    momentum += (1.0 - mu) * (grad - momentum)
    update = grad + mu * (momentum - grad)
    if optim.weight_decay:
        param *= 1.0 - lr * optim.weight_decay
    param -= muon_lr(lr, param.shape) * newton_schulz(update, newton_schulz_plan(optim), optim.muon_bf16)


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
        self.muon_names = [n for n in shapes if optim.optimizer == "muon" and is_hidden_matrix(n, shapes[n])]

        def place(name: str) -> tuple[int, ...]:
            """Muon's matrices grouped by shape, AdamW's matrices, gains and biases (sorted is stable)."""
            return (0, *shapes[name]) if name in self.muon_names else (1 if is_decayed(name, shapes[name]) else 2,)

        layout = sorted(shapes, key=place)
        self.n_muon = sum(math.prod(shapes[n]) for n in self.muon_names)
        self.n_decayed = sum(math.prod(shapes[n]) for n in layout if is_decayed(n, shapes[n]))
        self._offsets, offset = {}, 0
        for name in layout:
            self._offsets[name] = offset
            offset += math.prod(shapes[name])
        self._shapes = shapes
        # each run of same-shape Muon matrices is one (k, rows, cols) stack in the flat buffers
        self._muon_stacks: list[tuple[int, int, tuple[int, int]]] = []  # (offset, k, shape)
        for name in (n for n in layout if n in self.muon_names):
            if self._muon_stacks and self._muon_stacks[-1][2] == shapes[name]:
                start, k, shape = self._muon_stacks[-1]
                self._muon_stacks[-1] = (start, k + 1, shape)
            else:
                self._muon_stacks.append((self._offsets[name], 1, shapes[name]))
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
        result = self.accumulate_gradients(micro_batches)
        self.optimizer_update(lr)
        return result

    def accumulate_gradients(self, micro_batches: list[tuple[np.ndarray, np.ndarray]]) -> StepResult:
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
        return StepResult(loss=total, grad_norm=norm)

    def optimizer_update(self, lr: float) -> None:
        self.step += 1
        lr, m = float(lr), self.n_muon  # a NumPy scalar lr would upcast
        adamw_update(self.flat_params[m:], self.flat_grads[m:], self.exp_avg[m:], self.exp_avg_sq[m:],
                     self._scratch[m:], self.n_decayed - m, self.step, lr, self.optim_config)
        for start, k, shape in self._muon_stacks:
            stack = slice(start, start + k * math.prod(shape))
            param, grad, momentum = (flat[stack].reshape(k, *shape) for flat in
                                     (self.flat_params, self.flat_grads, self.exp_avg))
            muon_update(param, grad, momentum, lr * self.optim_config.muon_lr_scale, self.optim_config,
                        self.step - 1)

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

    def trace(self, tokens: np.ndarray, ablation: HeadAblation | None = None) -> ForwardTrace:
        idx = self._ids(tokens)
        if idx.shape[0] != 1:
            raise ValueError(f"trace takes one sequence, shape (1, T), got {idx.shape}")
        if ablation is not None:
            ablation.check(self.config)
        ws = self.workspace(idx.shape)
        # the training forward keeps the probabilities, the stream and the head outputs for its backward
        self.model.forward(ws, idx, ablation=ablation)
        c, T = self.config, idx.shape[1]
        heads = ws.y[:, 0].reshape(c.n_layer, T, c.n_head, c.n_embd // c.n_head).transpose(0, 2, 1, 3)
        # copies: the workspace is reused; residual[2l] is the stream entering block l, residual[-1] leaving the last
        return ForwardTrace(ws.logits[0].copy(), ws.att[:, 0].copy(), ws.residual[::2, 0].copy(), heads.copy())

    def generation_session(self, batch: int = 1) -> GenerationSession:
        return NumpyGenerationSession(self.model, batch)

    def get_weights(self) -> dict[str, np.ndarray]:
        return {name: param.astype(np.float32) for name, param in self.params.items()}

    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        check_weights(self.config, weights)
        for name, param in self.params.items():
            param[...] = weights[name]

    def state_names(self) -> list[tuple[str, np.ndarray]]:
        """(state key, the view holding it) of every optimizer state array, in canonical order."""
        first, second = self.views(self.exp_avg), self.views(self.exp_avg_sq)
        names = []
        for name in self._shapes:
            if name in self.muon_names:
                names.append((f"momentum_buffer.{name}", first[name]))
            else:
                names += [(f"exp_avg.{name}", first[name]), (f"exp_avg_sq.{name}", second[name])]
        return names

    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        state = {"step": np.array(float(self.step), np.float64)}
        if self.step:
            state.update({key: view.astype(np.float32) for key, view in self.state_names()})
        return state

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        step = int(float(state["step"]))
        names = self.state_names()
        missing = [key for key, _ in names if key not in state]
        if step and missing:
            raise ValueError(f"the optimizer state does not match this optimizer: no {missing[0]}")
        self.step = step
        for key, view in names:
            view[...] = state[key] if step else 0.0

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
    def __init__(self, model: NumpyGPT, batch: int = 1) -> None:
        if batch < 1:
            raise ValueError(f"a generation session needs batch >= 1, got {batch}")
        c = model.config
        self.model, self.batch = model, batch
        self.block_size = c.block_size
        shape = (c.n_layer, batch, c.n_head, c.block_size, c.n_embd // c.n_head)
        self.keys, self.values = np.zeros(shape, model.dtype), np.zeros(shape, model.dtype)
        self.reset()

    def reset(self) -> None:
        self.context = np.zeros((self.batch, 0), np.int64)  # what the cache holds, per row

    def feed_rows(self, tokens: np.ndarray) -> np.ndarray:
        cached, history = self.context.shape[1], self.context
        self.context, tokens, rebuild = self._extend(self.context, tokens)
        previous = self._previous(history, rebuild, embedding_lookback(self.model.config))
        logits = self.model.decode(self.keys, self.values, tokens, 0 if rebuild else cached, previous)
        return logits.astype(np.float32)

"""PyTorch backend: CUDA (bf16 autocast, TF32, fused AdamW), MPS or CPU."""

from __future__ import annotations

import contextlib
import functools
import hashlib

import numpy as np
import torch
from torch.nn import functional as F

from backends import torch_distributed
from backends.base import (
    Backend,
    ForwardTrace,
    GenerationSession,
    HeadAblation,
    ModelConfig,
    OptimConfig,
    OutOfMemory,
    StepResult,
    canonical_shapes,
    check_weights,
    is_decayed,
    is_hidden_matrix,
    muon_momentum,
    newton_schulz_plan,
    time_matmuls,
)
from backends.torch_adamw import CpuAdamW
from backends.torch_model import GPT, Decoder, KVCache, TraceRecorder
from backends.torch_muon import StackedMuon

DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")
CPU_ALLOCATION_FAILED = "can't allocate memory"  # the RuntimeError torch's CPU allocator raises


def out_of_memory_as_ours(method):
    """torch's out-of-memory errors (CUDA/MPS, or a failed CPU allocation) as ``base.OutOfMemory``."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except torch.OutOfMemoryError as exc:
            raise OutOfMemory(str(exc).splitlines()[0] if str(exc) else "out of memory") from None
        except RuntimeError as exc:
            if CPU_ALLOCATION_FAILED not in str(exc):
                raise
            raise OutOfMemory(str(exc).splitlines()[0]) from None

    return wrapper


def resolve_device(requested: str | None) -> torch.device:
    """``auto`` picks cuda > mps > cpu; an explicit device that is not there is a ValueError."""
    if requested in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = requested.split(":")[0]
    if kind not in DEVICE_KINDS:
        raise ValueError(f"unknown device {requested!r} (use auto, cpu, cuda, cuda:N or mps)")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but CUDA is not available here")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' asked for, but MPS is not available here")
    try:
        return torch.device(requested)
    except RuntimeError:  # e.g. "cpu:x"
        raise ValueError(f"invalid device {requested!r} (use auto, cpu, cuda, cuda:N or mps)") from None


class TorchBackend(Backend):
    name = "torch"

    @classmethod
    def join_process_group(cls, device: str | None) -> None:
        torch_distributed.init_process_group(device)

    @classmethod
    def all_reduce_mean(cls, values: list[float]) -> list[float]:
        return torch_distributed.all_reduce_mean(values)

    @classmethod
    def leave_process_group(cls, wait_for_peers: bool) -> None:
        torch_distributed.destroy_process_group(wait_for_peers)

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
        self.config = config
        self.optim_config = optim
        distributed = torch_distributed.is_active()
        # under torchrun the process group fixed the device: cuda:LOCAL_RANK or the CPU
        self._device = torch_distributed.rank_device() if distributed else resolve_device(device)
        self._dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
        self._rank = torch_distributed.rank()
        is_cuda = self._device.type == "cuda"
        if is_cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        # bf16 autocast for float32 models on GPUs that have bf16 (Ampere on); the parameters and AdamW
        # moments stay in full precision. float64 exists for exact cross-checks, so it is never autocast.
        use_bf16 = is_cuda and self._dtype == torch.float32 and torch.cuda.is_bf16_supported(False)
        self._autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext()
        self.generator = torch.Generator(device=self._device)
        self.generator.manual_seed(seed + self._rank)  # each rank its own dropout masks
        self.model = GPT(config).to(self._device, self._dtype)
        self.set_weights(weights)
        self.params = dict(self.model.named_parameters())
        shapes = canonical_shapes(config)
        # with Muon the hidden matrices leave AdamW: for torch.optim.Muon (Newton-Schulz in bfloat16) on a
        # GPU, for the same update in float32 and batched per shape on the CPU (torch_muon.StackedMuon)
        self.muon_names = [n for n in self.params if optim.optimizer == "muon" and is_hidden_matrix(n, shapes[n])]
        adamw_params = {n: p for n, p in self.params.items() if n not in self.muon_names}
        decayed = [p for n, p in adamw_params.items() if is_decayed(n, shapes[n])]
        not_decayed = [p for n, p in adamw_params.items() if not is_decayed(n, shapes[n])]
        groups = [{"params": decayed, "weight_decay": optim.weight_decay}, {"params": not_decayed, "weight_decay": 0.0}]
        # on the CPU torch's per-tensor loop (measured 9% faster than foreach here), written out in
        # torch_adamw so that start-up does not import torch._dynamo; torch's own elsewhere, fused on CUDA
        betas = (optim.beta1, optim.beta2)
        self.optimizer: torch.optim.AdamW | CpuAdamW = (
            CpuAdamW(groups, betas, optim.eps) if self._device.type == "cpu"
            else torch.optim.AdamW(groups, lr=0.0, betas=betas, eps=optim.eps, fused=is_cuda or None)
        )
        # torch.optim.Muon takes one (a, b, c) for every step: Polar Express's table per step needs StackedMuon,
        # in bfloat16 off the CPU like torch.optim.Muon. Either takes its momentum from param_groups each step.
        self.muon: torch.optim.Muon | StackedMuon | None = None
        on_cpu = self._device.type == "cpu"
        if self.muon_names and (on_cpu or optim.muon_coefficients != "jordan"):
            self.muon = StackedMuon({n: self.params[n] for n in self.muon_names}, optim.weight_decay,
                                    optim.muon_momentum, newton_schulz_plan(optim), optim.muon_bf16 or not on_cpu)
        elif self.muon_names:
            self.muon = torch.optim.Muon(
                [self.params[n] for n in self.muon_names], lr=0.0, weight_decay=optim.weight_decay,
                momentum=optim.muon_momentum, ns_steps=optim.muon_ns_steps,
            )
        # the compiled and DDP wrappers are used for training only; weights are read from the plain
        # module, so checkpoints hold canonical names (no ``_orig_mod.`` / ``module.`` prefixes)
        self._train_forward = torch.compile(self.model) if compile else self.model
        self._ddp = torch_distributed.wrap(self._train_forward, self._device) if distributed else None
        if self._ddp is not None:
            self._train_forward = self._ddp

    @property
    def device(self) -> str:
        return str(self._device)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(array, dtype=np.int64)).to(self._device)

    def _loss(self, model, inputs: np.ndarray, targets: np.ndarray) -> torch.Tensor:
        with self._autocast:
            logits = model(self._tensor(inputs))
        # bf16 autocast logits are upcast for the loss; float64 ones (parity tests) stay float64
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), self._tensor(targets).view(-1))

    @out_of_memory_as_ours
    def train_step(self, micro_batches: list[tuple[np.ndarray, np.ndarray]], lr: float) -> StepResult:
        result = self.accumulate_gradients(micro_batches)
        self.optimizer_update(lr)
        return result

    @out_of_memory_as_ours
    def accumulate_gradients(self, micro_batches: list[tuple[np.ndarray, np.ndarray]]) -> StepResult:
        # the last step's gradients: optimizer_update leaves them, so that the bench can repeat an update
        self.model.zero_grad(set_to_none=True)
        self._train_forward.train()
        last = len(micro_batches) - 1
        with _dropout_rng(self.generator, self._device):
            total = torch.zeros((), device=self._device, dtype=self._dtype)
            for i, (inputs, targets) in enumerate(micro_batches):
                # under DDP gradients accumulate locally and are averaged across ranks once, during
                # the backward of the last micro-batch
                with self._ddp.no_sync() if self._ddp is not None and i < last else contextlib.nullcontext():
                    loss = self._loss(self._train_forward, inputs, targets) / len(micro_batches)
                    loss.backward()
                total += loss.detach()  # summed on the device: one host sync per step, not per micro-batch
        clip = self.optim_config.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        return StepResult(loss=total.item(), grad_norm=float(norm))

    @out_of_memory_as_ours
    def optimizer_update(self, lr: float) -> None:
        optim = self.optim_config
        step = self.step_count() if optim.muon_momentum_warmup else 0  # before AdamW counts this step
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        if self.muon is not None:
            self.muon.param_groups[0]["lr"] = lr * optim.muon_lr_scale
            self.muon.param_groups[0]["momentum"] = muon_momentum(optim, step)
            self.muon.step()

    @torch.inference_mode()
    @out_of_memory_as_ours
    def eval_loss(self, inputs: np.ndarray, targets: np.ndarray) -> float:
        self.model.eval()
        return float(self._loss(self.model, inputs, targets))

    @torch.inference_mode()
    @out_of_memory_as_ours
    def logits(self, inputs: np.ndarray) -> np.ndarray:
        self.model.eval()
        with self._autocast:
            out = self.model(self._tensor(inputs))
        return out.float().cpu().numpy()

    @torch.inference_mode()
    @out_of_memory_as_ours
    def trace(self, tokens: np.ndarray, ablation: HeadAblation | None = None) -> ForwardTrace:
        if tokens.ndim != 2 or tokens.shape[0] != 1:
            raise ValueError(f"trace takes one sequence, shape (1, T), got {tokens.shape}")
        if ablation is not None:
            ablation.check(self.config)
        self.model.eval()
        recorder = TraceRecorder(ablation)
        with self._autocast:
            logits = self.model(self._tensor(tokens), recorder=recorder)
        dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 under autocast is upcast

        def stacked(tensors: list[torch.Tensor]) -> np.ndarray:  # per layer (1, ...) -> (layers, ...)
            return torch.cat(tensors).to(dtype).cpu().numpy()

        return ForwardTrace(logits[0].to(dtype).cpu().numpy(), stacked(recorder.attention),
                            stacked(recorder.residual), stacked(recorder.head_outputs))

    def generation_session(self, batch: int = 1) -> GenerationSession:
        return TorchGenerationSession(self, batch)

    def get_weights(self) -> dict[str, np.ndarray]:
        return {n: p.detach().float().cpu().numpy() for n, p in self.model.named_parameters()}

    @torch.no_grad()
    def set_weights(self, weights: dict[str, np.ndarray]) -> None:
        check_weights(self.config, weights)
        for name, param in self.model.named_parameters():
            param.copy_(torch.from_numpy(np.asarray(weights[name])))

    def get_optimizer_state(self) -> dict[str, np.ndarray]:
        state: dict[str, np.ndarray] = {"step": np.array(0.0, np.float64)}
        momentum = self._muon_buffers()
        for name, param in self.params.items():
            if name in self.muon_names:
                if name in momentum:
                    state[f"momentum_buffer.{name}"] = momentum[name].float().cpu().numpy()
                continue
            entry = self.optimizer.state.get(param)
            if not entry:
                continue
            state["step"] = np.array(float(entry["step"]), np.float64)
            state[f"exp_avg.{name}"] = entry["exp_avg"].float().cpu().numpy()
            state[f"exp_avg_sq.{name}"] = entry["exp_avg_sq"].float().cpu().numpy()
        return state

    def set_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        step = float(state["step"])
        if step == 0:
            return
        keys = [f"momentum_buffer.{n}" if n in self.muon_names else f"exp_avg.{n}" for n in self.params]
        missing = [key for key in keys if key not in state]
        if missing:
            raise ValueError(f"the optimizer state does not match this optimizer: no {missing[0]}")
        for name in self.muon_names:
            buffer = torch.tensor(state[f"momentum_buffer.{name}"], dtype=self._dtype, device=self._device)
            if isinstance(self.muon, StackedMuon):
                self.muon.momentum_buffers()[name].copy_(buffer)
            else:
                self.muon.state[self.params[name]] = {"momentum_buffer": buffer}
        # fused AdamW (our CUDA optimizer) keeps a float32 step on the parameter's device; the default
        # implementation keeps it on the CPU
        step_device = self._device if self.optimizer.defaults.get("fused") else torch.device("cpu")
        # torch.tensor copies: the moments are updated in place and must not alias the caller's arrays
        for name, param in self.params.items():
            if name in self.muon_names:
                continue
            self.optimizer.state[param] = {
                "step": torch.tensor(step, dtype=torch.float32, device=step_device),
                "exp_avg": torch.tensor(state[f"exp_avg.{name}"], dtype=self._dtype, device=self._device),
                "exp_avg_sq": torch.tensor(state[f"exp_avg_sq.{name}"], dtype=self._dtype, device=self._device),
            }

    def _muon_buffers(self) -> dict[str, torch.Tensor]:
        """Muon's momentum by parameter name (none before the first step of torch.optim.Muon)."""
        if isinstance(self.muon, StackedMuon):
            return self.muon.momentum_buffers() if self.step_count() else {}
        if self.muon is None:
            return {}
        return {n: self.muon.state[self.params[n]]["momentum_buffer"] for n in self.muon_names
                if self.params[n] in self.muon.state}

    def step_count(self) -> int:
        entry = self.optimizer.state.get(self.params["wte.weight"])
        return int(entry["step"]) if entry else 0

    def synchronize(self) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        elif self._device.type == "mps":
            torch.mps.synchronize()

    @staticmethod
    def set_threads(n: int) -> None:
        # torch keeps the count per thread (OpenMP's nthreads-var): this sets the calling thread's, and the
        # default of threads that have not run a parallel op yet; threads that have keep theirs
        torch.set_num_threads(n)

    @staticmethod
    def get_threads() -> int:
        return torch.get_num_threads()

    def matmul_peak_flops(self, seconds: float = 0.5) -> float:
        """On CUDA the matmuls run in bf16 under autocast (where the GPU has it), so the peak is a bf16
        product, 4096 wide to fill the GPU; launches are asynchronous, so the clock stops after a sync."""
        size, dtype, synchronize = 1024, torch.float32, lambda: None
        if self._device.type == "cuda":
            size, synchronize = 4096, torch.cuda.synchronize
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(False) else torch.float32
        elif self._device.type == "mps":
            synchronize = torch.mps.synchronize
        a, b = (torch.randn(size, size, device=self._device, dtype=dtype) for _ in range(2))
        return time_matmuls(lambda: torch.mm(a, b), size, seconds, synchronize)

    def get_rng_state(self) -> dict[str, np.ndarray]:
        return {"torch_generator": self.generator.get_state().numpy()}

    def set_rng_state(self, state: dict[str, np.ndarray]) -> None:
        if "torch_generator" in state:
            saved = np.asarray(state["torch_generator"], np.uint8)
            self.generator.set_state(torch.from_numpy(saved))
            if self._rank:
                # a checkpoint holds rank 0's stream; the other ranks branch off it deterministically
                # so that their dropout masks stay different from rank 0's
                digest = hashlib.sha256(saved.tobytes() + self._rank.to_bytes(4, "little")).digest()
                self.generator.manual_seed(int.from_bytes(digest[:8], "little"))


@contextlib.contextmanager
def _dropout_rng(generator: torch.Generator, device: torch.device):
    """Run dropout from the backend's own generator so a checkpoint can restore it exactly."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type):
        if device.type == "cuda":
            torch.cuda.set_rng_state(generator.get_state(), device)
        else:
            torch.set_rng_state(generator.get_state())
        yield
        state = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.get_rng_state()
        generator.set_state(state)


class TorchGenerationSession(GenerationSession):
    def __init__(self, backend: TorchBackend, batch: int = 1) -> None:
        if batch < 1:
            raise ValueError(f"a generation session needs batch >= 1, got {batch}")
        self.backend = backend
        self.model = backend.model
        self.batch = batch
        self.block_size = backend.config.block_size
        self.decoder = Decoder(self.model)
        self.reset()

    def reset(self) -> None:
        self.context = np.zeros((self.batch, 0), np.int64)  # what the cache holds, per row
        self.cache = KVCache(self.backend.config, self.batch, self.backend._device, self.backend._dtype)

    @torch.inference_mode()
    def feed_rows(self, tokens: np.ndarray) -> np.ndarray:
        if self.model.training:
            self.model.eval()
        history = self.context
        self.context, tokens, rebuild = self._extend(self.context, tokens)
        if rebuild:
            self.cache.length = 0
        previous = self._previous(history, rebuild, self.decoder.lookback)
        if previous is not None:
            previous = torch.from_numpy(np.ascontiguousarray(previous)).to(self.backend._device)
        with self.backend._autocast:
            if tokens.shape[1] == 1 and self.cache.length > 0:
                logits = self.decoder(self.cache, torch.from_numpy(tokens[:, 0]).to(self.backend._device), previous)
            else:
                idx = torch.from_numpy(np.ascontiguousarray(tokens)).to(self.backend._device)
                logits = self.model(idx, self.cache, previous=previous)[:, -1]
                self.cache.commit()
        return logits.float().cpu().numpy()

"""The NumPy backend against the PyTorch one: the same weights and batch give the same loss, logits,
gradients and AdamW trajectory; checkpoints move between the two; KV-cached decoding equals a full
forward; the float32 path stays float32; and the backend works where torch cannot be imported."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config, train_tiny
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from backends.base import ModelConfig, OptimConfig, init_weights
from backends.numpy_backend import NumpyBackend
from minigpt_tui.errors import MiniGPTError
from minigpt_tui.training.data import read_corpus
from minigpt_tui.training.runs import build_backend, load_model, open_run
from minigpt_tui.training.trainer import resume_training

torch = pytest.importorskip("torch")
from torch.nn import functional as F  # noqa: E402

from backends.torch_backend import TorchBackend  # noqa: E402

CONFIGS = {
    "tied-learned": ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16),
    "untied-sinusoidal-bias": ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=4, n_embd=16, bias=True,
                                          pos_encoding="sinusoidal", tie_weights=False),
    # the speedrun's architecture: rotary positions, QK-norm, ReLU^2, zero-initialised projections
    "rope-qknorm-relu2-zeroinit": ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16,
                                              pos_encoding="rope", qk_norm=True, activation="relu2",
                                              zero_init_proj=True),
}
TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
OPTIM = OptimConfig(weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0)


def batch(config: ModelConfig, rng: np.random.Generator, B: int = 3, T: int = 7) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.integers(0, config.vocab_size, (B, T + 1))
    return ids[:, :-1], ids[:, 1:]


def relative(x: np.ndarray, ref: np.ndarray) -> float:
    scale = np.abs(ref).max()  # 0 for a gradient that is exactly zero (zero-initialised projections)
    return float(np.abs(x - ref).max() / scale) if scale else float(np.abs(x).max())


def pair(config: ModelConfig, dtype: str, optim: OptimConfig = OPTIM) -> tuple[NumpyBackend, TorchBackend]:
    weights = init_weights(config, 0)
    return NumpyBackend(config, weights, optim, dtype=dtype), TorchBackend(config, weights, optim, device="cpu",
                                                                           dtype=dtype)


def torch_loss_logits_grads(backend: TorchBackend, inputs: np.ndarray, targets: np.ndarray):
    """Autograd on the torch backend's own module: the reference every hand-written backward must meet."""
    model = backend.model
    model.zero_grad(set_to_none=True)
    logits = model(torch.from_numpy(inputs))
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), torch.from_numpy(targets).reshape(-1))
    loss.backward()
    return loss.item(), logits.detach().numpy(), {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", CONFIGS)
def test_loss_logits_and_every_gradient_match_torch(name, dtype):
    config, tol = CONFIGS[name], TOLERANCE[dtype]
    numpy_backend, torch_backend = pair(config, dtype)
    inputs, targets = batch(config, np.random.default_rng(1))
    loss, logits, grads = torch_loss_logits_grads(torch_backend, inputs, targets)

    ws = numpy_backend.workspace(inputs.shape)
    numpy_backend.model.forward(ws, inputs)
    assert ws.logits.dtype == np.dtype(dtype)
    assert relative(ws.logits, logits) < tol
    assert numpy_backend.loss_and_grads(inputs, targets, scale=1.0 / targets.size) == pytest.approx(loss, rel=tol)
    assert numpy_backend.eval_loss(inputs, targets) == pytest.approx(torch_backend.eval_loss(inputs, targets), rel=tol)
    assert grads.keys() == numpy_backend.grads.keys()
    errors = {n: relative(numpy_backend.grads[n], g) for n, g in grads.items()}
    assert max(errors.values()) < tol, errors


@pytest.mark.parametrize("name", CONFIGS)
def test_twenty_adamw_steps_with_clipping_match_torch(name):
    config = CONFIGS[name]
    optim = OptimConfig(weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=0.7)  # clips some steps, not all
    numpy_backend, torch_backend = pair(config, "float64", optim)
    rng = np.random.default_rng(2)
    norms = []
    for step in range(20):
        micro_batches = [batch(config, rng), batch(config, rng)]  # gradient accumulation over two
        lr = 3e-2 * (1 - step / 20)
        ours, reference = numpy_backend.train_step(micro_batches, lr), torch_backend.train_step(micro_batches, lr)
        assert ours.loss == pytest.approx(reference.loss, rel=1e-10)
        # rounding differences (1e-16) grow through 20 AdamW steps; the parameters are bounded at 1e-8 below
        assert ours.grad_norm == pytest.approx(reference.grad_norm, rel=1e-8)
        norms.append(reference.grad_norm)
    assert sum(n > optim.grad_clip for n in norms) >= 3  # clipping really happened
    for n, p in torch_backend.model.named_parameters():
        assert np.abs(numpy_backend.params[n] - p.detach().numpy()).max() < 1e-8, n
    ours, reference = numpy_backend.get_optimizer_state(), torch_backend.get_optimizer_state()
    assert ours.keys() == reference.keys() and float(ours["step"]) == float(reference["step"]) == 20
    for key, value in reference.items():
        np.testing.assert_allclose(ours[key], value, rtol=1e-5, atol=1e-12, err_msg=key)


def next_token_probs(backend, context: np.ndarray) -> np.ndarray:
    logits = backend.logits(context)[0, -1].astype(np.float64)
    probs = np.exp(logits - logits.max())
    return probs / probs.sum()


@pytest.mark.parametrize("trained_with, loaded_with", [("torch", "numpy"), ("numpy", "torch")])
def test_a_checkpoint_gives_the_same_next_token_distribution_under_both(tmp_path, corpus_path, trained_with,
                                                                         loaded_with):
    out = tmp_path / "run"
    train_tiny(out, corpus_path, tiny_config(backend=trained_with, max_iters=6))
    run = open_run(out)
    original, _ = load_model(run)
    other, _ = load_model(run, backend=loaded_with)
    assert (original.name, other.name) == (trained_with, loaded_with)
    context = np.asarray([run.tokenizer.encode("The king and the")])
    expected = next_token_probs(original, context)
    np.testing.assert_allclose(next_token_probs(other, context), expected, atol=1e-6)
    np.testing.assert_allclose(other.generation_session().feed(list(context[0])),
                               original.generation_session().feed(list(context[0])), atol=1e-5)


@pytest.mark.parametrize("first, second", [("torch", "numpy"), ("numpy", "torch")])
def test_resuming_with_the_other_backend_continues_the_same_run(tmp_path, corpus_path, first, second):
    """float64 so that the two continuations can be compared tightly; dropout is 0 in the tiny preset."""
    a, b = tmp_path / "same", tmp_path / "other"
    train_tiny(a, corpus_path, tiny_config(backend=first, dtype="float64", max_iters=4, eval_interval=4))
    shutil.copytree(a, b)
    corpus = read_corpus(corpus_path)
    same = resume_training(a, corpus, {"max_iters": 8})
    other = resume_training(b, corpus, {"max_iters": 8, "backend": second})
    assert (same.backend.name, other.backend.name, other.step) == (first, second, 4)
    assert same.run().reason == other.run().reason == "finished"
    assert open_run(b).config.backend == second
    ours, reference = other.backend.get_weights(), same.backend.get_weights()
    for name, value in reference.items():
        np.testing.assert_allclose(ours[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    assert other.best_val_loss == pytest.approx(same.best_val_loss, rel=1e-9)


def expected_windows(block_size: int, feeds: list[list[int]]) -> list[list[int]]:
    """The context a session should hold after each feed: on overflow it keeps the recent half."""
    context, length, windows = [], 0, []
    for tokens in feeds:
        context = context + tokens
        if length + len(tokens) > block_size:
            context = context[-max(block_size // 2, min(len(tokens), block_size)) :]
            length = len(context)
        else:
            length += len(tokens)
        windows.append(context)
    return windows


@pytest.mark.parametrize("name", CONFIGS)
def test_kv_cache_session_equals_full_forward_and_torch(name):
    config = CONFIGS[name]  # block_size 8: the feeds below overflow it twice
    numpy_backend, torch_backend = pair(config, "float32")
    rng = np.random.default_rng(3)
    feeds = [[1, 2, 3]] + [[int(t)] for t in rng.integers(0, 11, 9)] + [[4, 5]] + [[6]] * 4
    ours, reference = numpy_backend.generation_session(), torch_backend.generation_session()
    for tokens, window in zip(feeds, expected_windows(config.block_size, feeds), strict=True):
        logits = ours.feed(tokens)
        assert logits.dtype == np.float32 and logits.shape == (config.vocab_size,)
        np.testing.assert_allclose(logits, numpy_backend.logits(np.asarray([window]))[0, -1], atol=1e-5)
        np.testing.assert_allclose(logits, reference.feed(tokens), atol=1e-5)
    ours.reset()
    np.testing.assert_allclose(ours.feed([7]), numpy_backend.logits(np.asarray([[7]]))[0, -1], atol=1e-5)


def all_arrays(obj) -> list[np.ndarray]:
    found = []
    for value in vars(obj).values():
        for item in value if isinstance(value, tuple) else (value,):
            if isinstance(item, np.ndarray):
                found.append(item)
    return found


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_buffer_keeps_the_requested_dtype(dtype):
    config = ModelConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.1, bias=True,
                         tie_weights=False)
    backend = NumpyBackend(config, init_weights(config, 0), OPTIM, dtype=dtype)
    rng = np.random.default_rng(4)
    result = backend.train_step([batch(config, rng), batch(config, rng)], 1e-3)
    assert isinstance(result.loss, float) and isinstance(result.grad_norm, float)
    backend.eval_loss(*batch(config, rng, B=2))
    assert backend.logits(batch(config, rng)[0]).dtype == np.float32  # the interface's dtype
    session = backend.generation_session()
    assert session.feed([1, 2]).dtype == np.float32
    arrays = [backend.flat_params, backend.flat_grads, backend.exp_avg, backend.exp_avg_sq, session.keys]
    for ws in backend._workspaces.values():
        arrays += [a for a in all_arrays(ws) if a.dtype.kind == "f"]
    assert len(arrays) > 40
    assert {a.dtype for a in arrays} == {np.dtype(dtype)}
    assert {a.dtype for a in backend.get_weights().values()} == {np.dtype(np.float32)}


def test_dropout_rng_state_survives_a_checkpoint_exactly():
    config = ModelConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.3)
    rng = np.random.default_rng(5)
    first, second = [batch(config, rng)], [batch(config, rng)]
    backend = NumpyBackend(config, init_weights(config, 0), OPTIM, seed=5)
    backend.train_step(first, 1e-2)
    saved = load_safetensors(save_safetensors(backend.get_rng_state()))  # as a checkpoint stores it
    weights, optimizer = backend.get_weights(), backend.get_optimizer_state()
    expected = backend.train_step(second, 1e-2)

    restored = NumpyBackend(config, weights, OPTIM, seed=99)
    restored.set_optimizer_state(optimizer)
    restored.set_rng_state({"torch_generator": np.zeros(8, np.uint8)})  # another backend's state: ignored
    restored.set_rng_state(saved)
    assert restored.train_step(second, 1e-2) == expected
    for name, value in backend.get_weights().items():
        np.testing.assert_array_equal(restored.get_weights()[name], value)
    unrestored = NumpyBackend(config, weights, OPTIM, seed=99)
    unrestored.set_optimizer_state(optimizer)
    assert unrestored.train_step(second, 1e-2).loss != expected.loss  # the masks do depend on the state


def test_bad_device_or_dtype_is_a_clear_error():
    config = CONFIGS["tied-learned"]
    with pytest.raises(ValueError, match="CPU"):
        NumpyBackend(config, init_weights(config, 0), OPTIM, device="cuda")
    with pytest.raises(ValueError, match="float16"):
        NumpyBackend(config, init_weights(config, 0), OPTIM, dtype="float16")
    train_config = tiny_config(backend="numpy", device="mps")
    with pytest.raises(MiniGPTError, match="CPU"):
        build_backend(train_config.with_vocab_size(11), init_weights(train_config.with_vocab_size(11).model, 0))


NO_TORCH = """
import sys

class RefuseTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is not importable in this test")

sys.modules.pop("torch", None)
sys.meta_path.insert(0, RefuseTorch())
import numpy as np

from backends import load_backend
from backends.base import ModelConfig, OptimConfig, init_weights

config = ModelConfig(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=8)
backend = load_backend("numpy")(config, init_weights(config, 0), OptimConfig())
ids = np.arange(10).reshape(2, 5) % 5
before = backend.eval_loss(ids[:, :-1], ids[:, 1:])
for _ in range(3):
    backend.train_step([(ids[:, :-1], ids[:, 1:])], 1e-2)
after = backend.eval_loss(ids[:, :-1], ids[:, 1:])
print("trained", before > after, any(m.split(".")[0] == "torch" for m in sys.modules))
"""


def test_runs_where_torch_cannot_be_imported():
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", NO_TORCH], cwd=root, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "trained True False"

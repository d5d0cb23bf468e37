"""The GPT as a torch.nn.Module (nanoGPT layout), with an optional KV cache for decoding."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn import functional as F

from backends.base import (
    QK_NORM_EPS,
    HeadAblation,
    ModelConfig,
    bigram_pairs,
    embedding_lookback,
    rope_tables,
    sinusoidal_positions,
    smear_gate_inputs,
)


def activation(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The MLP's nonlinearity: GPT-2's tanh GELU, the exact (erf) GELU, or ReLU^2 (modded-nanogpt)."""
    if kind == "relu2":
        return F.relu(x).square()
    return F.gelu(x, approximate="tanh" if kind == "gelu_tanh" else "none")


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """cap * tanh(logits / cap) (0: off): about the identity for small logits, bounded by cap (Gemma 2,
    modded-nanogpt). bf16 autocast logits are upcast first: tanh near its saturation needs the bits."""
    if not cap:
        return logits
    return cap * torch.tanh(logits.to(torch.promote_types(logits.dtype, torch.float32)) / cap)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + hs/2) of x (..., T, hs) by the angles whose cos and sin (T, hs/2)
    are given (same convention as numpy_layers.rope_forward)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class QKTransform(nn.Module):
    """QK-norm and rotary positions on (B, nh, T, hs) queries and keys; no parameters.

    RMS norm without a gain bounds |q.k| by hs, so attention logits cannot blow up; RoPE makes q.k depend
    on the positions only through their difference. Both are off in the GPT-2 baseline."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.qk_norm = config.qk_norm
        self.rope = config.pos_encoding == "rope"
        if self.rope:
            cos, sin = rope_tables(config.block_size, config.n_embd // config.n_head)
            # float64 tables: .to(dtype) casts them with the model, exact for float64 parity checks
            self.register_buffer("cos", torch.from_numpy(cos), persistent=False)
            self.register_buffer("sin", torch.from_numpy(sin), persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        if self.qk_norm:
            q = F.rms_norm(q, (q.shape[-1],), eps=QK_NORM_EPS)
            k = F.rms_norm(k, (k.shape[-1],), eps=QK_NORM_EPS)
        if self.rope:
            T = q.shape[-2]
            cos, sin = self.cos[start : start + T], self.sin[start : start + T]
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        return q, k


class TraceRecorder:
    """What an inspection forward records, per layer, and the heads it knocks out. With one, attention is
    computed explicitly (SDPA never materialises the probabilities); training never passes one."""

    def __init__(self, ablation: HeadAblation | None = None) -> None:
        self.ablation = ablation
        self.attention: list[torch.Tensor] = []  # (B, nh, T, T) per layer
        self.head_outputs: list[torch.Tensor] = []  # (B, nh, T, hs) per layer, after the ablation
        self.residual: list[torch.Tensor] = []  # (B, T, C) after the embedding and after each block

    def ablate(self, y: torch.Tensor, layer: int) -> torch.Tensor:
        """y (B, nh, T, hs) with the ablated heads of ``layer`` replaced (a copy when any is)."""
        if self.ablation is None or not self.ablation.heads[layer].any():
            return y
        y = y.clone()
        for head in self.ablation.heads[layer].nonzero()[0]:
            value = self.ablation.replacement(layer, int(head))
            y[:, head] = torch.as_tensor(value, dtype=y.dtype, device=y.device)
        return y


class LayerNorm(nn.Module):
    """LayerNorm with an optional bias (torch's own cannot drop just the bias)."""

    def __init__(self, ndim: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout
        self.transform = QKTransform(config) if config.qk_norm or config.pos_encoding == "rope" else None
        if config.value_embedding:  # this layer's multiple of the shared value-embedding rows (GPT.value_embed)
            self.ve_gain = nn.Parameter(torch.ones(1))

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, recorder: TraceRecorder | None = None,
        ve: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        # (B, T, 3C) -> three (B, nh, T, hs): heads become a batch dimension
        q, k, v = self.c_attn(x).split(C, dim=2)
        if ve is not None:
            # value embeddings: (B, T, C) rows of the input tokens, split into heads below like v; added
            # before the cache and the recorder, so that both see the values attention reads
            v = v + (self.ve_gain * ve).to(v.dtype)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.transform is not None:  # with a cache, the new tokens sit at positions cache.length..
            q, k = self.transform(q, k, cache.length if cache is not None else 0)
        if recorder is not None:
            # inspection only: SDPA never materialises the probabilities, so compute them explicitly
            # from the same q, k, v (whatever the lines above do to them) and record them
            att = (q @ k.transpose(-2, -1)) * (C // self.n_head) ** -0.5
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
            y = recorder.ablate(att @ v, layer)
            recorder.attention.append(att)
            recorder.head_outputs.append(y)
        elif cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True
            )
        else:
            k, v = cache.append(layer, k, v)
            # a single new query sees every cached key; a prompt of T > 1 needs the causal mask,
            # offset so that query i sees keys up to (past + i)
            mask = None if T == 1 else cache.mask(T, k.shape[2], x.device)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.activation = config.activation
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(activation(self.c_fc(x), self.activation)))


class Block(nn.Module):
    """Pre-LN: normalise the input of each sub-layer, keep the residual stream un-normalised."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0, recorder: TraceRecorder | None = None,
        ve: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, recorder, ve)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        if config.pos_encoding == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        elif config.pos_encoding == "sinusoidal":
            # sinusoids are defined for any position: keep a table 4x the context for long prompts
            table = torch.from_numpy(sinusoidal_positions(4 * config.block_size, config.n_embd))
            self.register_buffer("sinusoids", table, persistent=False)
        if config.value_embedding:
            # modded-nanogpt keeps three tables, each shared by a layer of the first and of the last three of
            # 12; with 4 layers one table shared by all is the simple form (each layer has its own gain), and
            # it costs one more wte-sized table, not n_layer of them
            self.value_embed = nn.Embedding(config.vocab_size, config.n_embd)
        if config.bigram_embedding:  # row previous * V + current: exact for a character vocabulary
            self.bigram = nn.Embedding(config.vocab_size * config.vocab_size, config.n_embd)
        if config.smear_gate:
            self.smear_gate = nn.Linear(smear_gate_inputs(config), 1, bias=False)
            self.smear_lambda = nn.Parameter(torch.zeros(1))
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = LayerNorm(config.n_embd, config.bias)
        if not config.tie_weights:
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

    def positions(self, start: int, length: int, device: torch.device) -> torch.Tensor | float:
        """What the embedding adds: a table's rows, or 0 with rotary positions (applied in attention)."""
        if self.config.pos_encoding == "learned":
            return self.wpe(torch.arange(start, start + length, device=device))
        if self.config.pos_encoding == "rope":
            return 0.0
        return self.sinusoids[start : start + length]

    def embed(self, idx: torch.Tensor, start: int) -> torch.Tensor:
        """(B, T) ids at positions start.. -> (B, T, C): token and position embeddings, the smear gate's mix of
        each with the one before (numpy_layers.smear_forward), plus the bigram rows from position 1 on."""
        x = self.wte(idx) + self.positions(start, idx.shape[1], idx.device)
        if self.config.smear_gate:
            gate = torch.sigmoid(self.smear_gate(x[:, 1:, : self.smear_gate.in_features]))  # (B, T - 1, 1)
            x = torch.cat([x[:, :1], x[:, 1:] + self.smear_lambda * gate * x[:, :-1]], dim=1)
        if self.config.bigram_embedding:
            x = torch.cat([x[:, :1], x[:, 1:] + self.bigram(bigram_pairs(idx, self.config.vocab_size))], dim=1)
        return x

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, recorder: TraceRecorder | None = None,
                previous: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab) logits. A ``recorder`` (for inspection) receives each layer's
        attention probabilities, head outputs and the residual stream, and may knock heads out. ``previous``
        (B,), the tokens before idx, is what the bigram embedding and smear gate read at idx's first position
        when a cache holds the ones before."""
        start = cache.length if cache is not None else 0
        if previous is not None:  # embed one position earlier, then drop it
            x = self.embed(torch.cat([previous[:, None], idx], dim=1), start - 1)[:, 1:]
        else:
            x = self.embed(idx, start)
        x = self.drop(x)
        ve = self.value_embed(idx) if self.config.value_embedding else None  # (B, T, C), no dropout
        if recorder is not None:
            recorder.residual.append(x)
        for layer, block in enumerate(self.h):
            x = block(x, cache, layer, recorder, ve)
            if recorder is not None:
                recorder.residual.append(x)
        x = self.ln_f(x)
        head = self.wte.weight if self.config.tie_weights else self.lm_head.weight
        return softcap(F.linear(x, head), self.config.logit_softcap)


class KVCache:
    """Preallocated keys and values, (n_layer, B, nh, block_size, hs), filled left to right."""

    def __init__(self, config: ModelConfig, batch: int, device: torch.device, dtype: torch.dtype) -> None:
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch, config.n_head, config.block_size, hs)
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.length = 0  # positions committed by earlier forwards
        self._pending = 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + k.shape[2]
        self.keys[layer, :, :, self.length : end] = k
        self.values[layer, :, :, self.length : end] = v
        self._pending = k.shape[2]
        return self.keys[layer, :, :, :end], self.values[layer, :, :, :end]

    def commit(self) -> None:
        self.length += self._pending
        self._pending = 0

    def mask(self, n_new: int, n_total: int, device: torch.device) -> torch.Tensor:
        rows = torch.arange(n_new, device=device)[:, None] + (n_total - n_new)
        return torch.arange(n_total, device=device)[None, :] <= rows


class Decoder:
    """Logits for one new token per row at a time, over a model's KV cache.

    The same math as ``GPT.forward`` written with bare functional calls on tensors gathered once:
    for a single token, per-module Python overhead, not arithmetic, is what costs time on a CPU.
    Parameters are updated in place by the optimizer, so the gathered references stay current.
    """

    def __init__(self, model: GPT) -> None:
        self.model = model
        self.layers = [
            (
                b.ln_1.weight,
                b.ln_1.bias,
                b.attn.c_attn.weight,
                b.attn.c_attn.bias,
                b.attn.c_proj.weight,
                b.attn.c_proj.bias,
                b.ln_2.weight,
                b.ln_2.bias,
                b.mlp.c_fc.weight,
                b.mlp.c_fc.bias,
                b.mlp.c_proj.weight,
                b.mlp.c_proj.bias,
                getattr(b.attn, "ve_gain", None),
            )
            for b in model.h
        ]
        config = model.config
        self.head = model.wte.weight if config.tie_weights else model.lm_head.weight
        self.n_embd, self.n_head = config.n_embd, config.n_head
        self.transforms = [b.attn.transform for b in model.h]
        self.activation = config.activation
        self.value_embed = model.value_embed.weight if config.value_embedding else None
        self.lookback = embedding_lookback(config)
        self.logit_softcap = config.logit_softcap

    def __call__(self, cache: KVCache, tokens: torch.Tensor, previous: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) token ids, one per row of the cache -> (B, vocab) logits; ``previous`` (B,), the tokens the
        cache ends with, is needed where the embedding reads them (bigram, smear gate)."""
        model, pos = self.model, cache.length
        C, nh = self.n_embd, self.n_head
        hs = C // nh
        B = tokens.shape[0]
        if self.lookback:
            x = model.embed(torch.stack([previous, tokens], dim=1), pos - 1)[:, 1]
        else:
            x = model.wte.weight[tokens] + model.positions(pos, 1, self.head.device)  # (B, C)
        ve = self.value_embed[tokens].view(B, nh, 1, hs) if self.value_embed is not None else None
        for layer, (ln1_w, ln1_b, attn_w, attn_b, proj_w, proj_b, ln2_w, ln2_b, fc_w, fc_b, fc2_w, fc2_b,
                    ve_gain) in enumerate(self.layers):
            h = F.layer_norm(x, (C,), ln1_w, ln1_b, 1e-5)
            q, k, v = F.linear(h, attn_w, attn_b).view(B, 3, nh, 1, hs).unbind(1)  # each (B, nh, T=1, hs)
            if ve is not None:  # cached with the value embedding added, as GPT.forward caches it
                v = v + (ve_gain * ve).to(v.dtype)
            if self.transforms[layer] is not None:  # at position pos
                q, k = self.transforms[layer](q, k, pos)
            cache.keys[layer, :, :, pos : pos + 1] = k
            cache.values[layer, :, :, pos : pos + 1] = v
            keys, values = cache.keys[layer, :, :, : pos + 1], cache.values[layer, :, :, : pos + 1]
            scores = (q @ keys.transpose(-2, -1)) * hs**-0.5  # (B, nh, 1, pos+1)
            y = (scores.softmax(-1) @ values).view(B, C)
            x = x + F.linear(y, proj_w, proj_b)
            h = activation(F.linear(F.layer_norm(x, (C,), ln2_w, ln2_b, 1e-5), fc_w, fc_b), self.activation)
            x = x + F.linear(h, fc2_w, fc2_b)
        x = F.layer_norm(x, (C,), model.ln_f.weight, model.ln_f.bias, 1e-5)
        cache.length += 1
        return softcap(F.linear(x, self.head), self.logit_softcap)

"""The GPT in NumPy: the layers of ``numpy_layers`` wired into a forward pass, its backward, and
KV-cached decoding. Same network as ``torch_model.GPT`` (nanoGPT layout, pre-LN blocks).
"""

from __future__ import annotations

import numpy as np

from backends.base import HeadAblation, ModelConfig, bigram_pairs, rope_tables, sinusoidal_positions
from backends.numpy_layers import (
    attention_backward,
    attention_forward,
    bigram_backward,
    bigram_forward,
    causal_bias,
    crossentropy_backward,
    crossentropy_forward,
    dropout_backward,
    dropout_forward,
    dropout_mask,
    embedding_backward,
    embedding_forward,
    layernorm_backward,
    layernorm_forward,
    linear_backward,
    linear_forward,
    merge_heads,
    mlp_backward,
    mlp_forward,
    qknorm_backward,
    qknorm_forward,
    residual_backward,
    residual_forward,
    rope_backward,
    rope_forward,
    smear_backward,
    smear_forward,
    softcap_backward,
    softcap_forward,
    split_heads,
    value_embed_backward,
    value_embed_forward,
)

# a block's parameters, by their names inside the block; the bias entries exist only with bias=True, the
# value-embedding gain only with value_embedding=True
BLOCK_PARAMS = ("ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                "mlp.c_proj.weight", "mlp.c_proj.bias", "attn.ve_gain")


class Workspace:
    """Every activation and activation gradient for one (B, T) batch shape, allocated once.

    Per-layer activations the backward needs carry a leading n_layer axis; scratch that one layer
    uses and the next overwrites is shared. Keep-masks exist only when dropout is on.
    """

    def __init__(self, config: ModelConfig, B: int, T: int, dtype: np.dtype) -> None:
        L, C, nh, V = config.n_layer, config.n_embd, config.n_head, config.vocab_size

        def buf(*shape: int) -> np.ndarray:
            return np.zeros(shape, dtype)

        self.dropout = False  # whether the last forward drew dropout masks
        # forward activations
        self.residual = buf(2 * L + 1, B, T, C)  # the stream before, between and after the sub-layers
        self.ln1, self.ln1_xhat, self.ln1_rstd = buf(L, B, T, C), buf(L, B, T, C), buf(L, B, T, 1)
        self.qkv = buf(L, B, T, 3 * C)
        self.att = buf(L, B, nh, T, T)
        self.y = buf(L, B, T, C)  # attention output, heads merged
        self.ln2, self.ln2_xhat, self.ln2_rstd = buf(L, B, T, C), buf(L, B, T, C), buf(L, B, T, 1)
        self.h, self.t, self.g = buf(L, B, T, 4 * C), buf(L, B, T, 4 * C), buf(L, B, T, 4 * C)
        self.lnf, self.lnf_xhat, self.lnf_rstd = buf(B, T, C), buf(B, T, C), buf(B, T, 1)
        self.logits = buf(B, T, V)  # then the softmax, then its gradient, in place
        self.branch = buf(B, T, C)
        self.att_row, self.row = buf(B, nh, T, 1), buf(B * T, 1)
        hs = C // nh
        if config.qk_norm:  # normalised q and k (before any rotation) and their 1/rms, per layer
            self.qk_hat, self.qk_rstd = buf(L, 2, B, nh, T, hs), buf(L, 2, B, nh, T, 1)
        if config.pos_encoding == "rope":  # the rotated q and k attention reads
            self.qk_rot = buf(L, 2, B, nh, T, hs)
        if config.qk_norm or config.pos_encoding == "rope":
            self.dqk, self.qk_scratch = buf(2, B, nh, T, hs), (buf(B, nh, T, hs), buf(B, nh, T, hs))
            self.qk_row = buf(B, nh, T, 1)
        if config.value_embedding:  # the table's rows for the batch, their gradient (summed over layers), scratch
            self.ve, self.dve, self.ve_scratch = buf(B, T, C), buf(B, T, C), buf(B, T, C)
        if config.smear_gate:  # the embedding before the gate mixes it, and the gate itself
            self.embed, self.smear_gate = buf(B, T, C), buf(B, T - 1, 1)
        if config.logit_softcap:
            self.softcap_t = buf(B, T, V)  # tanh(logits / cap), for the backward
        if config.dropout > 0:
            self.keep_emb = buf(B, T, C)
            self.keep_att, self.att_kept = buf(L, B, nh, T, T), buf(L, B, nh, T, T)
            self.keep_attn_proj, self.keep_mlp = buf(L, B, T, C), buf(L, B, T, C)
        # backward
        self.dres = buf(2, B, T, C)  # the stream's gradient, ping-ponged across each residual
        self.dbranch, self.dln, self.dy = buf(B, T, C), buf(B, T, C), buf(B, T, C)
        self.dqkv = buf(B, T, 3 * C)
        self.datt, self.att_scratch = buf(B, nh, T, T), buf(B, nh, T, T)
        self.mlp_scratch = (buf(B, T, 4 * C), buf(B, T, 4 * C), buf(B, T, 4 * C))
        self.ln_scratch = (buf(B, T, C), buf(B, T, C), buf(B, T, 1), buf(B, T, 1))


def ablate_heads(y: np.ndarray, ablation: HeadAblation, layer: int) -> None:
    """Overwrite the channels of the ablated heads of ``layer`` in y (B, T, C), heads merged, with their
    replacement (head h owns channels h * hs .. (h + 1) * hs)."""
    hs = y.shape[-1] // ablation.heads.shape[1]
    for head in np.flatnonzero(ablation.heads[layer]):
        y[..., head * hs : (head + 1) * hs] = ablation.replacement(layer, int(head))


class NumpyGPT:
    """Forward and backward over parameter arrays it does not own (``params``: canonical name ->
    array, views into the backend's flat buffer), so an optimizer step is seen without copies."""

    def __init__(self, config: ModelConfig, params: dict[str, np.ndarray], dtype: np.dtype) -> None:
        self.config = config
        self.params = params
        self.dtype = np.dtype(dtype)
        self.sinusoids = (
            sinusoidal_positions(config.block_size, config.n_embd).astype(self.dtype)
            if config.pos_encoding == "sinusoidal" else None
        )
        self.bias = causal_bias(config.block_size, self.dtype)
        self.rope = config.pos_encoding == "rope"
        self.transforms_qk = self.rope or config.qk_norm
        if self.rope:
            tables = rope_tables(config.block_size, config.n_embd // config.n_head)
            self.cos, self.sin = (table.astype(self.dtype) for table in tables)
        self.head_name = "wte.weight" if config.tie_weights else "lm_head.weight"

    def block(self, source: dict[str, np.ndarray], layer: int) -> dict[str, np.ndarray | None]:
        """Layer ``layer``'s entries of ``source`` (parameters or gradients) under block-local names."""
        return {name: source.get(f"h.{layer}.{name}") for name in BLOCK_PARAMS}

    def positions(self, start: int, length: int) -> np.ndarray | None:
        """What the embedding adds for positions start..: a table's rows, or None with rotary positions."""
        if self.rope:
            return None
        table = self.params["wpe.weight"] if self.sinusoids is None else self.sinusoids
        return table[start : start + length]

    def embed(self, out: np.ndarray, idx: np.ndarray, start: int, saved: tuple[np.ndarray, np.ndarray] | None = None,
              ) -> None:
        """(B, T) ids at positions start.. -> out (B, T, C): token and position embeddings, mixed by the smear
        gate, plus the bigram rows. ``saved`` receives what the smear gate's backward needs (the embedding
        before it and the gate; fresh buffers when None)."""
        c, p = self.config, self.params
        B, T = idx.shape
        if c.smear_gate:
            e, gate = saved if saved is not None else (np.empty_like(out), np.empty((B, T - 1, 1), self.dtype))
            embedding_forward(e, idx, p["wte.weight"], self.positions(start, T))
            smear_forward(out, gate, e, p["smear_gate.weight"], p["smear_lambda"])
        else:
            embedding_forward(out, idx, p["wte.weight"], self.positions(start, T))
        if c.bigram_embedding:
            bigram_forward(out, bigram_pairs(idx, c.vocab_size), p["bigram.weight"])

    def qk_forward(self, q: np.ndarray, k: np.ndarray, start: int, hat: np.ndarray | None, rstd: np.ndarray | None,
                   rot: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """QK-norm then RoPE on (B, nh, T, hs) q and k at positions start..; hat, rstd and rot are
        (2, B, nh, T, ...) buffers (None where the config has no such step) receiving what the backward
        needs. Returns the q and k attention reads."""
        out = []
        for i, x in enumerate((q, k)):
            if self.config.qk_norm:
                qknorm_forward(hat[i], rstd[i], x)
                x = hat[i]
            if self.rope:
                T = x.shape[-2]
                rope_forward(rot[i], x, self.cos[start : start + T], self.sin[start : start + T])
                x = rot[i]
            out.append(x)
        return out[0], out[1]

    def qk_backward(self, ws: Workspace, layer: int, dq: np.ndarray, dk: np.ndarray) -> None:
        """ws.dqk (the gradient of what attention read) -> dq, dk (head views of dqkv), written."""
        T = dq.shape[-2]
        for i, dx in enumerate((dq, dk)):
            d = ws.dqk[i]
            if self.rope:
                target = ws.qk_scratch[0] if self.config.qk_norm else dx
                rope_backward(target, d, self.cos[:T], self.sin[:T])
                d = target
            if self.config.qk_norm:
                qknorm_backward(dx, d, ws.qk_hat[layer, i], ws.qk_rstd[layer, i], ws.qk_scratch[1], ws.qk_row)

    def check_inputs(self, idx: np.ndarray) -> None:
        if idx.ndim != 2 or not 1 <= idx.shape[1] <= self.config.block_size:
            raise ValueError(f"inputs must be (B, T) with 1 <= T <= {self.config.block_size}, got {idx.shape}")

    def forward(self, ws: Workspace, idx: np.ndarray, rng: np.random.Generator | None = None,
                ablation: HeadAblation | None = None) -> None:
        """(B, T) ids -> ws.logits (B, T, V), saving what the backward needs. Dropout is drawn from
        ``rng`` when one is given (training) and the config has any. ``ablation`` (inspection only:
        the backward does not know of it) overwrites the marked heads' outputs."""
        c, p = self.config, self.params
        drop = rng is not None and c.dropout > 0
        ws.dropout = drop
        T, nh = idx.shape[1], c.n_head
        x = ws.residual[0]
        self.embed(x, idx, 0, (ws.embed, ws.smear_gate) if c.smear_gate else None)
        if drop:
            dropout_forward(x, ws.keep_emb, x, c.dropout, rng)
        if c.value_embedding:  # looked up once; every layer adds its own multiple to its values
            embedding_forward(ws.ve, idx, p["value_embed.weight"], None)
        bias = self.bias[:T, :T]
        for l in range(c.n_layer):
            w = self.block(p, l)
            x, mid, out = ws.residual[2 * l], ws.residual[2 * l + 1], ws.residual[2 * l + 2]
            # mid = x + attn(ln_1(x))
            layernorm_forward(ws.ln1[l], ws.ln1_xhat[l], ws.ln1_rstd[l], x, w["ln_1.weight"], w["ln_1.bias"])
            linear_forward(ws.qkv[l], ws.ln1[l], w["attn.c_attn.weight"], w["attn.c_attn.bias"])
            if c.value_embedding:  # into qkv itself: attention and the backward read the values after the add
                value_embed_forward(ws.qkv[l][..., 2 * c.n_embd :], ws.ve, w["attn.ve_gain"], ws.ve_scratch)
            dropped = (ws.keep_att[l], ws.att_kept[l]) if drop else (None, None)
            if drop:
                dropout_mask(ws.keep_att[l], c.dropout, rng)
            q, k, v = split_heads(ws.qkv[l], nh)
            if self.transforms_qk:
                q, k = self.qk_forward(q, k, 0, *self.qk_buffers(ws, l))
            attention_forward(merge_heads(ws.y[l], nh), ws.att[l], q, k, v, bias, ws.att_row, *dropped)
            if ablation is not None:
                ablate_heads(ws.y[l], ablation, l)
            linear_forward(ws.branch, ws.y[l], w["attn.c_proj.weight"], w["attn.c_proj.bias"])
            if drop:
                dropout_forward(ws.branch, ws.keep_attn_proj[l], ws.branch, c.dropout, rng)
            residual_forward(mid, x, ws.branch)
            # out = mid + mlp(ln_2(mid))
            layernorm_forward(ws.ln2[l], ws.ln2_xhat[l], ws.ln2_rstd[l], mid, w["ln_2.weight"], w["ln_2.bias"])
            mlp_forward(ws.branch, ws.h[l], ws.t[l], ws.g[l], ws.ln2[l], w["mlp.c_fc.weight"], w["mlp.c_fc.bias"],
                        w["mlp.c_proj.weight"], w["mlp.c_proj.bias"], c.activation)
            if drop:
                dropout_forward(ws.branch, ws.keep_mlp[l], ws.branch, c.dropout, rng)
            residual_forward(out, mid, ws.branch)
        layernorm_forward(ws.lnf, ws.lnf_xhat, ws.lnf_rstd, ws.residual[-1], p["ln_f.weight"], p.get("ln_f.bias"))
        linear_forward(ws.logits, ws.lnf, p[self.head_name], None)
        if c.logit_softcap:
            softcap_forward(ws.logits, ws.softcap_t, ws.logits, c.logit_softcap)

    def qk_buffers(self, ws: Workspace, layer: int) -> tuple[np.ndarray | None, ...]:
        c = self.config
        return (ws.qk_hat[layer] if c.qk_norm else None, ws.qk_rstd[layer] if c.qk_norm else None,
                ws.qk_rot[layer] if self.rope else None)

    def attended_qk(self, ws: Workspace, layer: int, q: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The q and k the forward's attention read in ``layer``: the raw head views, or saved transforms."""
        if self.rope:
            return ws.qk_rot[layer, 0], ws.qk_rot[layer, 1]
        if self.config.qk_norm:
            return ws.qk_hat[layer, 0], ws.qk_hat[layer, 1]
        return q, k

    def loss(self, ws: Workspace, targets: np.ndarray) -> float:
        """Mean cross-entropy of the last forward; turns ws.logits into the softmax for ``backward``."""
        logits = ws.logits.reshape(-1, self.config.vocab_size)
        return crossentropy_forward(logits, logits, targets.reshape(-1), ws.row)

    def backward(self, ws: Workspace, idx: np.ndarray, targets: np.ndarray, grads: dict[str, np.ndarray],
                 scale: float) -> None:
        """Write the gradient of ``scale * sum of per-token losses`` into ``grads`` (name -> array),
        after ``forward`` and ``loss`` on the same workspace."""
        c, p = self.config, self.params
        nh = c.n_head
        dlogits = ws.logits.reshape(-1, c.vocab_size)
        crossentropy_backward(dlogits, dlogits, targets.reshape(-1), scale)
        if c.logit_softcap:
            softcap_backward(ws.logits, ws.logits, ws.softcap_t)
        linear_backward(ws.dln, grads[self.head_name], None, ws.logits, ws.lnf, p[self.head_name])
        dres, dmid = ws.dres
        dres.fill(0.0)
        layernorm_backward(dres, grads["ln_f.weight"], grads.get("ln_f.bias"), ws.dln, ws.lnf_xhat, ws.lnf_rstd,
                           p["ln_f.weight"], ws.ln_scratch)
        if c.value_embedding:
            ws.dve.fill(0.0)
        for l in reversed(range(c.n_layer)):
            w, g = self.block(p, l), self.block(grads, l)
            # out = mid + mlp(ln_2(mid)): dres holds d(out) and becomes d(mid) in dmid
            residual_backward(dmid, dres)
            dbranch = dres
            if ws.dropout:
                dbranch = ws.dbranch
                dropout_backward(dbranch, dres, ws.keep_mlp[l])
            mlp_backward(ws.dln, g["mlp.c_fc.weight"], g["mlp.c_fc.bias"], g["mlp.c_proj.weight"], g["mlp.c_proj.bias"],
                         dbranch, ws.ln2[l], ws.h[l], ws.t[l], ws.g[l], w["mlp.c_fc.weight"], w["mlp.c_proj.weight"],
                         ws.mlp_scratch, c.activation)
            layernorm_backward(dmid, g["ln_2.weight"], g["ln_2.bias"], ws.dln, ws.ln2_xhat[l], ws.ln2_rstd[l],
                               w["ln_2.weight"], ws.ln_scratch)
            # mid = x + attn(ln_1(x)): d(x) goes back into dres
            residual_backward(dres, dmid)
            dbranch = dmid
            if ws.dropout:
                dbranch = ws.dbranch
                dropout_backward(dbranch, dmid, ws.keep_attn_proj[l])
            linear_backward(ws.dy, g["attn.c_proj.weight"], g["attn.c_proj.bias"], dbranch, ws.y[l],
                            w["attn.c_proj.weight"])
            dropped = (ws.keep_att[l], ws.att_kept[l]) if ws.dropout else (None, None)
            dq, dk, dv = split_heads(ws.dqkv, nh)
            q, k, v = split_heads(ws.qkv[l], nh)
            q, k = self.attended_qk(ws, l, q, k)
            attention_backward(*(ws.dqk if self.transforms_qk else (dq, dk)), dv, ws.datt, merge_heads(ws.dy, nh),
                               ws.att[l], q, k, v, ws.att_row, ws.att_scratch, *dropped)
            if self.transforms_qk:
                self.qk_backward(ws, l, dq, dk)
            if c.value_embedding:
                value_embed_backward(ws.dve, g["attn.ve_gain"], ws.dqkv[..., 2 * c.n_embd :], ws.ve,
                                     w["attn.ve_gain"], ws.ve_scratch)
            linear_backward(ws.dln, g["attn.c_attn.weight"], g["attn.c_attn.bias"], ws.dqkv, ws.ln1[l],
                            w["attn.c_attn.weight"])
            layernorm_backward(dres, g["ln_1.weight"], g["ln_1.bias"], ws.dln, ws.ln1_xhat[l], ws.ln1_rstd[l],
                               w["ln_1.weight"], ws.ln_scratch)
        if ws.dropout:
            dropout_backward(dres, dres, ws.keep_emb)
        if c.bigram_embedding:
            bigram_backward(grads["bigram.weight"], dres, bigram_pairs(idx, c.vocab_size))
        if c.smear_gate:  # dres is d(out) of the gate; ws.dln, free after the last block, takes d(embedding)
            smear_backward(ws.dln, grads["smear_gate.weight"], grads["smear_lambda"], dres, ws.embed, ws.smear_gate,
                           p["smear_gate.weight"], p["smear_lambda"])
            dres = ws.dln
        if not c.tie_weights:
            grads["wte.weight"].fill(0.0)  # the embedding's backward adds; a tied head wrote its part
        embedding_backward(grads["wte.weight"], grads.get("wpe.weight"), dres, idx)
        if c.value_embedding:
            grads["value_embed.weight"].fill(0.0)  # the scatter-add accumulates
            embedding_backward(grads["value_embed.weight"], None, ws.dve, idx)

    def decode(self, keys: np.ndarray, values: np.ndarray, tokens: np.ndarray, start: int,
               previous: np.ndarray | None = None) -> np.ndarray:
        """Logits (B, V) after (B, T) ``tokens`` at positions start.. given a cache holding ``start``
        positions; keys and values (n_layer, B, nh, block_size, hs) receive the new ones. ``previous`` (B,),
        the tokens at start - 1, is what the bigram embedding and the smear gate read there (None at
        start 0). No workspace: T is small and varies, and a decoding step's cost is per-call overhead."""
        c, p, dt = self.config, self.params, self.dtype
        B, T = tokens.shape
        C, nh = c.n_embd, c.n_head
        end = start + T
        if previous is not None:  # embed one position earlier, then drop it
            x = np.empty((B, T + 1, C), dt)
            self.embed(x, np.concatenate([previous[:, None], tokens], axis=1), start - 1)
            x = np.ascontiguousarray(x[:, 1:])
        else:
            x = np.empty((B, T, C), dt)
            self.embed(x, tokens, start)
        ln, xhat, y, branch = (np.empty((B, T, C), dt) for _ in range(4))
        if c.value_embedding:
            ve, ve_scratch = np.empty((B, T, C), dt), np.empty((B, T, C), dt)
            embedding_forward(ve, tokens, p["value_embed.weight"], None)
        rstd = np.empty((B, T, 1), dt)
        qkv = np.empty((B, T, 3 * C), dt)
        att, row = np.empty((B, nh, T, end), dt), np.empty((B, nh, T, 1), dt)
        h, t, g = (np.empty((B, T, 4 * C), dt) for _ in range(3))
        bias = self.bias[start:end, :end]
        hs = C // nh
        qk_saved = (np.empty((2, B, nh, T, hs), dt) if c.qk_norm else None, np.empty((2, B, nh, T, 1), dt),
                    np.empty((2, B, nh, T, hs), dt) if self.rope else None)
        for l in range(c.n_layer):
            w = self.block(p, l)
            layernorm_forward(ln, xhat, rstd, x, w["ln_1.weight"], w["ln_1.bias"])
            linear_forward(qkv, ln, w["attn.c_attn.weight"], w["attn.c_attn.bias"])
            if c.value_embedding:  # before caching: the cache holds the values attention reads
                value_embed_forward(qkv[..., 2 * C :], ve, w["attn.ve_gain"], ve_scratch)
            q, k, v = split_heads(qkv, nh)
            if self.transforms_qk:  # the cache holds keys as attention reads them: rotated at their position
                q, k = self.qk_forward(q, k, start, *qk_saved)
            keys[l, :, :, start:end] = k
            values[l, :, :, start:end] = v
            attention_forward(merge_heads(y, nh), att, q, keys[l, :, :, :end], values[l, :, :, :end], bias, row)
            linear_forward(branch, y, w["attn.c_proj.weight"], w["attn.c_proj.bias"])
            residual_forward(x, x, branch)
            layernorm_forward(ln, xhat, rstd, x, w["ln_2.weight"], w["ln_2.bias"])
            mlp_forward(branch, h, t, g, ln, w["mlp.c_fc.weight"], w["mlp.c_fc.bias"], w["mlp.c_proj.weight"],
                        w["mlp.c_proj.bias"], c.activation)
            residual_forward(x, x, branch)
        last = np.ascontiguousarray(x[:, -1:])  # the layers take contiguous rows; with B > 1 the slice is not
        ln, xhat, rstd = np.empty_like(last), np.empty_like(last), np.empty((B, 1, 1), dt)
        layernorm_forward(ln, xhat, rstd, last, p["ln_f.weight"], p.get("ln_f.bias"))
        logits = np.empty((B, 1, c.vocab_size), dt)
        linear_forward(logits, ln, p[self.head_name], None)
        if c.logit_softcap:
            softcap_forward(logits, np.empty_like(logits), logits, c.logit_softcap)
        return logits[:, 0]

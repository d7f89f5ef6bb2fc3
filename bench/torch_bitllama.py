"""The BitLlama-TTT architecture in PyTorch (forward + autograd backward), the baseline of
bench/bench_model.py.  Same maths as bitttt.model: BitLinear with straight-through
quantizers, TTT-Linear in the dual form or causal GQA attention (PyTorch's
scaled_dot_product_attention, RoPE on pairs (2j, 2j+1) at absolute positions) per layer type,
RMSNorm, SwiGLU, tied LM head.  Benchmark only:
PyTorch is not a dependency of bitttt.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _qw(w):
    s = w.abs().mean() + 1e-5
    return w + ((w / s).round().clamp(-1, 1) * s - w).detach()


def _qa(x):
    a = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return x + ((x * a).round().clamp(-128, 127) / a - x).detach()


def bitlinear(x, w, ternary):
    return F.linear(_qa(x), _qw(w)) if ternary else F.linear(x, w)


def rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def layernorm(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdim=True)
    var = (x - mu).pow(2).mean(-1, keepdim=True)
    return (x - mu) * torch.rsqrt(var + eps) * w + b


class TorchBitLlama(torch.nn.Module):
    def __init__(self, cfg, params: dict):
        super().__init__()
        self.cfg = cfg
        self.p = torch.nn.ParameterDict(
            {k.replace(".", "__"): torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()})

    def w(self, name):
        return self.p[name.replace(".", "__")]

    def ttt(self, pre, x):
        cfg = self.cfg
        bsz, t, d = x.shape
        h, f, k = cfg.num_heads, cfg.head_dim, cfg.mini_batch_size

        def heads(z):
            return z.view(bsz, t, h, f).transpose(1, 2)

        q = heads(bitlinear(x, self.w(pre + "q_proj.weight"), cfg.ternary))
        kx = heads(bitlinear(x, self.w(pre + "k_proj.weight"), cfg.ternary))
        v = heads(bitlinear(x, self.w(pre + "v_proj.weight"), cfg.ternary))
        pos = torch.arange(t, dtype=x.dtype) % k
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, f, 2, dtype=x.dtype) / f))
        ang = pos[:, None] * inv[None, :]
        cos, sin = ang.cos(), ang.sin()

        def rope(z):
            ze, zo = z[..., 0::2], z[..., 1::2]
            return torch.stack((ze * cos - zo * sin, ze * sin + zo * cos), dim=-1).flatten(-2)

        q, kx = rope(q), rope(kx)
        a = self.w(pre + "learnable_ttt_lr_weight")[:, 0, :]
        lr = torch.sigmoid(torch.einsum("btd,hd->bht", x, a) + self.w(pre + "learnable_ttt_lr_bias")[None]) \
            * (cfg.ttt_base_lr / f)
        tok = (1.0 / torch.arange(1, k + 1, dtype=x.dtype) + self.w(pre + "learnable_token_idx")).clamp(min=0)
        gamma = self.w(pre + "ttt_norm_weight")[None, :, None, :]
        beta = self.w(pre + "ttt_norm_bias")[None, :, None, :]
        W = self.w(pre + "W1")[None].expand(bsz, h, f, f)
        b = self.w(pre + "b1")[None].expand(bsz, h, 1, f)
        outs = []
        for s in range(0, t, k):
            e = min(s + k, t)
            n = e - s
            Q, K, V = q[:, :, s:e], kx[:, :, s:e], v[:, :, s:e]
            E = tok[:n, None] * lr[:, :, None, s:e]
            tri = torch.tril(torch.ones(n, n, dtype=x.dtype))
            Z1 = K @ W + b
            mu = Z1.mean(-1, keepdim=True)
            r1 = torch.rsqrt((Z1 - mu).pow(2).mean(-1, keepdim=True) + 1e-6)
            xh = (Z1 - mu) * r1
            gxh = (gamma * xh + beta - (V - K)) * gamma
            G = (r1 / f) * (f * gxh - gxh.sum(-1, keepdim=True) - xh * (gxh * xh).sum(-1, keepdim=True))
            Et = E * tri
            A = (Q @ K.transpose(-1, -2)) * tri
            b_bar = b - Et @ G
            Zb = Q @ W - (Et * A) @ G + b_bar
            outs.append(Q + layernorm(Zb, gamma, beta))
            e_last = E[..., n - 1, :, None]
            W = W - K.transpose(-1, -2) @ (e_last * G)
            b = b - (e_last * G).sum(-2, keepdim=True)
        out = torch.cat(outs, dim=2).transpose(1, 2).reshape(bsz, t, d)
        out = layernorm(out, self.w(pre + "post_norm.weight"), self.w(pre + "post_norm.bias"))
        return bitlinear(out, self.w(pre + "o_proj.weight"), cfg.ternary)

    def attn(self, pre, x):
        cfg = self.cfg
        bsz, t, d = x.shape
        h, hkv, f = cfg.num_heads, cfg.kv_heads, cfg.head_dim

        def heads(z, n):
            return z.view(bsz, t, n, f).transpose(1, 2)

        q = heads(bitlinear(x, self.w(pre + "q_proj.weight"), cfg.ternary), h)
        kx = heads(bitlinear(x, self.w(pre + "k_proj.weight"), cfg.ternary), hkv)
        v = heads(bitlinear(x, self.w(pre + "v_proj.weight"), cfg.ternary), hkv)
        inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, f, 2, dtype=x.dtype) / f))
        ang = torch.arange(t, dtype=x.dtype)[:, None] * inv[None, :]
        cos, sin = ang.cos(), ang.sin()

        def rope(z):
            ze, zo = z[..., 0::2], z[..., 1::2]
            return torch.stack((ze * cos - zo * sin, ze * sin + zo * cos), dim=-1).flatten(-2)

        q, kx = rope(q), rope(kx)
        kx, v = kx.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)  # GQA
        out = F.scaled_dot_product_attention(q, kx, v, is_causal=True)
        return bitlinear(out.transpose(1, 2).reshape(bsz, t, d), self.w(pre + "o_proj.weight"), cfg.ternary)

    def loss(self, tokens, targets):
        cfg = self.cfg
        x = self.w("embed.weight")[tokens]
        for i in range(cfg.num_layers):
            pre = f"layers.{i}."
            n1 = rmsnorm(x, self.w(pre + "norm1.weight"), cfg.rms_norm_eps)
            attention = getattr(cfg, "types", ("ttt",) * cfg.num_layers)[i] == "attention"
            h = x + (self.attn(pre + "attn.", n1) if attention else self.ttt(pre + "ttt.", n1))
            n2 = rmsnorm(h, self.w(pre + "norm2.weight"), cfg.rms_norm_eps)
            g = bitlinear(n2, self.w(pre + "mlp.gate_proj.weight"), cfg.ternary)
            u = bitlinear(n2, self.w(pre + "mlp.up_proj.weight"), cfg.ternary)
            x = h + bitlinear(F.silu(g) * u, self.w(pre + "mlp.down_proj.weight"), cfg.ternary)
        x = rmsnorm(x, self.w("norm_f.weight"), cfg.rms_norm_eps)
        head = self.w("embed.weight" if cfg.tie_word_embeddings else "lm_head.weight")
        logits = x @ head.T
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

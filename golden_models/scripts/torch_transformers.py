"""PyTorch transformers of the torch-exported golden models (see make_torch.py)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_cnns import IMAGE, NUM_CLASSES

SEQ = 16
VOCAB = 100


class RMSNorm(nn.Module):
    """Root-mean-square norm as written in HF Llama/Qwen3."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """Normalise over the last axis.

        Args:
            x: Input (..., dim).

        Returns:
            ``x * rsqrt(mean(x^2) + eps) * weight``.
        """
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class ViTAttention(nn.Module):
    """Hand-written multi-head self-attention with separate q/k/v projections."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Self-attention.

        Args:
            x: Tokens (B, N, D).

        Returns:
            Attended tokens (B, N, D).
        """
        b, n, d = x.shape
        q = self.q(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        v = self.v(x).reshape(b, n, self.heads, self.head_dim).transpose(1, 2)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(y)


class ViTBlock(nn.Module):
    """Pre-LN transformer encoder block."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ViTAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        """Encoder block.

        Args:
            x: Tokens (B, N, D).

        Returns:
            Tokens (B, N, D).
        """
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """A ViT: 8x8 patches of a 32x32 image, cls token, learned positions, 2 blocks, dim 64."""

    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2, patch: int = 8) -> None:
        super().__init__()
        n_patches = (IMAGE[2] // patch) * (IMAGE[3] // patch)
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, n_patches + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*(ViTBlock(dim, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        """Classify an image.

        Args:
            x: Image (1, 3, 32, 32).

        Returns:
            Logits (1, 10).
        """
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.blocks(x + self.pos_embed)
        return self.head(self.norm(x)[:, 0])


class BertLayer(nn.Module):
    """Post-LN BERT layer with hand-written attention and an additive mask."""

    def __init__(self, dim: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.attn_out = nn.Linear(dim, dim)
        self.attn_norm = nn.LayerNorm(dim, eps=1e-12)
        self.intermediate = nn.Linear(dim, ffn)
        self.output = nn.Linear(ffn, dim)
        self.out_norm = nn.LayerNorm(dim, eps=1e-12)

    def _heads(self, x: Tensor) -> Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).permute(0, 2, 1, 3)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """Encoder layer.

        Args:
            x: Hidden states (B, S, D).
            mask: Additive attention mask (B, 1, 1, S).

        Returns:
            Hidden states (B, S, D).
        """
        b, s, d = x.shape
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim) + mask
        ctx = torch.matmul(F.softmax(scores, dim=-1), v)
        ctx = ctx.permute(0, 2, 1, 3).contiguous().view(b, s, d)
        x = self.attn_norm(x + self.attn_out(ctx))
        return self.out_norm(x + self.output(F.gelu(self.intermediate(x))))


class Bert(nn.Module):
    """A BERT encoder: word + position + token-type embeddings, 2 post-LN layers, pooler."""

    def __init__(self, dim: int = 64, heads: int = 4, ffn: int = 256, depth: int = 2) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB, dim)
        self.position_embeddings = nn.Embedding(SEQ, dim)
        self.token_type_embeddings = nn.Embedding(2, dim)
        self.emb_norm = nn.LayerNorm(dim, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(dim, heads, ffn) for _ in range(depth))
        self.pooler = nn.Linear(dim, dim)
        self.register_buffer("position_ids", torch.arange(SEQ)[None], persistent=False)
        self.register_buffer("token_type_ids", torch.zeros(1, SEQ, dtype=torch.long),
                             persistent=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Encode a token sequence.

        Args:
            input_ids: Token ids (1, 16), int64.
            attention_mask: 1 for real tokens, 0 for padding (1, 16), int64.

        Returns:
            ``(last_hidden_state (1, 16, D), pooler_output (1, D))``.
        """
        s = input_ids.shape[1]
        x = (self.word_embeddings(input_ids)
             + self.position_embeddings(self.position_ids[:, :s])
             + self.token_type_embeddings(self.token_type_ids[:, :s]))
        x = self.emb_norm(x)
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return x, torch.tanh(self.pooler(x[:, 0]))


class GPT2Attention(nn.Module):
    """GPT-2 attention: fused c_attn (3*D), split, causal mask buffer, c_proj."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.dim = dim
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)
        self.register_buffer("bias", torch.tril(torch.ones(SEQ, SEQ, dtype=torch.bool))
                             .view(1, 1, SEQ, SEQ), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Causal self-attention.

        Args:
            x: Hidden states (B, T, D).

        Returns:
            Hidden states (B, T, D).
        """
        b, t, d = x.shape
        q, k, v = self.c_attn(x).split(self.dim, dim=2)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        att = att.masked_fill(~self.bias[:, :, :t, :t], torch.finfo(att.dtype).min)
        y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, d))


class GPT2Block(nn.Module):
    """Pre-LN GPT-2 block with a tanh-GELU MLP."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = GPT2Attention(dim, heads)
        self.ln_2 = nn.LayerNorm(dim)
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """Decoder block.

        Args:
            x: Hidden states (B, T, D).

        Returns:
            Hidden states (B, T, D).
        """
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    """A GPT-2 decoder (dim 64, 4 heads, 2 layers) with lm_head tied to wte."""

    def __init__(self, dim: int = 64, heads: int = 4, depth: int = 2) -> None:
        super().__init__()
        self.wte = nn.Embedding(VOCAB, dim)
        self.wpe = nn.Embedding(SEQ, dim)
        self.h = nn.ModuleList(GPT2Block(dim, heads) for _ in range(depth))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, input_ids: Tensor) -> Tensor:
        """Next-token logits.

        Args:
            input_ids: Token ids (1, 16), int64.

        Returns:
            Logits (1, 16, 100).
        """
        t = input_ids.shape[1]
        pos = torch.arange(t, device=input_ids.device)[None]
        x = self.wte(input_ids) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def rotate_half(x: Tensor) -> Tensor:
    """Rotate the two halves of the last axis: ``[-x2, x1]``.

    Args:
        x: Tensor (..., D).

    Returns:
        The rotated tensor.
    """
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(q: Tensor, k: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor]:
    """Apply rotary position embeddings as in HF Llama.

    Args:
        q: Queries (B, H, S, D).
        k: Keys (B, KVH, S, D).
        cos: Cosines (1, 1, S, D).
        sin: Sines (1, 1, S, D).

    Returns:
        The rotated queries and keys.
    """
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """Repeat key/value heads for grouped-query attention, as in HF.

    Args:
        x: Keys or values (B, KVH, S, D).
        n_rep: Query heads per key/value head.

    Returns:
        Tensor (B, KVH * n_rep, S, D).
    """
    b, kvh, s, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kvh, n_rep, s, d).reshape(b, kvh * n_rep, s, d)


class LlamaAttention(nn.Module):
    """Grouped-query attention with RoPE and optional per-head q/k RMSNorm (Qwen3)."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int,
                 qk_norm: bool) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        """Causal GQA.

        Args:
            x: Hidden states (B, S, D).
            cos: RoPE cosines (1, 1, S, head_dim).
            sin: RoPE sines (1, 1, S, head_dim).
            mask: Additive causal mask (1, 1, S, S).

        Returns:
            Hidden states (B, S, D).
        """
        b, s, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, s, self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(self.k_proj(x).view(b, s, self.kv_heads, self.head_dim)).transpose(1, 2)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rotary(q, k, cos, sin)
        n_rep = self.heads // self.kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        att = torch.matmul(q, k.transpose(2, 3)) * self.head_dim ** -0.5 + mask
        y = torch.matmul(F.softmax(att, dim=-1, dtype=torch.float32), v)
        return self.o_proj(y.transpose(1, 2).reshape(b, s, -1))


class LlamaBlock(nn.Module):
    """Pre-RMSNorm decoder layer with a SwiGLU MLP."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, ffn: int,
                 qk_norm: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim)
        self.self_attn = LlamaAttention(dim, heads, kv_heads, head_dim, qk_norm)
        self.post_attention_layernorm = RMSNorm(dim)
        self.gate_proj = nn.Linear(dim, ffn, bias=False)
        self.up_proj = nn.Linear(dim, ffn, bias=False)
        self.down_proj = nn.Linear(ffn, dim, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor) -> Tensor:
        """Decoder layer.

        Args:
            x: Hidden states (B, S, D).
            cos: RoPE cosines.
            sin: RoPE sines.
            mask: Additive causal mask.

        Returns:
            Hidden states (B, S, D).
        """
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    """A Llama/Qwen3-style decoder: RMSNorm, RoPE, GQA, SwiGLU, no biases, untied lm_head."""

    def __init__(self, dim: int, heads: int, kv_heads: int, head_dim: int, ffn: int,
                 depth: int, qk_norm: bool, theta: float = 10000.0) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(LlamaBlock(dim, heads, kv_heads, head_dim, ffn, qk_norm)
                                    for _ in range(depth))
        self.norm = RMSNorm(dim)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        """Next-token logits.

        Args:
            input_ids: Token ids (1, 16), int64.

        Returns:
            Logits (1, 16, 100).
        """
        s = input_ids.shape[1]
        pos = torch.arange(s, dtype=torch.float32, device=input_ids.device)
        freqs = pos[:, None] * self.inv_freq[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        mask = torch.full((s, s), torch.finfo(torch.float32).min).triu(1)[None, None]
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.lm_head(self.norm(x))


def llama() -> Llama:
    """Llama: hidden 32, 4 query heads, 2 kv heads, head_dim 8, SwiGLU 64, 2 layers.

    Returns:
        The model.
    """
    return Llama(dim=32, heads=4, kv_heads=2, head_dim=8, ffn=64, depth=2, qk_norm=False)


def qwen3() -> Llama:
    """Qwen3: hidden 32, 4 query heads x head_dim 16 (q width 64 != hidden), 2 kv heads, q/k norm.

    Returns:
        The model.
    """
    return Llama(dim=32, heads=4, kv_heads=2, head_dim=16, ffn=64, depth=2, qk_norm=True,
                 theta=1000000.0)

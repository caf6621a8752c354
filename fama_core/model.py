"""The FAMA network: Conformer encoder, two CTC heads, pre-norm Transformer decoder.

Module and parameter names mirror FBK-fairseq's `conformer_joint_ctc`, so a fairseq state dict loads
as is (minus the per-layer positional tables, which are regenerated here).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ModelConfig

ATTENTION_MASK_FILL = -1e4  # FBK's fill for boolean masks; finite so fully padded rows never give NaN


def lengths_to_padding_mask(lengths: Tensor, max_len: int | None = None) -> Tensor:
    """[B] lengths -> [B, T] bool mask, True on padding."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


def relative_positions_table(length: int, dim: int, device=None) -> Tensor:
    """Interleaved sin/cos table of the conformer attention ([length, dim], float32)."""
    position = torch.arange(0, length, dtype=torch.float, device=device).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, device=device).float() * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


def decoder_positions_table(n_positions: int, dim: int, padding_idx: int, device=None) -> Tensor:
    """fairseq's sinusoidal table ([sin | cos] halves, row `padding_idx` zero)."""
    half = dim // 2
    scale = math.log(10000) / (half - 1)
    freqs = torch.exp(torch.arange(half, dtype=torch.float, device=device) * -scale)
    angles = torch.arange(n_positions, dtype=torch.float, device=device).unsqueeze(1) * freqs.unsqueeze(0)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2 == 1:
        table = torch.cat([table, torch.zeros(n_positions, 1, device=device)], dim=1)
    table[padding_idx] = 0
    return table


def relative_shift_index(lengths: Tensor, max_len: int) -> Tensor:
    """Gather index that performs FBK's padding-safe relative shift for every row of a padded batch at once.

    FBK shifts each utterance on its own length L: pad a zero column, view the L x (L+1) scores as
    (L+1) x L and drop the first row. Element (i, j) of the result is therefore the flat element
    k = L + i*L + j of the zero-padded matrix: column c = k mod (L+1) of row k div (L+1), which is the
    inserted zero exactly when j == i + 1 (the superdiagonal). Returns an index [B, T*T] into the flattened
    [T, T] scores; the caller zeroes the superdiagonal. Entries outside the utterance are masked later.
    """
    T = max_len
    L = lengths.view(-1, 1, 1)
    i = torch.arange(T, device=lengths.device).view(1, T, 1)
    j = torch.arange(T, device=lengths.device).view(1, 1, T)
    k = L + i * L + j
    row = torch.div(k, L + 1, rounding_mode="floor")
    col = k - row * (L + 1)
    return (row * T + col - 1).clamp_(0, T * T - 1).view(lengths.shape[0], T * T)


# ----------------------------------------------------------------------------------------------- encoder


class Conv1dSubsampler(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        n = len(cfg.subsampler_kernels)
        mid = cfg.subsampler_channels
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(
                cfg.input_dim if i == 0 else mid // 2,
                mid if i < n - 1 else cfg.d_model * 2,
                k,
                stride=2,
                padding=k // 2,
            )
            for i, k in enumerate(cfg.subsampler_kernels)
        )

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        x = x.transpose(1, 2)  # B x C x T
        for conv in self.conv_layers:
            x = F.glu(conv(x), dim=1)
            k, p = conv.kernel_size[0], conv.padding[0]
            lengths = torch.div(lengths + 2 * p - k, 2, rounding_mode="floor") + 1
            x = x.masked_fill(lengths_to_padding_mask(lengths, x.shape[2]).unsqueeze(1), 0.0)
        return x.transpose(1, 2), lengths


class FeedForwardModule(nn.Module):
    def __init__(self, dim: int, expansion: int, dropout: float):
        super().__init__()
        self.layernorm = nn.LayerNorm(dim)
        self.first_linear = nn.Linear(dim, dim * expansion)
        self.second_linear = nn.Linear(dim * expansion, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(F.silu(self.first_linear(self.layernorm(x))))
        return self.dropout(self.second_linear(x))


def cpu_inference(t: Tensor) -> bool:
    """Whether `t` is computed for CPU inference (no autograd), where fama takes its CPU-only paths: attention
    per utterance in explicit products, packed weights, the folded depthwise convolution."""
    return t.device.type == "cpu" and not torch.is_grad_enabled()


def cpu_product_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision of CPU inference's attention products for a model in `dtype`: its own, but float32 for
    float16 (slow CPU products; small attention weights fall below float16's normal range)."""
    return torch.float32 if dtype == torch.float16 else dtype


class RelativeMultiHeadAttention(nn.Module):
    """Transformer-XL attention as FBK implements it: scores divided by sqrt(d_model), not sqrt(d_head)."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.dim, self.heads, self.head_dim = dim, heads, dim // heads
        self.query_proj = nn.Linear(dim, dim)
        self.key_proj = nn.Linear(dim, dim)
        self.value_proj = nn.Linear(dim, dim)
        self.pos_proj = nn.Linear(dim, dim, bias=False)
        self.u_bias = nn.Parameter(torch.empty(heads, self.head_dim))
        self.v_bias = nn.Parameter(torch.empty(heads, self.head_dim))
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = dropout
        for proj in (self.query_proj, self.key_proj, self.value_proj, self.pos_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
        nn.init.xavier_uniform_(self.u_bias)
        nn.init.xavier_uniform_(self.v_bias)

    def forward(self, x: Tensor, pos: Tensor, shift: Tensor | list[int], mask: Tensor) -> Tensor:
        """`shift`: `relative_shift_index` of the batch, or (CPU inference) the rows' lengths, shifted one by one
        as strided views: on a CPU the gather's index costs more than the attention, and explicit products beat
        `scaled_dot_product_attention` (a layer's attention over 2 x 733 frames, products still in float32: 29 ms
        against 50 ms in bfloat16, 45 ms against 56 ms in float32, on a Zen 5)."""
        B, T, _ = x.shape
        H, D = self.heads, self.head_dim
        q = self.query_proj(x).view(B, T, H, D)
        k = self.key_proj(x).view(B, T, H, D).transpose(1, 2)
        v = self.value_proj(x).view(B, T, H, D).transpose(1, 2)
        p = self.pos_proj(pos).view(T, H, D).permute(1, 2, 0)  # H x D x T
        if isinstance(shift, list):
            context = self._attend_rows(q, k, v, p, shift)
        else:
            pos_score = torch.matmul((q + self.v_bias).transpose(1, 2), p)  # B x H x T x T
            bias = pos_score.reshape(B, H, T * T).gather(2, shift.unsqueeze(1).expand(B, H, T * T))
            bias = bias.view(B, H, T, T)
            torch.diagonal(bias, offset=1, dim1=2, dim2=3).zero_()
            bias.mul_(1.0 / math.sqrt(self.dim)).masked_fill_(mask.unsqueeze(1), ATTENTION_MASK_FILL)
            context = F.scaled_dot_product_attention(
                (q + self.u_bias).transpose(1, 2),
                k,
                v,
                attn_mask=bias,
                dropout_p=self.dropout if self.training else 0.0,
                scale=1.0 / math.sqrt(self.dim),
            )
        return self.out_proj(context.transpose(1, 2).reshape(B, T, self.dim))

    def _attend_rows(self, q: Tensor, k: Tensor, v: Tensor, p: Tensor, lengths: list[int]) -> Tensor:
        """Inference attention, one utterance at a time on its own frames (so its result never depends on the
        rest of the batch), with the relative shift done without an index: the positional scores of an
        utterance of length L against [0, p_0 .. p_L-1] form an L x (L+1) matrix whose first column is the
        inserted zero; read with row stride L from offset L it is FBK's shifted L x L matrix.

        Scores are summed and normalised in float32. The products run in `cpu_product_dtype`: bfloat16 for a
        bfloat16 model (each score and weight rounded once: no measurable change in the encoder states, whose own
        rounding is far larger, and 4x faster than float32 products)."""
        H = self.heads
        work = cpu_product_dtype(q.dtype)
        scale = 1.0 / math.sqrt(self.dim)
        folded = math.frexp(scale)[0] == 0.5  # a power of two: scaling the queries is exact
        qu, qv = q + self.u_bias, q + self.v_bias
        if folded:
            qu, qv = qu * scale, qv * scale
        qu, qv = qu.to(work).transpose(1, 2), qv.to(work).transpose(1, 2)
        k, v = k.to(work), v.to(work)
        p0 = torch.cat([p.new_zeros(*p.shape[:2], 1), p], 2).to(work)
        out = q.new_zeros(v.shape)
        for b, L in enumerate(lengths):
            scores = torch.matmul(qu[b, :, :L], k[b, :, :L].transpose(1, 2)).float()  # H x L x L
            padded = torch.matmul(qv[b, :, :L], p0[:, :, : L + 1])  # H x L x (L+1)
            scores += padded.as_strided((H, L, L), (L * (L + 1), L, 1), padded.storage_offset() + L)
            if not folded:
                scores.mul_(scale)
            out[b, :, :L] = torch.matmul(torch.softmax(scores, -1).to(work), v[b, :, :L])
        return out


class MultiHeadedSelfAttentionModule(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layer_norm = nn.LayerNorm(cfg.d_model)
        self.attention = RelativeMultiHeadAttention(cfg.d_model, cfg.encoder_heads, cfg.attention_dropout)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, pos: Tensor, shift: Tensor | list[int], mask: Tensor) -> Tensor:
        return self.dropout(self.attention(self.layer_norm(x), pos, shift, mask))


def pointwise(layer: nn.Module, x: Tensor) -> Tensor:
    """A kernel-1 Conv1d applied over B x T x C, as a matrix product (or the layer itself once packed for CPU
    inference, see `precision.PackedLinear`)."""
    if isinstance(layer, nn.Conv1d):
        return F.linear(x, layer.weight.squeeze(-1), layer.bias)
    return layer(x)


class ConformerConvModule(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.layernorm = nn.LayerNorm(d)
        self.first_pointwise_conv1d = nn.Conv1d(d, 2 * d, 1)
        self.depthwise_conv1d = nn.Conv1d(
            d, d, cfg.conv_kernel, padding=(cfg.conv_kernel - 1) // 2, groups=d, bias=False
        )
        self.batchnorm = nn.BatchNorm1d(d)
        self.second_pointwise_conv1d = nn.Conv1d(d, d, 1)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        # Pointwise convolutions run as matrix products in B x T x C; only the depthwise convolution of training
        # (and GPUs) needs B x C x T.
        m = padding_mask.unsqueeze(-1)
        x = F.glu(pointwise(self.first_pointwise_conv1d, self.layernorm(x)), dim=-1).masked_fill(m, 0.0)
        if cpu_inference(x) and not self.training:
            x = self._depthwise_batchnorm(x).masked_fill(m, 0.0)
        else:
            x = self.depthwise_conv1d(x.transpose(1, 2)).transpose(1, 2).masked_fill(m, 0.0)
            x = self.batchnorm(x.transpose(1, 2)).transpose(1, 2).masked_fill(m, 0.0)
        x = pointwise(self.second_pointwise_conv1d, F.silu(x)).masked_fill(m, 0.0)
        return self.dropout(x)

    def _depthwise_batchnorm(self, x: Tensor) -> Tensor:
        """CPU inference: the depthwise convolution with the (inference-time affine) batch norm folded into its
        taps, in float32 as one multiply-add per tap over B x T x C: 3-7x faster than oneDNN's depthwise
        kernel on its B x C x T copy, in float32 and bfloat16 alike, and rounded once."""
        bn, taps = self.batchnorm, self.depthwise_conv1d.weight[:, 0, :].float()  # C x K
        scale = bn.weight.float() * torch.rsqrt(bn.running_var.float() + bn.eps)
        taps = (taps * scale[:, None]).t().contiguous()
        K, T = taps.shape[0], x.shape[1]
        padded = F.pad(x.float(), (0, 0, (K - 1) // 2, K // 2))
        out = torch.addcmul(bn.bias.float() - bn.running_mean.float() * scale, padded[:, :T], taps[0])
        for k in range(1, K):
            out.addcmul_(padded[:, k : k + T], taps[k])
        return out.to(x.dtype)


class ConformerEncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.first_feed_forward = FeedForwardModule(cfg.d_model, cfg.ffn_expansion, cfg.dropout)
        self.attention = MultiHeadedSelfAttentionModule(cfg)
        self.conv_module = ConformerConvModule(cfg)
        self.second_feed_forward = FeedForwardModule(cfg.d_model, cfg.ffn_expansion, cfg.dropout)
        self.layernorm = nn.LayerNorm(cfg.d_model)

    def forward(
        self, x: Tensor, pos: Tensor, shift: Tensor | list[int], attn_mask: Tensor, padding_mask: Tensor
    ) -> Tensor:
        x = x + 0.5 * self.first_feed_forward(x)
        x = x + self.attention(x, pos, shift, attn_mask)
        x = x + self.conv_module(x, padding_mask)
        x = x + 0.5 * self.second_feed_forward(x)
        return self.layernorm(x)


@dataclass
class EncoderOutput:
    """Encoder states, batch-first. `padding_mask` is True on padded frames (40 ms each)."""

    out: Tensor
    padding_mask: Tensor
    lengths: Tensor
    ctc_inter_logits: Tensor | None = None
    states: list[Tensor] = field(default_factory=list)


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.subsample = Conv1dSubsampler(cfg)
        self.embed_scale = math.sqrt(cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conformer_layers = nn.ModuleList(ConformerEncoderLayer(cfg) for _ in range(cfg.encoder_layers))
        self.ctc_fc = nn.Linear(cfg.d_model, cfg.src_vocab_size) if cfg.inter_ctc else None

    def forward(
        self, features: Tensor, lengths: Tensor, return_states: bool = False, ctc_inter: bool = True
    ) -> EncoderOutput:
        features = features.masked_fill(lengths_to_padding_mask(lengths, features.shape[1]).unsqueeze(-1), 0.0)
        x, lengths = self.subsample(features, lengths)
        x = self.dropout(x * self.embed_scale)
        T = x.shape[1]
        if T > self.cfg.max_source_positions:
            raise ValueError(
                f"input of {T} encoder frames exceeds the model's {self.cfg.max_source_positions} "
                f"(about {self.cfg.max_source_positions * 0.04:.0f} s); split long audio into chunks"
            )
        padding_mask = lengths_to_padding_mask(lengths, T)
        attn_mask = padding_mask.unsqueeze(1) | padding_mask.unsqueeze(2)
        pos = relative_positions_table(T, self.cfg.d_model, x.device).to(x.dtype)
        if cpu_inference(x):
            shift: Tensor | list[int] = lengths.tolist()
        else:
            shift = relative_shift_index(lengths, T)
        states, ctc_logits = [], None
        for i, layer in enumerate(self.conformer_layers):
            x = layer(x, pos, shift, attn_mask, padding_mask)
            if ctc_inter and self.ctc_fc is not None and i + 1 == self.cfg.ctc_encoder_layer:
                ctc_logits = self.ctc_fc(x)
            if return_states:
                states.append(x)
        return EncoderOutput(x, padding_mask, lengths, ctc_logits, states)


class CtcDecoder(nn.Module):
    """The top CTC head: conditioned on the target language by adding its (unscaled) decoder embedding."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.lang_embed_layernorm = nn.LayerNorm(cfg.d_model)

    def forward(self, enc: EncoderOutput, lang_embeds: Tensor) -> Tensor:
        x = self.lang_embed_layernorm(enc.out + lang_embeds.unsqueeze(1))
        return self.fc(x).masked_fill(enc.padding_mask.unsqueeze(-1), 0.0)


# ----------------------------------------------------------------------------------------------- decoder


class MultiheadAttention(nn.Module):
    """fairseq-compatible attention (q/k/v/out projections with bias)."""

    def __init__(self, dim: int, heads: int, dropout: float, kdim: int | None = None):
        super().__init__()
        kdim = kdim or dim
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(kdim, dim)
        self.v_proj = nn.Linear(kdim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = dropout
        gain = 2**-0.5 if kdim == dim else 1.0  # fairseq's scaled initialisation when q, k, v have one width
        for proj in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(proj.weight, gain=gain)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, S, _ = x.shape
        k = self.k_proj(x).view(B, S, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, S, self.heads, self.head_dim).transpose(1, 2)
        return k, v

    def attend(self, x: Tensor, k: Tensor | list[Tensor], v: Tensor | list[Tensor], mask: Tensor | None,
               weights: list[Tensor] | None = None) -> Tensor:
        """x: B x L x C queries; k, v: B x H x S x D; mask: bool, True = blocked, broadcastable to B x H x L x S.
        k and v may instead be lists of each row's own H x S_b x D (CPU inference, cross-attention; then no mask):
        each row then attends on its own, so that its result never depends on how long the batch's other rows are.

        In CPU inference the scores are normalised in float32 from products in the keys' precision (see
        `DecoderCache` and `init_cache`); elsewhere SDPA. `weights` (a list) asks for the attention weights too:
        one float32 L x S_b tensor per row, averaged over heads, is appended to it (SDPA gives no weights, so
        then the explicit products run instead; the other paths only keep what they computed anyway)."""
        B, L, C = x.shape
        q = self.q_proj(x).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        scale = self.head_dim**-0.5  # a power of two: exact on either side of the product
        if isinstance(k, list):
            q = (q.to(k[0].dtype) * scale).contiguous()
            out = q.new_empty(q.shape)
            for b, (keys, values) in enumerate(zip(k, v)):
                probs = torch.softmax(torch.matmul(q[b], keys.transpose(1, 2)).float(), -1)
                out[b] = torch.matmul(probs.to(values.dtype), values)
                if weights is not None:
                    weights.append(probs.mean(0))
            out = out.to(x.dtype)
        elif cpu_inference(x) or weights is not None:
            # Explicit products run 5x faster than SDPA's CPU kernel on a decoding step's few queries.
            scores = torch.matmul(q.to(k.dtype) * scale, k.transpose(2, 3)).float()
            if mask is not None:
                scores.masked_fill_(mask, -math.inf)
            probs = torch.softmax(scores, -1)
            out = torch.matmul(probs.to(v.dtype), v).to(x.dtype)
            if weights is not None:
                weights.extend(probs.mean(1).unbind(0))
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=None if mask is None else ~mask, dropout_p=self.dropout if self.training else 0.0
            )
        return self.out_proj(out.transpose(1, 2).reshape(B, L, C))


class TransformerDecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.decoder_dim
        self.self_attn = MultiheadAttention(d, cfg.decoder_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.encoder_attn = MultiheadAttention(d, cfg.decoder_heads, cfg.attention_dropout, kdim=cfg.d_model)
        self.encoder_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.decoder_ffn_dim)
        self.fc2 = nn.Linear(cfg.decoder_ffn_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(cfg.dropout)
        self.activation_dropout = nn.Dropout(cfg.activation_dropout)

    def forward(
        self,
        x: Tensor,
        self_mask: Tensor | None,
        cross_kv: tuple[Tensor, Tensor] | tuple[list[Tensor], list[Tensor]],
        cross_mask: Tensor | None,
        keep_kv: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
        cross_weights: list[Tensor] | None = None,
    ) -> Tensor:
        """`keep_kv` (incremental decoding) stores this input's self-attention keys/values and returns all of
        them so far; without it `x` attends to itself. `cross_weights`: see `MultiheadAttention.attend`.

        `cross_kv` may hold fewer rows than `x` (one per utterance, with its beams as consecutive rows of x):
        cross-attention queries do not interact, so the beams of an utterance are attended as one sequence.
        """
        h = self.self_attn_layer_norm(x)
        k, v = self.self_attn.project_kv(h)
        if keep_kv is not None:
            k, v = keep_kv(k, v)
        x = x + self.dropout(self.self_attn.attend(h, k, v, self_mask))
        N, L, C = x.shape
        U = len(cross_kv[0])
        h = self.encoder_attn_layer_norm(x).reshape(U, N // U * L, C)
        x = x + self.dropout(self.encoder_attn.attend(h, *cross_kv, cross_mask, cross_weights).view(N, L, C))
        h = self.activation_dropout(F.relu(self.fc1(self.final_layer_norm(x))))
        return x + self.dropout(self.fc2(h))


@dataclass
class DecoderCache:
    """Keys/values for incremental decoding.

    Cross-attention keys/values are computed once and kept once per utterance; each utterance has `beams`
    consecutive hypothesis rows. Self-attention keys/values live in buffers allocated once per layer
    (rows x heads x positions x head_dim) and written in place, one position per step; they start at
    min(capacity, 32) positions and double up to `capacity` (the longest output the search allows), so a
    short output never holds memory for the longest.
    """

    cross: list[tuple[Tensor, Tensor]] | list[tuple[list[Tensor], list[Tensor]]]  # per layer; CPU: per utterance
    cross_mask: Tensor | None  # U x 1 x 1 x S, True on padded encoder frames
    beams: int = 1
    capacity: int | None = None
    self_kv: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    steps: int = 0
    _spare: Tensor | None = None

    def keep(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Stores `layer`'s keys/values of this step (N x H x 1 x D); returns those of every step so far."""
        s = self.steps
        if layer == len(self.self_kv):
            size = min(self.capacity or 32, 32)
            # float32 in CPU inference: oneDNN's bfloat16 product over a few cached positions per query costs 2-4x
            # MKL's float32 one (it copies the strided prefix of the buffer)
            dtype = torch.float32 if cpu_inference(k) else k.dtype
            self.self_kv.append(tuple(t.new_empty(*t.shape[:2], size, t.shape[3], dtype=dtype) for t in (k, v)))
        keys, values = self.self_kv[layer]
        if s == keys.shape[2]:
            size = 2 * s if self.capacity is None else min(2 * s, max(self.capacity, s + 1))
            keys, values = (torch.cat([t, t.new_empty(*t.shape[:2], size - s, t.shape[3])], 2) for t in (keys, values))
            self.self_kv[layer] = (keys, values)
        keys[:, :, s] = k[:, :, 0]
        values[:, :, s] = v[:, :, 0]
        return keys[:, :, : s + 1], values[:, :, : s + 1]

    def select(self, utts: Tensor, rows: Tensor) -> None:
        """Only these utterances, and these of their hypothesis rows, go on."""
        self.cross = [tuple([t[u] for u in utts.tolist()] if isinstance(t, list) else t[utts] for t in kv)
                      for kv in self.cross]
        if self.cross_mask is not None:
            self.cross_mask = self.cross_mask[utts]
        self.self_kv = [(k[rows], v[rows]) for k, v in self.self_kv]
        self._spare = None

    @torch.no_grad()
    def reorder(self, rows: Tensor) -> None:
        """Hypothesis rows `rows` continue (beam reordering). Each buffer is gathered whole into a spare one,
        which then takes its place: one contiguous copy per row, instead of gathering the strided prefix and
        copying it back."""
        for layer, pair in enumerate(self.self_kv):
            swapped = []
            for t in pair:
                if self._spare is None or self._spare.shape != t.shape or self._spare.dtype != t.dtype:
                    self._spare = torch.empty_like(t)
                torch.index_select(t, 0, rows, out=self._spare)
                swapped.append(self._spare)
                self._spare = t
            self.self_kv[layer] = (swapped[0], swapped[1])


class TransformerDecoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.padding_idx = cfg.pad
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.decoder_dim, padding_idx=cfg.pad)
        self.embed_scale = math.sqrt(cfg.decoder_dim)
        self.layers = nn.ModuleList(TransformerDecoderLayer(cfg) for _ in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.decoder_dim)
        self.output_projection = nn.Linear(cfg.decoder_dim, cfg.vocab_size, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self._positions: Tensor | None = None
        nn.init.normal_(self.embed_tokens.weight, mean=0, std=cfg.decoder_dim**-0.5)
        nn.init.normal_(self.output_projection.weight, mean=0, std=cfg.decoder_dim**-0.5)
        with torch.no_grad():
            self.embed_tokens.weight[cfg.pad].zero_()

    def positions(self, n: int, device: torch.device) -> Tensor:
        if self._positions is None or self._positions.shape[0] < n or self._positions.device != device:
            size = max(n, self.cfg.max_target_positions + self.padding_idx + 1)
            self._positions = decoder_positions_table(size, self.cfg.decoder_dim, self.padding_idx, device)
        return self._positions

    def embed(self, tokens: Tensor, positions: Tensor, n_positions: int) -> Tensor:
        """`n_positions`: more than the largest entry of `positions` (known to the caller: no device read)."""
        table = self.positions(n_positions, tokens.device)
        x = self.embed_scale * self.embed_tokens(tokens) + table[positions].to(self.embed_tokens.weight.dtype)
        return self.dropout(x)

    def init_cache(self, enc: EncoderOutput, beams: int = 1, capacity: int | None = None) -> DecoderCache:
        """`beams` hypothesis rows per utterance; `capacity`: the most steps that will be run (None: unknown)."""
        cross = [layer.encoder_attn.project_kv(enc.out) for layer in self.layers]
        if enc.out.device.type == "cpu":
            # Kept per utterance, on its own frames (`MultiheadAttention.attend`: a chunk's tokens then never
            # depend on the rest of its batch), contiguous (oneDNN copies a strided bfloat16 operand at every
            # product), in `cpu_product_dtype`.
            dtype = cpu_product_dtype(enc.out.dtype)
            lengths = enc.lengths.tolist()
            cross = [tuple([t[b, :, :n].to(dtype).contiguous() for b, n in enumerate(lengths)] for t in kv)
                     for kv in cross]
            return DecoderCache(cross, None, beams, capacity)
        mask = enc.padding_mask[:, None, None, :] if bool(enc.padding_mask.any()) else None
        return DecoderCache(cross, mask, beams, capacity)

    def forward(self, prev_tokens: Tensor, enc: EncoderOutput) -> Tensor:
        """Teacher-forced logits [B, L, V] for right-padded `prev_tokens` (`</s> <lang> ...`)."""
        nonpad = prev_tokens.ne(self.padding_idx)
        positions = torch.cumsum(nonpad, dim=1) * nonpad + self.padding_idx
        L = prev_tokens.shape[1]
        x = self.embed(prev_tokens, positions, L + self.padding_idx + 1)
        mask = torch.triu(torch.ones(L, L, dtype=torch.bool, device=x.device), 1)[None, None]
        if bool((~nonpad).any()):
            mask = mask | (~nonpad)[:, None, None, :]
        cross_mask = enc.padding_mask[:, None, None, :] if bool(enc.padding_mask.any()) else None
        for layer in self.layers:
            x = layer(x, mask, layer.encoder_attn.project_kv(enc.out), cross_mask)
        return self.output_projection(self.layer_norm(x))

    def step(self, tokens: Tensor, cache: DecoderCache, cross_weights: list[Tensor] | None = None,
             weights_layer: int = -1) -> Tensor:
        """Logits [N, V] for the next token, given the last token of each row [N]; extends `cache` in place.

        With `cross_weights` (a list), the cross-attention weights of layer `weights_layer`, averaged over its
        heads, are appended to it: one float32 [beams, frames] tensor per utterance (simultaneous decoding's
        policies read them); the other layers run as always."""
        position = cache.steps + 1 + self.padding_idx
        x = self.embed(tokens.unsqueeze(1), torch.full_like(tokens, position).unsqueeze(1), position + 1)
        pick = weights_layer % len(self.layers)
        for i, layer in enumerate(self.layers):
            x = layer(x, None, cache.cross[i], cache.cross_mask, functools.partial(cache.keep, i),
                      cross_weights if i == pick else None)
        cache.steps += 1
        return self.output_projection(self.layer_norm(x[:, 0]))


# ----------------------------------------------------------------------------------------------- model


CPU_MAX_PADDING = 1.1  # padded / real frames of a group that `FamaModel.encode` encodes together on a CPU


def length_groups(order: list[int], lengths: list[int], max_rows: int | None = None, max_padded: int | None = None,
                  max_padding: float = CPU_MAX_PADDING) -> Iterator[list[int]]:
    """Consecutive groups of `order` (indices sorted by length, longest first) of at most `max_rows` rows and
    `max_padded` padded length, whose rows padded to the group's longest come to at most `max_padding` times
    their real lengths. (The pipeline's batches and `FamaModel.encode`'s CPU groups.)"""
    group: list[int] = []
    real = 0
    for i in order:
        longest = max([lengths[j] for j in group] + [lengths[i]])
        padded = longest * (len(group) + 1)
        full = (max_rows is not None and len(group) >= max_rows) or (max_padded is not None and padded > max_padded)
        if group and (full or padded > max_padding * (real + lengths[i])):
            yield group
            group, real = [], 0
        group.append(i)
        real += lengths[i]
    if group:
        yield group


class FamaModel(nn.Module):
    """Encoder + top CTC (`auxiliary_decoder`) + attention decoder.

    Either CTC head may be absent (`cfg.top_ctc`, `cfg.ctc_encoder_layer` 0): transformers' `generate` never uses
    them, so a Hugging Face upload may lack them. `auxiliary_decoder` / `encoder.ctc_fc` are then None.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = ConformerEncoder(cfg)
        self.decoder = TransformerDecoder(cfg)
        self.auxiliary_decoder = CtcDecoder(cfg) if cfg.top_ctc else None

    def encode(self, features: Tensor, lengths: Tensor, return_states: bool = False,
               inter_ctc: bool = False) -> EncoderOutput:
        """features [B, T, input_dim] (utterance-CMVN fbank, zero-padded), lengths [B] -> EncoderOutput.

        The intermediate CTC head only serves training; `inter_ctc=True` computes its logits too. On a CPU, in
        inference, rows of very different lengths are encoded in separate groups (`length_groups`) and the
        outputs padded together: there a padded frame costs as much as a real one (a batch padded to 1.3x its
        audio took 1.37x the time of the same rows grouped, at FAMA-small size), while batching short rows of
        one length still pays (1.5x for 8 rows of 3.3 s).
        """
        groups = None
        if features.device.type == "cpu" and not self.training and not return_states and len(lengths) > 1:
            rows = lengths.tolist()
            groups = list(length_groups(sorted(range(len(rows)), key=lambda j: -rows[j]), rows))
        if groups is None or len(groups) == 1:
            return self.encoder(features, lengths, return_states=return_states, ctc_inter=inter_ctc)
        parts = []
        for rows in groups:
            index = torch.tensor(rows, device=features.device)
            longest = int(lengths[index].max())
            parts.append((index, self.encoder(features[index, :longest], lengths[index], ctc_inter=inter_ctc)))
        frames = max(e.out.shape[1] for _, e in parts)

        def stitched(pick) -> Tensor:
            first = pick(parts[0][1])
            out = first.new_zeros(len(lengths), frames, *first.shape[2:])
            for index, e in parts:
                out[index, : pick(e).shape[1]] = pick(e)
            return out

        out_lengths = parts[0][1].lengths.new_zeros(len(lengths))
        for index, e in parts:
            out_lengths[index] = e.lengths
        return EncoderOutput(
            out=stitched(lambda e: e.out),
            padding_mask=lengths_to_padding_mask(out_lengths, frames),
            lengths=out_lengths,
            ctc_inter_logits=stitched(lambda e: e.ctc_inter_logits) if inter_ctc else None,
        )

    def ctc_logits(self, enc: EncoderOutput, lang_ids: Tensor) -> Tensor:
        """Top CTC logits [B, T', V] conditioned on each row's language tag id [B]; padded frames are 0."""
        if self.auxiliary_decoder is None:
            raise ValueError("this model has no top CTC head")
        return self.auxiliary_decoder(enc, self.decoder.embed_tokens(lang_ids))

    def forward(self, features: Tensor, lengths: Tensor, prev_tokens: Tensor) -> tuple[Tensor, Tensor, EncoderOutput]:
        """Training forward: (decoder logits, top CTC logits, encoder output). prev_tokens[:, 1] is the lang tag."""
        enc = self.encode(features, lengths, inter_ctc=True)
        return self.decoder(prev_tokens, enc), self.ctc_logits(enc, prev_tokens[:, 1]), enc

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

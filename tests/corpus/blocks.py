"""Public group: torch.nn blocks, an HSTU block, classic feature interactions and a two-tower retrieval model.

The HSTU block and the interaction models are written here from their papers' descriptions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tests.corpus.check import load_fbgemm_ops
from tests.corpus.inputs import BATCH, bags, dense, field_ids, sequence
from tests.corpus.layers import FieldEmbedding, FieldLinear, mlp, pairs
from tests.corpus.registry import corpus_model
from torch import nn

FIELDS = (13, 7, 29, 5, 17)  # rows of each categorical field
SEQ = 7
D_MODEL = 12


@corpus_model(
    "transformer-encoder-layer",
    "public",
    "torch.nn.TransformerEncoderLayer (post-norm, relu FFN, batch_first) over a feature sequence",
)
def transformer_encoder_layer():
    layer = nn.TransformerEncoderLayer(D_MODEL, nhead=3, dim_feedforward=20, dropout=0.0, batch_first=True)
    return layer, (torch.randn(BATCH, SEQ, D_MODEL),)


@corpus_model(
    "multihead-attention",
    "public",
    "torch.nn.MultiheadAttention self-attention (batch_first), returning the output and mean attention weights",
)
def multihead_attention():
    mha = nn.MultiheadAttention(D_MODEL, num_heads=4, batch_first=True)
    x = torch.randn(BATCH, SEQ, D_MODEL)
    return SelfAttention(mha), (x,)


class SelfAttention(nn.Module):
    def __init__(self, mha: nn.MultiheadAttention) -> None:
        super().__init__()
        self.mha = mha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mha(x, x, x)


class LayerNormGeluMlp(nn.Module):
    """The transformer FFN sub-block: x + W2 gelu(W1 LayerNorm(x))."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(F.gelu(self.up(self.norm(x))))


@corpus_model(
    "layernorm-gelu-mlp", "public", "torch.nn LayerNorm + Linear + GELU + Linear, residual (pre-norm FFN)"
)
def layernorm_gelu_mlp():
    return LayerNormGeluMlp(D_MODEL, 29), (torch.randn(BATCH, SEQ, D_MODEL),)


def hstu_layers(m: nn.Module, dim: int, heads: int, seq: int) -> None:
    """The weights of an HSTU layer, set on `m`: the norms, f1 (to U, V, Q, K), f2 and the relative-position
    bias `rab` (one per (query, key) offset), with the offset and causal-mask buffers of sequences of `seq`."""
    m.heads, m.dim, m.seq = heads, dim, seq
    m.norm_in = nn.LayerNorm(dim)
    m.f1 = nn.Linear(dim, 4 * dim)
    m.norm_attn = nn.LayerNorm(dim)
    m.f2 = nn.Linear(dim, dim)
    m.rab = nn.Parameter(torch.randn(2 * seq - 1) * 0.1)
    pos = torch.arange(seq)
    m.register_buffer("offset", pos[None, :] - pos[:, None] + seq - 1, persistent=False)
    m.register_buffer("causal", torch.tril(torch.ones(seq, seq)), persistent=False)


def hstu_attention(m: nn.Module, q, k, v, valid: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """A V of HSTU's pointwise attention over padded [B, S, D] queries, keys and values, per head:
    silu(Q K^T / sqrt(d) + rab) / n, causal and over the `valid` [B, S] items, n [B] each sequence's length."""
    b, s, _ = q.shape
    h, dh = m.heads, m.dim // m.heads
    q, k, v = (t.reshape(b, s, h, dh).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / dh**0.5 + m.rab[m.offset]
    mask = m.causal * valid[:, None, :] * valid[:, :, None]  # [B, S, S]
    attn = F.silu(scores) * (mask / n[:, None, None])[:, None]
    return (attn @ v).transpose(1, 2).reshape(b, s, m.dim)


class HstuBlock(nn.Module):
    """One HSTU layer (Zhai et al. 2024, "Actions Speak Louder than Words", arXiv 2402.17152, section 3):

        U, V, Q, K = split(silu(f1(x)))                  pointwise projection
        A = silu(Q K^T / sqrt(d) + rab) / n * mask          pointwise (not softmax) attention, causal,
        Y = f2(LayerNorm(A V) * U) + x                    over the n valid items of each sequence

    The paper runs it on jagged sequences; here a sequence is padded to dense [B, S] (id 0 is padding) and
    a causal x valid mask stands for the jagged layout; n is each sequence's length. `rab` is a learned
    relative-position bias, one per (query, key) offset.
    """

    def __init__(self, items: int, dim: int, heads: int, seq: int) -> None:
        super().__init__()
        self.items = nn.Embedding(items, dim, padding_idx=0)
        hstu_layers(self, dim, heads, seq)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        valid = (ids > 0).to(torch.float32)  # [B, S]
        x = self.items(ids)
        u, v, q, k = F.silu(self.f1(self.norm_in(x))).split(self.dim, dim=-1)
        out = hstu_attention(self, q, k, v, valid, valid.sum(dim=1).clamp_min(1.0))
        return x + self.f2(self.norm_attn(out) * u)


@corpus_model(
    "hstu-block",
    "public",
    "HSTU layer from Zhai et al. 2024 (arXiv 2402.17152): SiLU pointwise attention; padded dense sequences "
    "with a length mask stand in for the jagged ones",
)
def hstu_block():
    ids, _ = sequence(61, BATCH, SEQ)
    return HstuBlock(61, D_MODEL, heads=2, seq=SEQ), (ids,)


class HstuJagged(nn.Module):
    """One HSTU layer over jagged sequences, as generative-recommenders runs it (Zhai et al. 2024, arXiv
    2402.17152, section 3): the pointwise projections and the output MLP on the jagged rows [T, D] (the
    sequences of a batch one after another, sequence b in rows offsets[b]..offsets[b+1]), the attention on
    the sequences padded to [B, S, D] by `fbgemm.jagged_to_padded_dense` and back by `fbgemm.dense_to_jagged`:

        U, V, Q, K = split(silu(f1(LayerNorm(x))))              on jagged rows
        A = silu(Q K^T / sqrt(d) + rab) / n * mask              padded, causal, over the n valid items
        Y = f2(LayerNorm(A V) * U) + x                          back on jagged rows

    A sequence longer than S is truncated (its rows past S get no attention output); n is each sequence's
    length (at most S, at least 1). The weights are `HstuBlock`'s (`hstu_layers`).
    """

    def __init__(self, dim: int, heads: int, seq: int) -> None:
        super().__init__()
        hstu_layers(self, dim, heads, seq)

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        s = self.seq
        lengths = (offsets[1:] - offsets[:-1]).clamp(0, s)
        valid = (torch.arange(s)[None, :] < lengths[:, None]).to(torch.float32)  # [B, S]
        u, v, q, k = F.silu(self.f1(self.norm_in(values))).split(self.dim, dim=-1)  # [T, D] each
        q, k, v = (torch.ops.fbgemm.jagged_to_padded_dense(t, [offsets], [s], 0.0) for t in (q, k, v))
        out = hstu_attention(self, q, k, v, valid, lengths.clamp_min(1).to(torch.float32))
        out = torch.ops.fbgemm.dense_to_jagged(out, [offsets], values.shape[0])[0]  # [T, D]
        return values + self.f2(self.norm_attn(out) * u)


@corpus_model(
    "hstu-jagged",
    "public",
    "HSTU layer from Zhai et al. 2024 (arXiv 2402.17152) on jagged sequences: values [T, D] and offsets [B+1], "
    "attention padded by fbgemm.jagged_to_padded_dense and back by fbgemm.dense_to_jagged (generative-recommenders)",
)
def hstu_jagged():
    load_fbgemm_ops()  # the fbgemm ops the model calls
    lengths = torch.randint(1, SEQ + 1, (BATCH,))
    lengths[1], lengths[3] = 0, SEQ + 2  # an empty sequence and one longer than S (truncated)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    return HstuJagged(D_MODEL, heads=2, seq=SEQ), (torch.randn(int(offsets[-1]), D_MODEL), offsets)


class FactorizationMachine(nn.Module):
    """Rendle 2010: y = w0 + sum_i w_i + 1/2 sum_d ((sum_i v_id)^2 - sum_i v_id^2), here with dense features
    projected into the embedding space as one more field; sigmoid for a click probability."""

    def __init__(self, rows: tuple[int, ...], dense_in: int, dim: int) -> None:
        super().__init__()
        self.embed = FieldEmbedding(rows, dim)
        self.linear = FieldLinear(rows)
        self.dense = nn.Linear(dense_in, dim)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        v = torch.cat([self.embed(ids), self.dense(x)[:, None, :]], dim=1)  # [B, F+1, D]
        square_of_sum = v.sum(dim=1) ** 2
        sum_of_square = (v * v).sum(dim=1)
        second = 0.5 * (square_of_sum - sum_of_square).sum(dim=1, keepdim=True)
        return torch.sigmoid(self.linear(ids) + second)


@corpus_model(
    "factorization-machine",
    "public",
    "Factorization Machines (Rendle, ICDM 2010), second-order identity form",
)
def factorization_machine():
    return FactorizationMachine(FIELDS, 6, 8), (dense(BATCH, 6), field_ids(FIELDS, BATCH))


class ProductNN(nn.Module):
    """IPNN (Qu et al. 2016, "Product-based Neural Networks"): the field embeddings (linear signals) and all
    pairwise inner products <e_i, e_j> (quadratic signals) feed an MLP."""

    def __init__(self, rows: tuple[int, ...], dim: int) -> None:
        super().__init__()
        f = len(rows)
        self.embed = FieldEmbedding(rows, dim)
        i, j = pairs(f)
        self.register_buffer("flat_pairs", i * f + j, persistent=False)
        self.mlp = mlp([f * dim + len(i), 19, 1])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(ids)  # [B, F, D]
        inner = torch.bmm(e, e.transpose(1, 2)).flatten(1)[:, self.flat_pairs]  # [B, F(F-1)/2]
        return torch.sigmoid(self.mlp(torch.cat([e.flatten(1), inner], dim=1)))


@corpus_model("pnn-inner-product", "public", "IPNN (Qu et al., ICDM 2016): inner-product layer + MLP")
def pnn_inner_product():
    return ProductNN(FIELDS, 6), (field_ids(FIELDS, BATCH),)


class AutoIntLayer(nn.Module):
    """AutoInt's interacting layer (Song et al. 2019): multi-head self-attention over the fields, each head's
    softmax(Q K^T) V concatenated, plus a residual projection, through ReLU."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q = nn.Linear(dim, heads * head_dim, bias=False)
        self.k = nn.Linear(dim, heads * head_dim, bias=False)
        self.v = nn.Linear(dim, heads * head_dim, bias=False)
        self.res = nn.Linear(dim, heads * head_dim, bias=False)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        b, f, _ = e.shape

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, f, self.heads, self.head_dim).permute(0, 2, 1, 3)

        q, k, v = split(self.q(e)), split(self.k(e)), split(self.v(e))
        attn = torch.softmax(q @ k.transpose(-1, -2), dim=-1)
        out = (attn @ v).permute(0, 2, 1, 3).reshape(b, f, self.heads * self.head_dim)
        return F.relu(out + self.res(e))


class AutoInt(nn.Module):
    def __init__(self, rows: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.embed = FieldEmbedding(rows, dim)
        self.layers = nn.Sequential(AutoIntLayer(dim, 2, 4), AutoIntLayer(8, 2, 4))
        self.out = nn.Linear(len(rows) * 8, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.out(self.layers(self.embed(ids)).flatten(1)))


@corpus_model(
    "autoint", "public", "AutoInt (Song et al., CIKM 2019): multi-head self-attention over field embeddings"
)
def autoint():
    return AutoInt(FIELDS, 6), (field_ids(FIELDS, BATCH),)


class TwoTower(nn.Module):
    """Two-tower retrieval: a user tower (dense features + a bag of watched items) and an item tower (item id
    + item features), each an MLP to a shared space; the score is the dot product (u * i).sum(-1)."""

    def __init__(self, users_dense: int, items: int, item_dense: int, dim: int, out: int) -> None:
        super().__init__()
        self.history = nn.EmbeddingBag(items, dim, mode="mean")
        self.item = nn.Embedding(items, dim)
        self.user_tower = mlp([users_dense + dim, 23, out])
        self.item_tower = mlp([dim + item_dense, 23, out])

    def forward(self, user_x, history_ids, history_offsets, item_ids, item_x) -> torch.Tensor:
        u = self.user_tower(torch.cat([user_x, self.history(history_ids, history_offsets)], dim=1))
        i = self.item_tower(torch.cat([self.item(item_ids), item_x], dim=1))
        return (u * i).sum(-1)


@corpus_model("two-tower", "public", "two-tower retrieval (Yi et al., RecSys 2019 style): (u * i).sum(-1)")
def two_tower():
    items = 53
    hist, offs = bags(items, BATCH, max_bag=4)
    inputs = (dense(BATCH, 6), hist, offs, torch.randint(0, items, (BATCH,)), dense(BATCH, 3))
    return TwoTower(6, items, 3, 8, 10), inputs

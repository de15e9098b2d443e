"""Held-out group: recommendation models written here from their papers' descriptions (no code copied), at toy
sizes. The kernels were not written against them; they say how far mtiasim is from "any model a user brings".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tests.corpus.inputs import BATCH, bags, dense, field_ids, sequence
from tests.corpus.layers import FieldEmbedding, FieldLinear, mlp, pairs
from tests.corpus.registry import corpus_model
from torch import nn

FIELDS = (11, 23, 7, 31, 5, 13)  # rows of each categorical field
DIM = 6
DENSE_IN = 5
ITEMS = 47
SEQ = 6


def ctr_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return dense(BATCH, DENSE_IN), field_ids(FIELDS, BATCH)


# ---------------------------------------------------------------------------------------- wide and cross
class WideAndDeep(nn.Module):
    """Cheng et al. 2016: a wide linear model over the sparse ids and their cross product (here the crossed
    feature is the pair of the first two fields, hashed into its own field) plus a deep ReLU MLP over
    embeddings and dense features, summed into one logit."""

    def __init__(self, rows: tuple[int, ...], dim: int, dense_in: int) -> None:
        super().__init__()
        self.crossed_rows = rows[0] * rows[1]
        self.wide = FieldLinear((*rows, self.crossed_rows))
        self.embed = FieldEmbedding(rows, dim)
        self.deep = mlp([len(rows) * dim + dense_in, 17, 9, 1])
        self.rows1 = rows[1]

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        crossed = ids[:, :1] * self.rows1 + ids[:, 1:2]
        wide = self.wide(torch.cat([ids, crossed], dim=1))
        deep = self.deep(torch.cat([self.embed(ids).flatten(1), x], dim=1))
        return torch.sigmoid(wide + deep)


@corpus_model("wide-and-deep", "heldout", "Wide & Deep (Cheng et al., DLRS 2016)")
def wide_and_deep():
    return WideAndDeep(FIELDS, DIM, DENSE_IN), ctr_inputs()


class CrossLayerV2(nn.Module):
    """DCN-V2's cross layer (Wang et al. 2021): x_{l+1} = x_0 * (W x_l + b) + x_l, full-rank W."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(width, width)

    def forward(self, x0: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return x0 * self.proj(x) + x


class DcnV2(nn.Module):
    """DCN-V2 with its two structures: "stacked" (cross network, then the deep network on its output) and
    "parallel" (both on x_0, outputs concatenated)."""

    def __init__(self, rows: tuple[int, ...], dim: int, dense_in: int, structure: str) -> None:
        super().__init__()
        self.structure = structure
        width = len(rows) * dim + dense_in
        self.embed = FieldEmbedding(rows, dim)
        self.cross = nn.ModuleList(CrossLayerV2(width) for _ in range(3))
        self.deep = mlp([width, 21, 13], act=nn.ReLU)
        self.deep_act = nn.ReLU()
        self.out = nn.Linear(13 if structure == "stacked" else 13 + width, 1)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([x, self.embed(ids).flatten(1)], dim=1)
        xl = x0
        for layer in self.cross:
            xl = layer(x0, xl)
        if self.structure == "stacked":
            h = self.deep_act(self.deep(xl))
        else:
            h = torch.cat([xl, self.deep_act(self.deep(x0))], dim=1)
        return torch.sigmoid(self.out(h))


@corpus_model("dcn-v2-stacked", "heldout", "DCN-V2 (Wang et al., WWW 2021), stacked cross + deep")
def dcn_v2_stacked():
    return DcnV2(FIELDS, DIM, DENSE_IN, "stacked"), ctr_inputs()


@corpus_model("dcn-v2-parallel", "heldout", "DCN-V2 (Wang et al., WWW 2021), parallel cross || deep")
def dcn_v2_parallel():
    return DcnV2(FIELDS, DIM, DENSE_IN, "parallel"), ctr_inputs()


class CompressedInteraction(nn.Module):
    """xDeepFM's CIN (Lian et al. 2018): X^k_h = sum_{i,j} W^{k,h}_{ij} (X^{k-1}_i o X^0_j), feature maps
    sum-pooled over the embedding dimension of every layer and concatenated."""

    def __init__(self, fields: int, layer_sizes: list[int]) -> None:
        super().__init__()
        prev, self.maps = fields, nn.ModuleList()
        for h in layer_sizes:
            self.maps.append(nn.Linear(prev * fields, h, bias=False))
            prev = h

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        b, m, d = x0.shape
        xk, pooled = x0, []
        for w in self.maps:
            z = torch.einsum("bhd,bmd->bhmd", xk, x0).reshape(b, -1, d)  # [B, H*m, D]
            xk = w(z.transpose(1, 2)).transpose(1, 2)  # [B, H_k, D]
            pooled.append(xk.sum(dim=2))
        return torch.cat(pooled, dim=1)


class XDeepFM(nn.Module):
    def __init__(self, rows: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.embed = FieldEmbedding(rows, dim)
        self.linear = FieldLinear(rows)
        self.cin = CompressedInteraction(len(rows), [7, 5])
        self.cin_out = nn.Linear(12, 1)
        self.dnn = mlp([len(rows) * dim, 15, 1])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(ids)
        return torch.sigmoid(self.linear(ids) + self.cin_out(self.cin(e)) + self.dnn(e.flatten(1)))


@corpus_model("xdeepfm-cin", "heldout", "xDeepFM (Lian et al., KDD 2018): CIN + DNN + linear")
def xdeepfm_cin():
    return XDeepFM(FIELDS, DIM), (field_ids(FIELDS, BATCH),)


# ----------------------------------------------------------------------------------- factorization family
class FieldWeightedFM(nn.Module):
    """FwFM (Pan et al. 2018): sum_{i<j} <v_i, v_j> r_{F(i),F(j)} with a learned weight per field pair."""

    def __init__(self, rows: tuple[int, ...], dim: int) -> None:
        super().__init__()
        f = len(rows)
        self.embed = FieldEmbedding(rows, dim)
        self.linear = FieldLinear(rows)
        i, j = pairs(f)
        self.register_buffer("flat_pairs", i * f + j, persistent=False)
        self.pair_weight = nn.Parameter(torch.rand(len(i)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(ids)
        inner = torch.matmul(e, e.transpose(1, 2)).flatten(1)[:, self.flat_pairs]
        return torch.sigmoid(self.linear(ids) + (inner * self.pair_weight).sum(dim=1, keepdim=True))


@corpus_model("fwfm", "heldout", "Field-weighted FM (Pan et al., WWW 2018)")
def fwfm():
    return FieldWeightedFM(FIELDS, DIM), (field_ids(FIELDS, BATCH),)


class AttentionalFM(nn.Module):
    """AFM (Xiao et al. 2017): element-wise products of all field pairs, an attention network (ReLU MLP) over
    the pairs, softmax-normalised (written out with its max subtraction), the weighted sum projected to a
    logit, plus the linear term."""

    def __init__(self, rows: tuple[int, ...], dim: int, attn: int) -> None:
        super().__init__()
        self.embed = FieldEmbedding(rows, dim)
        self.linear = FieldLinear(rows)
        i, j = pairs(len(rows))
        self.register_buffer("left", i, persistent=False)
        self.register_buffer("right", j, persistent=False)
        self.attention = nn.Sequential(nn.Linear(dim, attn), nn.ReLU(), nn.Linear(attn, 1, bias=False))
        self.project = nn.Linear(dim, 1, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(ids)
        products = e[:, self.left] * e[:, self.right]  # [B, P, D]
        scores = self.attention(products)  # [B, P, 1]
        weights = (scores - scores.amax(dim=1, keepdim=True)).exp()
        weights = weights / weights.sum(dim=1, keepdim=True)
        return torch.sigmoid(self.linear(ids) + self.project((weights * products).sum(dim=1)))


@corpus_model("afm", "heldout", "Attentional FM (Xiao et al., IJCAI 2017)")
def afm():
    return AttentionalFM(FIELDS, DIM, 4), (field_ids(FIELDS, BATCH),)


class NeuralFM(nn.Module):
    """NFM (He & Chua 2017): bi-interaction pooling 1/2 ((sum v)^2 - sum v^2) -> BatchNorm -> MLP, plus the
    linear term."""

    def __init__(self, rows: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.embed = FieldEmbedding(rows, dim)
        self.linear = FieldLinear(rows)
        self.norm = nn.BatchNorm1d(dim)
        self.mlp = mlp([dim, 11, 1])

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        v = self.embed(ids)
        bi = 0.5 * (v.sum(dim=1).pow(2) - v.pow(2).sum(dim=1))
        return torch.sigmoid(self.linear(ids) + self.mlp(self.norm(bi)))


@corpus_model("nfm", "heldout", "Neural FM (He & Chua, SIGIR 2017), bi-interaction + BatchNorm")
def nfm():
    model = NeuralFM(FIELDS, DIM)
    running_stats_(model)
    return model, (field_ids(FIELDS, BATCH),)


def running_stats_(model: nn.Module) -> None:
    """Give every BatchNorm non-trivial running statistics and affine parameters, as a trained model has."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.2, 0.2)


class FiBiNet(nn.Module):
    """FiBiNET (Huang et al. 2019): a SENET layer re-weights the fields (squeeze: mean over the embedding;
    excitation: two ReLU FCs), then a bilinear interaction p_ij = (v_i W) o v_j ("field-all" W) on both the
    original and the re-weighted embeddings, concatenated into an MLP."""

    def __init__(self, rows: tuple[int, ...], dim: int) -> None:
        super().__init__()
        f = len(rows)
        self.embed = FieldEmbedding(rows, dim)
        self.excite = nn.Sequential(nn.Linear(f, 3), nn.ReLU(), nn.Linear(3, f), nn.ReLU())
        self.bilinear = nn.Linear(dim, dim, bias=False)
        i, j = pairs(f)
        self.register_buffer("left", i, persistent=False)
        self.register_buffer("right", j, persistent=False)
        self.mlp = mlp([2 * len(i) * dim, 16, 1])

    def interact(self, e: torch.Tensor) -> torch.Tensor:
        return (self.bilinear(e)[:, self.left] * e[:, self.right]).flatten(1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(ids)
        weights = self.excite(e.mean(dim=2))  # [B, F]
        v = e * weights.unsqueeze(2)
        return torch.sigmoid(self.mlp(torch.cat([self.interact(e), self.interact(v)], dim=1)))


@corpus_model("fibinet", "heldout", "FiBiNET (Huang et al., RecSys 2019): SENET + bilinear interaction")
def fibinet():
    return FiBiNet(FIELDS, DIM), (field_ids(FIELDS, BATCH),)


# --------------------------------------------------------------------------------------- user behaviour
class Dice(nn.Module):
    """DIN's data-adaptive activation: p(s) s + (1 - p(s)) alpha s, p(s) = sigmoid(BatchNorm(s))."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(width, affine=False)
        self.alpha = nn.Parameter(torch.full((width,), 0.25))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(self.norm(s))
        return p * s + (1 - p) * self.alpha * s


class DeepInterestNetwork(nn.Module):
    """DIN (Zhou et al. 2018): a local activation unit scores every behaviour e_j against the target item a
    from [e_j, a, e_j - a, e_j * a] (an MLP with PReLU), without softmax; the scored behaviours, masked to the
    sequence's length, are summed into the user interest; an MLP with Dice predicts the click."""

    def __init__(self, items: int, dim: int, profile_rows: tuple[int, ...]) -> None:
        super().__init__()
        self.items = nn.Embedding(items, dim, padding_idx=0)
        self.profile = FieldEmbedding(profile_rows, dim)
        self.activation_unit = nn.Sequential(nn.Linear(4 * dim, 9), nn.PReLU(), nn.Linear(9, 1))
        width = (len(profile_rows) + 2) * dim
        self.top = nn.Sequential(nn.Linear(width, 14), Dice(14), nn.Linear(14, 1))

    def forward(self, history: torch.Tensor, target: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        valid = (history > 0).unsqueeze(2).to(torch.float32)  # [B, S, 1]
        e = self.items(history)  # [B, S, D]
        a = self.items(target).unsqueeze(1).expand_as(e)
        scores = self.activation_unit(torch.cat([e, a, e - a, e * a], dim=2))  # [B, S, 1]
        interest = (scores * valid * e).sum(dim=1)
        user = torch.cat([self.profile(profile).flatten(1), interest, a[:, 0]], dim=1)
        return torch.sigmoid(self.top(user))


def behaviour_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    history, _ = sequence(ITEMS, BATCH, SEQ)
    return history, torch.randint(1, ITEMS, (BATCH,)), field_ids(FIELDS[:3], BATCH)


@corpus_model(
    "din", "heldout", "DIN (Zhou et al., KDD 2018): target attention with a local activation unit, Dice"
)
def din():
    model = DeepInterestNetwork(ITEMS, DIM, FIELDS[:3])
    running_stats_(model)
    return model, behaviour_inputs()


class InterestEvolution(nn.Module):
    """DIEN-lite (Zhou et al. 2019): a GRU extracts interest states from the behaviour sequence; attention of
    the target item over the states (softmax over the valid steps) pools them (the paper's AUGRU second layer
    is left out); an MLP predicts the click."""

    def __init__(self, items: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.items = nn.Embedding(items, dim, padding_idx=0)
        self.gru = nn.GRU(dim, hidden, batch_first=True)
        self.query = nn.Linear(dim, hidden, bias=False)
        self.top = mlp([hidden + dim, 12, 1], act=nn.Sigmoid)

    def forward(self, history: torch.Tensor, target: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(self.items(history))  # [B, S, H]
        t = self.items(target)
        scores = (states * self.query(t).unsqueeze(1)).sum(dim=2)  # [B, S]
        scores = scores + (history == 0).to(torch.float32) * -1e4
        interest = (torch.softmax(scores, dim=1).unsqueeze(2) * states).sum(dim=1)
        return torch.sigmoid(self.top(torch.cat([interest, t], dim=1)))


@corpus_model("dien-lite", "heldout", "DIEN (Zhou et al., AAAI 2019) without AUGRU: GRU + target attention")
def dien_lite():
    return InterestEvolution(ITEMS, DIM, 7), behaviour_inputs()


class BehaviorSequenceTransformer(nn.Module):
    """BST (Chen et al. 2019): the behaviour sequence plus the target item, with learned positions, through one
    transformer layer (multi-head scaled-dot-product attention with a key padding mask, LeakyReLU FFN,
    residuals and LayerNorm), flattened with profile embeddings into a LeakyReLU MLP."""

    def __init__(self, items: int, dim: int, heads: int, seq: int, profile_rows: tuple[int, ...]) -> None:
        super().__init__()
        self.heads = heads
        self.items = nn.Embedding(items, dim, padding_idx=0)
        self.position = nn.Parameter(torch.randn(seq + 1, dim) * 0.1)
        self.profile = FieldEmbedding(profile_rows, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.LeakyReLU(0.1), nn.Linear(2 * dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.top = mlp([(seq + 1 + len(profile_rows)) * dim, 16, 1], act=lambda: nn.LeakyReLU(0.1))

    def forward(self, history: torch.Tensor, target: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
        seq = torch.cat([history, target[:, None]], dim=1)
        x = self.items(seq) + self.position
        b, s, d = x.shape
        q, k, v = self.qkv(x).reshape(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        keep = (seq > 0)[:, None, None, :]  # [B, 1, 1, S]
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        x = self.norm1(x + self.attn_out(attn.transpose(1, 2).reshape(b, s, d)))
        x = self.norm2(x + self.ffn(x))
        return torch.sigmoid(self.top(torch.cat([x.flatten(1), self.profile(profile).flatten(1)], dim=1)))


@corpus_model("bst", "heldout", "Behavior Sequence Transformer (Chen et al., DLP-KDD 2019)")
def bst():
    return BehaviorSequenceTransformer(ITEMS, 8, 2, SEQ, FIELDS[:3]), behaviour_inputs()


class SelfAttentiveSequential(nn.Module):
    """SASRec (Kang & McAuley 2018): item + position embeddings, causal self-attention blocks (pre-LayerNorm,
    softmax attention with an additive causal mask, ReLU point-wise FFN), the last position's state scored
    against every item embedding (shared table)."""

    def __init__(self, items: int, dim: int, seq: int) -> None:
        super().__init__()
        self.items = nn.Embedding(items, dim, padding_idx=0)
        self.position = nn.Parameter(torch.randn(seq, dim) * 0.1)
        self.norm_attn = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.norm_out = nn.LayerNorm(dim)
        future = torch.triu(torch.ones(seq, seq), diagonal=1)
        self.register_buffer("causal_bias", future * -1e4, persistent=False)
        self.scale = dim**-0.5

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        valid = (history > 0).unsqueeze(2).to(torch.float32)
        x = (self.items(history) + self.position) * valid
        h = self.norm_attn(x)
        scores = torch.bmm(self.q(h), self.k(h).transpose(1, 2)) * self.scale + self.causal_bias
        x = x + torch.bmm(torch.softmax(scores, dim=-1), self.v(h))
        x = (x + self.ffn(self.norm_ffn(x))) * valid
        last = self.norm_out(x[:, -1])
        return last @ self.items.weight.t()  # [B, items]: next-item scores


@corpus_model("sasrec", "heldout", "SASRec (Kang & McAuley, ICDM 2018): causal self-attention next-item")
def sasrec():
    history, _ = sequence(ITEMS, BATCH, SEQ)
    return SelfAttentiveSequential(ITEMS, 8, SEQ), (history.flip(1),)  # padding first, latest item last


# ------------------------------------------------------------------------------------------ multi-task
class MultiGateMixtureOfExperts(nn.Module):
    """MMoE (Ma et al. 2018): shared experts, one softmax gate per task over the experts, one tower per task."""

    def __init__(self, width: int, experts: int, expert_width: int, tasks: int) -> None:
        super().__init__()
        self.experts = nn.ModuleList(mlp([width, 12, expert_width]) for _ in range(experts))
        self.gates = nn.ModuleList(nn.Linear(width, experts) for _ in range(tasks))
        self.towers = nn.ModuleList(mlp([expert_width, 6, 1]) for _ in range(tasks))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = torch.stack([F.relu(e(x)) for e in self.experts], dim=1)  # [B, E, H]
        heads = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            g = torch.softmax(gate(x), dim=1).unsqueeze(2)  # [B, E, 1]
            heads.append(torch.sigmoid(tower((g * outs).sum(dim=1))))
        return tuple(heads)


class MultiTaskCtr(nn.Module):
    def __init__(self, rows: tuple[int, ...], dim: int, dense_in: int, body: nn.Module) -> None:
        super().__init__()
        self.embed = FieldEmbedding(rows, dim)
        self.body = body

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.body(torch.cat([x, self.embed(ids).flatten(1)], dim=1))


CTR_WIDTH = DENSE_IN + len(FIELDS) * DIM


@corpus_model("mmoe", "heldout", "MMoE (Ma et al., KDD 2018): multi-gate mixture of experts, 2 tasks")
def mmoe():
    return MultiTaskCtr(FIELDS, DIM, DENSE_IN, MultiGateMixtureOfExperts(CTR_WIDTH, 3, 8, 2)), ctr_inputs()


class ProgressiveLayeredExtraction(nn.Module):
    """PLE (Tang et al. 2020): two extraction layers of task-specific and shared experts; each task's gate mixes
    its own and the shared experts, the shared gate mixes all; a tower per task after the last layer."""

    def __init__(self, width: int, hidden: int, tasks: int, per_task: int, shared: int) -> None:
        super().__init__()
        self.tasks, self.per_task, self.shared = tasks, per_task, shared
        self.layers = nn.ModuleList()
        for i, w in enumerate((width, hidden)):
            layer = nn.Module()
            layer.task_experts = nn.ModuleList(nn.Linear(w, hidden) for _ in range(tasks * per_task))
            layer.shared_experts = nn.ModuleList(nn.Linear(w, hidden) for _ in range(shared))
            layer.task_gates = nn.ModuleList(nn.Linear(w, per_task + shared) for _ in range(tasks))
            layer.shared_gate = nn.Linear(w, tasks * per_task + shared) if i == 0 else None
            self.layers.append(layer)
        self.towers = nn.ModuleList(mlp([hidden, 5, 1], act=nn.SiLU) for _ in range(tasks))

    @staticmethod
    def mix(gate: nn.Linear, x: torch.Tensor, experts: list[torch.Tensor]) -> torch.Tensor:
        weights = torch.softmax(gate(x), dim=-1)  # [B, n]
        return torch.einsum("bn,bnh->bh", weights, torch.stack(experts, dim=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        inputs = [x] * self.tasks + [x]  # per task, then the shared path
        for layer in self.layers:
            shared = [F.gelu(e(inputs[-1])) for e in layer.shared_experts]
            own = [
                [F.gelu(layer.task_experts[t * self.per_task + k](inputs[t])) for k in range(self.per_task)]
                for t in range(self.tasks)
            ]
            nxt = [self.mix(layer.task_gates[t], inputs[t], own[t] + shared) for t in range(self.tasks)]
            if layer.shared_gate is not None:
                nxt.append(self.mix(layer.shared_gate, inputs[-1], [e for o in own for e in o] + shared))
            inputs = nxt
        return tuple(torch.sigmoid(tower(h)) for tower, h in zip(self.towers, inputs, strict=False))


@corpus_model("ple", "heldout", "PLE (Tang et al., RecSys 2020): progressive layered extraction, 2 layers")
def ple():
    body = ProgressiveLayeredExtraction(CTR_WIDTH, 9, tasks=2, per_task=2, shared=1)
    return MultiTaskCtr(FIELDS, DIM, DENSE_IN, body), ctr_inputs()


class EntireSpaceMultiTask(nn.Module):
    """ESMM (Ma et al. 2018): CTR and CVR towers on shared embeddings; outputs pCTR and pCTCVR = pCTR x pCVR."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.ctr = mlp([width, 10, 1], act=nn.Tanh)
        self.cvr = mlp([width, 10, 1], act=nn.Tanh)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p_ctr = torch.sigmoid(self.ctr(x))
        return p_ctr, p_ctr * torch.sigmoid(self.cvr(x))


@corpus_model("esmm", "heldout", "ESMM (Ma et al., SIGIR 2018): entire-space CTR x CVR")
def esmm():
    return MultiTaskCtr(FIELDS, DIM, DENSE_IN, EntireSpaceMultiTask(CTR_WIDTH)), ctr_inputs()


# ------------------------------------------------------------------------------------ matching / retrieval
class NeuMF(nn.Module):
    """NCF's NeuMF (He et al. 2017): a GMF path (u o i) and an MLP path on [u, i], each with its own
    embeddings, concatenated into the prediction layer."""

    def __init__(self, users: int, items: int, dim: int) -> None:
        super().__init__()
        self.gmf_user, self.gmf_item = nn.Embedding(users, dim), nn.Embedding(items, dim)
        self.mlp_user, self.mlp_item = nn.Embedding(users, dim), nn.Embedding(items, dim)
        self.mlp = mlp([2 * dim, 12, 6, 4])
        self.mlp_act = nn.ReLU()
        self.predict = nn.Linear(dim + 4, 1)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        gmf = self.gmf_user(user) * self.gmf_item(item)
        deep = self.mlp_act(self.mlp(torch.cat([self.mlp_user(user), self.mlp_item(item)], dim=1)))
        return torch.sigmoid(self.predict(torch.cat([gmf, deep], dim=1)))


@corpus_model("neumf", "heldout", "NCF / NeuMF (He et al., WWW 2017)")
def neumf():
    return NeuMF(29, ITEMS, DIM), (torch.randint(0, 29, (BATCH,)), torch.randint(0, ITEMS, (BATCH,)))


class DeepStructuredSemantic(nn.Module):
    """DSSM (Huang et al. 2013): query and documents as bags of letter-trigram hashes (mean-pooled embedding
    bags here, for the paper's sparse word-hashing layer), tanh towers, cosine similarity of the query with
    each of its candidate documents, softmax over the candidates with smoothing factor gamma."""

    def __init__(self, vocab: int, dim: int, out: int, gamma: float) -> None:
        super().__init__()
        self.query_bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.doc_bag = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.query_tower = mlp([dim, 11, out], act=nn.Tanh)
        self.doc_tower = mlp([dim, 11, out], act=nn.Tanh)
        self.gamma = gamma

    def forward(self, q_ids, q_offsets, d_ids, d_offsets) -> torch.Tensor:
        q = F.normalize(torch.tanh(self.query_tower(self.query_bag(q_ids, q_offsets))), dim=-1)  # [B, H]
        d = F.normalize(torch.tanh(self.doc_tower(self.doc_bag(d_ids, d_offsets))), dim=-1)  # [B*C, H]
        cosine = (q.unsqueeze(1) * d.reshape(q.shape[0], -1, q.shape[1])).sum(dim=-1)  # [B, C]
        return torch.softmax(self.gamma * cosine, dim=1)


@corpus_model("dssm", "heldout", "DSSM (Huang et al., CIKM 2013): word-hashing towers, cosine, softmax")
def dssm():
    vocab, candidates = 61, 3
    q_ids, q_off = bags(vocab, BATCH, max_bag=5)
    d_ids, d_off = bags(vocab, BATCH * candidates, max_bag=6)
    return DeepStructuredSemantic(vocab, 8, 7, gamma=10.0), (q_ids, q_off, d_ids, d_off)


class YouTubeCandidateTower(nn.Module):
    """YouTube DNN candidate generation (Covington et al. 2016): mean-pooled watch history, max-pooled search
    tokens, a geography embedding and the example age with its square and square root, through a ReLU tower
    to the user vector; serving scores it against every video embedding and softmaxes."""

    def __init__(self, videos: int, tokens: int, regions: int, dim: int) -> None:
        super().__init__()
        self.watches = nn.EmbeddingBag(videos, dim, mode="mean")
        self.searches = nn.EmbeddingBag(tokens, dim, mode="max")
        self.region = nn.Embedding(regions, dim)
        self.tower = mlp([3 * dim + 3, 16, dim])
        self.tower_act = nn.ReLU()
        self.videos = nn.Parameter(torch.randn(videos, dim) * 0.3)

    def forward(self, watch_ids, watch_offsets, search_ids, search_offsets, region, age) -> torch.Tensor:
        age_features = torch.cat([age, age * age, age.sqrt()], dim=1)
        parts = [
            self.watches(watch_ids, watch_offsets),
            self.searches(search_ids, search_offsets),
            self.region(region),
            age_features,
        ]
        user = self.tower_act(self.tower(torch.cat(parts, dim=1)))
        return torch.softmax(user @ self.videos.t(), dim=1)


@corpus_model(
    "youtube-dnn", "heldout", "YouTube DNN candidate generation (Covington et al., RecSys 2016), serving"
)
def youtube_dnn():
    videos, tokens = 43, 37
    w_ids, w_off = bags(videos, BATCH, max_bag=5)
    s_ids, s_off = bags(tokens, BATCH, max_bag=3)
    inputs = (w_ids, w_off, s_ids, s_off, torch.randint(0, 9, (BATCH,)), dense(BATCH, 1))
    return YouTubeCandidateTower(videos, tokens, 9, 8), inputs


# ------------------------------------------------------------------------------------ DLRM-like and gating
class BatchNormDlrm(nn.Module):
    """DLRM (Naumov et al. 2019) with dot interaction, written here with BatchNorm after every hidden Linear of
    both MLPs (a common production variant) and nn.EmbeddingBag tables."""

    def __init__(self, dense_in: int, rows: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.bottom = mlp([dense_in, 12, dim], norm=nn.BatchNorm1d)
        self.tables = nn.ModuleList(nn.EmbeddingBag(r, dim, mode="sum") for r in rows)
        f = len(rows) + 1
        i, j = torch.tril_indices(f, f, offset=-1)
        self.register_buffer("flat_pairs", i * f + j, persistent=False)
        self.top = mlp([dim + len(i), 15, 1], norm=nn.BatchNorm1d)

    def forward(self, x, ids: list[torch.Tensor], offsets: list[torch.Tensor]) -> torch.Tensor:
        z = self.bottom(x)
        t = torch.stack([z] + [tab(i, o) for tab, i, o in zip(self.tables, ids, offsets, strict=True)], dim=1)
        inter = torch.bmm(t, t.transpose(1, 2)).flatten(1)[:, self.flat_pairs]
        return torch.sigmoid(self.top(torch.cat([z, inter], dim=1)))


@corpus_model("dlrm-batchnorm", "heldout", "DLRM (Naumov et al. 2019) with BatchNorm MLPs, nn.EmbeddingBag")
def dlrm_batchnorm():
    rows = (19, 37, 8)
    model = BatchNormDlrm(DENSE_IN, rows, 6)
    running_stats_(model)
    per_table = [bags(r, BATCH) for r in rows]
    return model, (dense(BATCH, DENSE_IN), [i for i, _ in per_table], [o for _, o in per_table])


class MaskNetBlock(nn.Module):
    """MaskNet's MaskBlock (Wang et al. 2021): an instance-guided mask (two FCs on the flattened embeddings)
    multiplies the input, then FC, LayerNorm and ReLU."""

    def __init__(self, emb_width: int, width: int, hidden: int) -> None:
        super().__init__()
        self.mask = nn.Sequential(nn.Linear(emb_width, 2 * width), nn.ReLU(), nn.Linear(2 * width, width))
        self.fc = nn.Linear(width, hidden, bias=False)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, emb: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.fc(self.mask(emb) * x)))


class SerialMaskNet(nn.Module):
    def __init__(self, rows: tuple[int, ...], dim: int) -> None:
        super().__init__()
        self.embed = FieldEmbedding(rows, dim)
        width = len(rows) * dim
        self.input_norm = nn.LayerNorm(width)
        self.blocks = nn.ModuleList([MaskNetBlock(width, width, 10), MaskNetBlock(width, 10, 10)])
        self.out = nn.Linear(10, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.embed(ids).flatten(1)
        x = self.input_norm(emb)
        for block in self.blocks:
            x = block(emb, x)
        return torch.sigmoid(self.out(x))


@corpus_model("masknet", "heldout", "MaskNet (Wang et al., DLP-KDD 2021), serial MaskBlocks with LayerNorm")
def masknet():
    return SerialMaskNet(FIELDS, DIM), (field_ids(FIELDS, BATCH),)


class GatedFusion(nn.Module):
    """A ranking model with LayerNorm + softmax gating: three interaction branches (an MLP, a field-attention
    pooling, an FM second-order term projected up) are LayerNorm-ed, and a softmax gate computed from the
    input mixes them per sample (as in gated-ensemble rankers such as DHEN's layer combination)."""

    def __init__(self, rows: tuple[int, ...], dim: int, dense_in: int, width: int) -> None:
        super().__init__()
        self.embed = FieldEmbedding(rows, dim)
        flat = len(rows) * dim + dense_in
        self.mlp_branch = mlp([flat, 14, width], act=nn.SiLU)
        self.field_score = nn.Linear(dim, 1)
        self.pool_proj = nn.Linear(dim, width)
        self.fm_proj = nn.Linear(dim, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(3))
        self.gate = nn.Linear(flat, 3)
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        e = self.embed(ids)
        flat = torch.cat([e.flatten(1), x], dim=1)
        pooled = (torch.softmax(self.field_score(e), dim=1) * e).sum(dim=1)
        fm = 0.5 * (e.sum(dim=1) ** 2 - (e**2).sum(dim=1))
        branches = [self.mlp_branch(flat), self.pool_proj(pooled), self.fm_proj(fm)]
        branches = torch.stack([norm(b) for norm, b in zip(self.norms, branches, strict=True)], dim=1)
        gate = torch.softmax(self.gate(flat), dim=-1).unsqueeze(2)  # [B, 3, 1]
        return torch.sigmoid(self.out(F.gelu((gate * branches).sum(dim=1))))


@corpus_model(
    "gated-fusion", "heldout", "LayerNorm + softmax-gated fusion of interaction branches (DHEN-style)"
)
def gated_fusion():
    return GatedFusion(FIELDS, DIM, DENSE_IN, 9), ctr_inputs()


class DhenLayer(nn.Module):
    """One DHEN layer (Zhang et al. 2022): an ensemble of interaction modules over the same feature list (dot
    product, self-attention via nn.MultiheadAttention, a linear projection and a DCN cross), their outputs
    concatenated and projected back, with a residual and LayerNorm."""

    def __init__(self, features: int, dim: int) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(dim, 2, batch_first=True)
        self.linear = nn.Linear(features * dim, features * dim)
        self.cross = CrossLayerV2(features * dim)
        i, j = pairs(features)
        self.register_buffer("flat_pairs", i * features + j, persistent=False)
        width = len(i) + 3 * features * dim
        self.project = nn.Linear(width, features * dim)
        self.norm = nn.LayerNorm(features * dim)
        self.features, self.dim = features, dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        flat = x.flatten(1)
        dot = torch.bmm(x, x.transpose(1, 2)).flatten(1)[:, self.flat_pairs]
        attn, _ = self.attention(x, x, x, need_weights=False)
        mixed = torch.cat([dot, attn.flatten(1), self.linear(flat), self.cross(flat, flat)], dim=1)
        return self.norm(flat + self.project(mixed)).reshape(b, self.features, self.dim)


class Dhen(nn.Module):
    def __init__(self, rows: tuple[int, ...], dim: int, dense_in: int) -> None:
        super().__init__()
        self.embed = FieldEmbedding(rows, dim)
        self.dense = nn.Linear(dense_in, dim)
        self.layers = nn.Sequential(DhenLayer(len(rows) + 1, dim), DhenLayer(len(rows) + 1, dim))
        self.out = nn.Linear((len(rows) + 1) * dim, 1)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        features = torch.cat([self.dense(x).unsqueeze(1), self.embed(ids)], dim=1)
        return torch.sigmoid(self.out(self.layers(features).flatten(1)))


@corpus_model("dhen", "heldout", "DHEN (Zhang et al., arXiv 2203.11014): hierarchical ensemble, 2 layers")
def dhen():
    return Dhen(FIELDS[:4], 4, DENSE_IN), (dense(BATCH, DENSE_IN), field_ids(FIELDS[:4], BATCH))

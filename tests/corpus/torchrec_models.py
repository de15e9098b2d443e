"""Public group: torchrec's own models and modules (torchrec 1.8.0), built small with their own constructors.

torchrec is imported inside the factories, so importing the corpus stays cheap.
"""

from __future__ import annotations

import torch
from tests.corpus.inputs import BATCH, Tables, dense, keyed_jagged
from tests.corpus.registry import corpus_model
from torch import nn

DENSE_IN = 7
EMB_DIM = 8
TABLES = Tables(keys=("f_user", "f_item", "f_ctx"), rows=(23, 41, 11))


def ebc(tables: Tables = TABLES, dim: int = EMB_DIM, weighted: bool = False):
    """A torchrec EmbeddingBagCollection with one sum-pooled table per feature."""
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig

    configs = [
        EmbeddingBagConfig(name=f"t_{k}", embedding_dim=dim, num_embeddings=n, feature_names=[k])
        for k, n in zip(tables.keys, tables.rows, strict=True)
    ]
    return EmbeddingBagCollection(tables=configs, is_weighted=weighted)


def dlrm_inputs(batch: int = BATCH) -> tuple[torch.Tensor, object]:
    return dense(batch, DENSE_IN), keyed_jagged(TABLES, batch)


@corpus_model("torchrec-dlrm", "public", "torchrec.models.dlrm.DLRM (dot interaction)")
def torchrec_dlrm():
    from torchrec.models.dlrm import DLRM

    model = DLRM(ebc(), DENSE_IN, dense_arch_layer_sizes=[13, EMB_DIM], over_arch_layer_sizes=[11, 1])
    return model, dlrm_inputs()


@corpus_model("torchrec-dlrm-dcn", "public", "torchrec.models.dlrm.DLRM_DCN (low-rank DCNv2 interaction)")
def torchrec_dlrm_dcn():
    from torchrec.models.dlrm import DLRM_DCN

    model = DLRM_DCN(
        ebc(),
        DENSE_IN,
        dense_arch_layer_sizes=[13, EMB_DIM],
        over_arch_layer_sizes=[11, 1],
        dcn_num_layers=2,
        dcn_low_rank_dim=5,
    )
    return model, dlrm_inputs()


@corpus_model(
    "torchrec-dlrm-projection", "public", "torchrec.models.dlrm.DLRM_Projection (projected dot interaction)"
)
def torchrec_dlrm_projection():
    from torchrec.models.dlrm import DLRM_Projection

    model = DLRM_Projection(
        ebc(),
        DENSE_IN,
        dense_arch_layer_sizes=[13, EMB_DIM],
        over_arch_layer_sizes=[11, 1],
        interaction_branch1_layer_sizes=[3 * EMB_DIM, 3 * EMB_DIM],
        interaction_branch2_layer_sizes=[3 * EMB_DIM, 2 * EMB_DIM],
    )
    return model, dlrm_inputs()


@corpus_model(
    "torchrec-dlrm-train",
    "public",
    "torchrec.models.dlrm.DLRMTrain around DLRM, in eval, called with torchrec.datasets.utils.Batch",
)
def torchrec_dlrm_train():
    from torchrec.datasets.utils import Batch
    from torchrec.models.dlrm import DLRM, DLRMTrain

    register_input_dataclass(Batch)

    model = DLRMTrain(
        DLRM(ebc(), DENSE_IN, dense_arch_layer_sizes=[13, EMB_DIM], over_arch_layer_sizes=[11, 1])
    )
    x, kjt = dlrm_inputs()
    labels = torch.randint(0, 2, (BATCH,))
    return model, (Batch(dense_features=x, sparse_features=kjt, labels=labels),)


@corpus_model("torchrec-deepfm", "public", "torchrec.models.deepfm.SimpleDeepFMNN")
def torchrec_deepfm():
    from torchrec.models.deepfm import SimpleDeepFMNN

    model = SimpleDeepFMNN(DENSE_IN, ebc(), hidden_layer_size=13, deep_fm_dimension=5)
    return model, dlrm_inputs()


def register_input_dataclass(cls: type) -> None:
    """Make a dataclass argument (torchrec's `Batch`) a pytree node torch.export accepts, once per process:
    the user's one line, instead of a wrapper module."""
    if cls not in torch.utils._pytree.SUPPORTED_NODES:
        torch.export.register_dataclass(cls, serialized_type_name=f"{cls.__module__}.{cls.__qualname__}")


CROSS_IN = 19


@corpus_model("torchrec-crossnet", "public", "torchrec.modules.crossnet.CrossNet (DCN, full-rank)")
def torchrec_crossnet():
    from torchrec.modules.crossnet import CrossNet

    return CrossNet(CROSS_IN, num_layers=3), (torch.randn(BATCH, CROSS_IN),)


@corpus_model("torchrec-lowrank-crossnet", "public", "torchrec.modules.crossnet.LowRankCrossNet (DCNv2)")
def torchrec_lowrank_crossnet():
    from torchrec.modules.crossnet import LowRankCrossNet

    return LowRankCrossNet(CROSS_IN, num_layers=3, low_rank=6), (torch.randn(BATCH, CROSS_IN),)


@corpus_model("torchrec-vector-crossnet", "public", "torchrec.modules.crossnet.VectorCrossNet (DCN-V)")
def torchrec_vector_crossnet():
    from torchrec.modules.crossnet import VectorCrossNet

    return VectorCrossNet(CROSS_IN, num_layers=3), (torch.randn(BATCH, CROSS_IN),)


@corpus_model(
    "torchrec-lowrank-mixture-crossnet",
    "public",
    "torchrec.modules.crossnet.LowRankMixtureCrossNet (DCN-Mix: softmax gate over low-rank experts)",
)
def torchrec_lowrank_mixture_crossnet():
    from torchrec.modules.crossnet import LowRankMixtureCrossNet

    model = LowRankMixtureCrossNet(CROSS_IN, num_layers=2, num_experts=3, low_rank=4)
    return model, (torch.randn(BATCH, CROSS_IN),)


@corpus_model(
    "torchrec-mlp-swish-layernorm",
    "public",
    "torchrec.modules.mlp.MLP(activation='swish_layernorm'): Linear, then x * sigmoid(LayerNorm(x))",
)
def torchrec_mlp_swish_layernorm():
    from torchrec.modules.mlp import MLP

    return MLP(DENSE_IN, [17, 9], activation="swish_layernorm"), (dense(BATCH, DENSE_IN),)


class PooledEmbeddings(nn.Module):
    """An EmbeddingBagCollection (plain, weighted or quantized) whose pooled KeyedTensor is returned as its
    [B, sum of dims] tensor: a KeyedTensor is not a torch.export output."""

    def __init__(self, collection: nn.Module) -> None:
        super().__init__()
        self.collection = collection

    def forward(self, features) -> torch.Tensor:
        return self.collection(features).values()


@corpus_model(
    "torchrec-ebc", "public", "torchrec.modules.embedding_modules.EmbeddingBagCollection (sum pooling)"
)
def torchrec_ebc():
    return PooledEmbeddings(ebc()), (keyed_jagged(TABLES, BATCH),)


@corpus_model(
    "torchrec-ebc-weighted",
    "public",
    "torchrec EmbeddingBagCollection(is_weighted=True): per-id weights from the KJT",
)
def torchrec_ebc_weighted():
    return PooledEmbeddings(ebc(weighted=True)), (keyed_jagged(TABLES, BATCH, weighted=True),)


@corpus_model(
    "torchrec-ebc-quantized",
    "public",
    "torchrec.inference.modules.quantize_embeddings(EmbeddingBagCollection, qint8): FBGEMM int8 TBE rows",
)
def torchrec_ebc_quantized():
    from torchrec.inference.modules import quantize_embeddings

    model = quantize_embeddings(PooledEmbeddings(ebc()), dtype=torch.qint8, inplace=False)
    return model, (keyed_jagged(TABLES, BATCH),)


class SequenceEmbeddings(nn.Module):
    """A torchrec EmbeddingCollection (unpooled, per-id embeddings); returns every feature's [ids, dim]
    embeddings concatenated in key order (its Dict[str, JaggedTensor] output is not a torch.export output)."""

    def __init__(self, collection: nn.Module, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.collection = collection
        self.keys = keys

    def forward(self, features) -> torch.Tensor:
        out = self.collection(features)
        return torch.cat([out[k].values() for k in self.keys])


@corpus_model(
    "torchrec-ec", "public", "torchrec.modules.embedding_modules.EmbeddingCollection (sequence embeddings)"
)
def torchrec_ec():
    from torchrec import EmbeddingCollection, EmbeddingConfig

    configs = [
        EmbeddingConfig(name=f"t_{k}", embedding_dim=EMB_DIM, num_embeddings=n, feature_names=[k])
        for k, n in zip(TABLES.keys, TABLES.rows, strict=True)
    ]
    model = SequenceEmbeddings(EmbeddingCollection(tables=configs), TABLES.keys)
    return model, (keyed_jagged(TABLES, BATCH),)

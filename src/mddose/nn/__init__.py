"""Neural-network building blocks: the Mamba mixer, Vision-Mamba blocks, SS2D cross-scan, embeddings."""

from mddose.nn.embed import (
    GaussianFourierFeatures, LayerNorm2d, PatchEmbed2d, PixelShuffleUpsample, TimestepEmbedding,
)
from mddose.nn.mamba import MambaMixer, SSMBranch, scan_branches
from mddose.nn.ss2d import SS2D, SS2DBlock
from mddose.nn.vim import BiMambaBlock, BiMambaMixer, MambaLayer2d

__all__ = ["BiMambaBlock", "BiMambaMixer", "GaussianFourierFeatures", "LayerNorm2d", "MambaLayer2d", "MambaMixer",
           "PatchEmbed2d", "PixelShuffleUpsample", "SS2D", "SS2DBlock", "SSMBranch", "TimestepEmbedding",
           "scan_branches"]

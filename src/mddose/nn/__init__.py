"""Neural-network building blocks: Mamba mixers and Vision-Mamba blocks, SS2D cross-scan, embeddings, 2D
diffusion U-Net blocks, shifted-window transformer blocks, and 3D convolution / dense blocks."""

from mddose.nn.conv3d import ConvUnit3d, DenseDown3d, DenseUnit3d, UNet3d, UpConv3d, check_volume, init_kaiming_
from mddose.nn.embed import (
    GaussianFourierFeatures, LayerNorm2d, PatchEmbed2d, PixelShuffleUpsample, TimestepEmbedding,
)
from mddose.nn.mamba import MambaMixer, SSMBranch, scan_branches
from mddose.nn.ss2d import SS2D, SS2DBlock
from mddose.nn.swin import SwinBlock2d, SwinLayer2d, WindowAttention
from mddose.nn.unet2d import Downsample2d, PyramidEncoder2d, ResBlock2d, SelfAttention2d, Upsample2d
from mddose.nn.vim import BiMambaBlock, BiMambaMixer, MambaLayer2d

__all__ = ["BiMambaBlock", "BiMambaMixer", "ConvUnit3d", "DenseDown3d", "DenseUnit3d", "Downsample2d",
           "GaussianFourierFeatures", "LayerNorm2d", "MambaLayer2d", "MambaMixer", "PatchEmbed2d",
           "PixelShuffleUpsample", "PyramidEncoder2d", "ResBlock2d", "SS2D", "SS2DBlock", "SSMBranch", "SelfAttention2d", "SwinBlock2d",
           "SwinLayer2d", "TimestepEmbedding", "UNet3d", "UpConv3d", "Upsample2d", "WindowAttention",
           "check_volume", "init_kaiming_", "scan_branches"]

"""V-Net (Milletari et al. 2016): residual stages of 5×5(×5) convolutions, strided-conv
downsampling, transposed-conv upsampling, PReLU.

Diagram (L = len(features) levels; level k has ``features[k]`` channels at 1/2^k size)::

    x ─ R0 ─ enc site ─ skip0 ──────────────────────── cat ─ R'0 ─ dec site ─ head
         └ down(k2 s2) ─ R1 ─ … ─ down ─ bottleneck ─ up ┘

Residual stage ``R(rep, in → out)``: ``rep`` × [conv k5 → act → norm] (no activation after the
last conv), plus the identity, then an activation. Encoder identity = the stage input; decoder
identity = the upsampled tensor and the convs see ``cat[skip, up]``.

Unlike the AMIS reference, the first stage works for any number of input channels: the input
is broadcast when it has one channel (as in the paper, parameter-free) and projected by a 1×1
convolution otherwise (the reference adds it by broadcasting, which fails for 2–7 channels).
Input sizes must be multiples of 2^(L-1) (``pad_input=True`` pads and crops instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from attnseg.blocks import ConvNormAct, check_spatial_dims, conv
from attnseg.blocks import act as make_act
from attnseg.blocks.factories import LayerSpec
from attnseg.models import register_model
from attnseg.models._common import SegmentationNet, SitePlugins, level_sizes


class ResidualStage(nn.Module):
    """``act(convs(x) + identity)``; ``convs`` = ``rep`` ConvNormAct units, the last without act.

    ``identity`` defaults to ``x``; it is broadcast when it has one channel and projected by
    ``proj`` (a 1×1 conv, built only when ``in`` ∉ {1, out} and ``project=True``) otherwise.
    """

    def __init__(self, spatial_dims: int, rep: int, cin: int, cout: int, kernel_size: int, project: bool,
                 **kw: Any) -> None:
        super().__init__()
        act = kw.pop("act")
        self.convs = nn.Sequential(*[
            ConvNormAct(spatial_dims, cin if i == 0 else cout, cout, kernel_size,
                        act=act if i < rep - 1 else None, **kw) for i in range(max(rep, 1))])
        self.proj = (conv(spatial_dims, cin, cout, 1, bias=False)
                     if project and cin not in (1, cout) else None)
        self.act = make_act(act, cout)

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> torch.Tensor:
        if identity is None:
            identity = x if self.proj is None else self.proj(x)
        return self.act(self.convs(x) + identity)  # a 1-channel identity broadcasts


class VNet(SegmentationNet):
    """Generic 2D/3D V-Net.

    Args:
        spatial_dims, in_channels, out_channels: as usual.
        features: channels per level, finest first (last = bottleneck width). The AMIS
            reference's ``init_fmaps 16, 4 levels`` is ``(8, 16, 32, 64, 128)``.
        repeats: convs per residual stage for levels 0 … L-2 (decoder stages mirror them);
            default ``min(k + 1, 3)`` for level k, i.e. (1, 2, 3, 3) as in the paper.
        bottleneck: ``"single"`` (one conv-act-norm, the AMIS reference) or ``"residual"``
            (a residual stage with ``bottleneck_repeats`` convs, the paper).
        kernel_size, norm, act, order, conv_bias: layer specs.
        attention, attention_kwargs, attention_at, site_attention, input_size: the plug-in.
            ``encoder``: stage output (= skip and input of the downsampling conv);
            ``bottleneck``; ``decoder``: decoder stage output; ``skip``: skip before the
            concatenation, gated by the coarser decoder tensor.
    """

    sites = ("encoder", "decoder", "skip", "bottleneck")

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: Sequence[int] = (16, 32, 64, 128, 256),
        repeats: Sequence[int] | None = None,
        bottleneck: str = "residual",
        bottleneck_repeats: int = 3,
        kernel_size: int = 5,
        norm: LayerSpec = ("instance", {"affine": True}),
        act: LayerSpec = "prelu_channel",
        order: str = "cna",
        conv_bias: bool | None = None,
        attention: str | Sequence[str] | None = None,
        attention_kwargs: Any = None,
        attention_at: str | Sequence[str] = ("encoder", "decoder"),
        site_attention: dict[str, dict[str, Any]] | None = None,
        input_size: Sequence[int] | None = None,
        eval_activation: str | None = None,
        pad_input: bool = False,
    ) -> None:
        super().__init__(eval_activation, pad_input)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        n = len(features)
        repeats = tuple(repeats) if repeats is not None else tuple(min(k + 1, 3) for k in range(n - 1))
        if n < 2 or len(repeats) != n - 1:
            raise ValueError(f"VNet needs len(repeats) == len(features) - 1 >= 1; got features={tuple(features)}, "
                             f"repeats={tuple(repeats)}")
        if bottleneck not in ("single", "residual"):
            raise ValueError(f"bottleneck must be 'single' or 'residual', got {bottleneck!r}")
        self.in_channels, self.out_channels, self.features = in_channels, out_channels, tuple(features)
        self.size_multiple = 2 ** (n - 1)
        plugins = SitePlugins(attention, attention_kwargs, attention_at, site_attention, self.sites, "vnet")
        sizes = level_sizes(input_size, [2] * (n - 1))
        kw = dict(norm=norm, act=act, order=order, bias=conv_bias)

        self.encoders, self.downs, self.encoder_attn = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
        cin = in_channels
        for k in range(n - 1):
            f = features[k]
            self.encoders.append(ResidualStage(spatial_dims, repeats[k], cin, f, kernel_size, True, **kw))
            self.encoder_attn.append(plugins.build("encoder", f, spatial_dims, spatial_size=sizes[k]))
            self.downs.append(ConvNormAct(spatial_dims, f, features[k + 1], 2, 2, padding=0, **kw))
            cin = features[k + 1]
        fb = features[-1]
        if bottleneck == "single":
            self.bottleneck: nn.Module = ConvNormAct(spatial_dims, fb, fb, kernel_size, **kw)
        else:
            self.bottleneck = ResidualStage(spatial_dims, bottleneck_repeats, fb, fb, kernel_size, True, **kw)
        self.bottleneck_attn = plugins.build("bottleneck", fb, spatial_dims, spatial_size=sizes[-1])

        self.ups, self.skip_attn = nn.ModuleList(), nn.ModuleList()
        self.decoders, self.decoder_attn = nn.ModuleList(), nn.ModuleList()
        for k in range(n - 2, -1, -1):  # deepest first
            f, coarse = features[k], features[k + 1]
            self.ups.append(ConvNormAct(spatial_dims, coarse, f, 2, 2, transposed=True, **kw))
            self.skip_attn.append(plugins.build("skip", f, spatial_dims, gate_channels=coarse,
                                                spatial_size=sizes[k]))
            self.decoders.append(ResidualStage(spatial_dims, repeats[k], 2 * f, f, kernel_size, False, **kw))
            self.decoder_attn.append(plugins.build("decoder", f, spatial_dims, spatial_size=sizes[k]))
        self.head = conv(spatial_dims, features[0], out_channels, 1, bias=True)

    def _forward(self, x: torch.Tensor, aux: bool) -> dict[str, torch.Tensor]:
        skips = []
        for enc, attn, down in zip(self.encoders, self.encoder_attn, self.downs):
            x = attn(enc(x))
            skips.append(x)
            x = down(x)
        x = self.bottleneck_attn(self.bottleneck(x))
        for up, sattn, dec, dattn in zip(self.ups, self.skip_attn, self.decoders, self.decoder_attn):
            skip = skips.pop()
            y = up(x)
            x = dattn(dec(torch.cat([sattn(skip, x), y], dim=1), y))
        return {"out": self.head(x)}


@register_model(
    "vnet", family="vnet", dims=(2, 3), sites=VNet.sites, default_sites=("encoder", "decoder"),
    test_kwargs=dict(features=(4, 8, 8), kernel_size=3),  # tiny configuration for registry-wide tests
    test_input=(8, 8, 8), divisor=4,  # 3 levels at the test configuration: sizes multiples of 2²
    description="V-Net (Milletari 2016): residual k5 stages, strided-conv down, PReLU; any input channels",
    defaults=dict(spatial_dims=3, in_channels=1, out_channels=2, features=(16, 32, 64, 128, 256)),
)
def vnet(**kwargs: Any) -> VNet:
    """Generic 2D/3D V-Net; see :class:`VNet` for the keyword arguments."""
    return VNet(**kwargs)

"""The POI network (paper Fig. 2; POI_SPEC section 2), one class per box.

    image -> SharedTrunk (stem + layer1..3) -> g (R x L x L)
      g -> TargetRecognitionNetwork (layer4, GAP, FC)            -> TRN logits z
      g -> SubregionCrops (4 corners, right ones flipped, Eq. 2)  -> 4 x (R x Ls x Ls)
           -> PriorBranch  B_upper / B_lower (conv, BN, ReLU, GAP) -> F (512) per region
           -> AUNets       6 eye / 7 mouth AU nets (Eq. 3)        -> AU logits, I_AU
           -> RegionClassifiers (one FC per region)               -> region logits t_n
           -> ObjectiveInference (OIM: gate over the 4 I_AU, Eq. 6-7) -> w_n, p~*
           -> UncertaintyEstimation (UEM, Eq. 10)                 -> consistency w

POIModel.forward returns a POIOutput with everything training and prediction need;
POIModel.deploy() gives the TRN alone (trunk + TRN), which is all inference needs.
The equations of the PIN's outputs (Eq. 6, 7, 10 and beta) are the functions beside the
modules that use them; the losses (model/losses.py) import them from here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from poi_cli.core.manifests import EYE_AUS, MOUTH_AUS, REGIONS

ARCHS = ("resnet10", "resnet18", "resnet34", "resnet50")
NUM_REGIONS = 4
# Region order n = 0..3 (POI_SPEC section 2). Eye (upper) regions first, mouth after.
REGION_NAMES = tuple(region.name for region in REGIONS)  # data_manifests/regions.json
BRANCH_WIDTH = 512  # channels of the prior-branch conv, = dim of F
AU_HIDDEN = 128  # dim of I in an AU net
AU_LATENT = 64  # dim of the AU latent a
PAPER_L = 14  # feature-map side at 224 px
PAPER_L_SUB = 9  # Table XI
# Eq. 10's two readings (POI_SPEC section 4): "unit" rescales w to [0, 1] (the decision);
# "paper" is the first reading, w = 1 - sum_c var_c in [1/N, 1], kept for comparison.
UEM_SCALES = ("unit", "paper")


@dataclass
class ModelConfig:
    """Everything that fixes the network's structure (saved in every checkpoint)."""

    arch: str = "resnet18"
    num_classes: int = 7
    input_size: int = 224
    l_sub: Optional[int] = None  # subregion side on the shared map; None: round(9 L / 14)
    temperature: float = 3.0  # T of Eq. 6, 8 and 11
    uem_temperature: float = 1.0  # the regions' distributions of Eq. 10 are softmax(t_n / this)
    uem_scale: str = "unit"  # see UEM_SCALES
    use_pin: bool = True  # False: the baseline "TB only" (TRN and cross-entropy alone)
    prior_supervision: bool = True  # False: "no PB", AU nets removed, regions classify F
    use_oim: bool = True  # False: "w/o inpre", no gate and no intermediate prediction

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"--arch must be one of {', '.join(ARCHS)}, got {self.arch!r}")
        # Multiples of 16 keep the shared map's side L = input / 16 whole (112 and 176
        # work as well as the multiples of 32 the paper's family of sizes uses).
        if self.input_size % 16 or not 64 <= self.input_size <= 448:
            raise ValueError(f"--size (the input side) must be a multiple of 16 from 64 to 448, got {self.input_size}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        if self.temperature <= 0 or self.uem_temperature <= 0:
            raise ValueError(f"temperatures must be positive, got {self.temperature} and {self.uem_temperature}")
        if self.uem_scale not in UEM_SCALES:
            raise ValueError(f"--uem-scale must be one of {', '.join(UEM_SCALES)}, got {self.uem_scale!r}")
        if self.l_sub is not None and not 1 <= self.l_sub <= self.feature_size:
            raise ValueError(f"--l-sub must lie in 1..{self.feature_size} at --size {self.input_size}, got {self.l_sub}")

    @property
    def feature_size(self) -> int:
        """L, the side of the shared feature map g (input / 16)."""
        return self.input_size // 16

    @property
    def subregion_size(self) -> int:
        """L_sub: 9 at L = 14 (Table XI); Decision: round(9 L / 14) half up, at least 1."""
        if self.l_sub is not None:
            return self.l_sub
        return max(1, math.floor(PAPER_L_SUB * self.feature_size / PAPER_L + 0.5))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class POIOutput:
    """What one forward pass of the full model returns. PIN fields are None for the baseline."""

    trn_logits: torch.Tensor  # z, (B, C)
    region_logits: Optional[torch.Tensor] = None  # t_n, (B, 4, C)
    gate_weights: Optional[torch.Tensor] = None  # w_n of the OIM, (B, 4); None without OIM
    intermediate_log_probs: Optional[torch.Tensor] = None  # log p~* (Eq. 7), (B, C); None without OIM
    consistency: Optional[torch.Tensor] = None  # the UEM's w (Eq. 10), detached, (B,)
    eye_au_logits: Optional[torch.Tensor] = None  # (B, 2, 6): left and right eye regions
    mouth_au_logits: Optional[torch.Tensor] = None  # (B, 2, 7): left and right mouth regions
    temperature: float = 3.0

    @property
    def trn_probs(self) -> torch.Tensor:
        """q = softmax(z)."""
        return self.trn_logits.float().softmax(dim=-1)

    @property
    def region_probs(self) -> torch.Tensor:
        """p~_n = softmax(t_n / T) (Eq. 6), (B, 4, C)."""
        return tempered_log_probs(self.region_logits, self.temperature).exp()

    @property
    def intermediate_probs(self) -> Optional[torch.Tensor]:
        """p~* = sum_n w_n p~_n (Eq. 7), the PIN's objective inference, (B, C)."""
        return None if self.intermediate_log_probs is None else self.intermediate_log_probs.exp()

    @property
    def eye_au_probs(self) -> Optional[torch.Tensor]:
        return None if self.eye_au_logits is None else self.eye_au_logits.sigmoid()

    @property
    def mouth_au_probs(self) -> Optional[torch.Tensor]:
        return None if self.mouth_au_logits is None else self.mouth_au_logits.sigmoid()


# ------------------------------------------------------------ equations of the PIN's outputs


def tempered_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 6 in log space: log p~ = log softmax(t / T), over the last dim, in float32."""
    return F.log_softmax(logits.float() / temperature, dim=-1)


def intermediate_log_probs(region_logits: torch.Tensor, gate_weights: torch.Tensor, temperature: float) -> torch.Tensor:
    """Eq. 7 in log space: log p~* = log sum_n w_n p~_n, from t_n (B, N, C) and w_n (B, N) -> (B, C)."""
    region_log_probs = tempered_log_probs(region_logits, temperature)
    return torch.logsumexp(gate_weights.float().clamp_min(1e-12).log()[..., None] + region_log_probs, dim=1)


def region_consistency(region_logits: torch.Tensor, temperature: float = 1.0, scale: str = "unit") -> torch.Tensor:
    """Eq. 10, the UEM's w per image, from the region logits t_n (B, N, C) -> (B,), detached.

    p_n = softmax(t_n / temperature); var_c = mean_n p_n,c^2 - (mean_n p_n,c)^2.
    scale "unit" (POI_SPEC's decision, temperature 1): w = 1 - N / (N - 1) * sum_c var_c,
    1 when the N regions agree, 0 when they are one-hot on N different classes.
    scale "paper" (the first reading, with temperature T = 3): w = 1 - sum_c var_c, in [1/N, 1].
    """
    probs = tempered_log_probs(region_logits.detach(), temperature).exp()
    variance = (probs.square().mean(dim=1) - probs.mean(dim=1).square()).sum(dim=-1)
    num_regions = probs.shape[1]
    factor = num_regions / (num_regions - 1) if scale == "unit" else 1.0
    return 1.0 - factor * variance


def uncertainty_beta(w: torch.Tensor) -> torch.Tensor:
    """beta = exp(1 - w) - 1 (the UEM's weight of Eq. 11): 0 when the regions agree,
    e - 1 at w = 0 (scale "unit"), e^0.75 - 1 at w = 1/4 (scale "paper")."""
    return torch.exp(1.0 - w) - 1.0


def _torchvision_resnet(arch: str) -> torchvision.models.ResNet:
    # weights=None: nothing is downloaded; pretrained weights come from a file (pretrained.py).
    if arch == "resnet10":
        # One BasicBlock per stage: ResNet-18's layout at half the depth and ~45% of its
        # weights. Not in the paper; the bundled model uses it (fp16 TRN+PIN under 25 MB).
        return torchvision.models.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1])
    return getattr(torchvision.models, arch)(weights=None)


def trunk_channels(arch: str) -> int:
    """R, the channels of g: 256 for BasicBlock nets, 1024 for Bottleneck nets."""
    return 1024 if arch == "resnet50" else 256


class SharedTrunk(nn.Module):
    """Conv1~Conv4 of the paper: ResNet stem + layer1..layer3 -> g of shape (R, L, L)."""

    def __init__(self, resnet: torchvision.models.ResNet) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool
        self.layer1, self.layer2, self.layer3 = resnet.layer1, resnet.layer2, resnet.layer3

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer3(self.layer2(self.layer1(x)))


class TargetRecognitionNetwork(nn.Module):
    """TRN: layer4 -> global average pool -> FC -> C logits z. All that deployment needs."""

    def __init__(self, resnet: torchvision.models.ResNet, num_classes: int) -> None:
        super().__init__()
        self.layer4 = resnet.layer4
        self.fc = nn.Linear(resnet.fc.in_features, num_classes)

    def pooled(self, shared_features: torch.Tensor) -> torch.Tensor:
        """layer4 -> global average pool: what the FC reads (`poi refit-head` fits the FC on it)."""
        return self.layer4(shared_features).mean(dim=(2, 3))

    def forward(self, shared_features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pooled(shared_features))


class SubregionCrops(nn.Module):
    """Four L_sub x L_sub corner crops of g; the image-right ones flipped (Eq. 2).

    Returns (B, 4, R, L_sub, L_sub) in the order upper-left, upper-right (flipped),
    lower-left, lower-right (flipped), so that a left and a right crop of the same
    face half share one orientation and one prior branch.
    """

    def __init__(self, subregion_size: int) -> None:
        super().__init__()
        self.subregion_size = subregion_size

    def forward(self, shared_features: torch.Tensor) -> torch.Tensor:
        s = self.subregion_size
        top, bottom = shared_features[:, :, :s], shared_features[:, :, -s:]
        crops = (top[..., :s], top[..., -s:].flip(-1), bottom[..., :s], bottom[..., -s:].flip(-1))
        return torch.stack(crops, dim=1)


class PriorBranch(nn.Module):
    """B_upper or B_lower: 3x3 conv (R -> 512), BN, ReLU, GAP -> F in R^512.

    One branch serves both regions of its half (weights shared within the branch).
    Decision (spec): BN + ReLU after the conv.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, BRANCH_WIDTH, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(BRANCH_WIDTH)

    def forward(self, region_crops: torch.Tensor) -> torch.Tensor:
        """(B, 2, R, s, s) -> (B, 2, 512)."""
        batch, regions = region_crops.shape[:2]
        x = region_crops.flatten(0, 1)  # both regions through the same weights at once
        features = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return features.view(batch, regions, BRANCH_WIDTH)


class AUNets(nn.Module):
    """The M AU nets of one prior branch (Eq. 3), held as stacked weights.

    AU net m, applied to a region's F:
        I     = ReLU(FC_512->128(F))
        I*    = sigmoid(FC_128->1(I)) * I        (Eq. 3, a scalar importance per AU)
        p_hat = sigmoid(FC_128->1(I*))           (AU occurrence)
        a     = FC_128->64(I*)                   (AU latent)
    The M nets are independent (no weight sharing); stacking them into batched matmuls
    is the same arithmetic in 4 kernels instead of 4 M.
    """

    def __init__(self, num_aus: int) -> None:
        super().__init__()
        self.num_aus = num_aus
        self.hidden_weight = nn.Parameter(torch.empty(num_aus, BRANCH_WIDTH, AU_HIDDEN))
        self.hidden_bias = nn.Parameter(torch.empty(num_aus, AU_HIDDEN))
        self.importance_weight = nn.Parameter(torch.empty(num_aus, AU_HIDDEN))
        self.importance_bias = nn.Parameter(torch.empty(num_aus))
        self.occurrence_weight = nn.Parameter(torch.empty(num_aus, AU_HIDDEN))
        self.occurrence_bias = nn.Parameter(torch.empty(num_aus))
        self.latent_weight = nn.Parameter(torch.empty(num_aus, AU_HIDDEN, AU_LATENT))
        self.latent_bias = nn.Parameter(torch.empty(num_aus, AU_LATENT))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear's default init, per AU net: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        for weight, bias, fan_in in (
            (self.hidden_weight, self.hidden_bias, BRANCH_WIDTH),
            (self.importance_weight, self.importance_bias, AU_HIDDEN),
            (self.occurrence_weight, self.occurrence_bias, AU_HIDDEN),
            (self.latent_weight, self.latent_bias, AU_HIDDEN),
        ):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, region_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F (B, 2, 512) -> AU logits (B, 2, M) and I_AU (B, 2, M * 64)."""
        hidden = F.relu(torch.einsum("brf,mfh->brmh", region_features, self.hidden_weight) + self.hidden_bias)
        importance = torch.sigmoid((hidden * self.importance_weight).sum(-1, keepdim=True) + self.importance_bias[:, None])
        gated = importance * hidden  # I*, Eq. 3
        au_logits = (gated * self.occurrence_weight).sum(-1) + self.occurrence_bias
        au_latents = torch.einsum("brmh,mhl->brml", gated, self.latent_weight) + self.latent_bias
        return au_logits, au_latents.flatten(2)


class RegionClassifiers(nn.Module):
    """One FC per region (4 in all, not shared): t_n = FC_n(I_AU_n), C logits."""

    def __init__(self, in_features: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(dim, num_classes) for dim in in_features)

    def forward(self, region_features: list[torch.Tensor]) -> torch.Tensor:
        """Four (B, D_n) tensors -> (B, 4, C)."""
        return torch.stack([head(x) for head, x in zip(self.heads, region_features)], dim=1)


class ObjectiveInference(nn.Module):
    """OIM: the gate over the four regions and the intermediate prediction (Eq. 6-7).

    Concatenated I_AU of the four regions -> FC -> softmax -> w_n (B, 4); then
    log p~* = log sum_n w_n softmax(t_n / T), the PIN's objective inference.
    """

    def __init__(self, in_features: int, temperature: float) -> None:
        super().__init__()
        self.fc = nn.Linear(in_features, NUM_REGIONS)
        self.temperature = temperature

    def forward(self, region_features: list[torch.Tensor], region_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Softmax in float32: under bf16 autocast the weights would sum to 1 only within
        # ~1e-3, and an unnormalised p~* (Eq. 7) lets the KL of Eq. 8 go negative.
        gate_weights = self.fc(torch.cat(region_features, dim=1)).float().softmax(dim=-1)
        return gate_weights, intermediate_log_probs(region_logits, gate_weights, self.temperature)


class UncertaintyEstimation(nn.Module):
    """UEM: how much the four regions agree, w of Eq. 10 (no weights; on detached logits)."""

    def __init__(self, temperature: float = 1.0, scale: str = "unit") -> None:
        super().__init__()
        self.temperature, self.scale = temperature, scale

    def forward(self, region_logits: torch.Tensor) -> torch.Tensor:
        return region_consistency(region_logits, self.temperature, self.scale)


class PriorInferenceNetwork(nn.Module):
    """PIN: subregions -> prior branches -> AU nets -> region classifiers (+ OIM gate)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        channels = trunk_channels(config.arch)
        self.config = config
        self.crops = SubregionCrops(config.subregion_size)
        self.upper_branch = PriorBranch(channels)
        self.lower_branch = PriorBranch(channels)
        if config.prior_supervision:
            self.eye_au_nets = AUNets(len(EYE_AUS))
            self.mouth_au_nets = AUNets(len(MOUTH_AUS))
            eye_dim, mouth_dim = len(EYE_AUS) * AU_LATENT, len(MOUTH_AUS) * AU_LATENT
        else:  # "no PB" ablation: the regions classify F directly
            eye_dim = mouth_dim = BRANCH_WIDTH
        region_dims = (eye_dim, eye_dim, mouth_dim, mouth_dim)
        self.region_classifiers = RegionClassifiers(region_dims, config.num_classes)
        self.oim = ObjectiveInference(sum(region_dims), config.temperature) if config.use_oim else None
        self.uem = UncertaintyEstimation(config.uem_temperature, config.uem_scale)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        rename_legacy_keys(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, shared_features: torch.Tensor) -> dict[str, Optional[torch.Tensor]]:
        crops = self.crops(shared_features)
        upper_features = self.upper_branch(crops[:, :2])
        lower_features = self.lower_branch(crops[:, 2:])
        eye_au_logits = mouth_au_logits = None
        if self.config.prior_supervision:
            eye_au_logits, upper_features = self.eye_au_nets(upper_features)
            mouth_au_logits, lower_features = self.mouth_au_nets(lower_features)
        region_features = [*upper_features.unbind(1), *lower_features.unbind(1)]
        region_logits = self.region_classifiers(region_features)
        gate_weights = log_p_star = None
        if self.oim is not None:
            gate_weights, log_p_star = self.oim(region_features, region_logits)
        return {
            "region_logits": region_logits,
            "gate_weights": gate_weights,
            "intermediate_log_probs": log_p_star,
            "consistency": self.uem(region_logits),
            "eye_au_logits": eye_au_logits,
            "mouth_au_logits": mouth_au_logits,
        }


# Checkpoints written before the OIM became a module (the first bundled model among them)
# name its FC "gate.fc"; it is the same layer.
LEGACY_PIN_NAMES = {"gate.": "oim."}


def rename_legacy_keys(state_dict: dict, pin_prefix: str = "pin.") -> dict:
    """Rename, in place, the PIN weights of older checkpoints to today's names (LEGACY_PIN_NAMES);
    what load_state_dict does itself, and what code that reads a state dict by name (fine-tuning) calls."""
    for old, new in LEGACY_PIN_NAMES.items():
        for key in [k for k in state_dict if k.startswith(pin_prefix + old)]:
            state_dict[pin_prefix + new + key[len(pin_prefix + old):]] = state_dict.pop(key)
    return state_dict


class DeployedTRN(nn.Module):
    """Trunk + TRN alone (the paper drops the PIN at inference). Returns logits only."""

    def __init__(self, trunk: SharedTrunk, trn: TargetRecognitionNetwork) -> None:
        super().__init__()
        self.trunk, self.trn = trunk, trn

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.trn(self.trunk(images))


class POIModel(nn.Module):
    """Shared trunk feeding the TRN and (unless baseline) the PIN."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        resnet = _torchvision_resnet(config.arch)
        self.trunk = SharedTrunk(resnet)
        self.trn = TargetRecognitionNetwork(resnet, config.num_classes)
        self.pin = PriorInferenceNetwork(config) if config.use_pin else None

    def forward(self, images: torch.Tensor, with_pin: bool = True, pin_rows: Optional[int] = None) -> POIOutput:
        """pin_rows: run the PIN on the first pin_rows images of the batch only (prediction's mirror
        views when the recipe does not fuse p~*: the TRN needs them, the PIN's outputs do not)."""
        shared_features = self.trunk(images)
        output = POIOutput(trn_logits=self.trn(shared_features), temperature=self.config.temperature)
        if self.pin is not None and with_pin:
            pin_features = shared_features if pin_rows is None else shared_features[:pin_rows]
            for name, value in self.pin(pin_features).items():
                setattr(output, name, value)
        return output

    def deploy(self) -> DeployedTRN:
        """The TRN alone, sharing this model's weights."""
        return DeployedTRN(self.trunk, self.trn)

    def backbone_modules(self) -> dict[str, nn.Module]:
        """The torchvision ResNet parts, by their torchvision names (for loading weights)."""
        t = self.trunk
        return {
            "conv1": t.conv1, "bn1": t.bn1, "layer1": t.layer1, "layer2": t.layer2,
            "layer3": t.layer3, "layer4": self.trn.layer4,
        }


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

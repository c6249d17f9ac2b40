"""Annotation noise: mask-corruption models (:mod:`.models`), the noise of a noisy training set
(:mod:`.noisy_set`) and a preview tool (:mod:`.preview`, ``python -m noisyseg.noise preview``)."""
from noisyseg.noise.models import MIX_KINDS, NOISE_MODELS, NOISE_VERSION, as_binary, check_unit, corrupt
from noisyseg.noise.noisy_set import NAMED_DICE, MaskNoise, realised_dice, target_dice

__all__ = ["MIX_KINDS", "NAMED_DICE", "NOISE_MODELS", "NOISE_VERSION", "MaskNoise", "as_binary", "check_unit",
           "corrupt", "realised_dice", "target_dice"]

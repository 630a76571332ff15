"""clmr-ray: multi-format contrastive learning for music genre classification, on Ray."""

__version__ = "0.1.0"

# What the code makes of one spec and seed. Bump it with any change that alters what pretraining
# computes (augmentations, encoders, loss, the loop): encoder keys include it, so encoders stored by
# an older version are trained anew instead of reused, and every record says which version made it.
# 1: up to 2026-11-26; 2: the CPU pitch shift's phases summed in turns, its STFT frame-major;
# 3: pitch shift by WSOLA instead of a phase vocoder; 4: the CPU filter solved in blocks, the CPU
# white noise drawn for the chosen crops only; 5: WSOLA's search treats windows past the crop's end
# as silent instead of scoring their rounding noise.
TRAINING_CODE_VERSION = 5

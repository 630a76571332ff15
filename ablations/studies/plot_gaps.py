"""The study's two questions in one picture (issue 10): every condition's all-augmentations minus
crop-only gap, and every fusion's gain over the spectrogram alone, on the validation split's mAP
(the metric the study decides on), each with its 95 % interval.

    python ablations/studies/plot_gaps.py results/studies/audio_augmentations
    # -> results/studies/audio_augmentations/gaps.png (from findings.csv of `clmr-ray tables --findings`)
"""

import sys
from pathlib import Path

import pandas as pd

from clmr_ray.findings import plot_findings

GAPS = {  # claim id -> the condition it measures
    "all_vs_crop": "audio gap: plain corpus, 1x steps",
    "long_all_vs_crop": "audio gap: plain corpus, 4x steps",
    "long_clmr_p_vs_crop": "audio gap: CLMR's probabilities, 4x steps",
    "wide_long_all_vs_crop": "audio gap: SampleCNN width 1/2, 4x steps",
    "long_crops_all_vs_crop": "audio gap: 2.46 s crops, 1x steps",
    "long_crops_long_all_vs_crop": "audio gap: 2.46 s crops, 4x steps",
    "fingerprint_long_all_vs_crop": "audio gap: fingerprint -30 dB, 4x steps",
    "fingerprint_m20_all_vs_crop": "audio gap: fingerprint -20 dB, 4x steps",
    "fingerprint_m10_all_vs_crop": "audio gap: fingerprint -10 dB, 4x steps",
    "fingerprint_0_all_vs_crop": "audio gap: fingerprint 0 dB, 4x steps",
    "mix_plain_vs_crop": "audio gap: + batch mixing, plain corpus, 4x steps",
    "mix_0_vs_crop": "audio gap: + batch mixing, fingerprint 0 dB, 4x steps",
    "concat_vs_spectrogram": "fusion gain: concatenated, linear probe",
    "concat_mlp_vs_spectrogram_mlp": "fusion gain: concatenated, MLP probe",
    "decision_vs_spectrogram": "fusion gain: decision-level",
    "cross_format_vs_spectrogram": "fusion gain: early (cross-format) fusion",
}


def main(folder: str) -> Path:
    found = pd.read_csv(Path(folder) / "findings.csv")
    found = found[(found["metric"] == "valid_map") & found["claim_id"].isin(GAPS)]
    found = found.set_index("claim_id").loc[[c for c in GAPS if c in set(found["claim_id"])]].reset_index()
    found["claim"] = found["claim_id"].map(GAPS)
    return plot_findings(found, Path(folder) / "gaps.png",
                         title="All five augmentations minus crop only; fusion minus spectrogram (valid mAP)")


if __name__ == "__main__":
    print(main(sys.argv[1] if len(sys.argv) > 1 else "results/studies/audio_augmentations"))

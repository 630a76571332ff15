"""Offline synthetic corpora generated from a seed.

* A 10-genre corpus standing in for GTZAN: `root/<genre>/<genre>.000NN.wav` + `split.csv`.
* A multi-label tag corpus standing in for MagnaTagATune: folders `0`..`f` of MP3 clips +
  the tab-separated `annotations_final.csv`.

Genre lives in musical structure: tempo, drum pattern and swing, harmony and scale,
instruments (harmonic profile, envelope, vibrato, distortion), note density and bass line,
with overlapping ranges and shared instruments so the task is not trivial. Each track also
gets nuisances drawn independently of its genre: gain, EQ colour, transposition and a noise
floor, the very factors the paper's augmentations (gain, filter, pitch, noise) randomise.
Optionally (SyntheticSpec.fingerprint_db) a recording-chain fingerprint as well: mains hum
(45-65 Hz and two harmonics) and a steady whine (15-45 % of the sample rate), each at its own
frequency per track and constant through it: what two crops of one real recording share
besides the music, and what random crops alone can match on.

Every track is rendered by a top-level function from `np.random.default_rng([seed, label,
index])`, so generation is byte-reproducible and `map_fn` may be a Ray-parallel map.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf

from ..config import SyntheticSpec
from .base import SPLITS, DatasetError
from .folder import SPLIT_FILE, split_counts
from .mtat import ANNOTATIONS

GENERATOR_VERSION = 1  # bump whenever the rendered audio changes: old corpora then fail loudly
GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")
TAGS = (
    "guitar", "piano", "strings", "organ", "synth", "brass", "flute", "vocal", "drums", "no-drums",
    "electronic", "distorted", "slow", "fast", "calm", "energetic", "dark", "bright",
)
TAG_STREAM = 100  # rng label of the tag corpus (genres use 0..9)
FINGERPRINT_STREAM = 7  # extra rng key of a track's fingerprint
CORPUS_FILE = "corpus.json"
TAG_AUDIO_FORMAT = "mp3"  # soundfile's LAME encoder: ~0.1 s per 30 s clip, works at 8 kHz

# Nuisance ranges (drawn per track, independent of genre).
GAIN_DB = (-20.0, 0.0)
SNR_DB = (10.0, 40.0)
TILT_DB_PER_OCTAVE = (-4.0, 4.0)
TRANSPOSE_SEMITONES = (-4, 4)
REFERENCE_RMS = 0.1  # before the gain; leaves ~20 dB headroom for drum peaks
PEAK = 0.98

# ------------------------------------------------------------------ instruments


@dataclass(frozen=True)
class Timbre:
    harmonics: tuple[float, ...]  # amplitude of harmonic 1, 2, ...
    attack: float  # seconds (linear ramp)
    decay: float  # seconds (exponential time constant; large = sustained)
    vibrato: float = 0.0  # relative frequency depth
    drive: float = 0.0  # tanh distortion of the part (0 = clean)
    family: str = ""  # tag it contributes in the tag corpus


def _power(n: int, slope: float, odd_only: bool = False) -> tuple[float, ...]:
    return tuple(0.0 if odd_only and k % 2 == 0 else k ** -slope for k in range(1, n + 1))


def _formant(f0: float = 220.0, n: int = 16) -> tuple[float, ...]:
    """A sung 'ah': harmonics weighted by three formant peaks (700, 1200, 2600 Hz)."""
    freqs = f0 * np.arange(1, n + 1)
    peaks = sum(w * np.exp(-(((freqs - f) / bw) ** 2)) for f, bw, w in ((700, 150, 1.0), (1200, 200, 0.6),
                                                                        (2600, 300, 0.3)))
    return tuple(float(a) for a in 0.15 / np.arange(1, n + 1) + peaks)


TIMBRES = {
    "piano": Timbre(_power(12, 1.6), 0.004, 0.7, family="piano"),
    "epiano": Timbre((1.0, 0.25, 0.05, 0.12, 0.0, 0.04), 0.004, 1.2, family="piano"),
    "organ": Timbre((1.0, 0.8, 0.6, 0.5, 0.0, 0.4, 0.0, 0.3), 0.015, 30.0, 0.002, family="organ"),
    "strings": Timbre(_power(14, 1.0), 0.25, 30.0, 0.006, family="strings"),
    "fiddle": Timbre(_power(14, 0.9), 0.06, 30.0, 0.009, family="strings"),
    "guitar": Timbre(_power(12, 1.3), 0.003, 0.5, family="guitar"),
    "crunch_guitar": Timbre(_power(10, 1.1), 0.004, 2.0, drive=2.0, family="guitar"),
    "dist_guitar": Timbre(_power(10, 1.0), 0.004, 4.0, drive=6.0, family="guitar"),
    "brass": Timbre((1.0, 0.9, 0.8, 0.6, 0.45, 0.3, 0.2, 0.12), 0.04, 6.0, 0.004, family="brass"),
    "sax": Timbre((1.0, 0.5, 0.7, 0.3, 0.4, 0.2, 0.2, 0.1), 0.03, 6.0, 0.006, family="brass"),
    "flute": Timbre((1.0, 0.25, 0.08, 0.03), 0.06, 8.0, 0.008, family="flute"),
    "synth_lead": Timbre(_power(15, 1.0, odd_only=True), 0.01, 4.0, 0.003, family="synth"),
    "synth_pad": Timbre(_power(12, 1.2), 0.35, 30.0, 0.004, family="synth"),
    "vocal": Timbre(_formant(), 0.05, 8.0, 0.012, family="vocal"),
    "bass_pluck": Timbre((1.0, 0.5, 0.25, 0.12, 0.06), 0.004, 0.5),
    "upright": Timbre((1.0, 0.35, 0.1, 0.05), 0.008, 0.35),
    "bass_808": Timbre((1.0, 0.08), 0.004, 1.0, family="synth"),
    "bass_synth": Timbre(_power(8, 1.0), 0.004, 0.3, family="synth"),
}
LEADS = ("piano", "epiano", "organ", "fiddle", "guitar", "crunch_guitar", "dist_guitar", "brass", "sax",
         "flute", "synth_lead", "vocal")
PADS = ("piano", "epiano", "organ", "strings", "guitar", "crunch_guitar", "dist_guitar", "synth_pad", "brass")
BASSES = ("bass_pluck", "upright", "bass_808", "bass_synth")

# name -> (kick f_start, f_end, decay, click), (snare tone Hz, tone amount, decay, attack), hat decay, level
KITS = {
    "acoustic": ((110, 55, 0.18, 0.3), (190, 0.4, 0.12, 0.001), 0.035, 0.6),
    "brush": ((90, 55, 0.15, 0.1), (180, 0.1, 0.18, 0.012), 0.04, 0.35),
    "808": ((70, 42, 0.6, 0.05), (230, 0.15, 0.1, 0.002), 0.02, 0.6),
    "metal": ((150, 60, 0.1, 0.9), (220, 0.5, 0.15, 0.001), 0.05, 0.7),
    "disco": ((100, 50, 0.2, 0.2), (200, 0.3, 0.1, 0.001), 0.03, 0.6),
    "jazz": ((80, 50, 0.2, 0.1), (190, 0.1, 0.16, 0.01), 0.03, 0.4),
}

# ------------------------------------------------------------------ harmony

SCALES = {
    "major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10), "dorian": (0, 2, 3, 5, 7, 9, 10),
    "mixolydian": (0, 2, 4, 5, 7, 9, 10), "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    "phrygian": (0, 1, 3, 5, 7, 8, 10), "major_pent": (0, 2, 4, 7, 9), "minor_pent": (0, 3, 5, 7, 10),
    "blues": (0, 3, 5, 6, 7, 10),
}
BRIGHT_SCALES = ("major", "mixolydian", "major_pent")
# Three-voice chords; seventh chords are voiced without the root (the bass plays it).
CHORDS = {"maj": (0, 4, 7), "min": (0, 3, 7), "7": (4, 7, 10), "m7": (3, 7, 10), "maj7": (4, 7, 11),
          "9": (4, 10, 14), "5": (0, 7, 12)}
# Hit probability of each sixteenth step of a bar.
PROB = {"x": 1.0, "o": 0.6, "-": 0.25, ".": 0.0}


@dataclass(frozen=True)
class Style:
    """A genre: ranges and choices its tracks are drawn from."""

    tempo: tuple[float, float]
    swing: tuple[float, float]  # delay of the off-beat eighth (sixteenth if swing16), as a fraction
    key: int  # MIDI note of the tonic, bass register
    scales: tuple[str, ...]
    progressions: tuple[str, ...]  # "root:chord" per bar
    kits: tuple[str, ...]  # "none" = no drums
    drums: tuple[str, str, str]  # kick, snare, hat patterns
    pads: tuple[str, ...]
    pad_rhythms: tuple[str, ...]
    pad_gate: float  # fraction of the time to the next hit a chord sounds
    leads: tuple[str, ...]
    lead_rhythm: str
    lead_leap: float  # probability of a leap instead of a step
    bass: tuple[str, ...]
    bass_rhythm: str
    bass_mode: str  # root, root_fifth, octave, walk, chord
    arpeggio: float = 0.0  # probability the pad plays broken chords
    swing16: bool = False


BLUES12 = "0:7 0:7 0:7 0:7 5:7 5:7 0:7 0:7 7:7 5:7 0:7 7:7"
STYLES = {
    "blues": Style((66, 112), (0.22, 0.33), 45, ("blues", "minor_pent", "mixolydian"),
                   (BLUES12, "0:7 5:7 0:7 0:7 5:7 5:7 0:7 0:7 7:7 5:7 0:7 7:7"), ("acoustic", "brush"),
                   ("x.....-.x.....-.", "....x.......x...", "x.x.x.x.x.x.x.x."),
                   ("piano", "organ", "guitar", "epiano"), ("x.....x.x.....-.", "x..............."), 0.8,
                   ("guitar", "sax", "piano", "vocal", "crunch_guitar"), "x.-.o.-.x.-.o.-.", 0.2,
                   ("upright", "bass_pluck"), "x...x...x...x...", "walk"),
    "classical": Style((58, 104), (0.0, 0.0), 45, ("major", "harmonic_minor"),
                       ("0:maj 5:maj 7:maj 0:maj", "0:maj 9:min 2:min 7:7", "0:min 5:min 7:7 0:min",
                        "0:maj 7:maj 9:min 4:min 5:maj 0:maj 5:maj 7:maj"), ("none",),
                       ("................", "................", "................"),
                       ("strings", "piano", "organ"), ("x...............", "x.x.x.x.x.x.x.x."), 1.0,
                       ("flute", "fiddle", "piano", "brass"), "x...o.-.x...o...", 0.3,
                       ("upright",), "x.......x.......", "root", arpeggio=0.5),
    "country": Style((86, 132), (0.0, 0.12), 43, ("major_pent", "major", "mixolydian"),
                     ("0:maj 0:maj 5:maj 0:maj 7:maj 7:maj 0:maj 0:maj", "0:maj 5:maj 7:maj 0:maj"),
                     ("acoustic", "brush"), ("x.......x.......", "....x.......x...", "x.x.x.x.x.x.x.x."),
                     ("guitar", "piano", "organ", "strings"), ("x...x...x...x...", "x.x.x.x.x.x.x.x."), 0.7,
                     ("fiddle", "guitar", "vocal", "piano"), "x.o.x.o.x.-.o.-.", 0.15,
                     ("bass_pluck", "upright"), "x.......x.......", "root_fifth"),
    "disco": Style((108, 132), (0.0, 0.05), 45, ("dorian", "minor"), ("0:m7 5:m7", "0:maj7 2:m7", "0:m7 3:maj7"),
                   ("disco",), ("x...x...x...x...", "....x.......x...", "x.x.x.x.x.x.x.x."),
                   ("strings", "synth_pad", "guitar", "epiano"), ("x.x.x.x.x.x.x.x.", "x..............."), 0.5,
                   ("strings", "synth_lead", "vocal", "brass"), "x..-x..-x..-o...", 0.2,
                   ("bass_synth", "bass_pluck"), "x.x.x.x.x.x.x.x.", "octave"),
    "hiphop": Style((76, 100), (0.08, 0.25), 39, ("minor_pent", "minor", "dorian"),
                    ("0:m7 0:m7 8:maj7 8:maj7", "0:min 8:maj 3:maj 10:maj", "0:m7 0:m7 5:m7 5:m7"),
                    ("808",), ("x.....-..-x..-..", "....x.......x...", "x-x-x-x-x-x-x-x-"),
                    ("epiano", "synth_pad", "piano", "strings"), ("x...............", "x.....x........."), 1.0,
                    ("vocal", "synth_lead", "epiano", "flute"), "x.-.o.-.x.-.o.-.", 0.1,
                    ("bass_808",), "x.....-...x.....", "root", swing16=True),
    "jazz": Style((96, 180), (0.25, 0.33), 46, ("dorian", "mixolydian", "major"),
                  ("2:m7 7:9 0:maj7 9:7", "0:maj7 9:m7 2:m7 7:9", "2:m7 7:7 0:maj7 0:maj7"), ("jazz", "brush"),
                  ("-.......-.......", "-..-..-..-.-..-.", "x...x.x.x...x.x."),
                  ("piano", "epiano", "organ"), ("-..o..-...o..-..", "x.....o...-..o.."), 0.5,
                  ("sax", "brass", "piano", "guitar", "vocal"), "x.o.x.o.x.o.x.o.", 0.35,
                  ("upright",), "x...x...x...x...", "walk"),
    "metal": Style((128, 190), (0.0, 0.0), 40, ("phrygian", "minor", "harmonic_minor"),
                   ("0:5 8:5 10:5 0:5", "0:5 1:5 0:5 10:5", "0:5 0:5 5:5 3:5"), ("metal",),
                   ("xoxoxoxoxoxoxoxo", "....x.......x...", "x.x.x.x.x.x.x.x."),
                   ("dist_guitar", "crunch_guitar"), ("x.x.x.x.x.x.x.x.", "xxx.xxx.xxx.xxx."), 0.6,
                   ("dist_guitar", "vocal", "crunch_guitar"), "x-o-x-o-x-o-x-o-", 0.25,
                   ("bass_pluck", "bass_synth"), "x.x.x.x.x.x.x.x.", "root"),
    "pop": Style((92, 126), (0.0, 0.06), 43, ("major", "major_pent"),
                 ("0:maj 7:maj 9:min 5:maj", "9:min 5:maj 0:maj 7:maj", "0:maj 5:maj 9:min 7:maj"),
                 ("acoustic", "disco"), ("x.....o.x.-.....", "....x.......x...", "x.x.x.x.x.x.x.x."),
                 ("synth_pad", "piano", "guitar", "strings", "epiano"), ("x.......x.......", "x.x.x.x.x.x.x.x."), 0.9,
                 ("vocal", "synth_lead", "piano", "guitar"), "x..-o.-.x..-o...", 0.15,
                 ("bass_synth", "bass_pluck"), "x...x...x...x...", "root", arpeggio=0.2),
    "reggae": Style((66, 96), (0.08, 0.22), 43, ("major", "minor", "dorian"),
                    ("0:maj 5:maj", "0:maj 7:maj", "2:min 7:maj", "0:min 5:min"), ("acoustic",),
                    ("........x.......", "........x.......", "x.x.x.x.x.x.x.x."),
                    ("organ", "guitar", "epiano"), ("..x...x...x...x.", "....x.......x..."), 0.3,
                    ("organ", "vocal", "brass", "guitar"), "x.....o...-.....", 0.15,
                    ("bass_pluck", "bass_synth"), "x..-..x.x-....-.", "chord"),
    "rock": Style((100, 152), (0.0, 0.05), 40, ("minor_pent", "mixolydian", "major"),
                  ("0:maj 5:maj 7:maj 5:maj", "0:maj 10:maj 5:maj 0:maj", "0:5 3:5 5:5 0:5"), ("acoustic",),
                  ("x.....o.x.-.....", "....x.......x...", "x.x.x.x.x.x.x.x."),
                  ("crunch_guitar", "guitar", "organ", "piano", "synth_pad"), ("x.x.x.x.x.x.x.x.", "x.......x.x....."), 0.85,
                  ("crunch_guitar", "vocal", "guitar", "organ"), "x.-.o.-.x.-.o.-.", 0.2,
                  ("bass_pluck",), "x.x.x.x.x.x.x.x.", "root"),
}


@dataclass(frozen=True)
class Arrangement:
    """Everything musical about one track (drawn from a Style, or freely for the tag corpus)."""

    tempo: float
    swing: float
    swing16: bool
    key: int
    scale: str
    progression: str
    kit: str
    drums: tuple[str, str, str]
    pad: str
    pad_rhythm: str
    pad_gate: float
    arpeggio: bool
    lead: str | None
    lead_rhythm: str
    lead_leap: float
    bass: str
    bass_rhythm: str
    bass_mode: str


@dataclass(frozen=True)
class Nuisance:
    """Per-track factors that carry no label."""

    transpose: int
    gain_db: float
    snr_db: float
    tilt_db: float  # per octave around 1 kHz
    colour: str  # "flat", "lowpass" or "highpass"
    cutoff_hz: float


def draw_nuisance(rng: np.random.Generator, sample_rate: int) -> Nuisance:
    colour = str(rng.choice(["flat", "lowpass", "highpass"]))
    nyquist = sample_rate / 2
    if colour == "lowpass":
        cutoff = float(np.exp(rng.uniform(np.log(900.0), np.log(0.8 * nyquist))))
    else:
        cutoff = float(np.exp(rng.uniform(np.log(120.0), np.log(700.0))))
    return Nuisance(
        transpose=int(rng.integers(TRANSPOSE_SEMITONES[0], TRANSPOSE_SEMITONES[1] + 1)),
        gain_db=float(rng.uniform(*GAIN_DB)),
        snr_db=float(rng.uniform(*SNR_DB)),
        tilt_db=float(rng.uniform(*TILT_DB_PER_OCTAVE)),
        colour=colour,
        cutoff_hz=cutoff,
    )


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def draw_genre_arrangement(style: Style, rng: np.random.Generator) -> Arrangement:
    return Arrangement(
        tempo=float(rng.uniform(*style.tempo)),
        swing=float(rng.uniform(*style.swing)),
        swing16=style.swing16,
        key=style.key,
        scale=_pick(rng, style.scales),
        progression=_pick(rng, style.progressions),
        kit=_pick(rng, style.kits),
        drums=style.drums,
        pad=_pick(rng, style.pads),
        pad_rhythm=_pick(rng, style.pad_rhythms),
        pad_gate=style.pad_gate,
        arpeggio=bool(rng.random() < style.arpeggio),
        lead=_pick(rng, style.leads) if rng.random() < 0.9 else None,
        lead_rhythm=style.lead_rhythm,
        lead_leap=style.lead_leap,
        bass=_pick(rng, style.bass),
        bass_rhythm=style.bass_rhythm,
        bass_mode=style.bass_mode,
    )


def draw_tag_arrangement(rng: np.random.Generator) -> Arrangement:
    """Free mixtures of the genres' parts: a different musical distribution than the genres."""
    styles = [STYLES[g] for g in GENRES]
    bright = rng.random() < 0.5
    scale = _pick(rng, BRIGHT_SCALES if bright else tuple(s for s in SCALES if s not in BRIGHT_SCALES))
    progressions = [p for s in styles for p in s.progressions if _is_bright(p) == bright]
    drums_from = _pick(rng, [s for s in styles if s.kits != ("none",)])
    pad_from, lead_from, bass_from = (_pick(rng, styles) for _ in range(3))
    kit = "none" if rng.random() < 0.3 else _pick(rng, tuple(KITS))
    return Arrangement(
        tempo=float(rng.uniform(60, 185)),
        swing=float(rng.uniform(0.0, 0.3)) if rng.random() < 0.4 else 0.0,
        swing16=bool(rng.random() < 0.2),
        key=int(rng.integers(37, 49)),
        scale=scale,
        progression=_pick(rng, progressions),
        kit=kit,
        drums=drums_from.drums,
        pad=_pick(rng, PADS),
        pad_rhythm=_pick(rng, pad_from.pad_rhythms),
        pad_gate=pad_from.pad_gate,
        arpeggio=bool(rng.random() < 0.25),
        lead=_pick(rng, LEADS) if rng.random() < 0.8 else None,
        lead_rhythm=lead_from.lead_rhythm,
        lead_leap=lead_from.lead_leap,
        bass=_pick(rng, BASSES),
        bass_rhythm=bass_from.bass_rhythm,
        bass_mode=bass_from.bass_mode,
    )


def _is_bright(progression: str) -> bool:
    return progression.split()[0].split(":")[1] in ("maj", "7", "maj7", "9")


def arrangement_tags(arr: Arrangement) -> tuple[str, ...]:
    has_drums = arr.kit != "none"
    distorted = any(TIMBRES[t].drive >= 2.0 for t in (arr.pad, arr.lead) if t)
    found = {TIMBRES[t].family for t in (arr.pad, arr.lead, arr.bass) if t} - {""}
    found.add("drums" if has_drums else "no-drums")
    if arr.kit == "808" or "synth" in found:
        found.add("electronic")
    if distorted:
        found.add("distorted")
    if arr.tempo < 90:
        found.add("slow")
    if arr.tempo > 135:
        found.add("fast")
    if not has_drums or (arr.tempo < 85 and not distorted):
        found.add("calm")
    if has_drums and (arr.tempo > 125 or distorted):
        found.add("energetic")
    found.add("bright" if arr.scale in BRIGHT_SCALES else "dark")
    return tuple(t for t in TAGS if t in found)


# ------------------------------------------------------------------ rendering


@dataclass(frozen=True)
class TrackJob:
    """One track to render; picklable so a Ray map can ship it."""

    seed: int
    label: int  # genre index, or TAG_STREAM for the tag corpus
    index: int
    sample_rate: int
    seconds: float
    fingerprint_db: float | None = None  # SyntheticSpec.fingerprint_db


def _track_rngs(job: TrackJob) -> tuple[np.random.Generator, np.random.Generator]:
    music, nuisance = np.random.default_rng([job.seed, job.label, job.index]).spawn(2)
    return music, nuisance


def render_genre_track(job: TrackJob) -> np.ndarray:
    """One genre track as float32 mono in [-1, 1]."""
    music_rng, nuisance_rng = _track_rngs(job)
    nuisance = draw_nuisance(nuisance_rng, job.sample_rate)
    arr = draw_genre_arrangement(STYLES[GENRES[job.label]], music_rng)
    return _render(arr, nuisance, music_rng, nuisance_rng, job)


def render_tag_track(job: TrackJob) -> np.ndarray:
    """One tag-corpus clip as float32 mono in [-1, 1]; its tags are clip_tags(seed, index)."""
    music_rng, nuisance_rng = _track_rngs(job)
    nuisance = draw_nuisance(nuisance_rng, job.sample_rate)
    arr = draw_tag_arrangement(music_rng)
    return _render(arr, nuisance, music_rng, nuisance_rng, job)


def clip_tags(seed: int, index: int) -> tuple[str, ...]:
    """The tags of clip `index` of the tag corpus (drawn without rendering the audio)."""
    music_rng, _ = _track_rngs(TrackJob(seed, TAG_STREAM, index, 8000, 1.0))
    return arrangement_tags(draw_tag_arrangement(music_rng))


def _render(arr: Arrangement, nuisance: Nuisance, rng: np.random.Generator, nuisance_rng: np.random.Generator,
            job: TrackJob) -> np.ndarray:
    sr, n = job.sample_rate, round(job.seconds * job.sample_rate)
    grid = _Grid(arr, sr, n, rng)
    key = arr.key + nuisance.transpose
    chords = _parse_progression(arr.progression)
    bar_chords = [chords[b % len(chords)] for b in range(grid.n_bars)]
    parts = {
        "bass": (_bass_part(arr, grid, key, bar_chords, rng), 0.5),
        "pad": (_pad_part(arr, grid, key, bar_chords, rng), 0.35),
        "drums": (_drum_part(arr, grid, rng), 0.6),
    }
    if arr.lead is not None:
        parts["lead"] = (_lead_part(arr, grid, key, bar_chords, rng), 0.45)
    mix = np.zeros(n, dtype=np.float32)
    for audio, level in parts.values():
        mix += audio * np.float32(level * 10 ** (rng.uniform(-5, 5) / 20) / _rms(audio))
    if job.fingerprint_db is not None:
        mix += fingerprint(job, n) * np.float32(_rms(mix))
    return _apply_nuisance(mix, nuisance, nuisance_rng, sr)


HUM_HZ = (45.0, 65.0)
WHINE_FRACTION = (0.15, 0.45)  # of the sample rate


def fingerprint_frequencies(job: TrackJob) -> tuple[float, float, np.ndarray]:
    """(hum Hz, whine Hz, 4 phases) of a track, from their own random stream: the music and
    nuisances of a track stay as they are with or without a fingerprint."""
    rng = np.random.default_rng([job.seed, job.label, job.index, FINGERPRINT_STREAM])
    hum, whine = rng.uniform(*HUM_HZ), rng.uniform(*WHINE_FRACTION) * job.sample_rate
    return hum, whine, rng.uniform(0, 2 * np.pi, size=4)


def fingerprint(job: TrackJob, n: int) -> np.ndarray:
    """Hum (fundamental + 2 harmonics at -6 and -12 dB) and a whine, each at job.fingerprint_db
    re unit RMS."""
    hum, whine, phases = fingerprint_frequencies(job)
    t = np.arange(n) / job.sample_rate
    tone = sum(10 ** (-6 * k / 20) * np.sin(2 * np.pi * hum * (k + 1) * t + phases[k]) for k in range(3))
    tone = tone / _rms(tone) + np.sin(2 * np.pi * whine * t + phases[3]) * np.sqrt(2)
    return (tone * 10 ** (job.fingerprint_db / 20) / np.sqrt(2)).astype(np.float32)


class _Grid:
    """Sixteenth-note grid of a track: step times with swing and a little human timing."""

    def __init__(self, arr: Arrangement, sr: int, n: int, rng: np.random.Generator):
        self.sr, self.n = sr, n
        self.step = 15.0 / arr.tempo  # seconds per sixteenth
        self.n_bars = int(np.ceil(n / sr / (16 * self.step)))
        self.swing, self.swing16 = arr.swing, arr.swing16
        self.jitter = 0.004
        self.rng = rng

    def hits(self, pattern: str, bars: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draw a pattern's hits for every bar: (bar, step, accent) of each hit."""
        prob = np.array([PROB[c] for c in pattern])
        hit = self.rng.random((self.n_bars, 16)) < prob
        if bars is not None:
            hit &= bars[:, None]
        bar, step = np.nonzero(hit)
        return bar, step, prob[step]

    def samples(self, bar: np.ndarray, step: np.ndarray) -> np.ndarray:
        shift = np.where(step % 2 == 1, self.swing, 0.0) if self.swing16 else np.where(step % 4 == 2,
                                                                                         2 * self.swing, 0.0)
        t = (bar * 16 + step + shift) * self.step + self.rng.normal(0, self.jitter, len(bar))
        return np.clip(np.round(t * self.sr), 0, None).astype(np.int64)


def _parse_progression(text: str) -> list[tuple[int, str]]:
    return [(int(root), kind) for root, kind in (tok.split(":") for tok in text.split())]


def _note_durations(onsets: np.ndarray, n: int, gate: float) -> np.ndarray:
    """Samples each note sounds: gate x the time to the next onset."""
    nxt = np.append(onsets[1:], n)
    return np.maximum((nxt - onsets) * gate, 1)


def _bass_part(arr, grid: _Grid, key: int, bar_chords, rng) -> np.ndarray:
    if arr.bass_mode == "walk":
        bar, step, accent = grid.hits("x...x...x...x...")
    else:
        bar, step, accent = grid.hits(arr.bass_rhythm)
    roots = np.array([(key + r) if r <= 7 else (key + r - 12) for r, _ in bar_chords])
    pitch = roots[bar].astype(np.float64)
    if arr.bass_mode == "root_fifth":
        pitch += np.where(step >= 8, 7, 0)
    elif arr.bass_mode == "octave":
        pitch += np.where(step % 4 == 2, 12, 0)
    elif arr.bass_mode == "chord":
        tones = np.array([[0, 7, 12, 3 if kind in ("min", "m7") else 4] for _, kind in bar_chords])
        pitch += np.where(step == 0, 0, tones[bar, rng.integers(0, 4, len(bar))])
    elif arr.bass_mode == "walk":
        scale = np.array(SCALES[arr.scale])
        walk = scale[rng.integers(0, len(scale), len(bar))]
        next_root = roots[np.minimum(bar + 1, len(roots) - 1)]
        approach = next_root + rng.choice([-1, 1, 2], len(bar)) - roots[bar]
        pitch += np.where(step == 0, 0, np.where(step == 12, approach, walk))
    onsets = grid.samples(bar, step)
    vel = accent * rng.uniform(0.8, 1.0, len(bar))
    return _render_voices(grid, onsets, pitch[None], vel, _note_durations(onsets, grid.n, 0.9), arr.bass)


def _pad_part(arr, grid: _Grid, key: int, bar_chords, rng) -> np.ndarray:
    bar, step, accent = grid.hits(arr.pad_rhythm)
    center = key + 22
    voicings = np.array([_voice(key + root, CHORDS[kind], center) for root, kind in bar_chords], dtype=np.float64)
    onsets = grid.samples(bar, step)
    vel = np.maximum(accent, 0.5) * rng.uniform(0.8, 1.0, len(bar))
    if arr.arpeggio:
        bar, step, _ = grid.hits("x.x.x.x.x.x.x.x.")
        onsets = grid.samples(bar, step)
        tone = np.array([0, 1, 2, 1])[(step // 2) % 4]
        pitch = voicings[bar, tone][None]
        return _render_voices(grid, onsets, pitch, rng.uniform(0.7, 1.0, len(bar)),
                              _note_durations(onsets, grid.n, 1.0), arr.pad)
    pitch = voicings[bar].T
    return _render_voices(grid, onsets, pitch, vel, _note_durations(onsets, grid.n, arr.pad_gate), arr.pad)


def _voice(root: int, intervals: tuple[int, ...], center: int) -> list[int]:
    """Chord tones moved by octaves to lie within half an octave of center."""
    out = []
    for interval in intervals:
        p = root + interval
        p += 12 * int(np.round((center - p) / 12))
        out.append(p)
    return sorted(out)


def _lead_part(arr, grid: _Grid, key: int, bar_chords, rng) -> np.ndarray:
    phrase_on = rng.random((grid.n_bars + 1) // 2) < 0.75
    bars_on = np.repeat(phrase_on, 2)[: grid.n_bars]
    bar, step, accent = grid.hits(arr.lead_rhythm, bars_on)
    if len(bar) == 0:
        return np.zeros(grid.n, dtype=np.float32)
    degrees = np.array(SCALES[arr.scale])
    pitches = np.concatenate([degrees + key + 12 * o for o in range(1, 5)])
    pitches = pitches[(pitches >= key + 21) & (pitches <= key + 43)]
    moves = rng.choice([-2, -1, -1, 1, 1, 2, 0], len(bar))
    leaps = rng.random(len(bar)) < arr.lead_leap
    moves = np.where(leaps, rng.choice([-5, -4, -3, 3, 4, 5], len(bar)), moves)
    pos = int(rng.integers(len(pitches) // 3, 2 * len(pitches) // 3)) + np.cumsum(moves)
    period = 2 * (len(pitches) - 1)
    pos = np.mod(pos, period)
    pos = np.where(pos > len(pitches) - 1, period - pos, pos)
    pitch = pitches[pos].astype(np.float64)
    # On the beat the melody lands on a chord tone of the bar.
    on_beat = step % 4 == 0
    roots = np.array([key + r for r, _ in bar_chords])
    tones = np.array([CHORDS[kind] for _, kind in bar_chords])
    chord_pc = (roots[bar, None] + tones[bar]) % 12
    distance = (chord_pc - pitch[:, None] % 12 + 6) % 12 - 6
    nearest = distance[np.arange(len(bar)), np.argmin(np.abs(distance), axis=1)]
    pitch = np.where(on_beat, pitch + nearest, pitch)
    onsets = grid.samples(bar, step)
    vel = np.maximum(accent, 0.5) * rng.uniform(0.75, 1.0, len(bar))
    durations = _note_durations(onsets, grid.n, 0.9)
    # A phrase ends at the end of its two bars.
    bar_end = np.round((bar // 2 * 2 + 2) * 16 * grid.step * grid.sr).astype(np.int64)
    durations = np.minimum(durations, np.maximum(bar_end - onsets, 1))
    return _render_voices(grid, onsets, pitch[None], vel, durations, arr.lead)


RELEASE_S = 0.02
TABLE_SIZE = 4096


@lru_cache(maxsize=256)
def _wavetable(name: str, n_harmonics: int) -> np.ndarray:
    amps = np.array(TIMBRES[name].harmonics[:n_harmonics])
    phase = np.arange(TABLE_SIZE) / TABLE_SIZE
    table = (amps[:, None] * np.sin(2 * np.pi * np.arange(1, len(amps) + 1)[:, None] * phase)).sum(0)
    return (table / np.abs(table).max()).astype(np.float32)


def _render_voices(grid: _Grid, onsets: np.ndarray, midi: np.ndarray, vel: np.ndarray, durations: np.ndarray,
                   timbre_name: str) -> np.ndarray:
    """Render voices x notes sharing onsets: a wavetable oscillator per voice, one envelope.

    Every note fades out before the next onset, so each note may start its own phase (and
    vibrato) at zero: no running phase sum over the whole track is needed."""
    sr, n = grid.sr, grid.n
    keep = onsets < n
    onsets, midi, vel, durations = onsets[keep], midi[:, keep], vel[keep], durations[keep]
    if len(onsets) == 0:
        return np.zeros(n, dtype=np.float32)
    order = np.argsort(onsets, kind="stable")
    onsets, midi, vel, durations = onsets[order], midi[:, order], vel[order], durations[order]
    # A silent note before the first onset so the segments tile the track.
    onsets = np.concatenate([[0], onsets])
    midi = np.concatenate([midi[:, :1], midi], axis=1)
    vel = np.concatenate([[0.0], vel])
    lengths = np.diff(np.append(onsets, n))
    release = int(RELEASE_S * sr)
    durations = np.minimum(np.concatenate([[1], durations]), np.maximum(lengths - release, 1))
    timbre = TIMBRES[timbre_name]
    idx = np.repeat(np.arange(len(onsets)), lengths)
    t = np.arange(n, dtype=np.float32) - onsets[idx].astype(np.float32)  # samples since onset
    env = np.minimum(t * np.float32(1.0 / (timbre.attack * sr + 1)), np.float32(1))
    if timbre.decay < 20:  # longer decays are sustained notes
        env *= np.exp(t * np.float32(-1.0 / (timbre.decay * sr)))
    env *= np.clip((durations.astype(np.float32)[idx] + np.float32(release) - t) * np.float32(1.0 / release), 0, 1)
    env *= vel.astype(np.float32)[idx]
    # Phase in cycles = f * warped time; vibrato f(1 + d sin(wt + p)) integrates to
    # f (t + d/w (cos p - cos(wt + p))).
    warped = t
    if timbre.vibrato:
        w = np.float32(2 * np.pi * 5.5 / sr)
        p = np.float32(grid.rng.uniform(0, 2 * np.pi))
        warped = t + np.float32(timbre.vibrato) / w * (np.cos(p) - np.cos(w * t + p))
    freqs = 440.0 * 2.0 ** ((midi - 69) / 12)
    out = np.zeros(n, dtype=np.float32)
    for f in freqs:
        n_harmonics = int(0.45 * sr / (f.max() * (1 + timbre.vibrato)))
        table = _wavetable(timbre_name, max(1, min(len(timbre.harmonics), n_harmonics)))
        cycles_per_sample = (f * TABLE_SIZE / sr).astype(np.float32)
        phase = (cycles_per_sample[idx] * warped).astype(np.int64)
        out += table[phase & (TABLE_SIZE - 1)]
    out *= env
    if timbre.drive:
        out = np.tanh(out * np.float32(timbre.drive / max(np.abs(out).max(), 1e-6))) / np.float32(np.tanh(timbre.drive))
    return out


def _noise(rng: np.random.Generator, length: int, highpass: int) -> np.ndarray:
    """White noise, differenced `highpass` times (each a gentle high-pass), unit peak."""
    x = rng.standard_normal(length + highpass)
    for _ in range(highpass):
        x = np.diff(x)
    return x / np.abs(x).max()


def _drum_part(arr, grid: _Grid, rng) -> np.ndarray:
    out = np.zeros(grid.n, dtype=np.float32)
    if arr.kit == "none":
        return out
    (k0, k1, k_decay, click), (s_hz, s_tone, s_decay, s_attack), h_decay, _ = KITS[arr.kit]
    sr = grid.sr
    jitter = rng.uniform(0.9, 1.1, 4)
    t = np.arange(int(0.8 * sr)) / sr
    kick_freq = k1 * jitter[0] + (k0 - k1) * np.exp(-t / 0.03)
    kick = np.sin(2 * np.pi * np.cumsum(kick_freq) / sr) * np.exp(-t / (k_decay * jitter[1]))
    kick += click * _noise(rng, len(t), 1) * np.exp(-t / 0.003)
    ts = t[: int(0.5 * sr)]
    snare = s_tone * np.sin(2 * np.pi * s_hz * jitter[2] * ts) * np.exp(-ts / 0.05)
    snare += _noise(rng, len(ts), 1) * np.exp(-ts / s_decay) * np.minimum(ts / s_attack, 1)
    th = t[: int(0.3 * sr)]
    hat = 0.5 * _noise(rng, len(th), 2) * np.exp(-th / (h_decay * jitter[3]))
    intro = rng.random() < 0.35
    playing = np.ones(grid.n_bars, dtype=bool)
    if intro:
        playing[:2] = False
    for pattern, kernel in zip(arr.drums, (kick, snare, hat)):
        bar, step, accent = grid.hits(pattern, playing)
        vel = accent * rng.uniform(0.75, 1.0, len(bar))
        for start, v in zip(grid.samples(bar, step), vel):
            if start < grid.n:
                seg = kernel[: grid.n - start]
                out[start: start + len(seg)] += np.float32(v) * seg.astype(np.float32)
    return out


def _apply_nuisance(mix: np.ndarray, nuisance: Nuisance, rng: np.random.Generator, sr: int) -> np.ndarray:
    """Noise floor, EQ colour and gain; the result peaks below PEAK."""
    n = len(mix)
    noise = rng.standard_normal(n, dtype=np.float32) * np.float32(10 ** (-nuisance.snr_db / 20))
    x = mix * np.float32(1.0 / _rms(mix)) + noise
    freqs = np.fft.rfftfreq(n, 1 / sr)
    gain = 10 ** (nuisance.tilt_db * np.log2(np.maximum(freqs, 60.0) / 1000.0) / 20)
    if nuisance.colour == "lowpass":
        gain /= np.sqrt(1 + (freqs / nuisance.cutoff_hz) ** 4)
    elif nuisance.colour == "highpass":
        gain /= np.sqrt(1 + (nuisance.cutoff_hz / np.maximum(freqs, 1e-3)) ** 4)
    x = np.fft.irfft(np.fft.rfft(x) * gain.astype(np.float32), n)
    x *= np.float32(REFERENCE_RMS * 10 ** (nuisance.gain_db / 20) / _rms(x))
    peak = float(np.abs(x).max())
    if peak > PEAK:
        x *= np.float32(PEAK / peak)
    return x.astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) or 1.0


# ------------------------------------------------------------------ corpora on disk


def generate_genres(root: Path, spec: SyntheticSpec, sample_rate: int, map_fn: Callable = map) -> Path:
    """Write the genre corpus under root (GTZAN-like layout + split.csv); a no-op if it is there."""
    root = Path(root).expanduser()
    params = _params("genres", spec, sample_rate, "wav")
    files = {
        f"{genre}/{genre}.{i:05d}.wav": TrackJob(spec.seed, label, i, sample_rate, spec.seconds, spec.fingerprint_db)
        for label, genre in enumerate(GENRES)
        for i in range(spec.tracks_per_label)
    }
    if _prepare_root(root, params, list(files) + [SPLIT_FILE]):
        return root
    _write_audio(root, files, _encode_genre, map_fn)
    _atomic_write(root / SPLIT_FILE, _split_csv(spec).encode())
    return root


def generate_tags(root: Path, spec: SyntheticSpec, sample_rate: int, map_fn: Callable = map) -> Path:
    """Write the tag corpus under root (MagnaTagATune layout); a no-op if it is there."""
    root = Path(root).expanduser()
    params = _params("tags", spec, sample_rate, TAG_AUDIO_FORMAT)
    n_clips = len(GENRES) * spec.tracks_per_label
    files = {_clip_path(i): TrackJob(spec.seed, TAG_STREAM, i, sample_rate, spec.seconds, spec.fingerprint_db)
             for i in range(n_clips)}
    if _prepare_root(root, params, list(files) + [ANNOTATIONS]):
        return root
    _write_audio(root, files, _encode_tag, map_fn)
    _atomic_write(root / ANNOTATIONS, _annotations(spec.seed, list(files)).encode())
    return root


def _clip_path(index: int) -> str:
    return f"{index % 16:x}/clip-{index:06d}.{TAG_AUDIO_FORMAT}"


def _params(kind: str, spec: SyntheticSpec, sample_rate: int, audio_format: str) -> dict:
    labels = list(GENRES) if kind == "genres" else list(TAGS)
    fields = {k: v for k, v in asdict(spec).items() if not (k == "fingerprint_db" and v is None)}  # as before it
    return {"corpus": f"clmr-ray synthetic {kind}", "generator_version": GENERATOR_VERSION, **fields,
            "sample_rate": sample_rate, "audio_format": audio_format, "labels": labels}


def _prepare_root(root: Path, params: dict, expected: list[str]) -> bool:
    """True when root already holds this exact corpus; raises if it holds anything else."""
    if spec_errors := _check_params(params):
        raise DatasetError(spec_errors)
    marker = root / CORPUS_FILE
    if marker.is_file():
        try:
            found = json.loads(marker.read_text())
        except ValueError:
            raise DatasetError(f"{marker}: not valid JSON; delete {root} to regenerate the corpus") from None
        if found != params:
            diffs = [f"{k} {found.get(k)!r} != {params.get(k)!r}" for k in params if found.get(k) != params[k]]
            raise DatasetError(f"{root} holds another synthetic corpus ({'; '.join(diffs) or 'other keys'}); "
                               "use another folder or delete it")
        return all((root / rel).is_file() for rel in expected)
    if root.is_dir() and any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DatasetError(f"{root} is not empty and has no {CORPUS_FILE}: refusing to write a synthetic corpus "
                           "into it; use another folder")
    root.mkdir(parents=True, exist_ok=True)
    _atomic_write(marker, (json.dumps(params, indent=2) + "\n").encode())
    return False


def _check_params(params: dict) -> str:
    if not isinstance(params["seed"], int) or params["seed"] < 0:
        return f"synthetic.seed: must be an integer >= 0, got {params['seed']!r}"
    if not isinstance(params["tracks_per_label"], int) or params["tracks_per_label"] < 1:
        return f"synthetic.tracks_per_label: must be an integer >= 1, got {params['tracks_per_label']!r}"
    if not params["seconds"] > 0:
        return f"synthetic.seconds: must be > 0, got {params['seconds']!r}"
    if not isinstance(params["sample_rate"], int) or params["sample_rate"] < 4000:
        return f"sample_rate: the synthetic corpora need an integer rate >= 4000 Hz, got {params['sample_rate']!r}"
    return ""


def _write_audio(root: Path, files: dict[str, TrackJob], encode: Callable, map_fn: Callable) -> None:
    todo = [(rel, job) for rel, job in files.items() if not (root / rel).is_file()]
    for rel in {str(Path(rel).parent) for rel, _ in todo}:
        (root / rel).mkdir(parents=True, exist_ok=True)
    for (rel, _), data in zip(todo, map_fn(encode, [job for _, job in todo])):
        _atomic_write(root / rel, data)


def _encode_genre(job: TrackJob) -> bytes:
    """Render and encode as 16-bit PCM WAV (top level, so a Ray map can run it)."""
    audio = render_genre_track(job)
    buf = io.BytesIO()
    sf.write(buf, np.round(audio * 32767).astype(np.int16), job.sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _encode_tag(job: TrackJob) -> bytes:
    audio = render_tag_track(job)
    buf = io.BytesIO()
    sf.write(buf, audio, job.sample_rate, format="MP3")
    return buf.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _split_csv(spec: SyntheticSpec) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "split"])
    for label, genre in enumerate(GENRES):
        n = spec.tracks_per_label
        counts = split_counts(n)
        order = np.random.default_rng([spec.seed, label, n, 7]).permutation(n)
        split_of = np.empty(n, dtype=object)
        split_of[order] = np.repeat(SPLITS, [counts[s] for s in SPLITS])
        writer.writerows([f"{genre}/{genre}.{i:05d}.wav", split_of[i]] for i in range(n))
    return buf.getvalue()


def _annotations(seed: int, paths: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n")
    writer.writerow(["clip_id", *TAGS, "mp3_path"])
    for index, rel in enumerate(paths):
        tags = set(clip_tags(seed, index))
        writer.writerow([str(index), *(int(t in tags) for t in TAGS), rel])
    return buf.getvalue()

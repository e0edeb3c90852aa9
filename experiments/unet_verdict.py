"""The one answer to "does the seed U-Net's output lose input information?" (not an experiment).

``unet_layerwise`` and ``preimage_spread`` both state this conclusion; both take it from
:func:`output_verdict`, so they agree by construction. The answer comes from
``inversion.analysis.certify`` (float64 Jacobian of the trained network's output at full
32x32 test scenes) and is stated at the three precisions of ``inversion.analysis.PRECISIONS``:

* ``exact``: nullity at ``max(m, n) eps_64`` — does the network itself destroy information?
* ``float32``: nullity at ``max(m, n) eps_32`` — directions below the rounding of a float32
  forward pass, which no float32 computation can resolve;
* ``8-bit``: nullity at ``1/255`` — directions amplified less than one grey level of the
  strongest one: can the input be recovered in practice from 8-bit-accurate outputs?

for the seed U-Net and the same U-Net without skips, each trained with every init key of
``init_keys`` (same data and training otherwise). A reference row "agrees" with the seed
study's "the U-Net output cannot be inverted exactly" at a precision only when, for *every*
init key, the output Jacobian of the seed U-Net has nullity > 0 at one test scene or more.
"""

from __future__ import annotations

import functools

import numpy as np

import models
from experiments.common import reference, trained_seed_unet
from inversion.analysis import PRECISIONS, certify_batch, summarize

#: What each precision asks (the report's wording).
QUESTIONS = {
    "exact": "does the network destroy input information (float64, exact)?",
    "float32": "are input directions lost below float32 rounding?",
    "8-bit": "can the input be recovered in practice from 8-bit-accurate outputs (1/255)?",
}
VARIANTS = {"skips": True, "no_skips": False}


@functools.cache
def _certify_outputs(train_profile: str, skips: bool, init_key: int, scenes: int) -> dict:
    model, test_set, history = trained_seed_unet(
        train_profile=train_profile, skips=skips, init_key=init_key
    )
    images = np.asarray(test_set.images[:scenes], np.float32)
    certs = certify_batch(models.per_example(*models.split(model)), images)
    return {"summary": summarize(certs), "test_dice": history["eval"][-1]["dice"]}


def output_verdict(*, train_profile: str, init_keys: tuple[int, ...], scenes: int) -> dict:
    """Certificates of the U-Net output (with and without skips) at the first ``scenes`` test
    scenes, for each init key; cached in-process so every experiment of a run shares them.

    Returns ``{variant: {str(init_key): {"summary": summarize(...), "test_dice": ...}}}`` (string
    keys, as ``metrics.json`` stores them) plus
    ``"per_precision"``: for each precision, per variant, the scenes with nullity > 0 for each
    key (``lossy_scenes``) and the largest nullity over keys and scenes (``max_nullity``)."""
    if not init_keys or scenes < 1:
        raise ValueError(f"need init keys and scenes >= 1, got {init_keys!r}, {scenes!r}")
    out = {
        variant: {
            str(k): _certify_outputs(train_profile, skips, int(k), int(scenes)) for k in init_keys
        }
        for variant, skips in VARIANTS.items()
    }
    out["per_precision"] = {
        p: {
            variant: {
                "lossy_scenes": [
                    out[variant][str(k)]["summary"][p]["lossy_inputs"] for k in init_keys
                ],
                "max_nullity": max(
                    out[variant][str(k)]["summary"][p]["max_nullity"] for k in init_keys
                ),
            }
            for variant in VARIANTS
        }
        for p in PRECISIONS
    }
    out["scenes"], out["init_keys"] = int(scenes), [int(k) for k in init_keys]
    return out


def references(verdict: dict) -> list[dict]:
    """One reference row per precision, from :func:`output_verdict` (see module docstring)."""
    rows = []
    keys, scenes = verdict["init_keys"], verdict["scenes"]
    conds = [verdict["skips"][str(k)]["summary"]["condition_number_range"] for k in keys]
    for p in PRECISIONS:
        seed, plain = verdict["per_precision"][p]["skips"], verdict["per_precision"][p]["no_skips"]
        rows.append(
            reference(
                f"U-Net output loses input information at {p} precision: {QUESTIONS[p]} "
                f"(output Jacobian nullity > 0 at one of {scenes} test scenes or more, "
                f"for each of init keys {keys})",
                "cannot be inverted exactly",
                {
                    "lossy_scenes_per_key": seed["lossy_scenes"],
                    "max_nullity": seed["max_nullity"],
                    "condition_number_range_per_key": conds,
                    "no_skips_lossy_scenes_per_key": plain["lossy_scenes"],
                    "no_skips_max_nullity": plain["max_nullity"],
                },
                all(n > 0 for n in seed["lossy_scenes"]),
                source="seed study (measured: inversion.analysis.certify, float64 Jacobian)",
            )
        )
    return rows


def describe(verdict: dict) -> str:
    """The conclusion in one sentence per precision, for logs and docstrings."""
    lines = []
    for p in PRECISIONS:
        seed = verdict["per_precision"][p]["skips"]
        plain = verdict["per_precision"][p]["no_skips"]
        lines.append(
            f"{p}: seed U-Net lossy at {seed['lossy_scenes']} of {verdict['scenes']} scenes "
            f"(keys {verdict['init_keys']}, max nullity {seed['max_nullity']}); "
            f"no skips {plain['lossy_scenes']} (max nullity {plain['max_nullity']})"
        )
    return "\n".join(lines)

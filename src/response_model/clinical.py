"""Clinical scores computed from the patient record: ALBI and Child-Pugh (hcc-evidence.md, "Clinical scores")."""

from __future__ import annotations

import math
from typing import Literal

BILIRUBIN_MG_DL_TO_UMOL_L = 17.1
ALBUMIN_G_DL_TO_G_L = 10.0

Ascites = Literal["none", "mild", "moderate_severe"]
Encephalopathy = Literal["none", "grade_1_2", "grade_3_4"]


def albi_score(albumin_g_dl: float, bilirubin_mg_dl: float) -> float:
    """Return the ALBI score (dimensionless) from albumin in g/dL and bilirubin in mg/dL."""
    bilirubin_umol_l = bilirubin_mg_dl * BILIRUBIN_MG_DL_TO_UMOL_L
    albumin_g_l = albumin_g_dl * ALBUMIN_G_DL_TO_G_L
    return 0.66 * math.log10(bilirubin_umol_l) - 0.085 * albumin_g_l


def albi_grade(score: float) -> int:
    """Return the ALBI grade (1, 2 or 3) of an ALBI score."""
    if score <= -2.60:
        return 1
    if score <= -1.39:
        return 2
    return 3


def child_pugh_points(
    bilirubin_mg_dl: float,
    albumin_g_dl: float,
    inr: float,
    ascites: Ascites,
    encephalopathy: Encephalopathy,
) -> int:
    """Return the Child-Pugh score (5–15 points) from its five items."""
    points = 0
    points += 1 if bilirubin_mg_dl < 2 else 2 if bilirubin_mg_dl <= 3 else 3
    points += 1 if albumin_g_dl > 3.5 else 2 if albumin_g_dl >= 2.8 else 3
    points += 1 if inr < 1.7 else 2 if inr <= 2.3 else 3
    points += {"none": 1, "mild": 2, "moderate_severe": 3}[ascites]
    points += {"none": 1, "grade_1_2": 2, "grade_3_4": 3}[encephalopathy]
    return points


def child_pugh_class(points: int) -> Literal["A", "B", "C"]:
    """Return the Child-Pugh class for a score of 5–15 points."""
    if points <= 6:
        return "A"
    if points <= 9:
        return "B"
    return "C"

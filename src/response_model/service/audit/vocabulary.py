"""The preset dictionary of the packed trail formats ``zlib-json/2`` / ``packed-f64/4`` (:mod:`.packing`).

zlib can start a stream from a preset dictionary (RFC 1950 ``FDICT``): strings that the stream then
refers to instead of spelling them out. These are the service's own words as of this format — JSON
keys, regimen ids and labels, feature and field names, term labels, fixed phrases — which every
record repeats; a record that uses other words still packs and reads back exactly, only less tightly.
The dictionary is part of the format: records packed with it can only be read with the same bytes, so
it is frozen (:data:`PRESET_SHA256` is checked at import). A new vocabulary is a new format name,
with this one kept for the records written before.
"""

from __future__ import annotations

import hashlib
import json

# least frequent first: zlib reaches the end of the dictionary with the shortest distances
WORDS: tuple[str, ...] = (
    "Age at start of the regimen", "ECOG performance status", "Serum albumin", "Total bilirubin",
    "International normalised ratio", "Number of lesions", "Largest lesion diameter",
    "Neutrophil-to-lymphocyte ratio", "Platelet count", "Haemoglobin", "Body-mass index",
    "Line of systemic therapy", "PD-L1 tumour proportion score", "PD-L1 combined positive score",
    "Intratumoural CD8+ T cells", "T-effector signature (Zhu 2022)", "Regulatory T-cell signature",
    "Myeloid inflammation signature", "Tumour mutational burden", "Fraction of genome with copy-number alteration",
    "HLA class I evolutionary divergence (mean)", "Serum alpha-fetoprotein", "Ascites", "Hepatic encephalopathy",
    "Child-Pugh class", "Sex", "Macrovascular invasion", "Extrahepatic spread", "AJCC stage IV", "Diabetes",
    "Prior systemic therapy", "HLA class I loss of heterozygosity", "BCLC stage", "Alcohol use", "Smoking",
    "Microsatellite instability", "Aetiology", "Cancer type", "Tumour sequencing", "Regimen",
    "Liver function (ALBI)", "Child-Pugh", "PD-L1", "Treatment line", "WNT/β-catenin activation",
    "PI3K–mTOR activation", "TP53 loss", "TERT promoter mutation", "Cell-cycle deregulation", "FGF19 amplification",
    "VEGFA amplification", "MET amplification", "Chromatin-remodelling loss (ARID1A, ARID2)",
    "Oxidative-stress pathway (KEAP1 loss, NFE2L2 hot spots)", "regimen", "albi", "child_pugh", "aetiology",
    "cancer_type", "sequencing", "pdl1", "treatment_line", "age", "ecog", "lesion_count", "largest_lesion_cm",
    "nlr", "platelets", "haemoglobin", "bmi", "cd8_density", "teff_signature", "treg_signature",
    "myeloid_signature", "tmb", "fcna", "hed", "afp", "sex", "macrovascular_invasion", "extrahepatic_spread",
    "stage_iv", "diabetes", "hla_loh", "bclc_stage", "alcohol_use", "smoking", "msi_status", "wnt_activation",
    "pi3k_mtor", "tp53_loss", "tert_promoter", "cell_cycle", "fgf19_amplification", "vegfa_amplification",
    "met_amplification", "chromatin", "oxidative_stress", "Sorafenib", "Lenvatinib", "Atezolizumab + bevacizumab",
    "Durvalumab + tremelimumab (STRIDE)", "Durvalumab", "Nivolumab", "Nivolumab + ipilimumab",
    "Camrelizumab + rivoceranib", "Tislelizumab", "Pembrolizumab", "Regorafenib", "Cabozantinib", "Ramucirumab",
    "albumin", "bilirubin", "inr", "line_of_therapy", "pdl1_tps", "pdl1_cps", "ascites", "encephalopathy",
    "child_pugh_class", "prior_systemic_therapy", "alterations", "afp_log10", "albi_score", "albi_grade",
    "child_pugh_score", "sex_male", "msi_high", "aetiology_viral", "aetiology_HBV", "aetiology_HCV",
    "aetiology_alcohol", "aetiology_MASLD", "aetiology_other", "aetiology_unknown", "cancer_type_bladder",
    "cancer_type_breast", "cancer_type_colorectal", "cancer_type_endometrial", "cancer_type_esophageal",
    "cancer_type_gastric", "cancer_type_head___neck", "cancer_type_hepatobiliary", "cancer_type_melanoma",
    "cancer_type_mesothelioma", "cancer_type_nsclc", "cancer_type_ovarian", "cancer_type_pancreatic",
    "cancer_type_renal", "cancer_type_sarcoma", "cancer_type_sclc", "genotyped", "n_alterations",
    "class_checkpoint_inhibitor", "class_tki_antiangiogenic", "target_pd1_pdl1", "target_ctla4", "target_vegf",
    "target_multikinase", "regimen_sorafenib", "regimen_lenvatinib", "regimen_atezolizumab_bevacizumab",
    "regimen_durvalumab_tremelimumab", "regimen_durvalumab", "regimen_nivolumab", "regimen_nivolumab_ipilimumab",
    "regimen_camrelizumab_rivoceranib", "regimen_tislelizumab", "regimen_pembrolizumab", "regimen_regorafenib",
    "regimen_cabozantinib", "regimen_ramucirumab", "not altered", "clinical-only estimate", "low", "moderate",
    "high", "unchecked", "Not recorded", "not_recorded",
    "missingness pattern flagged when fewer than 1% of the training patients miss as much of the model's influence, or miss a field this patient misses",  # noqa: E501 - one phrase
    "not checked per regimen: this model's configuration has no per-regimen gate",
    "80% per-patient interval: the spread of a 3-model bootstrap ensemble of each model combined, on the log-odds scale, with the spread of the estimate over 8 draws of the patient's missing fields from the training population's distribution (per-field percentiles and category frequencies, drawn independently of each other and of the fields given), each spread scaled by a factor (for the draws, one per band of the share of fields missing: below 25 %, below 60 %, more) estimated out-of-fold on the training cohort's simulated true probabilities; normal on the log-odds scale, widened where needed to contain the estimate",  # noqa: E501 - one phrase
    "does not change the probability of response", "raises the probability of response",
    "lowers the probability of response", "does not change the probability of primary resistance",
    "raises the probability of primary resistance", "lowers the probability of primary resistance",
    "log-odds before calibration (whole model)", "sorafenib", "lenvatinib", "atezolizumab_bevacizumab",
    "durvalumab_tremelimumab", "durvalumab", "nivolumab", "nivolumab_ipilimumab", "camrelizumab_rivoceranib",
    "tislelizumab", "pembrolizumab", "regorafenib", "cabozantinib", "ramucirumab", "band", "base_value", "checked",
    "contribution", "direction", "display", "eligible", "features", "field", "fields", "flagged", "format",
    "genomic_tests", "genomics", "ineligible_reason", "information", "interval", "interval_level", "label", "level",
    "lower", "missing", "missing_fields", "missing_influence_share", "note", "objective_response",
    "out_of_distribution_flagged", "out_of_distribution_missingness", "primary_resistance", "probability", "rank",
    "rarely_missing_in_training", "regimens", "rests_on_population_averages", "scale", "served", "status", "term",
    "terms", "tests", "text", "threshold", "top", "training_missing_rate", "training_share_missing_as_much",
    "uncertainty_method", "upper", "validation", "values", "warning",
)

PRESET: bytes = ",".join(json.dumps(w, ensure_ascii=False) for w in WORDS).encode("utf-8")
PRESET_SHA256 = "f467a0a45fb054b2de87047fec2a57335ab87e411c14514bddb3d3f1166f0cf5"
if hashlib.sha256(PRESET).hexdigest() != PRESET_SHA256:  # pragma: no cover - an edit would orphan stored records
    raise RuntimeError("the trail's preset dictionary was changed: records packed with it could not be read; "
                       "add a new format with a new dictionary instead")

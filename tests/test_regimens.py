"""The regimen catalogue."""

from response_model.regimens import candidate_regimens, get_regimen, load_catalogue
from response_model.schema import PatientRecord

EVIDENCE_REGIMENS = {
    "sorafenib", "lenvatinib", "atezolizumab_bevacizumab", "durvalumab_tremelimumab", "durvalumab",
    "nivolumab", "nivolumab_ipilimumab", "camrelizumab_rivoceranib", "tislelizumab", "pembrolizumab",
    "regorafenib", "cabozantinib", "ramucirumab",
}


def test_catalogue_holds_every_regimen_of_the_evidence_with_class_line_and_trial():
    names = {r.name for r in candidate_regimens()}
    assert names == EVIDENCE_REGIMENS
    for regimen in candidate_regimens():
        assert regimen.regimen_class in {"checkpoint_inhibitor", "tki_antiangiogenic"}
        assert regimen.usual_line in {1, 2}
        assert 0 < regimen.trial["orr"] < 1
        assert "hcc-evidence.md" in regimen.source


def test_classes_follow_mechanism():
    assert get_regimen("atezolizumab_bevacizumab").regimen_class == "checkpoint_inhibitor"
    assert get_regimen("camrelizumab_rivoceranib").targets == ("pd1_pdl1", "multikinase")
    assert get_regimen("ramucirumab").regimen_class == "tki_antiangiogenic"
    assert not load_catalogue()["anti_pd1_pdl1"].is_candidate


def test_ramucirumab_requires_afp_of_400():
    ramucirumab = get_regimen("ramucirumab")
    assert ramucirumab.ineligibility(PatientRecord(age=60, sex="male", afp=1200)) == []
    low = ramucirumab.ineligibility(PatientRecord(age=60, sex="male", afp=35))
    assert low == ["ramucirumab is indicated only for AFP ≥ 400 ng/mL (REACH-2); afp is 35 ng/mL"]
    assert "afp is missing" in ramucirumab.ineligibility(PatientRecord(age=60, sex="male"))[0]
    assert get_regimen("sorafenib").ineligibility(PatientRecord(age=60, sex="male")) == []

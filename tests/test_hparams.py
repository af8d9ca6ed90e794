"""Every YAML in hparams/ loads and passes its Brain's hyperparameter declaration; misspelled,
unknown, mistyped and out-of-range keys are errors that name them."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from sb_mal.brains import PARADIGMS, EnhanceBrain, MALBrain, MetricGANOKDBrain
from sb_mal.brains.hparams import HParamsError, markdown
from sb_mal.run import load_recipe_hparams

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[1]
YAMLS = sorted((REPO / "hparams").glob("*/*.yaml"))
#: the recipe (and so the Brain) each YAML is written for, by file name (sb_mal.brains.PARADIGMS)
BRAINS = [(p.yamls, p.brain) for p in PARADIGMS]


def brain_of(path: Path):
    found = [brain for pattern, brain in BRAINS if re.search(pattern, str(path))]
    assert len(found) == 1, f"{path}: which recipe is it for?"
    return found[0]


@pytest.fixture(scope="module")
def fills(tmp_path_factory, tiny_wavlm_dir):
    root = tmp_path_factory.mktemp("hp")
    return [f"--data_folder={root / 'data'}", f"--output_folder={root / 'out'}"], str(tiny_wavlm_dir)


def test_every_yaml_has_a_brain():
    assert len(YAMLS) >= 40
    for path in YAMLS:
        brain_of(path)


@pytest.mark.parametrize("path", YAMLS, ids=[f"{p.parent.name}/{p.name}" for p in YAMLS])
def test_every_yaml_loads_and_passes_its_brains_declaration(path, fills):
    brain = brain_of(path)
    args, wavlm = fills
    text = path.read_text()
    extra = [f"--ssl_source={wavlm}"] if re.search(r"^ssl_source:", text, re.M) else []
    if re.search(r"^init_from: !PLACEHOLDER", text, re.M):
        extra.append("--init_from=some/run")
    _, _, _, hparams = load_recipe_hparams([str(path), *args, *extra], brain)
    brain.HPARAMS.apply(SimpleNamespace(**hparams))  # raises on a missing, mistyped or out-of-range key
    recipe = REPO / next(p.recipe for p in PARADIGMS if p.brain is brain)  # and the recipe it is written for runs it
    assert re.search(rf"\bmain\({brain.__name__}\b", recipe.read_text()), f"{recipe} does not run {brain.__name__}"


def test_documented_options_work_with_every_yaml(fills):
    """--max_train_minutes (declared by every enhancement Brain) is accepted even where a YAML has no such key."""
    args, wavlm = fills
    path = REPO / "hparams/folders/baseline.yaml"
    assert not re.search(r"^max_train_minutes:", path.read_text(), re.M)
    *_, hparams = load_recipe_hparams([str(path), *args, "--max_train_minutes=25"], EnhanceBrain)
    assert hparams["max_train_minutes"] == 25


def test_misspelled_and_unknown_keys_are_errors_naming_them(tmp_path, fills):
    args, _ = fills
    src = (REPO / "hparams/folders/mal_frozen.yaml").read_text()
    bad = tmp_path / "mal.yaml"
    bad.write_text(src.replace("lambda_mal:", "lamda_mal:"))
    with pytest.raises(SystemExit, match=r"mal\.yaml: key\(s\) that no part of the recipe reads.*\n  lamda_mal "
                                         r"\(did you mean lambda_mal"):
        load_recipe_hparams([str(bad), *args], MALBrain)
    with pytest.raises(SystemExit, match=r"--lamda_rec: .* has no key 'lamda_rec' and MALBrain does not read it; did "
                                         r"you mean lambda_rec"):
        load_recipe_hparams([str(REPO / "hparams/folders/mal_frozen.yaml"), *args, "--lamda_rec=2"], MALBrain)


@pytest.mark.parametrize("override,message", [
    ("--lambda_mal=-10", r"lambda_mal must be >= 0, got -10"),
    ("--n_jobs=two", r"n_jobs must be an integer, got 'two'"),
    ("--variant=frozen_ef", r"variant must be one of \['frozen', 'frozen_fe', 'dynamic', 'ssl_l1'\]"),
])
def test_wrong_types_and_ranges_are_errors_naming_key_and_file(override, message, fills):
    args, _ = fills
    path = REPO / "hparams/folders/mal_frozen.yaml"
    with pytest.raises(SystemExit, match="error: " + re.escape(str(path)) + ": " + message):  # at start, no traceback
        load_recipe_hparams([str(path), *args, override], MALBrain)
    *_, hparams = load_recipe_hparams([str(path), *args, override])  # not checked without a Brain...
    with pytest.raises(HParamsError, match=re.escape(str(path)) + ": " + message):  # ...the Brain checks them too
        MALBrain.HPARAMS.apply(SimpleNamespace(**hparams))


def test_a_numbers_hparam_takes_ints_and_floats_and_names_anything_else():
    from sb_mal.brains.hparams import HParam

    factors = HParam("speed_factors", "numbers", [1.0])
    assert factors.check((1, 0.9), "p.yaml") == [1.0, 0.9]
    for bad in ([0.9, "fast"], [0.9, True], "0.9"):
        with pytest.raises(HParamsError, match=r"p\.yaml: speed_factors must be a list of numbers, got "
                                               + re.escape(repr(bad))):
            factors.check(bad, "p.yaml")


def test_okd_generator_count_must_match_the_targets(fills):
    args, _ = fills
    path = REPO / "hparams/mini/okd_pesq_csig.yaml"
    *_, hparams = load_recipe_hparams([str(path), *args, "--target_metrics=[pesq,csig,covl]"], MetricGANOKDBrain)
    with pytest.raises(HParamsError, match=r"2 generators but 3 target metrics \['pesq', 'csig', 'covl'\]"):
        MetricGANOKDBrain(modules=hparams["modules"], hparams=hparams, run_opts={"device": "cpu"})


def test_the_declarations_are_documented():
    doc = (REPO / "docs" / "hparams.md").read_text()
    for brain in (p.brain for p in PARADIGMS):
        assert markdown([brain.HPARAMS]) in doc, f"docs/hparams.md is stale for {brain.__name__}: rerun " \
                                                 "python -m sb_mal.brains.hparams_doc"


def test_every_brain_reads_the_training_budget():
    """--max_train_minutes (README, training recipes) is declared by every recipe's Brain."""
    for brain in (p.brain for p in PARADIGMS):
        assert "max_train_minutes" in brain.HPARAMS.index, brain.__name__

import pytest

from llmprune.errors import UserInputError
from llmprune.recipe import NM, Groups, QuantSpec, Recipe, Unstructured, parse_quant, parse_sparsity


@pytest.mark.parametrize("text, expected", [("0.5", Unstructured(0.5)), ("2:4", NM(2, 4)), ("4:8", NM(4, 8)),
                                            ("1:3", NM(1, 3)), ("0.5@g16", Groups(16, 0.5))])
def test_parse_sparsity_accepts(text, expected):
    assert parse_sparsity(text) == expected


@pytest.mark.parametrize("text, words", [("3:2", "smaller than M"), ("2:2", "smaller than M"), ("1.5", "(0, 1)"),
                                         ("0", "(0, 1)"), ("abc", "not a number"), ("0:4", "at least 1"),
                                         ("2:x", "whole numbers"), ("1:2:3", "whole numbers"),
                                         ("0.5@gx", "FRACTION@gSIZE")])
def test_parse_sparsity_rejects_with_one_line(text, words):
    with pytest.raises(UserInputError) as info:
        parse_sparsity(text)
    message = str(info.value)
    assert words in message and "\n" not in message and text in message


def test_nm_means_n_kept_in_every_m():
    assert NM(2, 4).fraction == 0.5 and NM(1, 4).fraction == 0.75


@pytest.mark.parametrize("text, spec", [("w4g128", QuantSpec(4, 128)), ("w3g16s", QuantSpec(3, 16, True)),
                                        ("w8", QuantSpec(8, 0))])
def test_parse_quant(text, spec):
    assert parse_quant(text) == spec


@pytest.mark.parametrize("text", ["w9", "w1", "w4g0", "int4", "w4g"])
def test_parse_quant_rejects(text):
    with pytest.raises(UserInputError):
        parse_quant(text)


def test_recipe_round_trips_through_dict():
    recipe = Recipe(method="sparsegpt", sparsity=NM(2, 4), quant=QuantSpec(4, 128), damp=0.02,
                    ignore=("lm_head",), overrides=(("down_proj", Unstructured(0.3)),), options=(("k", 1),))
    assert Recipe.from_dict(recipe.to_dict()) == recipe


@pytest.mark.parametrize("text", ["0.1249999", "0.123456789", "1e-05", "0.3@g16", "0.6666666666666666@g8"])
def test_sparsity_text_parses_back_to_the_same_fraction(text):
    """The manifest stores the recipe as text; ``--from-manifest`` must prune exactly as much (``:g`` kept 6 digits)."""
    sparsity = parse_sparsity(text)
    assert parse_sparsity(str(sparsity)) == sparsity
    recipe = Recipe(method="wanda", sparsity=sparsity, overrides=(("mlp", sparsity),))
    assert Recipe.from_dict(recipe.to_dict()) == recipe

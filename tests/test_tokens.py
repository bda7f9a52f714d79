import pytest

from magicremover.clip_tokenizer import build_clip_tokenizer
from magicremover.errors import PromptError
from magicremover.target_tokens import find_target


@pytest.fixture(scope="module")
def tok():
    return build_clip_tokenizer()


def test_single_word(tok):
    assert find_target(tok, "a photo of a dog", "dog").words == ((5,),)


def test_two_word_category_maps_every_word_and_subtoken(tok):
    # fire, hydr, ant: the authors' code used [5, 6] and so missed "ant".
    target = find_target(tok, "a photo of a fire hydrant", "fire hydrant")
    assert target.words == ((5,), (6, 7))
    assert target.flat == (5, 6, 7)


def test_multi_token_word(tok):
    # surf, board: the authors' code used [5] only.
    target = find_target(tok, "a photo of a surfboard", "surfboard")
    assert target.words == ((5, 6),)
    assert tok.convert_ids_to_tokens([tok("a photo of a surfboard").input_ids[i] for i in target.flat]) == [
        "surf",
        "board</w>",
    ]


def test_case_punctuation_and_repeats(tok):
    assert find_target(tok, "A Dog. And a dog", "dog").words == ((2, 6),)
    assert find_target(tok, "a photo of a hot dog", "dog").words == ((6,),)


@pytest.mark.parametrize(
    ("prompt", "target", "message"),
    [
        ("a photo of a dog", "cat", "target 'cat' is not in the prompt"),
        ("a photo of a dogs", "dog", "is not in the prompt"),  # whole words only
        ("", "dog", "the prompt is empty"),
        ("   ", "dog", "the prompt is empty"),
        ("a photo of a dog", " ", "the target is empty"),
        (" ".join(["word"] * 80), "word", "the prompt has 82 tokens"),
    ],
)
def test_bad_prompts_and_targets_give_one_line_errors(tok, prompt, target, message):
    with pytest.raises(PromptError, match=message) as info:
        find_target(tok, prompt, target)
    assert "\n" not in str(info.value)

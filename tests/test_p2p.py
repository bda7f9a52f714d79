import pytest
import torch

from magicremover.baselines.p2p import PromptToPrompt
from magicremover.errors import PromptError
from magicremover.inversion import InversionConfig
from magicremover.remover_base import Reconstruction
from magicremover.types import RemovalSample

PROMPT = "a photo of a red circle on horizontal stripes"
INVERSION = InversionConfig(method="negative_prompt", num_inference_steps=10)


@pytest.fixture
def sample(example_image):
    return RemovalSample(example_image, PROMPT, "red circle")


def test_reweight_with_factor_one_reproduces_the_reconstruction(tiny, sample):
    result = PromptToPrompt(tiny, INVERSION, edit="reweight", factor=1.0)(sample)
    assert (result.image - result.reconstruction).abs().max() <= 1e-4
    reference = Reconstruction(tiny, INVERSION)(sample)
    assert (result.reconstruction - reference.image).abs().max() <= 1e-5  # the source branch is the reconstruction


def test_reweight_to_zero_and_refine_edit_only_the_target_branch(tiny, sample):
    reweight = PromptToPrompt(tiny, INVERSION, edit="reweight", factor=0.0)(sample)
    refine = PromptToPrompt(tiny, INVERSION, edit="refine")(sample)
    assert (reweight.image - reweight.reconstruction).abs().max() > 1e-3
    assert refine.extras["target_prompt"] == "a photo of a on horizontal stripes"
    assert torch.equal(refine.reconstruction, reweight.reconstruction)  # the unedited branch is untouched
    assert (refine.image - refine.reconstruction).abs().max() > 1e-3
    counts = {stage: count.calls for stage, count in reweight.calls.items()}
    assert counts == {"inversion": 10, "reconstruction": 10, "edit": 10}  # one b2 call per branch and step


def test_bad_settings_and_targets(tiny, example_image):
    with pytest.raises(PromptError, match="method.edit=swap is not reweight or refine"):
        PromptToPrompt(tiny, INVERSION, edit="swap")
    with pytest.raises(PromptError, match="target 'dog' is not in the prompt"):
        PromptToPrompt(tiny, INVERSION)(RemovalSample(example_image, PROMPT, "dog"))

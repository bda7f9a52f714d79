import torch

from magicremover.attention import CrossAttentionStore, controlled_attention, token_maps
from magicremover.inversion import InversionConfig, invert


def _delta(tiny, before):
    return {k: (v.calls, v.samples, v.backward) for k, v in tiny.calls.delta(tiny.calls.totals(), before).items()}


def test_forward_and_backward_are_attributed_to_stages(tiny):
    z, emb = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    before = tiny.calls.totals()
    with tiny.calls.stage("a"):
        with torch.no_grad():
            tiny.unet(z, 1, encoder_hidden_states=emb)
        with tiny.calls.stage("b"):  # nested stages take the calls inside them
            tiny.unet(z[:1], 1, encoder_hidden_states=emb[:1])
    assert _delta(tiny, before) == {"a": (1, 2, 0), "b": (1, 1, 0)}


def test_backward_counted_for_losses_on_outputs_and_on_attention_maps(tiny):
    z, emb = torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 77, 32, requires_grad=True)
    before = tiny.calls.totals()
    with tiny.calls.stage("output"):
        tiny.unet(z, 1, encoder_hidden_states=emb).sample.sum().backward()
    store = CrossAttentionStore(keep_graph=True)
    with tiny.calls.stage("maps"), controlled_attention(tiny.unet, store):
        tiny.unet(z, 1, encoder_hidden_states=emb.detach())
        torch.autograd.grad(token_maps(store.maps, store.shapes, [5], (8, 8)).sum(), z)
    assert _delta(tiny, before) == {"output": (1, 2, 1), "maps": (1, 2, 1)}
    assert z.grad is not None and emb.grad is not None  # the counting node passes gradients through


def test_null_text_counts_match_the_hand_derivation(tiny, image_tensor):
    # N = 4 steps, early stop disabled so every step runs all k = 3 Adam iterations:
    #   inversion: N b1 calls (prompt only)                      → 4 calls, 4 samples
    #   null_text: per step 1 b1 (ε_c) + k b1 with backward + 1 b2 (advance)
    #              → N(1 + k + 1) = 20 calls, N(1 + k + 2) = 24 samples, N·k = 12 backward
    config = InversionConfig(num_inference_steps=4, inner_steps=3, early_stop=0.0, early_stop_growth=0.0)
    inversion = invert(tiny, image_tensor, "a photo of a red circle", config)
    counts = {k: (v.calls, v.samples, v.backward) for k, v in inversion.calls.items()}
    assert counts == {"inversion": (4, 4, 0), "null_text": (20, 24, 12)}


def test_forward_equivalents_count_backward_samples_twice_and_checkpointed_forwards_again(tiny):
    z, emb = torch.randn(2, 4, 8, 8, requires_grad=True), torch.randn(2, 77, 32)
    for checkpointing, recomputed in ((False, 0), (True, 2)):
        if checkpointing:
            tiny.unet.enable_gradient_checkpointing()
        try:
            before = tiny.calls.totals()
            with tiny.calls.stage("guided"):
                tiny.unet(z, 1, encoder_hidden_states=emb).sample.sum().backward()
                with torch.no_grad():
                    tiny.unet(z[:1], 1, encoder_hidden_states=emb[:1])
            (count,) = tiny.calls.delta(tiny.calls.totals(), before).values()
        finally:
            tiny.unet.disable_gradient_checkpointing()
        # forwards 2 + 1 samples; one backward through the batch of 2 (2 × 2); the recomputed batch when checkpointed
        assert (count.samples, count.backward_samples, count.recomputed_samples) == (3, 2, recomputed)
        assert count.forward_equivalents == 3 + 4 + recomputed == count.record()["forward_equivalents"]


def test_cfg_with_equal_embeddings_folds_into_one_half_with_the_same_noise(tiny):
    from magicremover.diffusion import cfg_eps

    z, emb = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    before = tiny.calls.totals()
    with torch.no_grad(), tiny.calls.stage("cfg"):
        batched = cfg_eps(tiny, z, 501, emb, emb.clone(), 7.5)
        folded = cfg_eps(tiny, z, 501, emb, emb.clone(), 7.5, fold=True)
        unequal = cfg_eps(tiny, z, 501, torch.zeros_like(emb), emb, 7.5, fold=True)
    assert torch.allclose(folded, batched, atol=1e-5) and not torch.allclose(unequal, batched, atol=1e-3)
    assert _delta(tiny, before) == {"cfg": (3, 2 + 1 + 2, 0)}  # the unequal pair still runs as a CFG batch

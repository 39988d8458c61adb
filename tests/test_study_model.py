"""The model reads a study: several views and a prior, each image through the vision tower once,
a padding mask for studies with fewer images, and single-image checkpoints unchanged on studies."""

import torch

from medvlm.modeling import MedVLMForConditionalGeneration
from tests.tiny import VOCAB, tiny_config

FRONTAL, LATERAL, EMPTY = 1, 2, 0


def _model(**overrides):
    torch.manual_seed(0)
    return MedVLMForConditionalGeneration(tiny_config(fusion_null_slot=True, **overrides)).eval()


def _study_batch():
    """Two studies: one frontal + lateral + prior frontal, one frontal alone (two empty slots)."""
    pixels = torch.randn(2, 3, 1, 32, 32)
    views = torch.tensor([[FRONTAL, LATERAL, FRONTAL], [FRONTAL, EMPTY, EMPTY]])
    prior = torch.tensor([[False, False, True], [False, False, False]])
    return pixels, views, prior


def test_a_study_of_one_image_reads_as_that_image_alone_in_a_fresh_model():
    # view and prior embeddings start at zero: a single-image checkpoint keeps its outputs
    model = _model()
    pixels = torch.randn(3, 1, 32, 32)
    ids = torch.randint(3, VOCAB, (3, 7))
    alone = model(input_ids=ids, pixel_values=pixels)
    as_study = model(input_ids=ids, pixel_values=pixels[:, None], image_views=torch.full((3, 1), FRONTAL),
                     image_is_prior=torch.zeros(3, 1, dtype=torch.bool))
    torch.testing.assert_close(as_study.logits, alone.logits)
    torch.testing.assert_close(as_study.image_embeds, alone.image_embeds)


def test_empty_slots_change_nothing_and_the_prior_is_not_pooled():
    model = _model()
    with torch.no_grad():  # make views and the prior matter, as after training
        model.model.view_embeddings.weight.normal_()
        model.model.prior_embedding.normal_()
    pixels, views, prior = _study_batch()
    ids = torch.randint(3, VOCAB, (2, 6))
    out = model(input_ids=ids, pixel_values=pixels, image_views=views, image_is_prior=prior)
    # the second study, sent alone as one slot, gives the same logits: its empty slots are masked
    alone = model(input_ids=ids[1:], pixel_values=pixels[1:, :1], image_views=views[1:, :1],
                  image_is_prior=prior[1:, :1])
    torch.testing.assert_close(out.logits[1:], alone.logits, atol=1e-5, rtol=1e-4)
    # the first study's embedding pools its two current views, not the prior
    current = model(input_ids=ids[:1], pixel_values=pixels[:1, :2], image_views=views[:1, :2],
                    image_is_prior=prior[:1, :2])
    torch.testing.assert_close(out.image_embeds[:1], current.image_embeds, atol=1e-5, rtol=1e-4)
    # and the prior's pixels do reach the report
    changed = pixels.clone()
    changed[0, 2] = torch.randn(1, 32, 32)
    other = model(input_ids=ids, pixel_values=changed, image_views=views, image_is_prior=prior)
    assert not torch.allclose(other.logits[0], out.logits[0])


def test_each_real_image_goes_through_the_vision_tower_once():
    model = _model()
    pixels, views, prior = _study_batch()
    seen = []
    hook = model.vision_tower().register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    model.generate(pixel_values=pixels, image_views=views, image_is_prior=prior, max_new_tokens=4, num_beams=2)
    hook.remove()
    assert seen == [4]  # 3 + 1 real images, once, for beams and every step


def test_generation_of_studies_matches_their_forward_pass():
    """Greedy generation with beams' expanded mask and the KV cache equals argmax of forward."""
    model = _model()
    pixels, views, prior = _study_batch()
    sequences = model.generate(pixel_values=pixels, image_views=views, image_is_prior=prior, max_new_tokens=5,
                               do_sample=False, eos_token_id=None)
    with torch.inference_mode():
        logits = model(input_ids=sequences[:, :-1], pixel_values=pixels, image_views=views,
                       image_is_prior=prior).logits
    assert torch.equal(logits.argmax(-1)[:, -5:], sequences[:, -5:])
    beams = model.generate(pixel_values=pixels, image_views=views, image_is_prior=prior, max_new_tokens=5,
                           num_beams=3, do_sample=False)
    assert beams.shape[0] == 2


def test_view_and_prior_embeddings_train_and_are_not_decayed():
    model = _model()
    pixels, views, prior = _study_batch()
    ids = torch.randint(3, VOCAB, (2, 6))
    model.train()
    out = model(input_ids=ids, pixel_values=pixels, image_views=views, image_is_prior=prior, labels=ids)
    out.loss.backward()
    assert model.model.view_embeddings.weight.grad[[FRONTAL, LATERAL]].abs().sum() > 0
    assert model.model.prior_embedding.grad.abs().sum() > 0
    no_decay = {id(p) for p in model.optimizer_groups(0.1)[1]["params"]}
    assert id(model.model.view_embeddings.weight) in no_decay and id(model.model.prior_embedding) in no_decay


def test_a_checkpoint_saved_before_studies_loads_and_runs_on_studies(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _model()
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    old = {k: v for k, v in weights.items() if "view_embeddings" not in k and "prior_embedding" not in k}
    assert len(old) == len(weights) - 2
    save_file(old, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = MedVLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.model.view_embeddings.weight.abs().sum() == 0 and loaded.model.prior_embedding.abs().sum() == 0
    pixels, views, prior = _study_batch()
    ids = torch.randint(3, VOCAB, (2, 6))
    single = model(input_ids=ids, pixel_values=pixels[:, 0])
    study = loaded(input_ids=ids, pixel_values=pixels[:, :1], image_views=views[:, :1], image_is_prior=prior[:, :1])
    torch.testing.assert_close(study.logits, single.logits)
    assert loaded.generate(pixel_values=pixels, image_views=views, image_is_prior=prior, max_new_tokens=3).shape[0] == 2

"""Explainability: Grad-CAM points at the evidence (direction tested), cross-attention maps are
the attention the model uses, pointing game / IoU rules, and `medvlm explain` writes overlays."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from medvlm.cli import main
from medvlm.explain.attention import cross_attention_maps, cross_attention_relevance, word_maps
from medvlm.explain.gradcam import grad_cam, normalize_maps
from medvlm.metrics.localization import dilate, localization_scores, pointing_hit, top_area_iou
from medvlm.modeling import MedVLMForConditionalGeneration
from tiny import tiny_config


class QuadrantModel(nn.Module):
    """Two input channels, each with a bright square in its own quadrant (channel 0 top-right,
    channel 1 bottom-left); logit k reads channel k through a conv layer, so the evidence of
    logit 0 is the top-right quadrant and of logit 1 the bottom-left one."""

    def __init__(self, sign_of_other: float = 0.0):
        super().__init__()
        self.features = nn.Conv2d(2, 2, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2)[:, :, None, None])
            self.features.bias.zero_()
        self.dropout = nn.Dropout(0.5)
        self.sign_of_other = sign_of_other

    def forward(self, x):
        f = torch.relu(self.features(x))  # (B, 2, H, W)
        pooled = self.dropout(f.mean(dim=(2, 3)))  # (B, 2)
        return torch.stack([pooled[:, 0] + self.sign_of_other * pooled[:, 1],
                            pooled[:, 1] + self.sign_of_other * pooled[:, 0]], dim=1)


def quadrant_images(batch: int = 2, size: int = 16) -> torch.Tensor:
    x = torch.zeros(batch, 2, size, size)
    h = size // 2
    x[:, 0, 2:h - 2, h + 2:size - 2] = 1.0  # top-right square in channel 0
    x[:, 1, h + 2:size - 2, 2:h - 2] = 1.0  # bottom-left square in channel 1
    return x


def quadrant_peaks(cam: torch.Tensor) -> tuple[float, float]:
    """The map's maximum in the top-right and in the bottom-left quadrant."""
    h = cam.shape[-1] // 2
    return float(cam[..., :h, h:].max()), float(cam[..., h:, :h].max())


@pytest.mark.parametrize("sign_of_other", [0.0, -1.0])
def test_grad_cam_is_high_where_the_evidence_is(sign_of_other):
    model = QuadrantModel(sign_of_other)
    x = quadrant_images()
    cam0 = grad_cam(model, "features", lambda: model(x)[:, 0], size=(16, 16))
    cam1 = grad_cam(model, "features", lambda: model(x)[:, 1], size=(16, 16))
    assert cam0.shape == (2, 16, 16) and float(cam0.min()) >= 0 and float(cam0.max()) <= 1
    top_right, bottom_left = quadrant_peaks(cam0)
    assert top_right == pytest.approx(1.0) and bottom_left < 0.1  # high on its own evidence, not inverted
    top_right, bottom_left = quadrant_peaks(cam1)
    assert bottom_left == pytest.approx(1.0) and top_right < 0.1
    # the peak lies in the evidence: the pointing game hits the square
    mask = np.zeros((16, 16), dtype=bool)
    mask[2:6, 10:14] = True
    assert pointing_hit(cam0[0].numpy(), mask, tolerance=0)


def test_grad_cam_restores_the_mode_and_leaves_parameter_gradients_alone():
    model = QuadrantModel().train()
    grad_cam(model, "features", lambda: model(quadrant_images())[:, 0])
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    grad_cam(model, "features", lambda: model(quadrant_images())[:, 0])
    assert not model.training


def test_grad_cam_on_transformer_tokens_drops_prefix_tokens():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = nn.Identity()

        def forward(self, x):  # x: (B, 2, 4, 4) -> tokens (B, 1 + 16, 2) with a class token
            tokens = torch.cat([torch.ones(x.shape[0], 1, 2), x.flatten(2).transpose(1, 2)], dim=1)
            tokens = self.blocks(tokens)
            return tokens[:, 1:, 0].mean(dim=1)

    x = quadrant_images()[:, :, ::4, ::4]  # (B, 2, 4, 4)
    model = Tokens()
    cam = grad_cam(model, "blocks", lambda: model(x), num_prefix_tokens=1)
    assert cam.shape == (2, 4, 4)
    top_right, bottom_left = quadrant_peaks(cam)
    assert top_right == pytest.approx(1.0) and bottom_left < 0.1


def test_similarity_grad_cam_of_a_model_pooling_its_tokens_is_class_activation_mapping():
    """With the image embedding read linearly from the mean of the token-stage features, every
    position gets the same gradient, so Grad-CAM equals HiResCAM (each position weighted by its
    own gradient); with the backbone's own last stage on top they differ."""
    from medvlm.explain.targets import default_layer, similarity_cams
    from tiny import spatial_config

    cams = {}
    for pool_tokens in (True, False):
        config = spatial_config()
        config.vision.update(pool_tokens=pool_tokens, img_size=64)  # a 4 x 4 token stage
        torch.manual_seed(0)
        model = MedVLMForConditionalGeneration(config).eval()
        assert default_layer(model) == "model.vision.backbone.s3"  # the token stage (stride 16)
        pixels = torch.rand(2, 1, 64, 64)
        text = torch.nn.functional.normalize(torch.randn(2, config.embed_dim), dim=-1)
        cams[pool_tokens] = [similarity_cams(model, pixels, text, elementwise=e) for e in (False, True)]
    grad_cam_map, hires_map = cams[True]
    assert float(grad_cam_map.max()) == pytest.approx(1.0)
    torch.testing.assert_close(grad_cam_map, hires_map)
    assert not torch.allclose(*cams[False])


def test_an_unknown_grad_cam_layer_is_a_user_error():
    from medvlm.errors import UserError

    model = QuadrantModel()
    with pytest.raises(UserError, match="layer 'features.nope': no such submodule"):
        grad_cam(model, "features.nope", lambda: model(quadrant_images())[:, 0])


def test_normalize_maps_keeps_the_direction():
    maps = torch.tensor([[[0.0, 2.0], [4.0, 8.0]], [[3.0, 3.0], [3.0, 3.0]]])
    out = normalize_maps(maps)
    assert torch.allclose(out[0], torch.tensor([[0.0, 0.25], [0.5, 1.0]]))
    assert torch.equal(out[1], torch.zeros(2, 2))  # a constant map carries no location


def test_pointing_game_and_iou_rules():
    mask = np.zeros((10, 10), dtype=bool)
    mask[4:6, 4:6] = True
    heat = np.zeros((10, 10))
    heat[4, 8] = 1.0  # two pixels right of the mask
    assert not pointing_hit(heat, mask, tolerance=1) and pointing_hit(heat, mask, tolerance=3)
    assert dilate(mask, 1).sum() == 16
    exact = mask.astype(float)
    assert top_area_iou(exact, mask) == 1.0
    assert top_area_iou(-exact, mask) == 0.0  # the inverted map marks everything else
    scores = localization_scores([exact, heat], [mask, mask], tolerance=0)
    assert scores["explain_pointing_game"] == 0.5
    assert scores["baselines.random.explain_pointing_game"] == pytest.approx(0.04)


def test_cross_attention_maps_are_the_attention_the_model_uses():
    torch.manual_seed(0)
    model = MedVLMForConditionalGeneration(tiny_config()).eval()
    pixels, ids = torch.randn(2, 1, 32, 32), torch.randint(3, 60, (2, 7))
    maps = cross_attention_maps(model, pixels, ids)
    assert maps.shape == (2, 7, 2, 2)  # 32 px, 16 px patches: a 2 x 2 grid
    assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(2, 7), atol=1e-5)
    # the weights reproduce the SDPA output of the first cross-attention block
    cross = model.cross_attention_layers()[0]
    tokens, _, _ = model.model.encode_image(pixels)
    kv = cross.image_keys_values(tokens)
    x = torch.randn(2, 7, tokens.shape[-1])
    weights = cross.attention_weights(x, kv)  # (B, heads, T, N)
    by_hand = (weights @ kv[1]).transpose(1, 2).reshape(2, 7, -1)
    assert torch.allclose(cross.proj(by_hand), cross(x, kv), atol=1e-5)
    one = cross_attention_maps(model, pixels, ids, layers=[-1], heads=[0])
    assert one.shape == maps.shape and not torch.allclose(one, maps)
    with pytest.raises(ValueError, match="out of range"):
        cross_attention_maps(model, pixels, ids, layers=[5])


@pytest.mark.parametrize("qk_norm", [False, True])
def test_attention_maps_leave_out_the_null_slot(qk_norm):
    torch.manual_seed(0)
    model = MedVLMForConditionalGeneration(tiny_config(fusion_null_slot=True, fusion_qk_norm=qk_norm)).eval()
    pixels, ids = torch.randn(2, 1, 32, 32), torch.randint(3, 60, (2, 7))
    maps = cross_attention_maps(model, pixels, ids)
    assert maps.shape == (2, 7, 2, 2)  # patches only
    assert float(maps.sum(dim=(2, 3)).max()) < 1.0 - 1e-3  # the null slot's share (> 0) is not in the map
    cross = model.cross_attention_layers()[0]
    tokens, _, _ = model.model.encode_image(pixels)
    kv = cross.image_keys_values(tokens)
    x = torch.randn(2, 7, tokens.shape[-1])
    weights = cross.attention_weights(x, kv, with_null=True)  # (B, heads, T, N + 1)
    by_hand = (weights @ kv[1]).transpose(1, 2).reshape(2, 7, -1)
    assert torch.allclose(cross.proj(by_hand), cross(x, kv), atol=1e-5)
    relevance = cross_attention_relevance(model, pixels[:1], ids[:1], [[2]])
    assert relevance.shape == (1, 2, 2)


def test_gradient_weighted_attention_follows_the_gradient():
    torch.manual_seed(0)
    model = MedVLMForConditionalGeneration(tiny_config()).eval()
    pixels, ids = torch.randn(1, 1, 32, 32), torch.randint(3, 60, (1, 6))
    relevance = cross_attention_relevance(model, pixels, ids, [[2], [3, 4]], heads=[0, 1])
    assert relevance.shape == (2, 2, 2) and float(relevance.min()) >= 0 and float(relevance.sum()) > 0
    with torch.no_grad():  # the explicit-attention hooks are gone: SDPA path unchanged
        assert torch.isfinite(model(input_ids=ids, pixel_values=pixels).logits).all()
    for cross in model.cross_attention_layers():  # the image can no longer change any prediction ...
        torch.nn.init.zeros_(cross.proj.weight)
    assert float(cross_attention_relevance(model, pixels, ids, [[2]]).abs().max()) == 0.0  # ... so nothing is relevant


def test_word_maps_group_pieces_and_use_the_predicting_position(pretrained):  # noqa: F811
    from medvlm.processing import MedVLMProcessor

    processor = MedVLMProcessor.from_pretrained(pretrained)
    ids = processor.texts(["Small left pleural effusion."])["input_ids"][0]
    maps = torch.arange(len(ids), dtype=torch.float32)[:, None, None].expand(-1, 2, 2)  # map t = t
    words = word_maps(processor.tokenizer, ids, maps, start=1)
    assert [w for w, _ in words] == ["small", "left", "pleural", "effusion."]
    # a word's map is the mean over its pieces at positions p of the map of position p - 1
    pieces = processor.tokenizer.convert_ids_to_tokens(ids)[1:-1]  # without <s> and </s>
    starts = [i + 1 for i, piece in enumerate(pieces) if piece.startswith("▁")] + [len(pieces) + 1]
    expected = [np.mean(np.arange(a, b) - 1) for a, b in zip(starts, starts[1:])]
    assert [float(m[0, 0]) for _, m in words] == pytest.approx(expected)
    assert expected[0] == pytest.approx((starts[1] - 2) / 2)  # the first word starts at BOS's prediction


def test_explain_command_writes_overlays(pretrained, tmp_path):  # noqa: F811
    pixels = (np.random.default_rng(0).random((40, 36)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    out = tmp_path / "explain"
    assert main(["explain", str(tmp_path / "a.png"), "--checkpoint", str(pretrained), "--out", str(out),
                 "--layers", "0", "--heads", "0", "1"]) == 0
    assert (out / "a_attention.png").stat().st_size > 1000
    summary = json.loads((out / "a_explain.json").read_text())
    assert summary["layers"] == [0] and summary["heads"] == [0, 1] and isinstance(summary["text"], str)
    assert main(["explain", str(tmp_path / "a.png"), "--checkpoint", str(pretrained), "--out", str(out),
                 "--method", "gradcam", "--target", "small left pleural effusion"]) == 0
    assert (out / "a_gradcam.png").is_file()
    assert main(["explain", str(tmp_path / "a.png"), "--checkpoint", str(pretrained), "--out", str(out),
                 "--question", "is there a pleural effusion?", "--max-words", "3", "--weighting", "gradient"]) == 0
    assert json.loads((out / "a_explain.json").read_text())["weighting"] == "gradient"


def test_localization_scoring_runs_on_synthetic_studies(pretrained):  # noqa: F811
    from medvlm.processing import MedVLMProcessor
    from medvlm.tasks.localization import (attention_localization, synthetic_test_studies,
                                           vlm_gradcam_localization)

    model = MedVLMForConditionalGeneration.from_pretrained(str(pretrained))
    processor = MedVLMProcessor.from_pretrained(pretrained)
    studies = synthetic_test_studies({"num_train": 0, "num_validation": 0, "num_test": 12, "seed": 3}, "test",
                                     processor.image_size, limit=4)
    assert len(studies) == 4 and all(s["meta"] and s["masks"] for s in studies)
    attention = attention_localization(model, processor, studies)
    gradcam = vlm_gradcam_localization(model, processor, studies)
    assert attention["explain_num_maps"] > 0 and 0 <= attention["explain_pointing_game"] <= 1
    assert 0 <= gradcam["explain_gradcam_iou"] <= 1
    assert attention["explain_tolerance_px"] == 2  # 15/224 of 32 px


def test_a_finding_phrase_runs_from_its_first_sentence_start_through_the_name():
    from medvlm.tasks.localization import attention_localization, finding_positions

    words = [("findings:", [1]), ("mild", [2]), ("pulmonary", [3, 4]), ("edema.", [5, 6]),
             ("no", [7]), ("effusion.", [8]), ("impression:", [9]), ("mild", [10]), ("edema.", [11])]
    keywords = ("edema",)
    assert finding_positions(words, keywords, "phrase") == [2, 3, 4, 5, 6]
    assert finding_positions(words, keywords, "keyword") == [5, 6, 11]
    assert finding_positions(words, ("effusion",), "phrase") == [7, 8]
    assert finding_positions([("edema", [1]), ("here", [2])], keywords, "phrase") == [1]  # first word
    assert finding_positions(words, ("nodule",), "phrase") == []
    with pytest.raises(ValueError, match="rows must be one of"):
        attention_localization(None, None, [], rows="sentence")

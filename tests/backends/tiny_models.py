"""Tiny random-weight models of each foundation-model architecture, saved like the real ones.

No package carries CLIPSeg, SAM 3, Grounding DINO or SAM weights, and the tests have no
network, so each builder makes a small model from the architecture's transformers config,
with a small tokenizer of the same class as the real one and the real image processor's
configuration (at a small image size), and saves them with ``save_pretrained`` (safetensors).
The folders are then loaded through the same public path a user takes (``get_model``).

The tiny models keep the cost structure of the real ones: the vision encoder is the heaviest
part, the per-prompt heads light (benchmarks/backends.py measures prompt scaling on them).
Used by tests/backends and benchmarks/backends.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

#: Image size of the tiny models (the real ones use 352, 1008, 800 and 1024). Grounding DINO
#: needs 96 so that its coarsest feature level (input / 64) is still 2 x 2.
CLIPSEG_SIZE = 64
SAM3_SIZE = 112
DINO_SIZE = 96
SAM_SIZE = 64

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _bytes_to_unicode() -> dict[int, str]:
    """The byte -> printable character table of CLIP's byte-level BPE."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def clip_tokenizer(max_length: int):
    """A CLIP BPE tokenizer with single-character tokens only (514 entries, no merges)."""
    from transformers import CLIPTokenizer

    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _clip_text_config(tokenizer, hidden: int, max_length: int) -> dict:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "max_position_embeddings": max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def build_clipseg(folder: Path, seed: int = 0) -> Path:
    """A tiny CLIPSegForImageSegmentation + CLIPSegProcessor (ViT image processor)."""
    from transformers import (
        CLIPSegConfig,
        CLIPSegForImageSegmentation,
        CLIPSegProcessor,
        ViTImageProcessorPil,
    )

    tokenizer = clip_tokenizer(77)
    config = CLIPSegConfig(
        text_config=_clip_text_config(tokenizer, 32, 77),
        vision_config={
            "hidden_size": 96,
            "intermediate_size": 384,
            "num_hidden_layers": 6,
            "num_attention_heads": 4,
            "image_size": CLIPSEG_SIZE,
            "patch_size": 8,
        },
        projection_dim=16,
        extract_layers=[1, 3, 5],  # the real model reads layers 3, 6 and 9 of 12
        reduce_dim=8,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=16,
    )
    torch.manual_seed(seed)
    model = CLIPSegForImageSegmentation(config).eval()
    image_processor = ViTImageProcessorPil(
        size={"height": CLIPSEG_SIZE, "width": CLIPSEG_SIZE},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
    )
    model.save_pretrained(folder)
    CLIPSegProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def sam3_config():
    """Tiny Sam3Config: a 6-layer ViT backbone, one-layer DETR encoder/decoder, 8 queries."""
    from transformers import Sam3Config

    tokenizer = clip_tokenizer(32)
    grid = SAM3_SIZE // 14
    return Sam3Config(
        vision_config={
            "backbone_config": {
                "model_type": "sam3_vit_model",
                "hidden_size": 96,
                "intermediate_size": 384,
                "num_hidden_layers": 6,
                "num_attention_heads": 4,
                "image_size": SAM3_SIZE,
                "patch_size": 14,
                "window_size": 4,
                "global_attn_indexes": [2, 5],
                "pretrain_image_size": SAM3_SIZE,
            },
            "fpn_hidden_size": 16,
            "backbone_feature_sizes": [[4 * grid] * 2, [2 * grid] * 2, [grid] * 2],
        },
        text_config=_clip_text_config(tokenizer, 16, 32),
        geometry_encoder_config={
            "hidden_size": 16,
            "num_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
        detr_encoder_config={
            "hidden_size": 16,
            "num_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        },
        detr_decoder_config={
            "hidden_size": 16,
            "num_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "num_queries": 8,
        },
        mask_decoder_config={"hidden_size": 16, "num_attention_heads": 2},
    ), tokenizer


def sam3_preprocessor_config() -> dict:
    """preprocessor_config.json as facebook/sam3 has it, at the tiny image size."""
    return {
        "image_processor_type": "Sam3ImageProcessor",
        "processor_class": "Sam3Processor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 2,
        "rescale_factor": 1 / 255,
        "size": {"height": SAM3_SIZE, "width": SAM3_SIZE},
        "mask_size": {"height": SAM3_SIZE // 14 * 4, "width": SAM3_SIZE // 14 * 4},
    }


def build_sam3(folder: Path, seed: int = 0) -> Path:
    """A tiny Sam3Model with its CLIP tokenizer and image processor configuration.

    ``Sam3Processor`` needs torchvision to be constructed, so the tokenizer is saved on its
    own and preprocessor_config.json is written as the Hub repository has it.
    """
    from transformers import Sam3Model

    config, tokenizer = sam3_config()
    torch.manual_seed(seed)
    Sam3Model(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_json(folder / "preprocessor_config.json", sam3_preprocessor_config())
    return folder


def bert_tokenizer():
    """A BERT WordPiece tokenizer with the special-token ids of bert-base-uncased.

    Grounding DINO hard-codes the ids of ``[CLS]`` (101), ``[SEP]`` (102), ``.`` (1012) and
    ``?`` (1029) to keep phrases of a caption apart, so the tiny vocabulary puts them there too.
    Letters and ``##`` letter pieces cover every lowercase word.
    """
    from transformers import BertTokenizer

    vocab = {f"[unused{i}]": i for i in range(1030)}
    special = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
    special.update({".": 1012, "?": 1029})
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["cell", "nuclei", "water", "bone", "car", *letters, *(f"##{c}" for c in letters)]
    free = [i for i in range(1, 1030) if i not in special.values()]
    vocab = {f"[unused{i}]": i for i in free[len(words) :]}
    vocab.update(special)
    vocab.update(zip(words, free, strict=False))
    vocab = dict(sorted(vocab.items(), key=lambda kv: kv[1]))
    return BertTokenizer(vocab=vocab)


def build_grounding_dino(folder: Path, seed: int = 0) -> Path:
    """A tiny GroundingDinoForObjectDetection (Swin backbone, BERT text) + its processor."""
    from transformers import (
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessorPil,
        GroundingDinoProcessor,
    )

    tokenizer = bert_tokenizer()
    config = GroundingDinoConfig(
        backbone_config={
            "model_type": "swin",
            "embed_dim": 32,
            "depths": [2, 2, 2, 1],
            "num_heads": [2, 2, 4, 4],
            "window_size": 3,
            "image_size": DINO_SIZE,
            "out_indices": [2, 3, 4],
            "out_features": ["stage2", "stage3", "stage4"],
        },
        text_config={
            "model_type": "bert",
            "vocab_size": len(tokenizer),
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "max_position_embeddings": 64,
        },
        d_model=32,
        encoder_layers=1,
        decoder_layers=2,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        num_queries=12,
        max_text_len=64,
        encoder_n_points=2,
        decoder_n_points=2,
    )
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config).eval()
    image_processor = GroundingDinoImageProcessorPil(
        size={"shortest_edge": DINO_SIZE, "longest_edge": DINO_SIZE * 5 // 3}
    )
    model.save_pretrained(folder)
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(
        folder
    )
    return folder


def build_sam(folder: Path, seed: int = 0) -> Path:
    """A tiny SamModel (4-layer ViT image encoder) + SamProcessor."""
    from transformers import SamConfig, SamImageProcessorPil, SamModel, SamProcessor

    patch = 8
    config = SamConfig(
        vision_config={
            "hidden_size": 64,
            "output_channels": 16,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "image_size": SAM_SIZE,
            "patch_size": patch,
            "mlp_dim": 256,
            "window_size": 4,
            "global_attn_indexes": [3],
            "num_pos_feats": 8,
        },
        prompt_encoder_config={
            "hidden_size": 16,
            "image_size": SAM_SIZE,
            "patch_size": patch,
            "image_embedding_size": SAM_SIZE // patch,
            "mask_input_channels": 4,
        },
        mask_decoder_config={
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "mlp_dim": 16,
            "iou_head_hidden_dim": 16,
        },
    )
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    image_processor = SamImageProcessorPil(
        size={"longest_edge": SAM_SIZE},
        pad_size={"height": SAM_SIZE, "width": SAM_SIZE},
        mask_size={"longest_edge": SAM_SIZE // patch * 4},
    )
    model.save_pretrained(folder)
    SamProcessor(image_processor=image_processor).save_pretrained(folder)
    return folder


def build_grounded_sam(folder: Path, seed: int = 0) -> Path:
    """A grounded-sam folder: ``detector/`` and ``segmenter/`` plus the config.json naming them."""
    from napari_llmseg.backends.grounded_sam import write_folder

    build_grounding_dino(folder / "detector", seed)
    build_sam(folder / "segmenter", seed)
    return write_folder(folder, "detector", "segmenter")

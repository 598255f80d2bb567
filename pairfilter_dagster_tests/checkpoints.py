"""Randomly initialised CLIP checkpoints, written exactly as a hub checkpoint is laid out (config, safetensors
weights, preprocessor config), so tests and benchmarks load them through the same `from_pretrained` path that users
take with a hub id. There is no model hub on the build machines."""

from pathlib import Path


def write_clip_checkpoint(
    folder: Path, *, size: str = "tiny", projection_dim: int = 24, image_size: int = 32, seed: int = 0
) -> Path:
    """`size="tiny"`: a two-layer model that loads and runs in well under a second (tests).
    `size="vit-b-32"`: the full ViT-B/32 architecture of openai/clip-vit-base-patch32 (same FLOPs; benchmarks)."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    if size == "vit-b-32":
        config, processor = CLIPConfig(), CLIPImageProcessor()  # the defaults are ViT-B/32 at 224 px
    elif size == "tiny":
        config = CLIPConfig(
            text_config=dict(
                hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=99, max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1,
            ),
            vision_config=dict(
                hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                image_size=image_size, patch_size=8,
            ),
            projection_dim=projection_dim,
        )
        processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    else:
        raise ValueError(f"size: 'tiny' or 'vit-b-32', got {size!r}")
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)


def write_vit_checkpoint(folder: Path) -> Path:
    """A tiny real image model that is not CLIP (a plain ViT), saved with save_pretrained."""
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=37,
                       image_size=32, patch_size=8)).save_pretrained(folder)
    return folder

"""Random-weight SD-1.5-size pipeline for whole-image memory and speed measurements (issue 20).

Builds diffusers' SD-1.5 components with random weights (torch.manual_seed(0), then in this order):
UNet2DConditionModel (block_out_channels 320/640/1280/1280, cross_attention_dim 768, attention_head_dim 8),
the SD AutoencoderKL (128/256/512/512, 4 latent channels, scaling_factor 0.18215) and a ViT-L/14 CLIPTextModel
(12 layers, width 768, quick_gelu, 49408 tokens), plus the SD-1.5 PNDM scheduler config and a CLIPTokenizer with
OpenAI's CLIP vocabulary (open-clip-torch's bpe_simple_vocab_16e6.txt.gz, or the copy in
Sources/Tokenizers/Resources when open_clip is not installed). No safety checker. Saved as a diffusers folder
(safetensors) in float32 and, if a second folder is given, the same weights cast to float16.

The folders are several GB (float32 about 4.3 GB, float16 about 2.1 GB), so write them outside the repository, then
convert each to a single file:

    /path/to/venv/bin/python tools/bench/sd15_random_pipeline.py /tmp/sd15-f32 /tmp/sd15-f16
    ldm convert /tmp/sd15-f32 /tmp/sd15-f32.safetensors
    ldm convert /tmp/sd15-f16 /tmp/sd15-f16.safetensors

Images from these models are noise; they are for peak RSS and seconds per step only (docs/benchmarks.md, issue 20).
"""
import gzip
import importlib.util
import json
import os
import sys

import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode  # GPT-2 / CLIP byte table
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))


def bpe_file():
    spec = importlib.util.find_spec("open_clip")  # located without importing (open_clip imports torchvision)
    if spec is not None and spec.submodule_search_locations:
        path = os.path.join(list(spec.submodule_search_locations)[0], "bpe_simple_vocab_16e6.txt.gz")
        if os.path.exists(path):
            return path
    return os.path.join(HERE, "..", "..", "Sources", "Tokenizers", "Resources", "bpe_simple_vocab_16e6.txt.gz")


def write_tokenizer(folder):
    """OpenAI CLIP's vocabulary as open_clip's SimpleTokenizer builds it: 256 bytes, the same with </w>, 48894 merges,
    <|startoftext|> and <|endoftext|> (49408 tokens), written as a transformers CLIPTokenizer folder."""
    with gzip.open(bpe_file()) as f:
        lines = f.read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(os.path.join(folder, "vocab.json"), os.path.join(folder, "merges.txt"), model_max_length=77,
                         pad_token="<|endoftext|>")


def build(tokdir):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=64, in_channels=4, out_channels=4, cross_attention_dim=768,
                                attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                        layers_per_block=2, sample_size=512, scaling_factor=0.18215)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                                num_hidden_layers=12, num_attention_heads=12,
                                                max_position_embeddings=77, hidden_act="quick_gelu",
                                                projection_dim=768, bos_token_id=49406, eos_token_id=49407,
                                                pad_token_id=1))
    scheduler = PNDMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule="scaled_linear", skip_prk_steps=True, set_alpha_to_one=False,
                              steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=write_tokenizer(tokdir), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    f32_out = sys.argv[1]
    pipe = build(os.path.join(f32_out, "tokenizer"))
    for p in (pipe.unet, pipe.vae, pipe.text_encoder):
        p.eval()
    pipe.save_pretrained(f32_out, safe_serialization=True)
    print(f"{f32_out}: float32, unet {sum(p.numel() for p in pipe.unet.parameters())} parameters")
    if len(sys.argv) == 3:
        pipe.to(torch.float16)
        pipe.save_pretrained(sys.argv[2], safe_serialization=True)
        print(f"{sys.argv[2]}: float16")


if __name__ == "__main__":
    main()

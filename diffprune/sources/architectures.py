"""The built-in architecture tables: UNets (``arch:NAME``), their pipelines' noise schedules, VAEs, VQ
autoencoders and text encoders, and the models shipped in the package (``builtin:NAME``).

Pure data (no imports), so anything may read it: the source resolver, the builders in unet.py / vae.py /
text.py, the CLI's help. Built-in architectures are built from config with seeded random weights: the
CIFAR-10 DDPM one is the paper's model, ``sd15``/``sd21-base``/``sdxl`` are the Stable Diffusion UNets at
real size (for structure and MACs; nothing is downloaded), the tiny ones keep the test suite fast (as timm
registers tiny test models). An entry without ``_class_name`` is a ``UNet2DModel``.
"""

# google/ddpm-cifar10-32, the model of the paper's CIFAR-10 experiments (35.7M params, 6.1G MACs).
DDPM_CIFAR10_32 = dict(
    sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    norm_eps=1e-6, norm_num_groups=32, act_fn="silu", center_input_sample=False,
    mid_block_scale_factor=1, time_embedding_type="positional",
)


ARCHITECTURES = {
    "ddpm-cifar10-32": DDPM_CIFAR10_32,
    # A pixel UNet without attention: two resolutions, GroupNorm of 8 groups.
    "tiny": dict(
        sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8,
    ),
    # The shipped reference model's architecture: 28x28 digits, 1.1M params, attention at 7x7.
    # Sized to train on a 2-core CPU (about 2 steps/s at batch 32); see the model card.
    "digits": dict(
        sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=16,
    ),
    # Multi-head attention (64 channels / head dim 16 = 4 heads) in the low-resolution blocks.
    "tiny-attn": dict(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=16,
    ),
    # "tiny" with a class embedding: 10 classes (the digits), labels added to the time embedding.
    "tiny-class": dict(
        sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, num_class_embeds=10,
    ),
    # A text-conditioned digits model (Evidence 2 of the conditional-models work; shipped as
    # builtin:digits-text): "digits" with cross-attention to a tiny frozen CLIP text encoder (32 wide),
    # at 14x14 and 7x7; 2 heads (attention_head_dim counts heads in UNet2DConditionModel configs).
    "digits-text": dict(
        _class_name="UNet2DConditionModel", sample_size=28, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(32, 64, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=2, norm_num_groups=8,
    ),
    # SD-1.x-like: 4 latent channels, self- and cross-attention with GEGLU feed-forward (SD's
    # BasicTransformerBlock), conv proj_in/proj_out. attention_head_dim is the head COUNT in SD's
    # configs (a diffusers naming quirk kept for compatibility): 2 heads of 16 and of 32 channels.
    "tiny-sd": dict(
        _class_name="UNet2DConditionModel", sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=24, attention_head_dim=2,
        norm_num_groups=8,
    ),
    # SDXL-like (the layout of diffusers' own SDXL test UNet, widened to GroupNorm's 8 groups): text_time
    # added conditioning (pooled text 32 + 6 time ids x 8), linear proj_in/proj_out, 2 transformer layers.
    "tiny-sdxl": dict(
        _class_name="UNet2DConditionModel", sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80, cross_attention_dim=32, norm_num_groups=8,
    ),
    # runwayml/stable-diffusion-v1-5 unet/config.json (859.5M params); CLIP ViT-L/14 text, 768 wide.
    # CompVis/ldm-celebahq-256: the latent DDPM the public Diff-Pruning code prunes (ldm_prune.py), a pixel-style
    # UNet2DModel over the 64x64x3 latents of a VQ autoencoder (f=4).
    "ldm-celebahq-256": dict(
        sample_size=64, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(224, 448, 672, 896),
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), attention_head_dim=32,
    ),
    "sd15": dict(
        _class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
        downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, center_input_sample=False,
        mid_block_scale_factor=1,
    ),
    # stabilityai/stable-diffusion-2-1-base unet/config.json (865.9M params); OpenCLIP ViT-H text,
    # 1024 wide; 64-channel heads (5, 10, 20, 20 of them), linear proj_in/proj_out.
    "sd21-base": dict(
        _class_name="UNet2DConditionModel", sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
        norm_num_groups=32, norm_eps=1e-5, act_fn="silu", downsample_padding=1, flip_sin_to_cos=True,
        freq_shift=0, center_input_sample=False, mid_block_scale_factor=1, upcast_attention=False,
    ),
    # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (2.57B params): 128x128 latents,
    # both text encoders' hidden states concatenated (768 + 1280 = 2048), pooled OpenCLIP-G text (1280)
    # + 6 time ids x 256 = 2816 into add_embedding, 1/2/10 transformer layers per resolution.
    "sdxl": dict(
        _class_name="UNet2DConditionModel", sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        addition_embed_type_num_heads=64, projection_class_embeddings_input_dim=2816, norm_num_groups=32,
        norm_eps=1e-5, act_fn="silu", downsample_padding=1, flip_sin_to_cos=True, freq_shift=0,
        center_input_sample=False, mid_block_scale_factor=1, upcast_attention=False,
    ),
}


# Models shipped in the package (diffprune/assets/NAME, each with a model card): the pixel digits DDPM and
# the text-conditioned digits pipeline (a pipeline folder: unet/, text_encoder/, tokenizer/, scheduler/).
BUILTIN_MODELS = ("builtin:digits-ddpm", "builtin:digits-text")


# Noise schedules of the built-in architectures' pipelines (arch: sources carry no scheduler folder;
# load_source gives them, so pruning, fine-tuning and export of arch:sd15 all use SD's). SD 1.x/2.x
# ship PNDM with these betas; DDIM with the same betas and offset is the runtime's equivalent (diffusers'
# DDIMScheduler.from_config(pipe.scheduler.config)). SDXL ships EulerDiscreteScheduler.
_SD_BETAS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 prediction_type="epsilon", steps_offset=1, timestep_spacing="leading")


SD_SCHEDULER = {"_class_name": "DDIMScheduler", **_SD_BETAS, "clip_sample": False, "set_alpha_to_one": False}


SDXL_SCHEDULER = {"_class_name": "EulerDiscreteScheduler", **_SD_BETAS, "interpolation_type": "linear",
                  "use_karras_sigmas": False}


ARCH_SCHEDULERS = {"sd15": SD_SCHEDULER, "sd21-base": SD_SCHEDULER, "tiny-sd": SD_SCHEDULER,
                   "sdxl": SDXL_SCHEDULER, "tiny-sdxl": SDXL_SCHEDULER}


# The denoising schedule of the paper's DDPM models; used when a source carries no scheduler config.
DEFAULT_SCHEDULER = {
    "_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_start": 0.0001,
    "beta_end": 0.02, "beta_schedule": "linear", "prediction_type": "epsilon",
    "clip_sample": True, "variance_type": "fixed_large",
}


_SD_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu",
)


VAES = {
    "sd": dict(_SD_VAE, sample_size=512, scaling_factor=0.18215),  # runwayml/stable-diffusion-v1-5 vae/
    "sdxl": dict(_SD_VAE, sample_size=1024, scaling_factor=0.13025),  # stable-diffusion-xl-base-1.0 vae/
    # 2 resolutions: factor 2, so tiny-sd's 16x16 latents are 32x32 images.
    "tiny": dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=(8, 16),
                 down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                 norm_num_groups=8, sample_size=32, scaling_factor=0.18215),
}


VAE_SETUPS = {"sd15": "sd", "sd21-base": "sd", "sdxl": "sdxl", "tiny-sd": "tiny", "tiny-sdxl": "tiny"}


# VQ autoencoders of latent DDPMs (diffusers' LDMPipeline: vqvae/). The tiny one is for tests: factor 2,
# 3 latent channels (as CompVis/ldm-celebahq-256's VQ-f4 has), a codebook of 16.
VQS = {
    "tiny": dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                 latent_channels=3, num_vq_embeddings=16, vq_embed_dim=3, norm_num_groups=8, sample_size=32),
}


# transformers.CLIPTextConfig keywords. vocab 49,408 and 77 positions are CLIP's for every entry.
TEXT_ENCODERS = {
    # openai/clip-vit-large-patch14's text tower (runwayml/stable-diffusion-v1-5 text_encoder/)
    "clip-vit-l-14": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                          hidden_act="quick_gelu", projection_dim=768),
    # OpenCLIP ViT-H/14 text (width 1024, 16 heads, MLP 4096, 24 layers) cut to 23, as in
    # stabilityai/stable-diffusion-2-1-base text_encoder/ (diffusers' converter drops resblocks.23)
    "openclip-vit-h-14-penultimate": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                                          num_attention_heads=16, hidden_act="gelu", projection_dim=1024),
    # OpenCLIP ViT-bigG/14 text with its projection (stable-diffusion-xl-base-1.0 text_encoder_2/)
    "openclip-vit-bigg-14": dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                 num_attention_heads=20, hidden_act="gelu", projection_dim=1280),
    # Tiny test encoders: 2 layers, 2 heads; widths that fit tiny-sd (24) and tiny-sdxl (16 + 16, pooled 32).
    "tiny-clip-24": dict(hidden_size=24, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                         hidden_act="quick_gelu", projection_dim=24),
    "tiny-clip-16": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                         hidden_act="quick_gelu", projection_dim=16),
    # The digits-text model's encoder: tiny (2 layers, 32 wide) but real CLIP tokens; 1.6M of its 1.6M
    # parameters are the 49,408-token embedding. Random and frozen, so its initialisation is its meaning: at
    # CLIP's scale (factor 1) near-uniform attention averages each padding position over ~70 alike tokens,
    # the prompts for two digits differ there by 4 % of the states' norm, and a UNet trained 2,000 steps on it
    # followed the prompt in 13 % of samples (chance: 10 %); at factor 10 they differ by 37 % at every position.
    "clip-digits-32": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           hidden_act="quick_gelu", projection_dim=32, initializer_factor=10.0),
    "tiny-clip-16-proj32": dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                hidden_act="gelu", projection_dim=32),
}


# Built-in UNet architecture -> its pipeline's text encoders and the hidden layer each gives.
# ("last": last_hidden_state; "penultimate": hidden_states[-2], SDXL's choice.) The last encoder of an
# SDXL setup also gives the pooled text_embeds, so it is a CLIPTextModelWithProjection.
TEXT_SETUPS = {
    "sd15": (("clip-vit-l-14",), "last"),
    "sd21-base": (("openclip-vit-h-14-penultimate",), "last"),
    "sdxl": (("clip-vit-l-14", "openclip-vit-bigg-14"), "penultimate"),
    "digits-text": (("clip-digits-32",), "last"),
    "tiny-sd": (("tiny-clip-24",), "last"),
    "tiny-sdxl": (("tiny-clip-16", "tiny-clip-16-proj32"), "penultimate"),
}

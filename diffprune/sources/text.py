"""Frozen text encoders of text-conditioned UNets: prompts -> the UNet's ``encoder_hidden_states`` (and
SDXL's pooled ``text_embeds``), computed once.

What each Stable Diffusion pipeline feeds its UNet (diffusers' ``encode_prompt``), and so this:

    SD 1.x   CLIP ViT-L/14 text (768 wide, 12 layers)          last_hidden_state (after the final LayerNorm)
    SD 2.x   OpenCLIP ViT-H/14 text without its last layer      last_hidden_state of the 23 layers kept
             (1024 wide, 23 of 24 layers: SD 2 reads the penultimate layer; diffusers ships it cut)
    SDXL     CLIP ViT-L/14 and OpenCLIP ViT-bigG/14 (1280)      hidden_states[-2] of each, concatenated
                                                                (768 + 1280 = 2048); text_embeds = bigG's
                                                                projected pooled output (1280)

Built-in encoders (``TEXT_ENCODERS`` in architectures.py) are ``transformers.CLIPTextModel`` configs with seeded random
weights: the real sizes (parameter counts pinned in tests/test_text.py: 123.1M, 340.4M, 694.7M) for
structure, and tiny ones for tests. Tokenization is CLIP's, torch-free (diffprune.runtime.text).
A pipeline folder's ``text_encoder/`` (+ ``text_encoder_2/``) and ``tokenizer/`` (+ ``tokenizer_2/``)
are used when present.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DiffPruneError
from .architectures import TEXT_ENCODERS, TEXT_SETUPS


def build_text_model(name: str, seed: int = 0, with_projection: bool = False):
    """A built-in CLIP text encoder with seeded random weights, frozen."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if name not in TEXT_ENCODERS:
        raise DiffPruneError(f"Unknown built-in text encoder {name!r}. Known: {', '.join(sorted(TEXT_ENCODERS))}.")
    config = CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, **TEXT_ENCODERS[name])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (CLIPTextModelWithProjection if with_projection else CLIPTextModel)(config)
    return model.eval().requires_grad_(False)


@dataclass
class Encoded:
    """The UNet's text inputs for a batch of prompts."""

    encoder_hidden_states: "object"  # (B, L, D), L the tokenizer's max_length (CLIP: 77)
    text_embeds: "object" = None  # (B, P), SDXL's pooled text
    truncated: list = field(default_factory=list)  # prompts cut to the tokenizer's max_length


class TextEncoder:
    """Frozen tokenizer(s) + CLIP text model(s) of a pipeline, giving what its UNet reads.

    ``parts`` is a list of ``(ClipTokenizer, CLIPTextModel)``; ``layer`` "last" or "penultimate";
    with ``pooled`` the last part's projected pooled output is SDXL's ``text_embeds``.
    """

    def __init__(self, parts: list, layer: str = "last", pooled: bool = False, source: str = ""):
        if layer not in ("last", "penultimate"):
            raise DiffPruneError(f"layer {layer!r} is unknown; allowed: last, penultimate.")
        self.parts = parts
        self.layer = layer
        self.pooled = pooled
        self.source = source
        for _, model in parts:
            model.eval().requires_grad_(False)

    @property
    def width(self) -> int:
        return sum(model.config.hidden_size for _, model in self.parts)

    @property
    def pooled_width(self) -> int | None:
        return self.parts[-1][1].config.projection_dim if self.pooled else None

    @property
    def max_length(self) -> int:
        """The tokens every prompt is padded to: the tokenizers' ``model_max_length`` (CLIP's 77 unless the
        pipeline's tokenizer says otherwise), and so the length of the UNet's ``encoder_hidden_states``."""
        lengths = {tokenizer.max_length for tokenizer, _ in self.parts}
        if len(lengths) != 1:
            raise DiffPruneError(f"The tokenizers of {self.source or 'the pipeline'} pad to different lengths "
                                 f"({sorted(lengths)}); their hidden states are concatenated token by token, so they "
                                 "must agree. Set the same model_max_length in each tokenizer_config.json.")
        return lengths.pop()

    def check_positions(self) -> None:
        """Every tokenizer pads to no more tokens than its text encoder has positions for."""
        for i, (tokenizer, model) in enumerate(self.parts):
            positions = model.config.max_position_embeddings
            if tokenizer.max_length > positions:
                name = "tokenizer" + (f"_{i + 1}" if i else "")
                raise DiffPruneError(
                    f"The {name} of {self.source or 'the pipeline'} pads every prompt to {tokenizer.max_length} tokens "
                    f"(model_max_length), but its text encoder has positions for {positions} only "
                    "(max_position_embeddings); the encoder would fail on every prompt. Set model_max_length to "
                    f"{positions} or less in {name}/tokenizer_config.json, or use the text encoder the tokenizer "
                    "belongs to.")

    def check_fits(self, cond) -> None:
        """The UNet's cross-attention and pooled input widths equal what this encoder gives."""
        if cond.text_width != self.width or (cond.pooled_width or None) != self.pooled_width:
            raise DiffPruneError(
                f"The text encoder ({self.source or 'given'}) gives {self.width}-wide hidden states"
                f"{f' and {self.pooled_width}-wide pooled text' if self.pooled else ''}, but the UNet reads "
                f"{cond.text_width}-wide encoder_hidden_states{f' and {cond.pooled_width}-wide text_embeds' if cond.pooled_width else ''}. "
                "Use the text encoder of the UNet's own pipeline.")

    def __call__(self, prompts, device="cpu", batch: int = 64) -> Encoded:
        """Encode ``prompts`` (a list of str) once, in batches of ``batch``, without gradient."""
        import torch

        prompts = list(prompts)
        hidden, pooled, truncated = [], [], set()
        with torch.no_grad():
            for start in range(0, len(prompts), batch):
                chunk = prompts[start:start + batch]
                states = []
                for tokenizer, model in self.parts:
                    tokens = tokenizer(chunk)
                    truncated.update(start + i for i in tokens.truncated)
                    model.to(device)
                    out = model(torch.from_numpy(tokens.ids).to(device), output_hidden_states=self.layer == "penultimate")
                    states.append(out.last_hidden_state if self.layer == "last" else out.hidden_states[-2])  # (B, L, d)
                hidden.append(torch.cat(states, dim=-1).float())  # (B, L, D): SDXL concatenates along the width
                if self.pooled:
                    pooled.append(out.text_embeds.float())  # (B, P)
        return Encoded(encoder_hidden_states=torch.cat(hidden), text_embeds=torch.cat(pooled) if pooled else None,
                       truncated=sorted(truncated))


def build_text_encoder(arch: str, seed: int = 0) -> "TextEncoder | None":
    """The text encoder of a built-in architecture's pipeline (seeded random weights), or None."""
    from ..runtime.text import ClipTokenizer

    if arch not in TEXT_SETUPS:
        return None
    names, layer = TEXT_SETUPS[arch]
    pooled = layer == "penultimate"  # SDXL
    tokenizer = ClipTokenizer()
    parts = [(tokenizer, build_text_model(n, seed + i, with_projection=pooled and i == len(names) - 1))
             for i, n in enumerate(names)]
    return TextEncoder(parts, layer=layer, pooled=pooled, source=f"arch:{arch} ({' + '.join(names)}, random weights)")


def load_text_encoder(folder) -> TextEncoder:
    """A pipeline folder's text_encoder/ + tokenizer/ (SDXL: also text_encoder_2/ + tokenizer_2/)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from .._io import quiet_library_bars
    from .folders import _read_json, pipeline_component
    from ..runtime.text import ClipTokenizer

    quiet_library_bars()

    folder = Path(folder)
    parts = []
    names = ["text_encoder", "text_encoder_2"] if (folder / "text_encoder_2").is_dir() else ["text_encoder"]
    for i, name in enumerate(names):
        encoder_dir = pipeline_component(folder, name)
        tokenizer_dir = pipeline_component(folder, name.replace("text_encoder", "tokenizer"))
        config = _read_json(encoder_dir / "config.json")
        cls = CLIPTextModelWithProjection if "CLIPTextModelWithProjection" in config.get("architectures", []) else CLIPTextModel
        try:
            model = cls.from_pretrained(str(encoder_dir))
        except (OSError, ValueError, RuntimeError) as e:
            raise DiffPruneError(f"Could not load the text encoder in {str(encoder_dir)!r}: {e}. Check that its "
                                 "weights file is complete and matches config.json.") from None
        parts.append((ClipTokenizer.from_folder(tokenizer_dir), model))
    sdxl = len(parts) == 2
    return TextEncoder(parts, layer="penultimate" if sdxl else "last", pooled=sdxl, source=str(folder))


def read_prompts(path) -> list:
    """One prompt per line of a text file; blank lines are skipped. An empty file is an error."""
    path = Path(path)
    if not path.is_file():
        raise DiffPruneError(f"Prompts file {str(path)!r} does not exist; give a text file with one prompt per line.")
    try:
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError as e:
        raise DiffPruneError(f"Prompts file {str(path)!r} is not UTF-8 text ({e}).") from None
    if not prompts:
        raise DiffPruneError(f"Prompts file {str(path)!r} holds no prompts; write one prompt per line "
                             "(e.g. 'a photo of a cat').")
    return prompts

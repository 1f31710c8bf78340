"""Where models come from (the first room of the flow: sources -> pruning -> training -> evaluation/selection).

    resolve.py        what a source is (arch:, builtin:, folders, pipelines, hub ids), decided once
    loader.py         loading it: the UNet and its schedule, pipeline components on demand, hub downloads
    architectures.py  the built-in tables (UNets, schedules, VAEs, text encoders, shipped models)
    folders.py        reading model folders (JSON, pipeline components, builtin: paths)
    unet.py           UNet classes, built-in builders, example inputs, MACs
    conditioning.py   what a UNet is conditioned on and the inputs that stand for it
    text.py, vae.py   frozen text encoders and VAE/VQ autoencoders of pipelines
    structure.py      the width manifest of a pruned UNet
    checkpoint.py     the safe pruned-model format (safetensors + pruning.json): save / load

Importing this package imports no torch; the functions that need it import it when called.
"""

from .checkpoint import load, read_info, save
from .loader import FromSource, load_source
from .resolve import Source, pipeline_kind, pipeline_source, resolve
from .unet import build_unet, count_macs_params

__all__ = ["FromSource", "Source", "build_unet", "count_macs_params", "load", "load_source", "pipeline_kind",
           "pipeline_source", "read_info", "resolve", "save"]

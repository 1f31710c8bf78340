"""``POST /v1/images``: the request body, checked field by field before any work is queued.

Every refusal names the field: 400 for a body that is not a JSON object, 413 for a body over the cap,
422 for an unknown field, a wrong type, or a value outside what the model or the server allows. A
valid request becomes a *job*: every default resolved (scheduler, guidance, steps), so requests that can
share UNet calls are the ones with equal :func:`batch_key`.
"""

import json
import math
import time

from diffprune.runtime.schedulers import SCHEDULERS

from .config import ServeConfig

FIELDS = ("prompt", "prompts", "negative_prompt", "n", "steps", "guidance", "scheduler", "seed", "class_label",
          "deadline_s")
MAX_SEED = 2**63 - 1
MAX_GUIDANCE = 100.0


class RequestError(Exception):
    """A refused request: HTTP ``status``, the ``field`` at fault (None for the body as a whole), a message."""

    def __init__(self, status: int, field: str | None, message: str):
        super().__init__(message)
        self.status, self.field, self.message = status, field, message

    def to_dict(self) -> dict:
        return {"error": {"status": self.status, "field": self.field, "message": self.message}}


def model_facts(config: ServeConfig) -> dict:
    """What validation needs to know about the served model, read from its JSON files (no model is loaded):
    ``text`` (takes prompts), ``class_conditional`` and ``num_classes``, the default ``scheduler`` and
    ``guidance``."""
    from diffprune.runtime.artifact import describe
    from diffprune.runtime.formats import TEXT_KINDS, read_pipeline_json, scheduler_name

    if config.kind == "pipeline":
        spec = read_pipeline_json(config.artifact)
        text = spec["kind"] in TEXT_KINDS
        try:
            scheduler = config.scheduler or scheduler_name(spec.get("scheduler") or {})
        except Exception:  # a scheduler the runtime lacks: every request must then name one
            scheduler = None
        return {"kind": spec["kind"], "text": text, "class_conditional": spec["kind"] == "class-conditional",
                "num_classes": spec.get("num_classes"), "scheduler": scheduler,
                "guidance": float((spec.get("guidance") or {}).get("scale", 7.5 if text else 1.0))}
    describe(config.artifact)
    return {"kind": "unet", "text": False, "class_conditional": False, "num_classes": None,
            "scheduler": config.scheduler or "ddim", "guidance": 1.0}


def _int(body, field, lo, hi, default=None):
    value = body.get(field, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(422, field, f"{field} is {value!r} ({type(value).__name__}); it must be a whole number "
                                       f"in {lo}..{hi}.")
    if not lo <= value <= hi:
        raise RequestError(422, field, f"{field} {value} is outside {lo}..{hi}" + (
            " (the server's maximum; `diffprune serve --max-" + field.replace("_", "-") + "` sets it)"
            if field in ("n", "steps") and value > hi else "") + ".")
    return value


def _text(value, field, limit):
    if not isinstance(value, str):
        raise RequestError(422, field, f"{field} must be a string, got {type(value).__name__}.")
    if len(value) > limit:
        raise RequestError(422, field, f"{field} has {len(value)} characters; the server takes at most {limit} "
                                       "(`diffprune serve --max-prompt-chars`).")
    return value


def parse_request(body: bytes, config: ServeConfig, facts: dict, now: float | None = None) -> dict:
    """The job for a request body, or :class:`RequestError`."""
    limits = config.limits
    if len(body) > limits.max_body_bytes:
        raise RequestError(413, None, f"The request body has {len(body)} bytes; the server takes at most "
                                      f"{limits.max_body_bytes} (`diffprune serve --max-body-bytes`).")
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestError(400, None, f"The request body is not valid JSON ({e}); send a JSON object such as "
                                      '{"prompt": "a handwritten digit seven", "seed": 0}.') from None
    if not isinstance(data, dict):
        raise RequestError(400, None, f"The request body is a JSON {type(data).__name__}; send a JSON object with "
                                      f"the fields {', '.join(FIELDS)}.")
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise RequestError(422, unknown[0], f"Unknown field {unknown[0]!r}; allowed: {', '.join(FIELDS)}.")
    # what to generate
    prompts = None
    if "prompt" in data and "prompts" in data:
        raise RequestError(422, "prompts", "Give prompt (one, for all n images) or prompts (one per image), not both.")
    if facts["text"]:
        if "prompts" in data:
            if not isinstance(data["prompts"], list) or not 1 <= len(data["prompts"]) <= limits.max_n:
                raise RequestError(422, "prompts", f"prompts must be a list of 1..{limits.max_n} strings.")
            prompts = [_text(p, "prompts", limits.max_prompt_chars) for p in data["prompts"]]
            n = _int(data, "n", len(prompts), len(prompts), default=len(prompts))
        elif "prompt" in data:
            n = _int(data, "n", 1, limits.max_n, default=1)
            prompts = [_text(data["prompt"], "prompt", limits.max_prompt_chars)] * n
        else:
            raise RequestError(422, "prompt", f"This {facts['kind']} model needs a prompt (\"prompt\": \"...\", or "
                                              "\"prompts\": [...] for one per image).")
    else:
        for field in ("prompt", "prompts", "negative_prompt"):
            if field in data:
                raise RequestError(422, field, f"This {facts['kind']} model takes no {field}; leave it out.")
        n = _int(data, "n", 1, limits.max_n, default=1)
    negatives = None
    if data.get("negative_prompt") is not None:
        neg = data["negative_prompt"]
        if isinstance(neg, list):
            if len(neg) != n:
                raise RequestError(422, "negative_prompt", f"negative_prompt lists {len(neg)} prompts for {n} images; "
                                                           "give one string, or one per image.")
            negatives = [_text(v, "negative_prompt", limits.max_prompt_chars) for v in neg]
        else:
            negatives = [_text(neg, "negative_prompt", limits.max_prompt_chars)] * n
    class_label = None
    if facts["class_conditional"]:
        classes = facts.get("num_classes") or 2**31
        class_label = _int(data, "class_label", 0, classes - 1)
        if class_label is None:
            raise RequestError(422, "class_label", f"This class-conditional model needs a class_label in "
                                                   f"0..{classes - 1}.")
    elif "class_label" in data:
        raise RequestError(422, "class_label", f"This {facts['kind']} model takes no class_label; leave it out.")
    # how
    steps = _int(data, "steps", 1, limits.max_steps, default=config.steps)
    seed = _int(data, "seed", 0, MAX_SEED, default=0)
    scheduler = data.get("scheduler", facts["scheduler"])
    if scheduler not in SCHEDULERS:
        raise RequestError(422, "scheduler", f"scheduler {scheduler!r} is unknown; allowed: {', '.join(SCHEDULERS)}.")
    guidance = data.get("guidance", facts["guidance"])
    if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or not math.isfinite(guidance) \
            or not 0 <= guidance <= MAX_GUIDANCE:
        raise RequestError(422, "guidance", f"guidance is {guidance!r}; it must be a number in 0..{MAX_GUIDANCE:g} "
                                            "(<= 1 turns classifier-free guidance off).")
    if guidance > 1 and not facts["text"]:
        raise RequestError(422, "guidance", f"guidance {guidance} needs a text-conditioned model; this "
                                            f"{facts['kind']} model samples without guidance: leave it out.")
    deadline_s = data.get("deadline_s", limits.timeout_s)
    if not isinstance(deadline_s, (int, float)) or isinstance(deadline_s, bool) or not 0 < deadline_s <= limits.timeout_s:
        raise RequestError(422, "deadline_s", f"deadline_s is {deadline_s!r}; it must be a number of seconds in "
                                              f"(0, {limits.timeout_s:g}] (`diffprune serve --timeout`).")
    now = time.time() if now is None else now
    return {"prompts": prompts, "negatives": negatives, "n": n, "steps": steps, "scheduler": scheduler,
            "guidance": float(guidance), "seed": seed, "class_label": class_label,
            "accepted": now, "deadline": now + float(deadline_s)}


def batch_key(job: dict, stochastic: bool, index: int) -> tuple:
    """Jobs with equal keys share UNet calls. A stochastic scheduler (ddpm, ddim with eta > 0) draws step noise
    from the one seed the runtime takes per call, so such a job runs alone (``index`` keeps it apart) and its
    images stay those it gets served alone. A negative prompt given or left to the pipeline's default is part of
    the key too (SDXL's default is zeros, not the empty prompt, only when every row leaves it)."""
    return (job["steps"], job["scheduler"], job["guidance"], job["negatives"] is None,
            index if stochastic else None)

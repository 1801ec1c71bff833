"""A greedy generation loop over an ONNX decoder with a key/value cache, as runtimes run it.

What onnxruntime-genai-style loops do: allocate an empty cache from the shapes the model
declares (so a pruned model with fewer heads per layer needs nothing but its own file),
run the prompt, then one token at a time, feeding every ``present*`` output back as the
``past*`` input of the same name pattern.
"""

from __future__ import annotations

import re

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from spa_opt.decoder_inputs import complete_feeds
from spa_opt.inputs import model_inputs


def past_name(present: str) -> str:
    """The cache input a ``present*`` output is fed back into."""
    if present.startswith("present."):  # optimum, onnxruntime-genai
        return "past_key_values." + present.removeprefix("present.")
    return re.sub(r"^present", "past", present)  # onnxruntime's GPT-2: present_0 -> past_0


def decode(model: ir.Model, session: ort.InferenceSession, prompt: np.ndarray, steps: int
           ) -> tuple[np.ndarray, list[np.ndarray]]:
    """Greedy decoding of ``steps`` tokens after ``prompt``: all tokens, each step's logits."""
    inputs = model_inputs(model)
    names = [o.name for o in session.get_outputs()]
    feeds = complete_feeds(inputs, {"input_ids": prompt})
    past = 0
    tokens = prompt
    logits_per_step = []
    for _ in range(steps):
        outputs = dict(zip(names, session.run(names, feeds), strict=True))
        logits = outputs["logits"][:, -1]
        logits_per_step.append(logits)
        past += feeds["input_ids"].shape[1]
        token = logits.argmax(-1).astype(prompt.dtype)[:, None]
        tokens = np.concatenate([tokens, token], axis=1)
        cache = {past_name(n): a for n, a in outputs.items() if n.startswith("present")}
        feeds = complete_feeds(inputs, {"input_ids": token, **cache}, past_length=past)
    return tokens, logits_per_step


def full_sequence_logits(model: ir.Model, session: ort.InferenceSession, tokens: np.ndarray
                         ) -> np.ndarray:
    """Logits at every position of ``tokens``, run at once with an empty cache."""
    feeds = complete_feeds(model_inputs(model), {"input_ids": tokens})
    return session.run(["logits"], feeds)[0]

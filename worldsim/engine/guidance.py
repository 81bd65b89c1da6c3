"""Action guidance at play time: ``x0 = u + w (c - u)``.

``c`` is the model's x0 under the player's key, ``u`` its x0 under a *contrast* key, both from the
same noisy frame and the same past frames; ``w > 1`` pushes the frame further in the direction the key moves
it. Students are trained with action dropout, so both are predictions the model was taught to make.

Which contrast decides what gets scaled:

- ``button``: the same key without its button (``UPFIRE`` -> ``UP``, ``FIRE`` -> ``NOOP``) for the
  frames being generated; the past frames in the contrast stream's KV cache keep the keys that
  produced them, so the two predictions differ by the button alone. A key without the button is its
  own contrast: its frame is the plain conditional one. This is the form for Boxing: a few-step
  student draws a punch a little fainter on each of its own frames until the player stops punching,
  while its moves already match the game's, and scaling the whole key would overshoot them.
- ``none``: classifier-free guidance. The contrast stream has no keys at all, past frames included,
  as action dropout trained the model (every key of a clip dropped together); every part of the
  key is scaled.

Action names are ALE's (``NOOP``, ``FIRE``, ``UPRIGHTFIRE``, ...), as every checkpoint records them.
"""

from __future__ import annotations

from typing import Sequence

from worldsim.errors import ConfigError

CONTRASTS = ("button", "none")
BUTTON = "FIRE"


def contrast_table(kind: str, action_meanings: Sequence[str] | None, num_actions: int) -> list[int]:
    """Each action's contrast, indexed 0..num_actions (the last: "no action", its own contrast)."""
    if kind == "none":
        return [num_actions] * (num_actions + 1)
    if kind != "button":
        raise ConfigError(f"engine.guidance_contrast '{kind}' is not one of {', '.join(CONTRASTS)}")
    if action_meanings is None:
        raise ConfigError("engine.guidance_contrast=button needs the model's action meanings (every checkpoint "
                          "records them); pass them to the engine, or set engine.guidance_contrast=none")
    names = [str(m).upper() for m in action_meanings]
    if len(names) != num_actions:
        raise ConfigError(f"the engine got {len(names)} action meanings for a model of {num_actions} actions")
    index = {n: i for i, n in enumerate(names)}
    table = []
    for i, n in enumerate(names):
        bare = n.replace(BUTTON, "") or "NOOP"
        table.append(index.get(bare, i) if BUTTON in n else i)
    if table == list(range(num_actions)):
        raise ConfigError(f"engine.guidance scales what the {BUTTON} button does, but this model's actions have no "
                          f"{BUTTON} ({', '.join(names[:6])}{', ...' if len(names) > 6 else ''}); set "
                          f"engine.guidance=1, or engine.guidance_contrast=none to scale the whole key")
    return table + [num_actions]

"""The network: an action-conditioned diffusion transformer over frame patches.

``WorldDiT`` predicts the clean frame ``x0`` from noisy frames, each with its own noise level and
the action that produced it. One class serves the bidirectional teacher and the block-causal
student; the engine drives it through a KV cache, training through full-sequence masks.
"""

from worldsim.model.dit import ModelConfig, WorldDiT, anchor_frames

__all__ = ["ModelConfig", "WorldDiT", "anchor_frames"]

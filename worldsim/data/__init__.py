"""Game data: one episode format for collection, play recordings, training and evaluation.

- ``episode``: the crash-safe on-disk format (``EpisodeWriter``, ``read_episode``, ``list_episodes``)
  and plain ``.npz`` reading;
- ``npz``: export to / import from the plain ``.npz`` form (docs/episode-format.md); ``preview``: mp4 previews;
- ``dataset``: ``ClipDataset``, random clips at the model's resolution from a resize cache (torch);
- ``frames``: uint8 frames <-> model tensors, and the one resize every frame given to a model goes through;
- ``validate``: every problem of a dataset, one line each; ``collect``: ``worldsim collect``;
  ``cli``: ``worldsim data validate|info|export|preview|import|repair``.

Importing this package does not import torch; ``worldsim.data.dataset`` does.
"""

from worldsim.data.episode import Episode, EpisodeWriter, list_episodes, read_episode, read_meta

__all__ = ["Episode", "EpisodeWriter", "list_episodes", "read_episode", "read_meta"]

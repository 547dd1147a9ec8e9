"""Framework integrations, each imported only when used (``import torchckpt`` imports no framework).

* ``torchckpt.integrations.lightning``: ``TorchckptIO``, a Lightning ``CheckpointIO``.
* ``torchckpt.integrations.transformers``: ``TorchckptCallback`` for the Hugging Face ``Trainer``.
* ``torchckpt.integrations.accelerate``: ``save_state`` / ``load_state`` through folder versions.

See docs/integrations.md.
"""

"""The LightningModules and what builds them: the shared training loop (:mod:`.module`), the
cross-attention teacher (:mod:`.cross_encoder`), the dual-encoder student (:mod:`.dual_encoder`), backbone
resolution and truncation (:mod:`.backbone`), the tokenizing collators (:mod:`.collate`) and the one
checkpoint loader (:mod:`.checkpoints`). Imports losses, retrieval and evaluation helpers, never
``datamodules`` or ``callbacks``."""

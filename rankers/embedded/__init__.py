"""The embedded default, generated offline: a synthetic retrieval dataset
(:mod:`rankers.embedded.dataset`) and the tiny random-init BERT trained on its texts
(:mod:`rankers.embedded.backbone`). A leaf below models and data: it imports only :mod:`rankers.io`.
``datamodules.embedded`` re-exports it under its old path."""

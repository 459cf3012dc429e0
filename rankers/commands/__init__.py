"""The application layer's commands (``python -m rankers COMMAND``): each module parses its arguments,
reads files and drives the lower layers (models, losses, retrieval, evaluation, data). Only this layer,
``rankers.cli``, ``rankers.api`` and the pipeline modules (reproduce, mine, serve) import everything."""

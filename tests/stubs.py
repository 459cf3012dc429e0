"""Stand-ins for driving a RankingDataModule without a Trainer (shared by the data tests)."""
from __future__ import annotations


class StubModel:
    """A rankers model's only duty towards the DataModule: a collator (here: keep raw examples)."""

    def collator(self):
        return lambda examples: examples


class StubTrainer:
    current_epoch = 0
    lightning_module = StubModel()

"""The library's named errors, in one light module so the CLI can catch them without importing torch."""


class DataError(ValueError):
    """A data file that cannot be used at all: missing, unreadable, or lacking a column."""


class TokenizerError(ValueError):
    """A tokenizer that cannot be trained or loaded."""


class ModelError(ValueError):
    """A model that cannot be built or loaded."""


class TrainingError(RuntimeError):
    """Training that cannot produce a trustworthy model (no data, loss went NaN, ...)."""


class StoreError(RuntimeError):
    """The database cannot be opened, written or queried."""


class PathOutsideRoots(ValueError):
    """A path parameter that points outside the directories this installation may touch."""

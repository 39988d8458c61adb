"""Moved: the table reader and `load_tabular` live in `medvlm.data.tables` (the one reader of user
tables). This name stays so that older imports keep working."""

from medvlm.data.tables import FORMATS, load_tabular  # noqa: F401

"""A run directory as a Hugging Face dataset: its card, its plots and its upload.

``producer card`` writes ``README.md`` (the card) and ``plots/*.png`` into the run directory;
``producer push`` uploads them with the shards. Each concept is a module: ``summary`` (one
pass over the records), ``plots``, ``card``, ``push``.
"""

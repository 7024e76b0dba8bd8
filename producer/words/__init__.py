"""Word lists for topic configs: terms from glossary pages and model-generated lists.

* :mod:`producer.words.glossary` — a Wikipedia-style glossary page (URL or saved HTML) to terms;
* :mod:`producer.words.generate` — ask a model for terms on a topic, parse and clean its output.
"""

from producer.words.clean import WordSourceError

__all__ = ["WordSourceError"]

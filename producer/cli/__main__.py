"""``python -m producer.cli``: the same as the ``producer`` console script."""

from producer.cli import main

main()

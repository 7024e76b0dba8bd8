"""What runs on the user's side: config, enqueue, status, export and the ``producer`` CLI."""

__version__ = "0.1.0"

"""The ops console: a web app for operators (board, order pages, dead letters) on top of ``shared`` and
``tools.ops``."""

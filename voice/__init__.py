"""Assembly: configuration (``config.py``), the bundled models (``models.py``), the server
(``server.py``) and the ``voice`` command line (``cli.py``)."""

__version__ = "0.1.0"

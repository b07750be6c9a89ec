"""The ``imagen-queue`` command line."""

"""Celery tasks and the model stages they run: the only package that imports torch and diffusers."""

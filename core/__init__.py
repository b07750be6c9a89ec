"""Configuration and domain errors shared by every layer."""

"""The Celery queues, by name. A module of constants: importing it creates no Celery app."""

# One queue per kind of work, so each GPU pool can serve only the stages that fit it.
QUEUES = ("text", "base", "sr", "caption", "embed", "webhooks", "control")
# What a GPU worker serves; webhook deliveries (network waits) and control tasks run on a CPU worker.
MODEL_QUEUES = ("text", "base", "sr", "caption", "embed")
CPU_QUEUES = ("webhooks", "control")

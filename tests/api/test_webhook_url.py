"""A job's webhook URL is checked at submission: the error names the field and says what is allowed."""

import pytest

from api.schemas import WebhookSpec
from api.submission import checked_webhook
from core.config import Settings
from core.errors import InvalidInput


def test_a_refused_port_is_an_error_on_webhook_url() -> None:
    settings = Settings(webhook_allow_private=False)
    # The port is refused before the host is resolved: nothing leaves this machine.
    with pytest.raises(InvalidInput) as caught:
        checked_webhook(WebhookSpec(url="https://hooks.example.com:6379/hook"), settings)
    assert caught.value.field == "webhook.url"
    assert "has port 6379; only ports 80, 443, 8080, 8443 are allowed" in caught.value.message


def test_the_deployment_chooses_the_ports() -> None:
    settings = Settings(webhook_allow_private=False, webhook_allowed_ports=[443])
    with pytest.raises(InvalidInput, match="only ports 443 are allowed"):
        checked_webhook(WebhookSpec(url="https://hooks.example.com:8443/hook"), settings)


def test_allow_private_lets_tests_use_loopback_receivers_on_any_port() -> None:
    settings = Settings(webhook_allow_private=True)
    webhook = checked_webhook(WebhookSpec(url="http://127.0.0.1:41234/hook", events=["completed"]), settings)
    assert webhook == {"url": "http://127.0.0.1:41234/hook", "events": ["completed"]}

"""X-Twilio-Signature: Twilio's published vectors, and agreement with twilio-python."""

import pytest

from switchboard import signature

PARAMS = {"CallSid": "CA1234567890ABCDE", "Caller": "+14158675310", "Digits": "1234",
          "From": "+14158675310", "To": "+18005551212"}


def test_twilio_worked_example_for_a_form_post():
    assert signature.compute("12345", "https://example.com/myapp.php?foo=1&bar=2", PARAMS) == "L/OH5YylLD5NRKLltdqwSvS0BnU="


def test_websocket_upgrade_signs_the_wss_url_alone():
    assert signature.compute("12345", "wss://example.com/twilio") == "4qZsm0/0bGQYw36gQ+0YyAX07W0="
    assert signature.stream_signature_valid("12345", "wss://example.com/twilio", "4qZsm0/0bGQYw36gQ+0YyAX07W0=")


def test_trailing_slash_and_default_port_variants_are_accepted():
    sig = signature.compute("12345", "wss://example.com/twilio/")
    assert signature.stream_signature_valid("12345", "wss://example.com/twilio", sig)
    sig_port = signature.compute("12345", "https://example.com:443/myapp.php?foo=1&bar=2", PARAMS)
    assert signature.is_valid("12345", "https://example.com/myapp.php?foo=1&bar=2", sig_port, PARAMS)


@pytest.mark.parametrize("bad", [None, "", "4qZsm0/0bGQYw36gQ+0YyAX07W0", "x" * 28])
def test_wrong_or_missing_signatures_are_rejected(bad):
    assert not signature.stream_signature_valid("12345", "wss://example.com/twilio", bad)


def test_https_signature_does_not_validate_a_wss_upgrade():
    sig = signature.compute("12345", "https://example.com/twilio")
    assert not signature.stream_signature_valid("12345", "wss://example.com/twilio", sig)


def test_agrees_with_twilio_python_request_validator():
    twilio_validator = pytest.importorskip("twilio.request_validator")
    validator = twilio_validator.RequestValidator("secret-token")
    for url, params in [("https://a.example/voice?x=1", PARAMS), ("wss://edge.example/twilio", {}),
                        ("https://a.example:8443/twiml", {"A": "1", "B": "é"})]:
        ours = signature.compute("secret-token", url, params)
        assert validator.validate(url, params, ours)
        assert validator.compute_signature(url, params) == ours


def test_public_url_is_rebuilt_from_trusted_proxy_headers():
    headers = {"X-Forwarded-Proto": "https, http", "X-Forwarded-Host": "edge.example.com, lb", "Host": "internal:8080"}
    assert signature.public_url_from_proxy_headers(headers, "/twilio") == "wss://edge.example.com/twilio"

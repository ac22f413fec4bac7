"""What to paste into Twilio for a real phone number, from the public URLs (pure, no I/O).

Twilio signs the exact URLs it calls, so the webhook and stream URLs printed here are built
from the same two settings the services verify against: `EDGE_PUBLIC_URL` (the edge's
`wss://…/twilio`) and `CONTROL_PUBLIC_URL` (the control API's `https://` base). The voice
webhook `POST /twiml` is the way that keeps every feature: one-time stream tokens, admission
(busy and hold messages) and reconnection after an edge loss through `/twiml/continue`. A
TwiML Bin cannot carry a stream token, so it works only with `EDGE_REQUIRE_STREAM_TOKEN=false`;
its `<Redirect>` after `</Connect>` keeps failover and the busy message working.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit
from xml.etree import ElementTree as ET


class SetupError(ValueError):
    """The public URLs are missing or are not what Twilio can use."""


@dataclass(frozen=True, slots=True)
class TwilioSetup:
    edge_public_url: str
    control_public_url: str
    profile: str | None = None

    @classmethod
    def from_env(cls, environ: dict[str, str], profile: str | None = None) -> TwilioSetup:
        edge = environ.get("EDGE_PUBLIC_URL", "").strip()
        control = environ.get("CONTROL_PUBLIC_URL", "").strip().rstrip("/")
        missing = [name for name, value in (("EDGE_PUBLIC_URL", edge), ("CONTROL_PUBLIC_URL", control)) if not value]
        if missing:
            raise SetupError(
                f"{' and '.join(missing)} not set: expose the edge (port 8080) and the control API (port 8000) "
                "through two TLS tunnels, then set EDGE_PUBLIC_URL=wss://<edge-host>/twilio and "
                "CONTROL_PUBLIC_URL=https://<control-host>"
            )
        edge_parts, control_parts = urlsplit(edge), urlsplit(control)
        if edge_parts.scheme != "wss" or not edge_parts.hostname or edge_parts.path != "/twilio" or edge_parts.query:
            raise SetupError(f"EDGE_PUBLIC_URL must look like wss://<edge-host>/twilio (no query), not {edge!r}")
        if control_parts.scheme != "https" or not control_parts.hostname or control_parts.query:
            raise SetupError(f"CONTROL_PUBLIC_URL must look like https://<control-host> (no query), not {control!r}")
        return cls(edge, control, profile)

    def _query(self, **extra: str) -> str:
        query = urlencode({**({"profile": self.profile} if self.profile else {}), **extra})
        return f"?{query}" if query else ""

    @property
    def webhook_url(self) -> str:
        """The number's voice webhook ("A call comes in", HTTP POST)."""
        return f"{self.control_public_url}/twiml{self._query()}"

    @property
    def continue_url(self) -> str:
        return f"{self.control_public_url}/twiml/continue{self._query()}"

    def twiml_bin(self) -> str:
        """TwiML for a Bin: the stream, then the `<Redirect>` Twilio runs when the stream ends."""
        response = ET.Element("Response")
        stream = ET.SubElement(ET.SubElement(response, "Connect"), "Stream", url=self.edge_public_url)
        if self.profile:
            ET.SubElement(stream, "Parameter", name="profile", value=self.profile)
        ET.SubElement(response, "Redirect", method="POST").text = self.continue_url
        ET.indent(response)
        return ET.tostring(response, encoding="unicode")

    def render(self, edge_port: int, control_port: int) -> str:
        same_host = urlsplit(self.edge_public_url).hostname == urlsplit(self.control_public_url).hostname
        return "\n".join([
            "Twilio setup for this Switchboard",
            "",
            "1. Two TLS tunnels (Twilio reaches the edge over wss:// and the control API over https://),",
            f"   e.g. `ngrok http {edge_port}` and `ngrok http {control_port}`:",
            f"     {self.edge_public_url:<48} → 127.0.0.1:{edge_port}   (the edge)",
            f"     {self.control_public_url:<48} → 127.0.0.1:{control_port}   (the control API)",
            *(["   One host for both: route /twilio to the edge and everything else to the control API."]
              if same_host else []),
            "",
            "2. Start Switchboard with both public URLs set (Twilio signs exactly these):",
            "     export TWILIO_AUTH_TOKEN=… DEEPGRAM_API_KEY=…",
            f"     export EDGE_PUBLIC_URL={self.edge_public_url} CONTROL_PUBLIC_URL={self.control_public_url}",
            "     ./dev run --no-demo-call",
            "",
            "3. The phone number → Voice configuration → \"A call comes in\": Webhook, HTTP POST",
            f"     {self.webhook_url}",
            "   This keeps everything working: one-time stream tokens, the busy and hold messages,",
            f"   and reconnection after an edge loss ({self.continue_url}).",
            "",
            "Instead of the webhook, a TwiML Bin (no stream token: start Switchboard with",
            "EDGE_REQUIRE_STREAM_TOKEN=false, and read README's Security section on what that costs):",
            "",
            self.twiml_bin(),
        ])

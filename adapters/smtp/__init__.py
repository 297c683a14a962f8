"""The e-mail transport: compose the mail around a sealed entity, send it over SMTP (TLS required,
DSN requested), classify failures, and read the DSNs that come back (RFC 3464).

Knows bytes and protocols only: the message type reaches it as an opaque label."""

from .compose import ComposedMail, compose_mail
from .dsn import Dsn, DsnError, DsnRecipient, parse_dsn
from .sender import (Accepted, PermanentFailure, RelaySettings, SecurityFailure, SmtpFailure, SmtpSender,
                     TemporaryFailure)

__all__ = ["Accepted", "ComposedMail", "Dsn", "DsnError", "DsnRecipient", "PermanentFailure", "RelaySettings",
           "SecurityFailure", "SmtpFailure", "SmtpSender", "TemporaryFailure", "compose_mail", "parse_dsn"]

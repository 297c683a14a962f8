"""The IMAP mailbox reader: receipts (DSNs, MDNs) and answers arrive in a mailbox the daemon watches."""

from .mailbox import FetchedMail, Mailbox, MailboxError, MailboxSettings, watch_mailbox

__all__ = ["FetchedMail", "Mailbox", "MailboxError", "MailboxSettings", "watch_mailbox"]
